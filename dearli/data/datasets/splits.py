"""Semi-supervised split lists: reading them and selecting labeled / unlabeled dataset dicts.

Split files are the UniMatch-format lists that the DEARLi authors distribute (one image per line,
``<image path> <label path>``, paths relative to the dataset root), e.g.
``<SPLITS_ROOT>/ade_splits/1_128/labeled.txt`` with lines
``images/training/ADE_train_00001609.jpg annotations/training/ADE_train_00001609.png`` and
``<SPLITS_ROOT>/coco_splits/1_512/labeled.txt`` with lines
``train2017/000000177254.jpg masks/000000177254.png``.
Entries are matched to dataset dicts by file-name stem, through sets and dicts (linear time).

Every problem names the split file and line: a missing file, a malformed line, a listed image that
is not in the dataset or not on disk, an image listed twice, an image both labeled and unlabeled.
"""
import os
from dataclasses import dataclass

from .metadata import register_dataset


# How the folder of the split lists is chosen (``builtin.splits_root_from_cfg``), for messages.
SPLITS_LOOKUP_ORDER = ("Split lists are read from DATASETS.SPLITS_ROOT when the config sets it, else "
                       "from $DEARLI_SPLITS, else from $DETECTRON2_DATASETS/splits")


class SplitListError(ValueError):
    """A split list is malformed or disagrees with the dataset (names the file and line)."""


@dataclass(frozen=True)
class SplitEntry:
    split_file: str
    line_number: int  # 1-based, as editors show it
    image: str  # image path as written in the list (relative to the dataset root)
    label: str = ""

    @property
    def stem(self):
        return os.path.splitext(os.path.basename(self.image))[0]

    @property
    def where(self):
        return f"{self.split_file}:{self.line_number}"


def read_split_file(path):
    """The entries of a split list (blank lines skipped; one or two fields per line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list {path} not found. {SPLITS_LOOKUP_ORDER}; download the "
                                "split lists (see datasets/README.md) into that folder or point "
                                "DATASETS.SPLITS_ROOT at theirs")
    entries, first_line_of = [], {}
    with open(path, "r", encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 2:
                raise SplitListError(f"{path}:{line_number}: expected '<image> [<label>]', "
                                     f"got {line.strip()!r}")
            entry = SplitEntry(path, line_number, fields[0], fields[1] if len(fields) > 1 else "")
            if entry.stem in first_line_of:
                raise SplitListError(f"{entry.where}: image {entry.stem!r} is listed twice "
                                     f"(first at line {first_line_of[entry.stem]})")
            first_line_of[entry.stem] = line_number
            entries.append(entry)
    return entries


def record_stem(record):
    """The file-name stem that identifies a dataset dict in the split lists."""
    return os.path.splitext(os.path.basename(record["file_name"]))[0]


def select_labeled(dataset_dicts, entries, source):
    """The dicts listed in ``entries``, in list order; every listed image must exist.

    ``source`` describes where ``dataset_dicts`` come from (for error messages).
    """
    by_stem = {record_stem(record): record for record in dataset_dicts}
    selected = []
    for entry in entries:
        record = by_stem.get(entry.stem)
        if record is None:
            raise SplitListError(f"{entry.where}: image {entry.image!r} is not in the dataset "
                                 f"({len(by_stem)} images in {source})")
        if not os.path.isfile(record["file_name"]):
            raise SplitListError(f"{entry.where}: listed image {record['file_name']} does not "
                                 "exist")
        selected.append(record)
    return selected


def image_only(record):
    """The part of a dataset dict an unlabeled sample may see (no annotations)."""
    return {k: record[k] for k in ("file_name", "image_id", "height", "width") if k in record}


def unlabeled_from_entries(entries, dataset_root):
    """Image-only dicts for the listed images (paths relative to ``dataset_root``)."""
    dicts = []
    for entry in entries:
        file_name = os.path.join(dataset_root, entry.image)
        if not os.path.isfile(file_name):
            raise SplitListError(f"{entry.where}: listed image {file_name} does not exist")
        dicts.append({"file_name": file_name, "image_id": entry.stem})
    return dicts


def complement(dataset_dicts, labeled_entries, source):
    """Image-only dicts of every dataset image that is not in ``labeled_entries``."""
    stems = {record_stem(record) for record in dataset_dicts}
    for entry in labeled_entries:
        if entry.stem not in stems:
            raise SplitListError(f"{entry.where}: image {entry.image!r} is not in the dataset "
                                 f"({len(stems)} images in {source})")
    labeled = {entry.stem for entry in labeled_entries}
    return [image_only(record) for record in dataset_dicts if record_stem(record) not in labeled]


def check_disjoint(labeled_entries, unlabeled_entries):
    """Raise if an image is both labeled and unlabeled (it would leak labels into the SSL set)."""
    labeled = {entry.stem: entry for entry in labeled_entries}
    for entry in unlabeled_entries:
        if entry.stem in labeled:
            raise SplitListError(f"{entry.where}: image {entry.stem!r} is also labeled "
                                 f"({labeled[entry.stem].where})")


def register_labeled_split(name, load_full, metadata, split_file, source):
    """Register ``name``: the dicts of ``load_full()`` listed in ``split_file`` (lazy)."""
    def load():
        entries = read_split_file(split_file)  # first: list errors need no dataset json
        return select_labeled(load_full(), entries, source)

    register_dataset(name, load, metadata)


def register_unlabeled_list(name, split_file, labeled_file, dataset_root, metadata):
    """Register ``name``: the images of an unlabeled list, checked disjoint from the labeled one."""
    def load():
        entries = read_split_file(split_file)
        check_disjoint(read_split_file(labeled_file), entries)
        return unlabeled_from_entries(entries, dataset_root)

    register_dataset(name, load, metadata)


def register_unlabeled_complement(name, load_full, labeled_file, metadata, source):
    """Register ``name``: every image of ``load_full()`` that ``labeled_file`` does not list."""
    def load():
        entries = read_split_file(labeled_file)
        return complement(load_full(), entries, source)

    register_dataset(name, load, metadata)
