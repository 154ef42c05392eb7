#!/usr/bin/env python
"""Run a trained DEARLi model on images and write overlays with class names.

    python tools/demo.py --config-file configs/ade20k/dearli_convnext_base_1_128.yaml \
        --input a.jpg b.jpg --output out/demo [--json] [--threads N] MODEL.WEIGHTS model_final.pth

Config overrides are trailing KEY VALUE pairs, as in train_net.py (``--opts KEY VALUE ...`` is
accepted as an alias).

For each input ``<dir>/<name>.<ext>`` it writes ``<output>/<name>_panoptic.png`` and
``<output>/<name>_semantic.png`` (the image overlaid with segments labelled by class name; the
overlays of an input over 4 megapixels are scaled down to about 4 megapixels) and, with ``--json``,
``<output>/<name>_segments.json`` (one entry per panoptic segment: id, category_id, category_name,
isthing, score, area in pixels of the input). Files are written atomically.
``--confidence-threshold S`` keeps only panoptic segments scoring at least S: the others are neither
drawn in the panoptic overlay nor listed in the json (their pixels show the image). The semantic
overlay is per pixel and not filtered.

Open vocabulary: ``--classes "cat,dog,grass"`` or ``--class-file F`` (one class per line, synonyms
separated by commas, e.g. ``dog,puppy``; blank lines and ``#`` comments ignored) replace the
model's classes by new text embeddings; ``--stuff "grass"`` marks classes whose segments are merged
per class (stuff) instead of kept per instance. An input that cannot be read is reported with its
path, the other inputs are still processed, and the exit code is 1. A config or weight file that
cannot be used (unsafe YAML tag or pickle, truncated checkpoint, checkpoint of another backbone)
ends the run with an error naming the file (exit code 1).
"""
import argparse
import logging
import math
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from detectron2.utils.logger import setup_logger
from PIL import Image

import dearli  # noqa: F401  (registers datasets and models)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.config import load_config
from dearli.data.datasets.validate import read_rgb_image
from dearli.engine.predictor import DEARLiPredictor, check_stuff_names, normalise_class_list
from dearli.engine.visualization import draw_panoptic, draw_semantic, named_segments
from dearli.modeling.meta_arch import class_argmax, resize_nearest, resize_panoptic
from dearli.modeling.weight_files import CheckpointError
from dearli.utils.safe_yaml import ConfigFileError
from dearli.utils.atomic_io import atomic_write, atomic_write_json
from dearli.utils.threads import setup_threads

