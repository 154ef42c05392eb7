"""The frozen OpenCLIP ConvNeXt backbone of DEARLi (method spec §1.1).

One module serves three purposes: it feeds res2..res5 to the pixel decoder, it exposes the dense CLIP
feature and the CLIP image head used by the zero-shot branch, and it owns the CLIP text tower and
tokenizer that build the text classifier.

Checkpoints: while CLIP is frozen (the default), ``state_dict()`` leaves out every
``clip_model.*`` entry (about 180M parameters of the paper model that never change), and loading a
state dict without them keeps the CLIP weights already in the model (those of
``MODEL.OPEN_CLIP.PRETRAINED``) instead of reporting them missing. A checkpoint that does carry
``clip_model.*`` entries (e.g. a released reference checkpoint) loads them normally. With
``MODEL.OPEN_CLIP.FREEZE False`` the CLIP model is stored and loaded like any other module.
"""
import difflib
import hashlib
import logging
import os
from pathlib import Path

import open_clip
import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from detectron2.utils import comm

from ...utils.hashing import file_sha256
from .weight_manifest import verify_weights_file

logger = logging.getLogger(__name__)

# Tiny OpenCLIP configs used by the tests and the CPU demo (e.g. "dearli_convnext_tiny_test").
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

CLIP_PREFIX = "clip_model."
# Parameters of the image trunk that FREEZE False trains; the text tower, the CLIP image head and
# the logit scale stay frozen as in the reference, so the cached text classifier stays valid.
_TRAINABLE_TRUNK_PREFIXES = ("visual.trunk.stem.", "visual.trunk.stages.")
# Weights the text classifier and the zero-shot head depend on (everything but the image trunk).
_FINGERPRINT_EXCLUDED_PREFIXES = _TRAINABLE_TRUNK_PREFIXES + ("visual.trunk.norm_pre.",)
# Elements hashed per tensor by weight_fingerprint(): a strided sample keeps the hash cheap.
_FINGERPRINT_SAMPLES_PER_TENSOR = 4096


def check_model_name(model_name):
    known = open_clip.list_models()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=5, cutoff=0.5)
        raise ValueError(
            f"MODEL.OPEN_CLIP.MODEL_NAME={model_name!r} is not an OpenCLIP model config. "
            f"Close names: {close or 'none'}; all names: open_clip.list_models()."
        )


def resolve_pretrained_file(model_name, pretrained):
    """Return a local weight file for ``pretrained``: a file path, or an OpenCLIP tag (downloaded
    into the OpenCLIP/Hugging Face cache on first use)."""
    if os.path.isfile(pretrained):
        return os.path.abspath(pretrained)  # absolute: never mistaken for a tag by open_clip
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        if os.sep in pretrained or Path(pretrained).suffix:
            raise FileNotFoundError(
                f"MODEL.OPEN_CLIP.PRETRAINED: weight file {pretrained!r} does not exist."
            )
        raise ValueError(
            f"MODEL.OPEN_CLIP.PRETRAINED={pretrained!r} is neither an existing file nor an OpenCLIP "
            f"tag of {model_name}; its tags are "
            f"{open_clip.list_pretrained_tags_by_model(model_name)}."
        )
    try:
        return open_clip.download_pretrained(tag_cfg)
    except Exception as e:  # any download failure (offline, blocked socket, HTTP) ends up here
        raise RuntimeError(
            f"MODEL.OPEN_CLIP.PRETRAINED={pretrained!r}: could not fetch the OpenCLIP weights of "
            f"{model_name} (offline or no access to the Hugging Face hub: {e}). Download them once "
            "with network access, or set MODEL.OPEN_CLIP.PRETRAINED to a local .bin/.pt/.safetensors "
            "file holding open_clip's state dict."
        ) from e


def resolve_pretrained_file_once_per_node(model_name, pretrained):
    """resolve_pretrained_file on local rank 0 first, so only one process downloads."""
    if comm.get_local_rank() == 0:
        path = resolve_pretrained_file(model_name, pretrained)
    comm.synchronize()
    if comm.get_local_rank() != 0:
        path = resolve_pretrained_file(model_name, pretrained)
    return path


