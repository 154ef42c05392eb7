"""CLIP classification, in one place (method spec §1.4-§1.5): class synonyms, the text classifier,
logits against it with the max over synonyms, their checks, the zero-shot branch and the ensemble.

Class synonyms come from the prompt files (read by :mod:`dearli.data.class_prompts`), mapped
to contiguous classes by *dataset category id* through the metadata's
``stuff_dataset_id_to_contiguous_id`` (never by line order). Each synonym is expanded with the prompt
templates, encoded by the frozen CLIP text tower, L2-normalised, averaged over templates and
normalised again: one row per synonym, plus the number of synonyms per class for the max-over-synonyms
step of the classifier. The decoder (in-vocabulary) and the zero-shot branch (out-of-vocabulary:
mask-pooled dense CLIP features through the CLIP image head) both score embeddings with
``text_classifier_logits``; ``geometric_ensemble`` combines the two distributions at inference.

Encoding the ADE20K classifier (403 synonyms x 14 templates) takes minutes on a CPU, so results are
cached in memory for the process (student and teacher share one copy) and on disk under
``MODEL.CLIP_HEAD.CACHE_DIR`` (default ``$DEARLI_CACHE/text_classifiers`` or
``~/.cache/dearli/text_classifiers``). The cache key is (CLIP model name, weight fingerprint, class
synonyms, templates, class definitions file's sha256 if any); any change gives a new key and file.
"""
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog

from dearli.data.class_prompts import load_templates, read_prompt_file
from dearli.utils.atomic_io import atomic_write

from .class_definitions import aggregate_concepts, class_text_from_config

logger = logging.getLogger(__name__)

# The orthogonal class embedding must be identical in every run for checkpoints to stay meaningful.
ORTHOGONAL_EMBEDDING_SEED = 0
# Clamp of exp(theta_CLIP) in the zero-shot logits (the reference's value; ~100 for LAION weights).
CLIP_LOGIT_SCALE_MAX = 100.0
# Added inside log(p + eps) of the final distribution (reference value).
LOG_EPS = 1e-8
# Added to the mask area in mask pooling, so an empty mask pools to a zero vector.
AREA_EPS = 1e-8

_MEMORY_CACHE = {}  # cache key digest -> (rows [K,D] float32 CPU, num_synonyms list[int])


# ---- class synonyms -----------------------------------------------------------------------------

def class_synonyms_for_dataset(metadata, prompt_file=""):
    """Synonyms per contiguous class id of a dataset.

    Source, in order: ``prompt_file`` (MODEL.CLIP_HEAD.CLASS_SYNONYMS), the metadata's
    ``prompt_file``, its ``class_synonyms`` (list per contiguous class), its ``stuff_classes`` (one
    synonym per class).
    """
    prompt_file = prompt_file or metadata.get("prompt_file", "")
    if prompt_file:
        return _synonyms_by_dataset_id(metadata, prompt_file)
    if metadata.get("class_synonyms", None):
        return [list(names) for names in metadata.class_synonyms]
    if metadata.get("stuff_classes", None):
        return [[name] for name in metadata.stuff_classes]
    raise ValueError(
        f"dataset {metadata.name!r} has no class names: set MODEL.CLIP_HEAD.CLASS_SYNONYMS or the "
        "metadata's prompt_file / class_synonyms / stuff_classes"
    )


def _synonyms_by_dataset_id(metadata, prompt_file):
    id_map = metadata.get("stuff_dataset_id_to_contiguous_id", None)
    if not id_map:
        raise ValueError(
            f"dataset {metadata.name!r}: prompt file {prompt_file!r} needs the metadata's "
            "stuff_dataset_id_to_contiguous_id to map its lines to classes"
        )
    if sorted(id_map.values()) != list(range(len(id_map))):
        raise ValueError(f"dataset {metadata.name!r}: stuff_dataset_id_to_contiguous_id is not "
                         f"a bijection onto 0..{len(id_map) - 1}")
    synonyms_by_id = read_prompt_file(prompt_file)
    missing = sorted(set(id_map) - set(synonyms_by_id))
    if missing:
        raise ValueError(
            f"dataset {metadata.name!r}: category ids {missing[:10]} have no line in prompt file "
            f"{prompt_file!r} (MODEL.CLIP_HEAD.CLASS_SYNONYMS / metadata prompt_file)"
        )
    synonyms = [None] * len(id_map)
    for dataset_id, contiguous_id in id_map.items():
        synonyms[contiguous_id] = synonyms_by_id[dataset_id]
    return synonyms


