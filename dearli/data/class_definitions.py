"""Class definitions files (SemiVL's concept lists, ``../shared/design/extensions.md`` §3.2, §3.4a):
per class a list of concepts, and optionally the "void concepts" a dataset's guidelines exclude.

Format of ``dearli/data/definitions/<name>.txt`` (or any ``.txt`` path), one line per class::

    # comment lines and blank lines are ignored; the header states where the concepts come from
    car: car, SUV, pickup truck, truck, bus, train, other moving vehicle
    road, route: road, route, street
    void: lorry, tractor

- the key before the FIRST ``:`` is the class's name exactly as in the dataset's metadata
  (``stuff_classes``; ADE20K names such as ``road, route`` contain commas, never a colon);
- after it, comma-separated concepts (surrounding spaces stripped); by SemiVL's convention the class
  name is concept #1; a concept cannot contain a comma;
- every class of the dataset needs exactly one line (a line with the name alone adds nothing);
- the reserved key ``void`` (at most one line) lists void concepts.

A file naming an unknown class, missing a class, repeating one, or with an empty concept is an error
naming the file, the line and the class. The text classifier appends each class's concepts to its
synonyms and keys its cache by the file's sha256 (:mod:`dearli.modeling.class_definitions`).
"""
import hashlib
from pathlib import Path
from typing import List, NamedTuple, Sequence

from .class_prompts import prompt_file_path

DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"
VOID_KEY = "void"
COMMENT = "#"


class ClassDefinitions(NamedTuple):
    """A definitions file read against a dataset's classes."""

    concepts: List[List[str]]  # per contiguous class, in the file's order
    void_concepts: List[str]  # [] when the file has no ``void`` line
    sha256: str  # of the file's bytes: part of the text-classifier cache key
    path: Path


def definitions_file_path(name) -> Path:
    """Path of a definitions file given its name in dearli/data/definitions (``camvid``) or a path."""
    return prompt_file_path(name, DEFINITIONS_DIR, what="class definitions file")


def read_class_definitions(name, class_names: Sequence[str], dataset_name: str) -> ClassDefinitions:
    """Parse the definitions file ``name`` for the classes ``class_names`` (contiguous order) of
    ``dataset_name``; errors name the file, the line and the class."""
    path = definitions_file_path(name)
    data = path.read_bytes()
    index_of = {class_name: index for index, class_name in enumerate(class_names)}
    if VOID_KEY in index_of:
        raise ValueError(f"{path}: dataset {dataset_name!r} has a class named {VOID_KEY!r}, the key "
                         "reserved for void concepts; rename the class in the metadata")
    concepts, line_of, void_concepts = [None] * len(class_names), {}, None
    for line_number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith(COMMENT):
            continue
        key, entries = _split_line(path, line_number, text)
        where = f"{path}:{line_number}"
        if key in line_of:
            raise ValueError(f"{where}: {key!r} appears twice (first on line {line_of[key]})")
        line_of[key] = line_number
        if key == VOID_KEY:
            void_concepts = entries
        elif key in index_of:
            concepts[index_of[key]] = entries
        else:
            raise ValueError(f"{where}: {key!r} is not a class of dataset {dataset_name!r} "
                             f"(its classes: {list(class_names)[:12]}{' ...' if len(class_names) > 12 else ''})")
    missing = [class_name for class_name, entries in zip(class_names, concepts) if entries is None]
    if missing:
        raise ValueError(f"{path}: no line for the classes {missing} of dataset {dataset_name!r}; every "
                         "class needs one ('<class name>: <class name>' adds no concept)")
    return ClassDefinitions(concepts, void_concepts or [], hashlib.sha256(data).hexdigest(), path)


def _split_line(path, line_number, text):
    key, colon, rest = text.partition(":")
    key = key.strip()
    if not colon or not key or not rest.strip():
        raise ValueError(f"{path}:{line_number}: expected '<class name>: concept1, concept2, ...' "
                         f"or '{VOID_KEY}: ...', got {text!r}")
    entries = [entry.strip() for entry in rest.split(",")]
    if any(not entry for entry in entries):
        raise ValueError(f"{path}:{line_number}: empty concept for {key!r} in {text!r}")
    return key, entries