# OpenCLIP warns on the root logger for every random model; dearli says it once (INFO), by config key.
_OPEN_CLIP_RANDOM_WARNING = "No pretrained weights loaded for model"
_random_models_reported = set()


class _DropRandomWeightsWarning(logging.Filter):
    def filter(self, record):
        return not record.getMessage().startswith(_OPEN_CLIP_RANDOM_WARNING)


def report_random_clip(model_name):
    """One INFO line per process and model: a random CLIP is expected in the tiny CPU configs and in
    tests, and wrong anywhere CLIP recognition matters, so the line names the key to set."""
    if model_name in _random_models_reported:
        return
    _random_models_reported.add(model_name)
    logger.info(f"MODEL.OPEN_CLIP.PRETRAINED is empty: OpenCLIP {model_name} has random weights (fine for "
                "the tiny CPU configs; set it to a weight file or tag for real training or inference).")


def build_clip_model(model_name, weights_file=None):
    """The OpenCLIP model, random or with the weights of a local file (loaded strictly by open_clip:
    safetensors, or torch.load with weights_only=True). A file with a manifest (weights trained by
    this project, see weight_manifest.py) is checked against it first."""
    if weights_file is not None:
        verify_weights_file(weights_file, model_name)
    quiet = _DropRandomWeightsWarning()
    logging.getLogger().addFilter(quiet)
    try:
        clip_model = open_clip.create_model(model_name, pretrained=weights_file)
    except Exception as e:
        if weights_file is None:
            raise
        raise RuntimeError(
            f"MODEL.OPEN_CLIP.PRETRAINED: could not load {weights_file!r} into OpenCLIP model "
            f"{model_name}: {e}{describe_key_mismatch(model_name, weights_file)}"
        ) from e
    finally:
        logging.getLogger().removeFilter(quiet)
    if weights_file:
        logger.info(f"Loaded OpenCLIP weights for {model_name} from {weights_file}.")
    else:
        report_random_clip(model_name)
    return clip_model


