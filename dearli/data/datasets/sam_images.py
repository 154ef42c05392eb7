"""Image sets with class-agnostic pseudo-labels, for the warm-up stage (mapper "sam_pseudo_label").

Registered names:
- ``ade20k_sam_train``: all ADE20K training images
  (``$DETECTRON2_DATASETS/ADEChallengeData2016/images/training``; 20,210 images).
- ``coco_sam_train``: all COCO train2017 images (``$DETECTRON2_DATASETS/coco/train2017``).
- ``register_sam_dataset(name, images, label_dir)`` for any folder or list file.
- ``dearli_shapes_sam_oracle_train``: the synthetic training images with ORACLE proposals (their
  ground-truth segments without classes, see ``dearli.data.sam_oracle``), for the CPU demo.
- ``dearli_shapes_sam_train``: the same images with the pseudo-labels of ``SAM.LABEL_DIR`` (the
  tiny SAM trained here, see ``configs/shapes/tiny_sam_warmup.yaml``).

Both built-in sets include the images that are labeled in the semi-supervised stage, as in the
reference. Their default label folder is ``<dataset>/sam_labels/vit_h/points_per_side_32_pred_
iou_thresh_0.88_stability_score_thresh_0.95`` (what ``tools/generate_sam_pseudolabels.py
--model-type vit_h --output <dataset>/sam_labels`` writes); a non-empty ``SAM.LABEL_DIR`` overrides
it in the mapper. Dataset dicts are ``{"file_name", "image_id", "sam_key", "sam_label_dir"}``; image
sizes come from the label records. The single class is "segment" (synonym file ``sa1b``).
"""
import logging
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from dearli.data.datasets import shapes  # noqa: F401  (registers dearli_shapes_*, the oracle set's sources)
from dearli.data.datasets.builtin import get_datasets_root
from dearli.data.datasets.metadata import build_panoptic_metadata, register_dataset
from dearli.data.sam_format import finished_keys, image_key, settings_dirname
from dearli.data.sam_oracle import ORACLE_SUBDIR, with_panoptic_ground_truth, write_oracle_labels

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The reference's generator settings: ViT-H, 32 points per side, predicted IoU 0.88, stability 0.95.
PAPER_LABEL_SUBDIR = settings_dirname("vit_h", 32, 0.88, 0.95)

# One class-agnostic "segment" class (thing), mapped to the sa1b synonym file by dataset id 0.
SEGMENT_CATEGORY = {"id": 0, "name": "segment", "isthing": 1, "color": [220, 20, 60]}


def sam_metadata(**extra):
    """Metadata of a class-agnostic pseudo-label set (not evaluated: the warm-up has no eval)."""
    return {**build_panoptic_metadata([SEGMENT_CATEGORY], prompt_file="sa1b"), "evaluator_type": "none", **extra}


