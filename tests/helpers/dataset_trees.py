"""Builders of small dataset trees in the real on-disk formats, from the real samples in
../shared/data, for the dataset, split, preparation and evaluation tests."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dearli.data.datasets import register_builtin_datasets
from dearli.data.datasets.metadata import ADE20K_THING_IDS

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_script(name):
    """Import ``datasets/<name>.py`` as a module (so tests call its ``main`` in-process)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_coco_tree(root, shared_data, split="val2017", with_semantic=True):
    """``<root>/coco`` with the 2-image COCO panoptic sample as ``split``; returns the coco dir."""
    sample = Path(shared_data) / "coco_panoptic_sample"
    coco = Path(root) / "coco"
    shutil.copytree(sample / "images", coco / split)
    shutil.copytree(sample / "panoptic", coco / f"panoptic_{split}")
    (coco / "annotations").mkdir(parents=True)
    shutil.copy(sample / "panoptic.json", coco / "annotations" / f"panoptic_{split}.json")
    if with_semantic:
        load_script("prepare_coco_semantic_from_panoptic").main(
            ["--root", str(coco), "--subsets", split, "--workers", "1"])
    return coco


def build_ade_tree(root, shared_data, folder="validation"):
    """``<root>/ADEChallengeData2016`` with the 3 ADE sample images and semantic labels."""
    sample = Path(shared_data) / "ade20k_semantic_sample"
    ade = Path(root) / "ADEChallengeData2016"
    shutil.copytree(sample / "images", ade / "images" / folder)
    shutil.copytree(sample / "annotations", ade / "annotations" / folder)
    return ade


def write_instance_mapping(path):
    """A mapping file in the instance release's format: instance class k <-> k-th thing."""
    lines = ["Instacne100\tSceneParse150\tFullADE20K"]
    for instance_class, thing_id in enumerate(sorted(ADE20K_THING_IDS), start=1):
        lines.append(f"{instance_class}\t\t{thing_id + 1}\t\t{1000 + instance_class}")
    Path(path).write_text("\n".join(lines) + "\n")
    return {instance_class: thing_id
            for instance_class, thing_id in enumerate(sorted(ADE20K_THING_IDS), start=1)}


def synthesize_ade_instances(ade, folder="validation"):
    """Instance PNGs (R = instance class, G = instance id) for the sample's semantic labels.

    Each connected component of a thing class becomes an instance; the first instance of each
    image is dilated by 2 px so that, as in the real release, instances overlap stuff pixels.
    Writes ``categoryMapping.txt`` into ``ade`` and returns {instance class: thing dataset id}.
    """
    mapping = write_instance_mapping(Path(ade) / "categoryMapping.txt")
    instance_class_of = {thing_id: k for k, thing_id in mapping.items()}
    out_dir = Path(ade) / "annotations_instance" / folder
    out_dir.mkdir(parents=True)
    total = 0
    for label_path in sorted((Path(ade) / "annotations" / folder).glob("*.png")):
        semantic = np.asarray(Image.open(label_path)).astype(np.int32) - 1
        pixels = np.zeros(semantic.shape + (3,), dtype=np.uint8)
        instance_id = 0
        for thing_id in sorted(set(np.unique(semantic).tolist()) & ADE20K_THING_IDS):
            components, count = ndimage.label(semantic == thing_id)
            for component in range(1, count + 1):
                mask = components == component
                instance_id += 1
                if instance_id == 1:
                    mask = ndimage.binary_dilation(mask, iterations=2)
                pixels[mask, 0] = instance_class_of[thing_id]
                pixels[mask, 1] = instance_id
        assert instance_id < 256, "G holds the instance id"
        total += instance_id
        Image.fromarray(pixels).save(out_dir / label_path.name)
    assert total > 1, "the sample must give a few instances"
    return mapping


def read_json(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


@pytest.fixture(scope="module", autouse=True)
def restore_default_registrations():
    """Tests re-register the standard names on temporary roots; give them back their default
    (environment-based) registrations afterwards, for the test modules that run later."""
    yield
    register_builtin_datasets()
