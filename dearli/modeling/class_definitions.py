"""Class definitions in the text classifier (SemiVL, ``../shared/design/extensions.md`` §3.4a).

A definitions file (:mod:`dearli.data.class_definitions`, MODEL.CLIP_HEAD.CLASS_DEFINITIONS) gives
each class a list of concepts. They are appended to the class's synonyms (duplicates dropped, order
kept), so SemiVL's flat ``concept`` mode is exactly the classifier's max over synonyms. The reduction
over a class's rows is MODEL.CLIP_HEAD.CONCEPT_AGGREGATION:

- ``max`` (default, today's classifier): one row per synonym/concept, class logit = max over them;
- ``mean`` (SemiVL's ``conceptavg``): one row per class, the L2-normalised mean of its rows.

Void concepts (MODEL.CLIP_HEAD.VOID_CONCEPTS, from the file's ``void`` line) are encoded like the
classes and appended after the learned void row of the classifier; the void logit becomes
max(learned void logit, s * max_k cos(e_q, t_void_k)) (``text_classifier.max_over_synonyms``).
The encoded rows are cached by the text classifier, whose key includes the file's sha256.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from dearli.data.class_definitions import read_class_definitions

CONCEPT_AGGREGATIONS = ("max", "mean")


def merge_concepts(class_synonyms: Sequence[Sequence[str]], concepts: Sequence[Sequence[str]]) -> List[List[str]]:
    """Per class: its synonyms unchanged, then its concepts not already listed (first occurrence
    kept), so definitions that only repeat synonyms leave the classifier as it was."""
    merged = []
    for synonyms, class_concepts in zip(class_synonyms, concepts, strict=True):
        new = [concept for concept in dict.fromkeys(class_concepts) if concept not in synonyms]
        merged.append([*synonyms, *new])
    return merged


def mean_over_concepts(rows: torch.Tensor, num_synonyms: Sequence[int]) -> Tuple[torch.Tensor, List[int]]:
    """SemiVL's ``conceptavg``: rows [K,D] (unit norm, grouped by class) -> one row per class [C,D],
    the normalised mean of the class's rows. A class with a single row keeps it bit for bit."""
    class_of_row = torch.repeat_interleave(torch.arange(len(num_synonyms)), torch.as_tensor(num_synonyms))
    sums = rows.new_zeros(len(num_synonyms), rows.shape[-1]).index_add_(0, class_of_row, rows)
    means = F.normalize(sums, dim=-1)
    first_row = torch.cumsum(torch.as_tensor([0, *num_synonyms[:-1]]), 0)
    single = torch.as_tensor(num_synonyms) == 1
    means[single] = rows[first_row[single]]
    return means, [1] * len(num_synonyms)


def aggregate_concepts(result: Tuple[torch.Tensor, List[int]], aggregation: str) -> Tuple[torch.Tensor, List[int]]:
    """(rows, num_synonyms) reduced per MODEL.CLIP_HEAD.CONCEPT_AGGREGATION (``max``: unchanged)."""
    check_aggregation(aggregation)
    return mean_over_concepts(*result) if aggregation == "mean" else result


def check_aggregation(aggregation: str) -> None:
    if aggregation not in CONCEPT_AGGREGATIONS:
        raise ValueError(f"MODEL.CLIP_HEAD.CONCEPT_AGGREGATION={aggregation!r}; expected one of {CONCEPT_AGGREGATIONS}")


def class_text_from_config(cfg, metadata, class_synonyms: List[List[str]], dataset_name: str) -> Dict:
    """The TextClassifier arguments that class definitions change: the classes' synonyms merged with
    the file's concepts, the aggregation, the void concepts and the file's sha256 ("" without file)."""
    clip_head = cfg.MODEL.CLIP_HEAD
    check_aggregation(clip_head.CONCEPT_AGGREGATION)
    text = {"class_synonyms": class_synonyms, "concept_aggregation": clip_head.CONCEPT_AGGREGATION,
            "void_concepts": [], "definitions_sha256": ""}
    if not clip_head.CLASS_DEFINITIONS:
        if clip_head.VOID_CONCEPTS:
            raise ValueError("MODEL.CLIP_HEAD.VOID_CONCEPTS needs a MODEL.CLIP_HEAD.CLASS_DEFINITIONS file "
                             "with a 'void:' line")
        return text
    if clip_head.CLASS_EMBEDDING != "text":
        raise ValueError(f"MODEL.CLIP_HEAD.CLASS_DEFINITIONS={clip_head.CLASS_DEFINITIONS!r} needs "
                         f"CLASS_EMBEDDING='text' (got {clip_head.CLASS_EMBEDDING!r}: no text is encoded)")
    class_names = metadata.get("stuff_classes", None)
    if not class_names or len(class_names) != len(class_synonyms):
        raise ValueError(f"MODEL.CLIP_HEAD.CLASS_DEFINITIONS: dataset {dataset_name!r} needs stuff_classes "
                         f"(one name per class) to match the file's lines to classes")
    definitions = read_class_definitions(clip_head.CLASS_DEFINITIONS, class_names, dataset_name)
    if clip_head.VOID_CONCEPTS and not definitions.void_concepts:
        raise ValueError(f"MODEL.CLIP_HEAD.VOID_CONCEPTS is on but {definitions.path} has no 'void:' line")
    text.update(class_synonyms=merge_concepts(class_synonyms, definitions.concepts),
                definitions_sha256=definitions.sha256,
                void_concepts=definitions.void_concepts if clip_head.VOID_CONCEPTS else [])
    return text