def check_class_count(class_synonyms, num_classes, dataset_name):
    if len(class_synonyms) != num_classes:
        raise ValueError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} but dataset {dataset_name!r} has "
                         f"{len(class_synonyms)} classes in its metadata / prompt file")


# ---- embeddings ---------------------------------------------------------------------------------

def encode_class_synonyms(backbone, class_synonyms, templates, batch_size):
    """Prompt-ensembled CLIP text embeddings: rows [K,D] (one per synonym, unit norm, float32 CPU)
    and the number of synonyms of each class."""
    synonyms = [name for names in class_synonyms for name in names]
    prompts = [template.format(name) for name in synonyms for template in templates]
    device = backbone.clip_logit_scale.device
    embeddings = []
    for start in range(0, len(prompts), batch_size):
        tokens = backbone.tokenize(prompts[start:start + batch_size]).to(device)
        embeddings.append(F.normalize(backbone.encode_text(tokens).float(), dim=-1).cpu())
    per_template = torch.cat(embeddings).reshape(len(synonyms), len(templates), -1)
    rows = F.normalize(per_template.mean(dim=1), dim=-1)
    return rows, [len(names) for names in class_synonyms]


def orthogonal_class_embedding(num_classes, embed_dim, seed=ORTHOGONAL_EMBEDDING_SEED):
    """A fixed, well-conditioned class embedding for configs without pretrained CLIP: ``num_classes``
    orthonormal rows [C,D] (QR of a seeded Gaussian) and one synonym per class."""
    if num_classes > embed_dim:
        raise ValueError(
            f"MODEL.CLIP_HEAD.CLASS_EMBEDDING='orthogonal' needs NUM_CLASSES ({num_classes}) <= "
            f"EMBED_DIM ({embed_dim})"
        )
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(embed_dim, num_classes, generator=generator, dtype=torch.float64)
    orthonormal_columns, _ = torch.linalg.qr(gaussian)
    return orthonormal_columns.T.contiguous().float(), [1] * num_classes


def classifier_with_void(text_rows, void_weight, void_concept_rows=None):
    """Append the L2-normalised void embedding [1,D] as the last row of the classifier [K+1,D], or,
    with void concepts (class definitions), that row then the concepts' rows [V,D]: [K+1+V,D]."""
    if void_weight.shape != (1, text_rows.shape[-1]):
        raise ValueError(f"void embedding must be [1, {text_rows.shape[-1]}], "
                         f"got {tuple(void_weight.shape)}")
    void_rows = [F.normalize(void_weight, dim=-1).to(text_rows.dtype)]
    if void_concept_rows is not None:
        void_rows.append(void_concept_rows.to(text_rows.device, text_rows.dtype))
    return torch.cat([text_rows, *void_rows], dim=0)


# ---- logits: cosine to the classifier rows, max over each class's synonyms ----------------------

def synonym_class_index(num_synonyms: Sequence[int], device) -> torch.Tensor:
    """Class id of every synonym row of a text classifier: [sum(num_synonyms)] int64."""
    if len(num_synonyms) == 0 or min(num_synonyms) < 1:
        raise ValueError(f"num_synonyms must list at least one synonym per class, got {list(num_synonyms)}")
    rows = [c for c, n in enumerate(num_synonyms) for _ in range(int(n))]
    return torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)  # host-built: no wait


