""""Weakly labeled" splits: the unlabeled images of a split with image tags derived from their
ground truth (DecoupledNet, ``../shared/design/extensions.md`` §4.3).

``<unlabeled split>_tagged`` holds the same images as ``<unlabeled split>`` (image-only dicts) plus
``class_areas``: {contiguous class id: pixels} summed over the ground-truth panoptic segments
(their json ``area``; no mask is read). The loader turns the areas into tags with
SSL.IMAGE_TAGS.MIN_AREA_FRACTION and drops them (:func:`dearli.data.image_tags.attach_image_tags`),
so no ground truth but the tags reaches training. Derived tags are *perfect* tags: a result with
them is an upper bound for real tags. Registered for shapes, COCO panoptic / COCO-objects, ADE20K
and CamVid.
"""
from .metadata import register_dataset
from .splits import check_disjoint, complement, read_split_file, record_stem, select_labeled

TAGGED_SUFFIX = "_tagged"
DERIVED_TAGS_NOTE = "tags derived from ground truth (perfect tags: an upper bound)"


def class_areas_of(segments_info):
    """{contiguous class id: pixels} of a ground-truth panoptic record's segments (their ``area``)."""
    areas = {}
    for segment in segments_info:
        areas[int(segment["category_id"])] = areas.get(int(segment["category_id"]), 0) + int(segment["area"])
    return areas


def tagged_record(record):
    """The image-only part of a ground-truth record plus its ``class_areas``."""
    image = {k: record[k] for k in ("file_name", "image_id", "height", "width") if k in record}
    image["class_areas"] = class_areas_of(record["segments_info"])
    return image


def tagged_metadata(metadata):
    """``metadata`` plus a note that says where the tags come from."""
    return dict(metadata, image_tags=DERIVED_TAGS_NOTE)


def register_tagged(name, load_records, metadata):
    """Register ``name`` (lazy): :func:`tagged_record` of every ground-truth dict of ``load_records()``."""
    register_dataset(name, lambda: [tagged_record(r) for r in load_records()], tagged_metadata(metadata))


def register_tagged_complement(name, load_full, labeled_file, metadata, source):
    """Tagged twin of ``splits.register_unlabeled_complement``: every image not in ``labeled_file``."""
    def load():
        records = load_full()
        unlabeled = {record_stem(r) for r in complement(records, read_split_file(labeled_file), source)}
        return [r for r in records if record_stem(r) in unlabeled]

    register_tagged(name, load, metadata)


def register_tagged_list(name, split_file, labeled_file, load_full, metadata, source):
    """Tagged twin of ``splits.register_unlabeled_list``: the images of ``split_file``, found among
    ``load_full()``'s ground-truth dicts, checked disjoint from ``labeled_file``."""
    def load():
        entries = read_split_file(split_file)
        check_disjoint(read_split_file(labeled_file), entries)
        return select_labeled(load_full(), entries, source)

    register_tagged(name, load, metadata)
