"""The withheld ground truth of an "unlabeled" split, for measuring pseudo-label quality only.

Splits made from a labeled dataset (the synthetic shapes, CamVid's 1/8 split, COCO / ADE20K splits)
register image-only dicts, but their metadata still names the source's panoptic json and folders.
Training never reads them; the pseudo-label quality hook (``SSL.PSEUDO_QUALITY_IMAGES``) does.
"""
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .panoptic import load_panoptic_json

_GROUND_TRUTH_KEYS = ("panoptic_json", "image_root", "panoptic_root")


def withheld_ground_truth(dataset_name: str, limit: int) -> List[Dict]:
    """Panoptic dataset dicts of the first ``limit`` images of the unlabeled ``dataset_name``."""
    images = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    missing = [key for key in _GROUND_TRUTH_KEYS if not metadata.get(key, None)]
    if missing:
        raise ValueError(f"{dataset_name}: its metadata has no {', '.join(missing)}, so there is no withheld "
                         "ground truth to score pseudo-labels against; set SSL.PSEUDO_QUALITY_IMAGES 0")
    records = load_panoptic_json(metadata.panoptic_json, metadata.image_root, metadata.panoptic_root,
                                 metadata.as_dict())
    by_id = {record["image_id"]: record for record in records}
    chosen = images[:limit]
    absent = [image["image_id"] for image in chosen if image["image_id"] not in by_id]
    if absent:
        raise ValueError(f"{dataset_name}: {len(absent)} of its first {len(chosen)} images have no annotation "
                         f"in {metadata.panoptic_json} (e.g. {absent[:3]})")
    return [by_id[image["image_id"]] for image in chosen]