def describe_key_mismatch(model_name, weights_file, max_listed=6):
    """"; missing keys ...; unexpected keys ...; shape mismatches ..." between the state dict in
    ``weights_file`` and a fresh ``model_name`` model, or "" when the keys and shapes agree or the
    file cannot be read (open_clip's own error then says why). Called only after a failed load."""
    try:
        stored = open_clip.factory.load_state_dict(weights_file)
    except Exception:
        return ""
    expected = {k: tuple(v.shape) for k, v in open_clip.create_model(model_name).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in stored.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = [f"{k}: file {found[k]} vs model {expected[k]}"
                for k in sorted(set(found) & set(expected)) if found[k] != expected[k]]
    parts = [f"{title} ({len(keys)}): {keys[:max_listed]}{' ...' if len(keys) > max_listed else ''}"
             for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", reshaped)) if keys]
    return "".join("; " + part for part in parts)


def _drop_frozen_clip_entries(module, state_dict, prefix, local_metadata):
    """state_dict post-hook: a frozen CLIP is not part of a checkpoint (it comes from
    MODEL.OPEN_CLIP.PRETRAINED)."""
    if module.freeze:
        for key in [k for k in state_dict if k.startswith(prefix + CLIP_PREFIX)]:
            del state_dict[key]


def _fill_absent_frozen_clip_entries(module, state_dict, prefix, *unused_args):
    """load_state_dict pre-hook: a checkpoint without CLIP entries keeps the frozen CLIP weights
    already loaded, so they are not reported missing. Counts CLIP weight loads for caches."""
    clip_prefix = prefix + CLIP_PREFIX
    if any(k.startswith(clip_prefix) for k in state_dict):
        module.clip_weights_version += 1
    elif module.freeze:
        for name, tensor in module.clip_model.state_dict().items():
            state_dict[clip_prefix + name] = tensor


@BACKBONE_REGISTRY.register()
class OpenCLIPBackbone(Backbone):
    """OpenCLIP ConvNeXt (timm trunk) as a Detectron2 backbone.

    forward(x: float [B,3,H,W], normalised) -> {"res2".."res5": strides 4..32,
    "clip_vis_dense": trunk.norm_pre(res5)}.
    """

    @configurable
    def __init__(self, *, model_name, pretrained="", freeze=True,
                 out_features=("res2", "res3", "res4", "res5"), channels_last=False, init_seed=None):
        super().__init__()
        self.model_name = model_name
        check_model_name(model_name)
        # Resolve (and download) the weights before the slow model build, so bad values fail fast.
        weights = resolve_pretrained_file_once_per_node(model_name, pretrained) if pretrained else None
        self.clip_model = build_clip_model(model_name, weights)
        # Where the frozen weights came from, recorded in checkpoints (see frozen_fingerprint): the
        # weight file's sha256, or the seed the builder seeded a random CLIP with (None: unknown).
        self.pretrained_sha256 = file_sha256(weights) if weights else None
        self.init_seed = None if weights else init_seed
        self._check_convnext_trunk()
        # NHWC weights let the trunk's convolutions and channel LayerNorms run channels-last on GPU;
        # forward converts the input to match, and the features keep their NCHW shapes.
        self.channels_last = channels_last
        if channels_last:
            self.clip_model.visual.trunk.to(memory_format=torch.channels_last)
        # Incremented whenever CLIP weights are (re)loaded; caches of derived tensors compare it.
        self.clip_weights_version = 1 if pretrained else 0
        self.freeze = freeze
        self._set_requires_grad()
        self.train(self.training)

        feature_info = self.clip_model.visual.trunk.feature_info
        self._out_feature_channels = {f"res{i + 2}": f["num_chs"] for i, f in enumerate(feature_info)}
        self._out_feature_strides = {f"res{i + 2}": f["reduction"] for i, f in enumerate(feature_info)}
        unknown = [f for f in out_features if f not in self._out_feature_channels]
        if unknown:
            raise ValueError(
                f"MODEL.OPEN_CLIP.OUT_FEATURES has {unknown}; available: "
                f"{sorted(self._out_feature_channels)}"
            )
        self._out_features = list(out_features)
        self.embed_dim = self.clip_model.text_projection.shape[-1]
        self._tokenizer = None  # built on first use (reads OpenCLIP's BPE vocabulary)

        self.register_state_dict_post_hook(_drop_frozen_clip_entries)
        self.register_load_state_dict_pre_hook(_fill_absent_frozen_clip_entries)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        return {
            "model_name": cfg.MODEL.OPEN_CLIP.MODEL_NAME,
            "pretrained": cfg.MODEL.OPEN_CLIP.PRETRAINED,
            "freeze": cfg.MODEL.OPEN_CLIP.FREEZE,
            "out_features": cfg.MODEL.OPEN_CLIP.OUT_FEATURES,
            "channels_last": cfg.MODEL.OPEN_CLIP.CHANNELS_LAST,
            # Model builders seed the global generators from SEED first (the backbone is built
            # first), so a random CLIP is a function of (MODEL_NAME, SEED); SEED < 0 is unrecorded.
            "init_seed": cfg.SEED if cfg.SEED >= 0 else None,
        }

    def _check_convnext_trunk(self):
        trunk = getattr(self.clip_model.visual, "trunk", None)
        if trunk is None or not all(hasattr(trunk, a) for a in ("stem", "stages", "norm_pre", "head")):
            raise ValueError(
                f"MODEL.OPEN_CLIP.MODEL_NAME={self.model_name!r}: OpenCLIPBackbone needs a timm "
                "ConvNeXt image tower (visual.trunk with stem/stages/norm_pre/head), e.g. "
                "convnext_base_w_320 or convnext_large_d_320."
            )

    def _set_requires_grad(self):
        for name, param in self.clip_model.named_parameters():
            param.requires_grad = not self.freeze and name.startswith(_TRAINABLE_TRUNK_PREFIXES)

    def train(self, mode=True):
        # A frozen CLIP always runs in eval mode (its drop-path must stay off), whatever the parent.
        super().train(mode)
        if self.freeze:
            self.clip_model.eval()
        return self

    # ---- image features -------------------------------------------------------------------------

    def forward(self, x):
        self._check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.freeze:
            with torch.no_grad():
                return self._extract_features(x)
        return self._extract_features(x)

    def _check_input(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"OpenCLIPBackbone expects images [B,3,H,W], got {tuple(x.shape)}")
        max_stride = max(self._out_feature_strides.values())
        if min(x.shape[-2:]) < max_stride:
            raise ValueError(
                f"OpenCLIPBackbone: input {tuple(x.shape[-2:])} is smaller than the backbone stride "
                f"{max_stride}, so res5 would be empty; pad images to a multiple of {max_stride} "
                "(MODEL.MASK_FORMER.SIZE_DIVISIBILITY / INPUT.SIZE_DIVISIBILITY)."
            )

    def _extract_features(self, x):
        trunk = self.clip_model.visual.trunk
        features = {}
        x = trunk.stem(x)
        for i, stage in enumerate(trunk.stages):
            x = stage(x)
            features[f"res{i + 2}"] = x.contiguous()
        features["clip_vis_dense"] = trunk.norm_pre(x).contiguous()
        return features

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self):
        # The meta-architecture pads to MODEL.MASK_FORMER.SIZE_DIVISIBILITY instead.
        return -1

    def visual_prediction_forward(self, x):
        """Map pooled dense features [B,Q,C] into the joint CLIP space [B,Q,embed_dim]: the timm
        head (pool + LayerNorm) on 1x1 maps, then CLIP's image projection."""
        batch, num_queries, channels = x.shape
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            maps = x.reshape(batch * num_queries, channels, 1, 1)
            pooled = self.clip_model.visual.trunk.head(maps)
            embeddings = self.clip_model.visual.head(pooled)
        return embeddings.reshape(batch, num_queries, -1)

    @property
    def clip_logit_scale(self):
        """CLIP's own log-temperature theta (open_clip's ``logit_scale``); the zero-shot logits
        use min(exp(theta), 100)."""
        return self.clip_model.logit_scale

    # ---- text tower -----------------------------------------------------------------------------

    def tokenize(self, texts):
        """Token ids [N, context_length] of OpenCLIP's tokenizer for this model (no download)."""
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._tokenizer(list(texts))

    def encode_text(self, tokens):
        """Unnormalised CLIP text embeddings [N, embed_dim]; the text tower never trains."""
        with torch.no_grad():
            return self.clip_model.encode_text(tokens, normalize=False)

    def weight_fingerprint(self):
        """A cheap, stable hex digest of the weights the text classifier and the zero-shot head
        depend on (text tower, CLIP image head, logit scale). Used in text-classifier cache keys."""
        return _sampled_digest(
            (name, tensor) for name, tensor in self.clip_model.state_dict().items()
            if not name.startswith(_FINGERPRINT_EXCLUDED_PREFIXES)
        )

    def frozen_fingerprint(self):
        """What identifies the frozen CLIP a checkpoint's decoder was trained on (checkpoints leave
        it out): model name, weight file sha256 or random-init seed, and a digest of every CLIP
        tensor. None when CLIP is trainable (it is then stored in the checkpoint)."""
        if not self.freeze:
            return None
        return {
            "model_name": self.model_name,
            "pretrained_sha256": self.pretrained_sha256,
            "random_init_seed": self.init_seed,
            "digest": _sampled_digest(self.clip_model.state_dict().items()),
        }


def _sampled_digest(named_tensors):
    """Hex sha256 of names, shapes, dtypes and a strided sample of each tensor's values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES_PER_TENSOR)
        sample = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()
