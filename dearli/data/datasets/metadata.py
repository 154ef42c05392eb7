"""Category tables and the one metadata builder shared by every dearli dataset registration.

Metadata follows Detectron2's conventions, which its evaluators and ``Visualizer`` read:

- ``thing_classes`` and ``stuff_classes`` BOTH list all classes in contiguous order (Detectron2's
  replicated convention for panoptic data; listing only the things makes ``Visualizer`` draw wrong
  names); the same holds for ``thing_colors`` / ``stuff_colors``;
- ``thing_dataset_id_to_contiguous_id`` maps the thing categories only (``{}`` for all-stuff sets,
  never missing) and ``stuff_dataset_id_to_contiguous_id`` maps ALL categories;
- ``ignore_label`` 255 and ``label_divisor`` 1000.

Dataset ("json") category ids are those of the annotation files: COCO's own ids (1..200, with
gaps), ADE20K's 0..149 (the ids of the panoptic json written by
``datasets/prepare_ade20k_pan_seg.py``, equal to the values of the ``annotations_detectron2``
semantic PNGs; the ADE prompt file counts from 1), 0 = ``background`` plus COCO's thing ids for
COCO-objects, and 0..C-1 for semantic-only sets.
"""
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES

IGNORE_LABEL = 255
LABEL_DIVISOR = 1000

# ADE20K's 100 thing classes are the classes of its instance-segmentation release (the
# "SceneParse150" column of the release's category mapping, minus one). They are NOT the `Stuff`
# column of objectInfo150.csv, which splits the classes 115/35. datasets/prepare_ade20k_pan_seg.py
# checks this table against the mapping file of the user's download.
ADE20K_THING_IDS = frozenset((
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37,
    38, 39, 41, 42, 43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67,
    69, 70, 71, 72, 73, 74, 75, 76, 78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92,
    93, 95, 97, 98, 102, 103, 104, 107, 108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124,
    125, 126, 127, 129, 130, 132, 133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148,
    149,
))

# The standard ADE20K / SceneParsing palette (RGB), indexed by dataset id 0..149.
ADE20K_COLORS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

# COCO-objects: all stuff and void merged into one stuff class "background" with dataset id 0.
COCO_OBJECTS_BACKGROUND = {"id": 0, "name": "background", "isthing": 0, "color": (0, 0, 0)}


def ade20k_categories():
    """The 150 ADE20K panoptic categories (ids 0..149, 100 things / 50 stuff) as json dicts."""
    return [
        {"id": i, "name": name.strip(), "isthing": int(i in ADE20K_THING_IDS),
         "color": list(ADE20K_COLORS[i])}
        for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)
    ]


def coco_panoptic_categories():
    """The 133 COCO panoptic categories (80 things, 53 stuff), Detectron2's table."""
    return [dict(c, color=list(c["color"])) for c in COCO_CATEGORIES]


def coco_objects_categories():
    """COCO-objects: ``background`` (id 0, stuff) followed by COCO's 80 thing categories."""
    things = [c for c in coco_panoptic_categories() if c["isthing"]]
    return [dict(COCO_OBJECTS_BACKGROUND, color=list(COCO_OBJECTS_BACKGROUND["color"]))] + things


def semantic_categories(class_names, colors=None):
    """All-stuff categories for a semantic-only dataset: dataset id == contiguous id 0..C-1."""
    if colors is not None and len(colors) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(colors)} colours")
    return [
        {"id": i, "name": name, "isthing": 0,
         "color": list(colors[i]) if colors is not None else _fallback_color(i)}
        for i, name in enumerate(class_names)
    ]


def _fallback_color(index):
    # A fixed, well-spread colour per class so that visualisations are stable across runs.
    return [(37 * index + 80) % 256, (97 * index + 40) % 256, (151 * index + 160) % 256]


def build_panoptic_metadata(categories, prompt_file=None):
    """Detectron2 metadata (see the module docstring) for a list of json category dicts.

    ``categories`` are dicts with ``id``, ``name``, ``isthing`` and ``color``; their order is the
    contiguous order. ``prompt_file`` names the synonym file in ``dearli/data/prompts`` that the
    text classifier maps to these classes by dataset id.
    """
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids in the category table: {sorted(ids)}")
    names = [c["name"] for c in categories]
    colors = [list(c["color"]) for c in categories]
    metadata = {
        "thing_classes": list(names),
        "stuff_classes": list(names),
        "thing_colors": [list(c) for c in colors],
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(categories) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
        "ignore_label": IGNORE_LABEL,
        "label_divisor": LABEL_DIVISOR,
    }
    if prompt_file:
        metadata["prompt_file"] = prompt_file
    return metadata


def register_dataset(name, loader, metadata):
    """Register ``loader`` (called lazily by ``DatasetCatalog.get``) and ``metadata`` as ``name``.

    An existing registration of the same name is replaced: Detectron2 itself registers
    ``coco_2017_{train,val}_panoptic`` with only the things in ``thing_classes``, and the split
    datasets are re-registered when a different split root is chosen.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
