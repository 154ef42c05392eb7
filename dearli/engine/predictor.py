"""``DEARLiPredictor``: one RGB image in, the model's panoptic and semantic predictions out.

Detectron2's ``DefaultPredictor`` for DEARLi, plus open-vocabulary inference::

    predictor = DEARLiPredictor(cfg)               # builds the model, loads MODEL.WEIGHTS
    outputs = predictor(image_rgb)                 # {"panoptic_seg": (seg, segments_info), "sem_seg"}
    predictor.set_classes(["cat", ["dog", "puppy"], "grass"], stuff=["grass"])
    outputs = predictor(image_rgb)                 # now over the three new classes

Replacing the classes is free with the CLIP head: the classifier is just the text embeddings of the
class names, so ``set_classes`` swaps the model's text classifier (and the thing ids used by panoptic
inference) and the metadata that names the classes. Nothing is retrained. With
``MODEL.CLIP_HEAD.CLASS_EMBEDDING: "orthogonal"`` (the tiny CPU configs, which have no pretrained
CLIP) class rows are fixed orthonormal vectors, so new names change the number of classes but carry
no meaning.
"""
import logging
from typing import Iterable, List, Sequence, Union

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model

from ..data.datasets.from_config import register_config_datasets
from ..data.mappers.test_time import test_resize
from ..modeling import meta_arch  # noqa: F401  (registers the DEARLi meta-architecture)
from ..modeling.checkpoint import DEARLiCheckpointer
from ..modeling.fingerprint import config_for_checkpoint
from ..modeling.text_classifier import TextClassifier
from .state import capture_rng_state, restore_rng_state, seed_model_init

logger = logging.getLogger(__name__)

ClassSpec = Union[str, Sequence[str]]  # a class name, or a list of synonyms (first = display name)
OPEN_VOCABULARY_NAME = "dearli_open_vocabulary"


def model_dataset_name(cfg) -> str:
    """The dataset whose classes the model is built for (the rule of the DEARLi meta-arch)."""
    names = cfg.DATASETS.TRAIN or cfg.DATASETS.TEST
    if not names:
        raise ValueError("DATASETS.TRAIN and DATASETS.TEST are both empty: the predictor needs a "
                         "registered dataset to take the class names from")
    return names[0]