logger = logging.getLogger("dearli.demo")
# Overlays of larger inputs are drawn on a copy scaled down to about this many pixels: Detectron2's
# Visualizer takes minutes and gigabytes on a 48-megapixel photo. The json keeps full-size areas.
OVERLAY_MAX_PIXELS = 4_000_000


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     epilog="\n".join(__doc__.split("\n")[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="model config (YAML); MODEL.WEIGHTS names the trained checkpoint")
    parser.add_argument("--input", nargs="+", required=True, metavar="IMG",
                        help="input images (any format PIL reads); unreadable ones are reported and skipped")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for <name>_panoptic.png, <name>_semantic.png (created if missing)")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--classes", metavar="NAMES",
                            help='comma-separated class names replacing the model\'s classes, "a,b,c"')
    vocabulary.add_argument("--class-file", metavar="FILE",
                            help="one class per line, synonyms separated by commas, # comments")
    parser.add_argument("--stuff", default="", metavar="NAMES",
                        help="comma-separated names of the given classes that are stuff (merged per class)")
    parser.add_argument("--json", action="store_true",
                        help="also write <name>_segments.json (id, class, score, area of each segment)")
    parser.add_argument("--confidence-threshold", type=float, default=0.0, metavar="S",
                        help="draw and list only panoptic segments with score >= S (0 to 1; default 0: all)")
    add_tool_arguments(parser)
    return parser


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def split_names(text: str) -> List[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items are kept, so they are reported as errors)."""
    return [name.strip() for name in text.split(",")] if text.strip() else []


def read_class_file(path: str) -> List[List[str]]:
    """Synonym lists, one class per non-blank, non-comment line of ``path``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--class-file {path}: cannot read it ({e})") from e
    return [split_names(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def requested_classes(args) -> Optional[List[List[str]]]:
    """The validated class list of --classes / --class-file, or None to keep the model's classes."""
    if args.classes is None and args.class_file is None:
        if args.stuff:
            raise ValueError("--stuff needs --classes or --class-file")
        return None
    if args.classes is not None:
        source, classes = "--classes", split_names(args.classes)
    else:
        source, classes = f"--class-file {args.class_file}", read_class_file(args.class_file)
    try:
        classes = normalise_class_list(classes)
        check_stuff_names(split_names(args.stuff), [synonyms[0] for synonyms in classes])
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    return classes


def output_stems(inputs: List[str]) -> List[str]:
    """The ``<name>`` of each input's outputs; two inputs with one name would overwrite each other."""
    stems = [Path(path).stem for path in inputs]
    seen = {}
    for path, stem in zip(inputs, stems):
        if stem in seen and seen[stem] != path:
            raise ValueError(f"inputs {seen[stem]} and {path} would both write {stem}_*.png; "
                             "rename one or run them separately")
        seen[stem] = path
    return stems


def write_png(path: Path, image) -> None:
    with atomic_write(str(path)) as f:
        Image.fromarray(image).save(f, format="PNG")


def write_json(path: Path, data) -> None:
    atomic_write_json(str(path), data, indent=1, separators=(",", ": "))


def confident_segments(pan_seg: torch.Tensor, segments_info, threshold: float):
    """``(pan_seg, segments_info)`` without the segments scoring below ``threshold``: they leave
    ``segments_info`` and their pixels become 0 (no segment). Segments without a score are kept."""
    kept = [s for s in segments_info if s.get("score", 1.0) >= threshold]
    dropped = [s["id"] for s in segments_info if s.get("score", 1.0) < threshold]
    if dropped:
        pan_seg = torch.where(torch.isin(pan_seg, torch.tensor(dropped, dtype=pan_seg.dtype)), 0, pan_seg)
    return pan_seg, kept


def overlay_size(height: int, width: int):
    """(h, w) of the overlays: the input size, scaled down to about OVERLAY_MAX_PIXELS if larger."""
    scale = min(1.0, math.sqrt(OVERLAY_MAX_PIXELS / (height * width)))
    return max(1, round(height * scale)), max(1, round(width * scale))


def draw_overlays(image, pan_seg, segments_info, sem_labels, metadata):
    """(panoptic overlay, semantic overlay) at ``overlay_size`` of the image."""
    size = overlay_size(*image.shape[:2])
    if size != image.shape[:2]:
        logger.info("input of %dx%d pixels: overlays drawn at %dx%d", image.shape[1], image.shape[0], size[1], size[0])
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
        pan_seg, segments_info = resize_panoptic(pan_seg, segments_info, size)
        sem_labels = resize_nearest(sem_labels, size)
    return (draw_panoptic(image, pan_seg, segments_info, metadata),
            draw_semantic(image, sem_labels, metadata))


def process_image(predictor: DEARLiPredictor, image, path: str, stem: str, output_dir: Path,
                  with_json: bool, threshold: float = 0.0) -> List[Path]:
    """Predict one image and write its files; returns the written paths."""
    outputs = predictor(image)
    pan_seg, segments_info = confident_segments(outputs["panoptic_seg"][0].cpu(), outputs["panoptic_seg"][1], threshold)
    sem_labels = class_argmax(outputs.pop("sem_seg").cpu())  # the scores are C x H x W floats: free them
    written = [output_dir / f"{stem}_panoptic.png", output_dir / f"{stem}_semantic.png"]
    panoptic_overlay, semantic_overlay = draw_overlays(image, pan_seg, segments_info, sem_labels, predictor.metadata)
    write_png(written[0], panoptic_overlay)
    write_png(written[1], semantic_overlay)
    if with_json:
        written.append(output_dir / f"{stem}_segments.json")
        write_json(written[2], {
            "file_name": path,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "classes": list(predictor.metadata.stuff_classes),
            "segments": named_segments(segments_info, predictor.metadata, pan_seg),
        })
    return written


def run(args, stems: List[str], classes: Optional[List[List[str]]]) -> List[str]:
    """Process every input; returns the inputs that could not be read."""
    predictor = DEARLiPredictor(setup_cfg(args))
    if classes is not None:
        predictor.set_classes(classes, stuff=split_names(args.stuff))
        logger.info("Predicting %d classes: %s", predictor.num_classes, predictor.metadata.stuff_classes)
    output_dir = Path(args.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for path, stem in zip(args.input, stems):
        try:
            if not Path(path).is_file():  # reported by its own type, as before the shared reader
                raise FileNotFoundError(f"no such file: {path}")
            image = read_rgb_image(path)  # 16-bit scaled, 32-bit/float refused
        except Exception as e:  # missing file, not an image, truncated file ...: skip, report below
            print(f"error: cannot read input image {path}: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(path)
            continue
        written = process_image(predictor, image, path, stem, output_dir, args.json, args.confidence_threshold)
        logger.info("%s -> %s", path, ", ".join(str(p) for p in written))
    return failed


def main(argv=None) -> int:
    """Exit code 0 when every input was processed, 1 when some could not be read, 2 on bad
    arguments (argparse's convention)."""
    parser = get_parser()
    args = parse_tool_args(parser, argv)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold must be between 0 and 1, got {args.confidence_threshold}")
    try:  # argument errors are reported before the (slow) model build
        stems, classes = output_stems(args.input), requested_classes(args)
    except ValueError as e:
        parser.error(str(e))
    setup_logger(name="dearli")
    setup_threads(args.threads)
    try:
        failed = run(args, stems, classes)
    except (ConfigFileError, CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from e
    if failed:
        print(f"error: {len(failed)} of {len(args.input)} inputs could not be read: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