def max_over_synonyms(row_logits: torch.Tensor, class_of_row: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[..., K + 1 (+ V)] logits per text row -> [..., C + 1] logits per class: the max over each
    class's synonym rows (a vectorised segment max), then void: the last row's logit, or with V void
    concept rows after it, the max of the learned void logit and theirs."""
    synonym_logits = row_logits[..., :class_of_row.numel()]
    per_class = synonym_logits.new_full((*synonym_logits.shape[:-1], num_classes), float("-inf"))
    per_class = per_class.scatter_reduce(
        -1, class_of_row.expand_as(synonym_logits), synonym_logits, reduce="amax", include_self=False
    )
    void_logits = row_logits[..., class_of_row.numel():]
    if void_logits.shape[-1] > 1:
        void_logits = void_logits.amax(dim=-1, keepdim=True)
    return torch.cat([per_class, void_logits], dim=-1)


def text_classifier_logits(
    embeddings: torch.Tensor,
    text_classifier: torch.Tensor,
    num_synonyms: Sequence[int],
    log_logit_scale: torch.Tensor,
    max_logit_scale: float,
    class_of_row: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Scaled cosine-similarity class logits against a synonym text classifier.

    Args:
        embeddings: [..., D] (any norm; L2-normalised here).
        text_classifier: [K + 1, D] L2-normalised rows: the synonyms of class 0, then of class 1, ...,
            and the void embedding last (then any void concept rows: [K + 1 + V, D]).
        num_synonyms: synonym rows per class (sums to K).
        log_logit_scale: scalar theta; the scale is min(exp(theta), max_logit_scale).
        class_of_row: optional precomputed ``synonym_class_index(num_synonyms)``.

    Returns:
        [..., C + 1] logits, void last.
    """
    check_text_classifier(text_classifier, num_synonyms, embeddings.shape[-1])
    if class_of_row is None:
        class_of_row = synonym_class_index(num_synonyms, embeddings.device)
    scale = torch.clamp(log_logit_scale.exp(), max=max_logit_scale)
    cosine = F.normalize(embeddings, dim=-1) @ text_classifier.t()
    return max_over_synonyms(scale * cosine, class_of_row, len(num_synonyms))


def check_text_classifier(text_classifier: torch.Tensor, num_synonyms: Sequence[int], embed_dim: int):
    expected = (int(sum(num_synonyms)) + 1, embed_dim)  # more rows: void concept rows (class definitions)
    if text_classifier.dim() != 2 or text_classifier.shape[0] < expected[0] or text_classifier.shape[1] != embed_dim:
        raise ValueError(
            f"text_classifier has shape {list(text_classifier.shape)}; expected {list(expected)} = "
            f"(sum(num_synonyms) + 1 void row, MODEL.CLIP_HEAD.EMBED_DIM) for {len(num_synonyms)} classes"
        )


# ---- the zero-shot branch and the in/out-of-vocabulary ensemble (spec §1.5) ---------------------

def mask_pool(dense: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Average of ``dense`` [B,C,h,w] inside each binarised mask: [B,Q,H,W] logits are bilinearly
    resized to h x w and thresholded at 0 (no gradient through the masks). Float32 even under
    autocast (the sums run over whole feature maps). An empty mask pools to zeros. -> [B,Q,C]."""
    with torch.autocast(device_type=dense.device.type, enabled=False):
        dense = dense.float()
        resized = F.interpolate(mask_logits.detach().float(), size=dense.shape[-2:],
                                mode="bilinear", align_corners=False)
        inside = (resized > 0).float()
        area = inside.sum(dim=(-2, -1)).unsqueeze(-1)
        return torch.einsum("bqhw,bchw->bqc", inside, dense) / (area + AREA_EPS)


def zero_shot_logits(backbone, clip_dense: torch.Tensor, mask_logits: torch.Tensor,
                     text_classifier: torch.Tensor, num_synonyms: Sequence[int]) -> torch.Tensor:
    """Out-of-vocabulary logits [B,Q,C+1] (void last): mask-pooled dense CLIP features through the
    CLIP image head, cosine against ``text_classifier`` [K+1,D] scaled by min(exp(theta_CLIP), 100),
    max over each class's synonyms (as the decoder's in-vocabulary logits)."""
    pooled = mask_pool(clip_dense, mask_logits)
    with torch.autocast(device_type=pooled.device.type, enabled=False):
        embeddings = backbone.visual_prediction_forward(pooled).float()
        return text_classifier_logits(embeddings, text_classifier.float(), num_synonyms,
                                      backbone.clip_logit_scale.float(), CLIP_LOGIT_SCALE_MAX)


def geometric_ensemble(logits_in: torch.Tensor, logits_out: torch.Tensor, alpha: float) -> torch.Tensor:
    """Final per-query class log-probabilities [B,Q,C+1] (void last), spec §1.5 steps 5-7.

    p_in = softmax_C(z_in[:C]), p_out = softmax_C(z_out[:C]) (the void column of ``logits_out``, if
    any, is dropped), p_ens proportional to p_in^(1-alpha) * p_out^alpha, p_void =
    softmax_{C+1}(z_in)[void]; returns log([(1 - p_void) * p_ens, p_void] + 1e-8).
    """
    num_classes = logits_in.shape[-1] - 1
    if logits_out.shape[-1] not in (num_classes, num_classes + 1) or \
            logits_out.shape[:-1] != logits_in.shape[:-1]:
        raise ValueError(f"geometric_ensemble: logits_in {tuple(logits_in.shape)} (C+1 columns) and "
                         f"logits_out {tuple(logits_out.shape)} (C or C+1 columns) do not match")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"MODEL.CLIP_HEAD.ENSEMBLE_ALPHA must lie in [0, 1], got {alpha}")
    logits_in, logits_out = logits_in.float(), logits_out.float()
    # Weighted sum of log-probabilities = log of the geometric mean; softmax renormalises it.
    log_p_in = logits_in[..., :num_classes].log_softmax(dim=-1)
    log_p_out = logits_out[..., :num_classes].log_softmax(dim=-1)
    p_ens = ((1.0 - alpha) * log_p_in + alpha * log_p_out).softmax(dim=-1)
    p_void = logits_in.softmax(dim=-1)[..., -1:]
    return torch.log(torch.cat([(1.0 - p_void) * p_ens, p_void], dim=-1) + LOG_EPS)


def ensemble_class_scores(backbone, features: Dict[str, torch.Tensor], outputs: Dict[str, torch.Tensor],
                          text_classifier: torch.Tensor, num_synonyms: Sequence[int],
                          alpha: float) -> torch.Tensor:
    """The decoder's final class logits ensembled with the zero-shot branch: log-probabilities
    [B,Q,C+1] from the backbone features ("clip_vis_dense") and head outputs of one forward."""
    out_logits = zero_shot_logits(backbone, features["clip_vis_dense"], outputs["pred_masks"],
                                  text_classifier, num_synonyms)
    return geometric_ensemble(outputs["pred_logits"], out_logits, alpha)


# ---- caches -------------------------------------------------------------------------------------

def cache_key(model_name, fingerprint, class_synonyms, templates, definitions_sha256=""):
    """Canonical JSON of everything the text classifier depends on (with a class definitions file,
    its content's sha256 too; without one the key is the same as before definitions existed)."""
    key = {"model": model_name, "weights": fingerprint, "classes": class_synonyms, "templates": templates}
    if definitions_sha256:
        key["definitions"] = definitions_sha256
    return json.dumps(key, sort_keys=True)


def default_cache_dir():
    root = os.environ.get("DEARLI_CACHE") or Path.home() / ".cache" / "dearli"
    return Path(root) / "text_classifiers"


def cache_file(cache_dir, model_name, key):
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return Path(cache_dir) / f"{safe_model}-{digest}.pt"


def _read_disk_cache(path, key):
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file is rebuilt, not fatal
        logger.warning(f"ignoring unreadable text-classifier cache {path}: {e}")
        return None
    if stored.get("key") != key:  # digest collision or hand-edited file
        logger.warning(f"text-classifier cache {path} holds another key; rebuilding it")
        return None
    return stored["rows"], list(stored["num_synonyms"])


def _write_disk_cache(path, key, rows, num_synonyms):
    # Atomic: a concurrent reader (another rank or job) sees the old file or the complete new one.
    with atomic_write(str(path)) as f:
        torch.save({"key": key, "rows": rows, "num_synonyms": num_synonyms}, f)


def get_text_classifier(backbone, class_synonyms, templates, batch_size=128, cache_dir=None, definitions_sha256=""):
    """(rows [K,D], num_synonyms) for ``class_synonyms`` x ``templates`` with ``backbone``'s CLIP,
    from the process cache, else the disk cache, else by encoding (then stored in both)."""
    key = cache_key(backbone.model_name, backbone.weight_fingerprint(), class_synonyms, templates, definitions_sha256)
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = cache_file(cache_dir or default_cache_dir(), backbone.model_name, key)
    result = _read_disk_cache(path, key)
    if result is None:
        num_prompts = sum(len(names) for names in class_synonyms) * len(templates)
        logger.info(f"Encoding {num_prompts} prompts with the {backbone.model_name} text tower ...")
        result = encode_class_synonyms(backbone, class_synonyms, templates, batch_size)
        _write_disk_cache(path, key, *result)
        logger.info(f"Text classifier cached at {path}")
    _MEMORY_CACHE[key] = result
    return result


def clear_memory_cache():
    _MEMORY_CACHE.clear()


class TextClassifier:
    """The class side of the CLIP classifier for one dataset, computed on first call.

    ``text_classifier(backbone) -> (rows [K,D] float32 CPU, num_synonyms list[int])``, reduced per
    ``concept_aggregation``; ``void_concept_rows(backbone)``: [V,D] or None (class definitions, see
    :mod:`.class_definitions`). Not a module: nothing here is checkpointed. The result is kept until
    the backbone's CLIP weights are reloaded (``backbone.clip_weights_version`` changes).
    """

    @configurable
    def __init__(self, *, class_synonyms, templates, embedding="text", embed_dim,
                 text_batch_size=128, cache_dir="", concept_aggregation="max", void_concepts=(),
                 definitions_sha256=""):
        if embedding not in ("text", "orthogonal"):
            raise ValueError(f"MODEL.CLIP_HEAD.CLASS_EMBEDDING={embedding!r}; "
                             "expected 'text' or 'orthogonal'")
        self.class_synonyms = [list(names) for names in class_synonyms]
        self.templates = list(templates)
        self.embedding = embedding
        self.embed_dim = embed_dim
        self.text_batch_size = text_batch_size
        self.cache_dir = cache_dir or None
        self.concept_aggregation = concept_aggregation
        self.void_concepts = list(void_concepts)
        self.definitions_sha256 = definitions_sha256
        self._result = None
        self._void_rows = None
        self._result_version = None

    @classmethod
    def from_config(cls, cfg, dataset_name=None):
        """Classes of ``dataset_name`` (default: DATASETS.TRAIN[0], else DATASETS.TEST[0])."""
        dataset_name = dataset_name or (cfg.DATASETS.TRAIN or cfg.DATASETS.TEST)[0]
        metadata = MetadataCatalog.get(dataset_name)
        class_synonyms = class_synonyms_for_dataset(metadata, cfg.MODEL.CLIP_HEAD.CLASS_SYNONYMS)
        check_class_count(class_synonyms, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, dataset_name)
        return {
            **class_text_from_config(cfg, metadata, class_synonyms, dataset_name),
            "templates": load_templates(cfg.MODEL.CLIP_HEAD.PROMPT_TEMPLATES),
            "embedding": cfg.MODEL.CLIP_HEAD.CLASS_EMBEDDING,
            "embed_dim": cfg.MODEL.CLIP_HEAD.EMBED_DIM,
            "text_batch_size": cfg.MODEL.CLIP_HEAD.TEXT_BATCH_SIZE,
            "cache_dir": cfg.MODEL.CLIP_HEAD.CACHE_DIR,
        }

    @property
    def num_classes(self):
        return len(self.class_synonyms)

    def __call__(self, backbone):
        if self._result is None or self._result_version != backbone.clip_weights_version:
            self._result = aggregate_concepts(self._compute(backbone, self.class_synonyms), self.concept_aggregation)
            self._void_rows = self._compute(backbone, [self.void_concepts])[0] if self.void_concepts else None
            self._result_version = backbone.clip_weights_version
        return self._result

    def void_concept_rows(self, backbone):
        """The void concepts' rows [V,D] (float32 CPU), or None without void concepts."""
        self(backbone)
        return self._void_rows

    def _compute(self, backbone, class_synonyms):
        if self.embedding == "orthogonal":
            return orthogonal_class_embedding(self.num_classes, self.embed_dim)
        if backbone.embed_dim != self.embed_dim:
            raise ValueError(f"MODEL.CLIP_HEAD.EMBED_DIM={self.embed_dim} but the text tower of "
                             f"{backbone.model_name} outputs {backbone.embed_dim}-d embeddings")
        return get_text_classifier(backbone, class_synonyms, self.templates, self.text_batch_size,
                                   self.cache_dir, self.definitions_sha256)
