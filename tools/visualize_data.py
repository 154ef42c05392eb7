#!/usr/bin/env python
"""Render training samples or raw dataset entries to PNG files with Detectron2's Visualizer.

    python tools/visualize_data.py --config-file configs/shapes/tiny_dearli.yaml --num 8 \
        --output out/vis --source unlabeled [--dataset NAME] [KEY VALUE ...]

Sources:
- ``labeled``: samples of the train loader's labeled stream (after resize / crop / SSD colour /
  flip / padding), drawn as [crop | crop with its ground-truth panoptic targets];
- ``unlabeled``: samples of the unlabeled stream: [weak (teacher) | strong (student)] and, for
  samples with a CutMix partner, [partner weak | partner strong | mixed student image];
- ``dataset``: raw entries of a registered dataset (image with its annotations, no augmentation).

``--dataset`` replaces DATASETS.TRAIN (labeled), DATASETS.TRAIN_UNLABELED (unlabeled) or picks the
dataset to draw (dataset; default DATASETS.TEST[0]). Files: ``<output>/<source>_<index>.png``, each
panel titled and scaled by ``--scale`` (default: small crops enlarged to about 512 pixels, photos
kept, very large images shrunk to 1024). Trailing KEY VALUE pairs override the config, as in
train_net.py (``--opts KEY VALUE ...`` is accepted as an alias); ``--threads`` sets the CPU threads.
"""
import argparse
import os
from itertools import islice

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import dearli  # noqa: F401  (registers datasets, mappers and models)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.config import load_config
from dearli.data.datasets.from_config import register_config_datasets
from dearli.data.datasets.validate import read_rgb_image
from dearli.data.sampling import build_train_batches
from dearli.engine.pseudo_labels import cutmix_image
from dearli.engine.panels import display_scale, panel_row
from dearli.engine.visualization import LabelledVisualizer, drawing_metadata, draw_panoptic
from dearli.utils.threads import setup_threads

LABELED_TITLES = ("training crop", "crop + ground truth")
UNLABELED_TITLES = ("weak view (teacher)", "strong view (student)", "CutMix partner, weak", "CutMix partner, strong",
                    "mixed student input")
DATASET_TITLES = ("image", "annotations")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="YAML config (DATASETS, INPUT, SEED are read)")
    parser.add_argument("--num", type=int, default=8, help="number of samples to render")
    parser.add_argument("--output", required=True, help="folder for the PNG files (created)")
    parser.add_argument("--dataset", default="", help="dataset name replacing the config's (see above)")
    parser.add_argument("--source", choices=("labeled", "unlabeled", "dataset"), default="labeled")
    parser.add_argument("--scale", type=float, default=None,
                        help="scale of each panel (default: by image size, see above)")
    add_tool_arguments(parser)
    return parse_tool_args(parser, argv)


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    if args.source == "labeled" and args.dataset:
        cfg.DATASETS.TRAIN = (args.dataset,)
    if args.source == "unlabeled":
        cfg.SSL.ENABLED = True
        if args.dataset:
            cfg.DATASETS.TRAIN_UNLABELED = (args.dataset,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    register_config_datasets(cfg)
    return cfg


# ----------------------------------------------------------------------------- drawing
def to_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def panel_scale(image: np.ndarray, scale) -> float:
    """``--scale``, or by default the display scale of the image's size."""
    return scale if scale else display_scale(*image.shape[:2])


def upscale(image: np.ndarray, scale: float) -> np.ndarray:
    """Resized by ``scale``: nearest neighbour when enlarging (crisp crops), area-averaged when shrinking."""
    size = (int(round(image.shape[1] * scale)), int(round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.NEAREST if scale >= 1 else Image.BOX))


def instances_to_panoptic(instances, metadata):
    """Panoptic id map (segment i -> id i+1) and segments_info of ground-truth Instances."""
    thing_classes = set(metadata.thing_dataset_id_to_contiguous_id.values())
    seg = torch.zeros(instances.image_size, dtype=torch.int32)
    segments = []
    for index, (mask, category) in enumerate(zip(instances.gt_masks, instances.gt_classes.tolist()), start=1):
        seg[mask] = index
        segments.append({"id": index, "category_id": category, "isthing": category in thing_classes})
    return seg, segments


def labeled_panels(sample, metadata, scale):
    image = to_hwc(sample["image"])
    image = upscale(image, panel_scale(image, scale))
    seg, segments = instances_to_panoptic(sample["instances"], metadata)
    seg = torch.nn.functional.interpolate(seg[None, None].float(), size=image.shape[:2], mode="nearest")[0, 0].int()
    return [image, draw_panoptic(image, seg, segments, metadata)]


def unlabeled_panels(sample, scale):
    panels = [to_hwc(sample["weak_image"]), to_hwc(sample["strong_image"])]
    cutmix = sample["cutmix"]
    if cutmix is not None:
        mixed = cutmix_image(sample["strong_image"], cutmix["strong_image"], cutmix["box_mask"])
        panels += [to_hwc(cutmix["weak_image"]), to_hwc(cutmix["strong_image"]), to_hwc(mixed)]
    return [upscale(np.ascontiguousarray(p), panel_scale(panels[0], scale)) for p in panels]


def dataset_panel(dataset_dict, metadata, scale):
    image = read_rgb_image(dataset_dict["file_name"])
    scale = panel_scale(image, scale)
    visualizer = LabelledVisualizer(image, drawing_metadata(metadata), scale=scale)
    drawn = visualizer.draw_dataset_dict({k: v for k, v in dataset_dict.items() if k != "sem_seg_file_name"})
    return [upscale(image, scale), drawn.get_image()]


# ----------------------------------------------------------------------------- sources
def training_samples(cfg, key):
    """Samples of the loader's ``key`` stream ("labeled" / "unlabeled"), iteration after iteration."""
    batches = build_train_batches(cfg, rank=0, world_size=1)
    iteration = 0
    while True:
        yield from batches.batch_at(iteration)[key]
        iteration += 1


def render(cfg, args):
    """{file name: RGB image} for the requested source."""
    if args.source == "dataset":
        name = args.dataset or (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0]
        metadata = MetadataCatalog.get(name)
        dicts = DatasetCatalog.get(name)[: args.num]
        return {f"dataset_{i:03d}.png": panel_row(dataset_panel(d, metadata, args.scale), DATASET_TITLES)
                for i, d in enumerate(dicts)}
    samples = islice(training_samples(cfg, args.source), args.num)
    if args.source == "labeled":
        metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        return {f"labeled_{i:03d}.png": panel_row(labeled_panels(s, metadata, args.scale), LABELED_TITLES)
                for i, s in enumerate(samples)}
    rows = {}
    for i, sample in enumerate(samples):
        panels = unlabeled_panels(sample, args.scale)
        rows[f"unlabeled_{i:03d}.png"] = panel_row(panels, UNLABELED_TITLES[:len(panels)])
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.num < 1:
        raise SystemExit(f"--num must be at least 1, got {args.num}")
    setup_threads(args.threads)
    cfg = setup_cfg(args)
    os.makedirs(args.output, exist_ok=True)
    images = render(cfg, args)
    for file_name, image in images.items():
        Image.fromarray(image).save(os.path.join(args.output, file_name))
    print(f"wrote {len(images)} images to {args.output}")
    return sorted(images)


if __name__ == "__main__":
    main()