# ----------------------------------------------------------------------------- image lists
def _images_in_folder(folder):
    return sorted(str(p) for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _images_in_list(list_file, image_root=None):
    """First whitespace-separated token of each non-empty line (split files: 'image annotation')."""
    root = Path(image_root) if image_root else Path(list_file).parent
    paths = []
    for line in Path(list_file).read_text().splitlines():
        if line.strip():
            token = Path(line.split()[0])
            paths.append(str(token if token.is_absolute() else root / token))
    return paths


def image_paths_from(path, image_root=None):
    """Image paths of a folder (sorted) or a list file (one path per line)."""
    path = Path(path)
    if path.is_dir():
        return _images_in_folder(path)
    if path.is_file():
        return _images_in_list(path, image_root)
    raise FileNotFoundError(f"image source {path} is neither a folder nor a list file")


# ----------------------------------------------------------------------------- loading
def _warn_about_missing_labels(dicts, label_dir):
    """Images without a record fail in the mapper; say so early (the generator may still be running)."""
    done = finished_keys(label_dir)
    missing = [d["file_name"] for d in dicts if d["sam_key"] not in done]
    if missing:
        logger.warning(
            "%d of %d images have no pseudo-label in %s yet (e.g. %s); training on them fails. "
            "Finish them with tools/generate_sam_pseudolabels.py (it resumes).",
            len(missing), len(dicts), label_dir, missing[0],
        )


def load_sam_image_set(images, label_dir=None, image_root=None):
    """Dataset dicts of the images of a folder or list file, with the pseudo-label key and folder."""
    file_names = image_paths_from(images, image_root)
    if not file_names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    dicts = []
    for file_name in file_names:
        key = image_key(file_name)
        dicts.append({"file_name": file_name, "image_id": key, "sam_key": key, "sam_label_dir": label_dir})
    if label_dir:
        _warn_about_missing_labels(dicts, label_dir)
    return dicts


def register_sam_dataset(name, images, label_dir=None, image_root=None, metadata=None):
    """Register ``name``: the images of ``images`` (folder or list file) with labels in ``label_dir``.

    ``label_dir`` is a folder holding ``meta.json`` (see ``dearli.data.sam_format``); None means
    ``SAM.LABEL_DIR`` must name it.
    """
    metadata = sam_metadata(image_root=str(images), sam_label_dir=label_dir, **(metadata or {}))
    register_dataset(name, lambda: load_sam_image_set(images, label_dir, image_root), metadata)


def load_oracle_image_set(source_names):
    """Dicts of the images of ``source_names`` with ORACLE proposals, written next to each split."""
    logger.warning("class-agnostic targets of %s are ORACLE proposals (ground truth), not SAM", list(source_names))
    dicts = []
    for source in source_names:
        label_dir = Path(MetadataCatalog.get(source).panoptic_root).parent / "sam_labels" / ORACLE_SUBDIR
        source_dicts = with_panoptic_ground_truth(source)
        write_oracle_labels(source_dicts, label_dir)
        dicts += [
            {"file_name": d["file_name"], "image_id": image_key(d["file_name"]), "sam_key": image_key(d["file_name"]),
             "sam_label_dir": str(label_dir)}
            for d in source_dicts
        ]
    return dicts


def register_oracle_dataset(name, source_names):
    """Register ``name``: the images of the panoptic datasets ``source_names`` with ORACLE proposals.

    The proposals are the ground-truth segments without classes (``dearli.data.sam_oracle``),
    written on first load into ``<split>/sam_labels/oracle/ground_truth_segments`` of each source.
    """
    metadata = sam_metadata(proposal_source="oracle", oracle_sources=list(source_names))
    register_dataset(name, lambda: load_oracle_image_set(source_names), metadata)


def load_images_of_datasets(source_names):
    """Dicts of the images of the registered datasets ``source_names``; their pseudo-label folder is
    ``SAM.LABEL_DIR``."""
    dicts = []
    for source in source_names:
        for d in DatasetCatalog.get(source):
            key = image_key(d["file_name"])
            dicts.append({"file_name": d["file_name"], "image_id": key, "sam_key": key, "sam_label_dir": None})
    return dicts


def register_images_of_datasets(name, source_names):
    """Register ``name``: the images of the datasets ``source_names``, labels from ``SAM.LABEL_DIR``."""
    metadata = sam_metadata(image_sources=list(source_names))
    register_dataset(name, lambda: load_images_of_datasets(source_names), metadata)


def _register_builtin(root):
    builtin = {
        "ade20k_sam_train": "ADEChallengeData2016/images/training",
        "coco_sam_train": "coco/train2017",
    }
    for name, image_dir in builtin.items():
        dataset_dir = Path(root) / image_dir.split("/")[0]
        register_sam_dataset(name, Path(root) / image_dir, str(dataset_dir / "sam_labels" / PAPER_LABEL_SUBDIR))


_register_builtin(get_datasets_root())
# CPU demo warm-up (configs/shapes/tiny_warmup.yaml): ORACLE proposals on all synthetic training
# images (labeled and unlabeled split, as the paper's warm-up covers all training images). It uses
# the unlabeled split's ground-truth masks (never its classes): an upper bound, not a SAM result.
register_oracle_dataset("dearli_shapes_sam_oracle_train", ("dearli_shapes_train_labeled", "dearli_shapes_train_unlabeled"))
# The same images with the pseudo-labels SAM.LABEL_DIR names: those of the tiny SAM trained here
# (configs/shapes/tiny_sam_warmup.yaml), generated by tools/generate_sam_pseudolabels.py.
register_images_of_datasets("dearli_shapes_sam_train", ("dearli_shapes_train_labeled", "dearli_shapes_train_unlabeled"))
