"""The text classifier: one CLIP text embedding per class-name synonym (method spec §1.4).

Class synonyms come from the prompt files in ``dearli/data/prompts`` (``id:syn1,syn2,...``), mapped
to contiguous classes by *dataset category id* through the metadata's
``stuff_dataset_id_to_contiguous_id`` (never by line order). Each synonym is expanded with the prompt
templates, encoded by the frozen CLIP text tower, L2-normalised, averaged over templates and
normalised again: one row per synonym, plus the number of synonyms per class for the max-over-synonyms
step of the classifier.

Encoding the ADE20K classifier (403 synonyms x 14 templates) takes minutes on a CPU, so results are
cached in memory for the process (student and teacher share one copy) and on disk under
``MODEL.CLIP_HEAD.CACHE_DIR`` (default ``$DEARLI_CACHE/text_classifiers`` or
``~/.cache/dearli/text_classifiers``). The cache key is (CLIP model name, weight fingerprint, class
synonyms, templates); any change gives a new key, hence a new file.
"""
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog

from dearli.utils.atomic_io import atomic_write

logger = logging.getLogger(__name__)

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"
PLACEHOLDER_NAME = "invalid_class_id"
# Line ids of a prompt file are dataset category ids, except in the ADE20K file, whose ids are the raw
# SceneParsing label values (dataset id + 1; line 0 is a placeholder), as in the reference loader.
PROMPT_FILE_ID_OFFSET = {"ade20k_150": 1}
SINGLE_TEMPLATE = "a photo of a {}."
# The orthogonal class embedding must be identical in every run for checkpoints to stay meaningful.
ORTHOGONAL_EMBEDDING_SEED = 0

_MEMORY_CACHE = {}  # cache key digest -> (rows [K,D] float32 CPU, num_synonyms list[int])


# ---- prompt files -------------------------------------------------------------------------------

def prompt_file_path(name):
    """Path of a prompt file given its name in dearli/data/prompts (``ade20k_150``) or a path."""
    path = Path(name)
    if path.suffix != ".txt":
        path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        raise FileNotFoundError(f"prompt file {str(path)!r} not found; shipped files: {available}")
    return path


def read_prompt_file(name):
    """Parse a synonym file into {dataset category id: [synonyms]} (placeholder lines skipped)."""
    path = prompt_file_path(name)
    offset = PROMPT_FILE_ID_OFFSET.get(path.stem, 0)
    synonyms_by_id = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split(":")
        if len(parts) != 2 or not parts[0].strip().isdigit() or not parts[1]:
            raise ValueError(f"{path}:{line_number}: expected 'id:syn1,syn2,...', got {line!r}")
        line_id, names = int(parts[0]), parts[1]
        if names == PLACEHOLDER_NAME:
            continue
        synonyms = names.split(",")
        if any(not s for s in synonyms):
            raise ValueError(f"{path}:{line_number}: empty synonym in {line!r}")
        if line_id - offset in synonyms_by_id:
            raise ValueError(f"{path}:{line_number}: id {line_id} appears twice")
        synonyms_by_id[line_id - offset] = synonyms
    return synonyms_by_id


def load_templates(name):
    """Prompt templates by MODEL.CLIP_HEAD.PROMPT_TEMPLATES: "vild" (14 templates) or "single"."""
    if name == "vild":
        templates = (PROMPTS_DIR / "vild_templates.txt").read_text(encoding="utf-8").splitlines()
    elif name == "single":
        templates = [SINGLE_TEMPLATE]
    else:
        raise ValueError(f"MODEL.CLIP_HEAD.PROMPT_TEMPLATES={name!r}; expected 'vild' or 'single'")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}'")
    return templates


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
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} but dataset {dataset_name!r} has "
            f"{len(class_synonyms)} classes in its metadata / prompt file"
        )


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


def classifier_with_void(text_rows, void_weight):
    """Append the L2-normalised void embedding [1,D] as the last row of the classifier [K+1,D]."""
    if void_weight.shape != (1, text_rows.shape[-1]):
        raise ValueError(f"void embedding must be [1, {text_rows.shape[-1]}], "
                         f"got {tuple(void_weight.shape)}")
    void_row = F.normalize(void_weight, dim=-1).to(text_rows.dtype)
    return torch.cat([text_rows, void_row], dim=0)


# ---- caches -------------------------------------------------------------------------------------

def cache_key(model_name, fingerprint, class_synonyms, templates):
    """Canonical JSON of everything the text classifier depends on."""
    return json.dumps({"model": model_name, "weights": fingerprint,
                       "classes": class_synonyms, "templates": templates}, sort_keys=True)


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


def get_text_classifier(backbone, class_synonyms, templates, batch_size=128, cache_dir=None):
    """(rows [K,D], num_synonyms) for ``class_synonyms`` x ``templates`` with ``backbone``'s CLIP,
    from the process cache, else the disk cache, else by encoding (then stored in both)."""
    key = cache_key(backbone.model_name, backbone.weight_fingerprint(), class_synonyms, templates)
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

    ``text_classifier(backbone) -> (rows [K,D] float32 CPU, num_synonyms list[int])``. Not a module:
    nothing here is checkpointed. The result is kept until the backbone's CLIP weights are reloaded
    (``backbone.clip_weights_version`` changes).
    """

    @configurable
    def __init__(self, *, class_synonyms, templates, embedding="text", embed_dim,
                 text_batch_size=128, cache_dir=""):
        if embedding not in ("text", "orthogonal"):
            raise ValueError(f"MODEL.CLIP_HEAD.CLASS_EMBEDDING={embedding!r}; "
                             "expected 'text' or 'orthogonal'")
        self.class_synonyms = [list(names) for names in class_synonyms]
        self.templates = list(templates)
        self.embedding = embedding
        self.embed_dim = embed_dim
        self.text_batch_size = text_batch_size
        self.cache_dir = cache_dir or None
        self._result = None
        self._result_version = None

    @classmethod
    def from_config(cls, cfg, dataset_name=None):
        """Classes of ``dataset_name`` (default: DATASETS.TRAIN[0], else DATASETS.TEST[0])."""
        dataset_name = dataset_name or (cfg.DATASETS.TRAIN or cfg.DATASETS.TEST)[0]
        metadata = MetadataCatalog.get(dataset_name)
        class_synonyms = class_synonyms_for_dataset(metadata, cfg.MODEL.CLIP_HEAD.CLASS_SYNONYMS)
        check_class_count(class_synonyms, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, dataset_name)
        return {
            "class_synonyms": class_synonyms,
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
            self._result = self._compute(backbone)
            self._result_version = backbone.clip_weights_version
        return self._result

    def _compute(self, backbone):
        if self.embedding == "orthogonal":
            return orthogonal_class_embedding(self.num_classes, self.embed_dim)
        if backbone.embed_dim != self.embed_dim:
            raise ValueError(
                f"MODEL.CLIP_HEAD.EMBED_DIM={self.embed_dim} but the text tower of "
                f"{backbone.model_name} outputs {backbone.embed_dim}-d embeddings"
            )
        return get_text_classifier(backbone, self.class_synonyms, self.templates,
                                   self.text_batch_size, self.cache_dir)