class DEARLiPredictor:
    """Build a DEARLi model from ``cfg``, load ``MODEL.WEIGHTS`` and run it on single images.

    ``__call__(image)`` takes an RGB uint8 HxWx3 array, resizes it with
    ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST) and returns the model's standard
    outputs for it at the input size: ``{"panoptic_seg": (int32 [H, W], segments_info),
    "sem_seg": float [C, H, W]}``. ``metadata`` names the classes of those outputs.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.cfg.freeze()
        if self.cfg.INPUT.FORMAT != "RGB":
            raise ValueError(f"INPUT.FORMAT={self.cfg.INPUT.FORMAT!r}; DEARLi models take RGB input")
        register_config_datasets(self.cfg)  # the model's classes may come from a config-declared set
        allow_unsafe_pickle = self.cfg.MODEL.ALLOW_UNSAFE_PICKLE
        # A random CLIP is rebuilt with the seed the checkpoint was trained with.
        self.model = build_seeded_model(config_for_checkpoint(self.cfg, self.cfg.MODEL.WEIGHTS, allow_unsafe_pickle))
        self.model.eval()
        DEARLiCheckpointer(self.model, save_to_disk=False, allow_unsafe_pickle=allow_unsafe_pickle).load(
            self.cfg.MODEL.WEIGHTS)
        if not self.cfg.MODEL.WEIGHTS:
            logger.warning("MODEL.WEIGHTS is empty: the predictor runs a randomly initialised model")
        self.metadata = MetadataCatalog.get(model_dataset_name(self.cfg))
        self.resize = test_resize(self.cfg)  # the evaluation loader's resize

    @property
    def num_classes(self) -> int:
        return self.model.text_classifier.num_classes

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict:
        _check_rgb_image(image)
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]

    def set_classes(self, classes: Sequence[ClassSpec], stuff: Iterable[str] = ()) -> Metadata:
        """Predict ``classes`` from now on (open vocabulary). Returns the new metadata.

        Args:
            classes: one entry per class: a name, or a list of synonyms whose first item is the
                displayed name. Names must be non-empty and unique (case-insensitively) across all
                synonyms of all classes.
            stuff: display names of the classes that are "stuff" (one merged segment per class in
                panoptic outputs). Any other class is a "thing" if it has that name in the current
                metadata's thing classes or is unknown there, and stuff if it is stuff there.
        """
        class_synonyms = normalise_class_list(classes)
        names = [synonyms[0] for synonyms in class_synonyms]
        stuff_names = check_stuff_names(stuff, names)
        is_thing = [self._is_thing(name, stuff_names) for name in names]
        old = self.model.text_classifier
        if old.embedding == "orthogonal":
            logger.warning("MODEL.CLIP_HEAD.CLASS_EMBEDDING is 'orthogonal': the new class names do "
                           "not influence the predictions, only the number of classes changes")
        text_classifier = TextClassifier(
            class_synonyms=class_synonyms, templates=old.templates, embedding=old.embedding,
            embed_dim=old.embed_dim, text_batch_size=old.text_batch_size, cache_dir=old.cache_dir or "",
        )
        text_classifier(self.model.backbone)  # computed now: an error leaves the model unchanged
        self.model.text_classifier = text_classifier
        self.model.thing_ids = frozenset(i for i, thing in enumerate(is_thing) if thing)
        self.metadata = open_vocabulary_metadata(class_synonyms, is_thing)
        return self.metadata

    def _is_thing(self, name: str, stuff_names: set) -> bool:
        if name.lower() in stuff_names:
            return False
        known = [n.lower() for n in self.metadata.get("stuff_classes", [])]
        if name.lower() not in known:
            return True
        return known.index(name.lower()) in set(self.model.thing_ids)


def build_seeded_model(cfg):
    """``build_model(cfg)`` seeded from cfg.SEED (when >= 0) exactly as DEARLiTrainer seeds it, with
    the caller's generator states restored afterwards. Weights no checkpoint holds (a frozen CLIP
    built without MODEL.OPEN_CLIP.PRETRAINED is not saved) then equal those the model was trained with."""
    if cfg.SEED < 0:
        return build_model(cfg)
    caller_state = capture_rng_state()
    try:
        seed_model_init(cfg.SEED)
        return build_model(cfg)
    finally:
        restore_rng_state(caller_state)


def normalise_class_list(classes: Sequence[ClassSpec]) -> List[List[str]]:
    """Classes as lists of stripped synonyms; ValueError on an empty list, an empty name or a name
    used twice (two classes sharing a synonym would compete for the same text embedding)."""
    if isinstance(classes, str):
        raise TypeError("classes must be a list of names (or of synonym lists), not one string; "
                        "split a comma-separated list first")
    class_synonyms = [[spec] if isinstance(spec, str) else list(spec) for spec in classes]
    if not class_synonyms:
        raise ValueError("the class list is empty: give at least one class name")
    first_use = {}
    for index, synonyms in enumerate(class_synonyms):
        stripped = [str(name).strip() for name in synonyms]
        if not stripped or not all(stripped):
            raise ValueError(f"class {index + 1} of the class list has an empty name: {synonyms!r}")
        for name in stripped:
            if name.lower() in first_use:
                raise ValueError(f"duplicate class name {name!r} in the class list (classes "
                                 f"{first_use[name.lower()] + 1} and {index + 1}); names must be unique")
            first_use[name.lower()] = index
        class_synonyms[index] = stripped
    return class_synonyms


def check_stuff_names(stuff: Iterable[str], names: List[str]) -> set:
    """Lower-cased stuff names; ValueError for a name that is not a class (display) name."""
    stuff_names = {name.strip().lower() for name in stuff}
    unknown = sorted(stuff_names - {name.lower() for name in names})
    if unknown:
        raise ValueError(f"stuff classes {unknown} are not in the class list {names}")
    return stuff_names


def open_vocabulary_metadata(class_synonyms: List[List[str]], is_thing: List[bool]) -> Metadata:
    """Unregistered Detectron2 metadata for a user class list, with the dataset conventions of the
    contract (thing_classes and stuff_classes both list all classes; ids are contiguous ids)."""
    names = [synonyms[0] for synonyms in class_synonyms]
    return Metadata(
        name=OPEN_VOCABULARY_NAME,
        thing_classes=list(names),
        stuff_classes=list(names),
        class_synonyms=[list(s) for s in class_synonyms],
        thing_dataset_id_to_contiguous_id={i: i for i, thing in enumerate(is_thing) if thing},
        stuff_dataset_id_to_contiguous_id={i: i for i in range(len(names))},
        ignore_label=255,
    )


def _check_rgb_image(image) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"DEARLiPredictor expects an RGB image array HxWx3, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"DEARLiPredictor expects a uint8 image, got {image.dtype}")
