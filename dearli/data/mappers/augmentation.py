"""Training augmentations whose every random choice is drawn from an explicit ``numpy.random.Generator``.

Nothing here touches the global ``random`` / ``np.random`` / ``torch`` generators, so a sample's views
depend only on the generator the loader seeded from (seed, iteration, rank, slot, stream): the same
sample comes out in any worker, after any resume (method spec §2.3; the reference used ``random``
inside the mapper).

Each augmentation is split into ``sample_*`` (draw parameters from the generator, in a fixed order)
and ``apply_*`` (a pure function of the image and the parameters), so tests can apply chosen
parameters. Geometric transforms are Detectron2 / fvcore ``Transform`` objects, so an image, its
panoptic id map and its semantic map follow exactly the same geometry.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, HFlipTransform, NoOpTransform
from PIL import Image, ImageFilter
from torchvision.transforms.v2 import functional as TF


def sample_seed_of(rng: np.random.Generator) -> int:
    """The ``sample_seed`` of a sample: a 32-bit value of the seed sequence behind ``rng``.

    Derived from the generator's SeedSequence without drawing from the generator, so the loader
    (which built the sequence) and the mapper agree on it and the augmentation draws are unchanged.
    """
    return int(rng.bit_generator.seed_seq.generate_state(1, dtype=np.uint32)[0])


def check_rgb_format(image_format):
    """The mappers produce RGB images (the CLIP backbone's order); refuse any other INPUT.FORMAT."""
    if image_format != "RGB":
        raise ValueError(f"INPUT.FORMAT={image_format!r}: dearli's mappers produce RGB images; set it to 'RGB'")


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class GeometrySpec:
    """Resize-shortest-edge -> random crop -> horizontal flip, as in Mask2Former's panoptic mapper.

    The reference crops with ``RandomCrop_CategoryAreaConstraint`` at max area 1.0, which is a plain
    random crop; that is what this does.
    """

    min_sizes: Tuple[int, ...]
    max_size: int
    sample_style: str = "choice"  # "choice": one of min_sizes; "range": U{min_sizes[0]..min_sizes[1]}
    crop_enabled: bool = True
    crop_type: str = "absolute"  # Detectron2's RandomCrop types
    crop_size: Tuple[float, float] = (640, 640)
    flip_prob: float = 0.5

    @classmethod
    def from_config(cls, cfg):
        return cls(
            min_sizes=tuple(int(s) for s in cfg.INPUT.MIN_SIZE_TRAIN),
            max_size=int(cfg.INPUT.MAX_SIZE_TRAIN),
            sample_style=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            crop_enabled=bool(cfg.INPUT.CROP.ENABLED),
            crop_type=cfg.INPUT.CROP.TYPE,
            crop_size=tuple(cfg.INPUT.CROP.SIZE),
        )


def sample_resize(height, width, min_sizes, max_size, sample_style, rng) -> T.Transform:
    """Detectron2's ResizeShortestEdge with the short side drawn from ``rng``."""
    if sample_style == "choice":
        short_side = int(min_sizes[rng.integers(len(min_sizes))])
    elif sample_style == "range":
        if len(min_sizes) != 2:
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING='range' needs 2 sizes (min, max), got {min_sizes}")
        short_side = int(rng.integers(min_sizes[0], min_sizes[1] + 1))
    else:
        raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sample_style!r}")
    if short_side == 0:
        return NoOpTransform()
    new_h, new_w = T.ResizeShortestEdge.get_output_shape(height, width, short_side, max_size)
    return T.ResizeTransform(height, width, new_h, new_w)


def sample_crop_size(height, width, crop_type, crop_size, rng) -> Tuple[int, int]:
    """Crop (h, w) for Detectron2's RandomCrop types, never larger than the image."""
    if crop_type == "absolute":
        return min(int(crop_size[0]), height), min(int(crop_size[1]), width)
    if crop_type == "relative":
        return int(height * crop_size[0] + 0.5), int(width * crop_size[1] + 0.5)
    if crop_type == "relative_range":
        rel_h, rel_w = np.asarray(crop_size, dtype=np.float64) + rng.random(2) * (1 - np.asarray(crop_size))
        return int(height * rel_h + 0.5), int(width * rel_w + 0.5)
    if crop_type == "absolute_range":
        low, high = int(crop_size[0]), int(crop_size[1])
        crop_h = int(rng.integers(min(height, low), min(height, high) + 1))
        crop_w = int(rng.integers(min(width, low), min(width, high) + 1))
        return crop_h, crop_w
    raise ValueError(
        f"INPUT.CROP.TYPE={crop_type!r} is not one of absolute, relative, relative_range, absolute_range"
    )


def sample_crop(height, width, crop_type, crop_size, rng) -> CropTransform:
    """A crop of the sampled size at a uniformly drawn position."""
    crop_h, crop_w = sample_crop_size(height, width, crop_type, crop_size, rng)
    y0 = int(rng.integers(height - crop_h + 1))
    x0 = int(rng.integers(width - crop_w + 1))
    return CropTransform(x0, y0, crop_w, crop_h)


def sample_hflip(width, flip_prob, rng) -> T.Transform:
    """A horizontal flip with probability ``flip_prob``."""
    return HFlipTransform(width) if rng.random() < flip_prob else NoOpTransform()


def sample_geometry(height, width, spec: GeometrySpec, rng) -> T.TransformList:
    """Resize, crop and flip for an image of (height, width); draws happen in that order."""
    resize = sample_resize(height, width, spec.min_sizes, spec.max_size, spec.sample_style, rng)
    if isinstance(resize, T.ResizeTransform):
        height, width = resize.new_h, resize.new_w
    transforms = [resize]
    if spec.crop_enabled:
        crop = sample_crop(height, width, spec.crop_type, spec.crop_size, rng)
        transforms.append(crop)
        height, width = crop.h, crop.w
    transforms.append(sample_hflip(width, spec.flip_prob, rng))
    return T.TransformList(transforms)


# ----------------------------------------------------------------------------- padding
def padded_size(height, width, size_divisibility) -> Tuple[int, int]:
    """(H, W) rounded up to a multiple of ``size_divisibility`` (unchanged when it is <= 0)."""
    if size_divisibility <= 0:
        return height, width
    return (
        int(math.ceil(height / size_divisibility) * size_divisibility),
        int(math.ceil(width / size_divisibility) * size_divisibility),
    )


def pad_bottom_right(array: torch.Tensor, canvas_hw, value) -> torch.Tensor:
    """Place ``array`` ([..., h, w]) at the top-left of a ``value``-filled canvas of size ``canvas_hw``."""
    height, width = array.shape[-2:]
    if (height, width) == tuple(canvas_hw):
        return array
    if height > canvas_hw[0] or width > canvas_hw[1]:
        raise ValueError(f"cannot pad a {height}x{width} array into a {canvas_hw[0]}x{canvas_hw[1]} canvas")
    canvas = torch.full((*array.shape[:-2], *canvas_hw), value, dtype=array.dtype)
    canvas[..., :height, :width] = array
    return canvas


def valid_mask(image_hw, canvas_hw) -> torch.Tensor:
    """bool [H, W] over the canvas, True on the real (unpadded) pixels at the top-left."""
    mask = torch.zeros(canvas_hw, dtype=torch.bool)
    mask[: image_hw[0], : image_hw[1]] = True
    return mask


def hwc_to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


# ----------------------------------------------------------------------------- shared by the crop mappers
def augment_image(image: np.ndarray, geometry: "GeometrySpec", color_aug_ssd: bool, rng):
    """Resize/crop/flip ``image`` (HxWx3 uint8), then SSD colour distortion if asked (draws in that
    order). Returns (augmented image, the TransformList to apply to its targets)."""
    transforms = sample_geometry(image.shape[0], image.shape[1], geometry, rng)
    image = transforms.apply_image(image)
    if color_aug_ssd:
        image = apply_ssd_color(image, sample_ssd_color(rng))
    return image, transforms


def padded_image_fields(image: np.ndarray, size_divisibility: int, pad_value: int, rng):
    """The padding canvas of an augmented HxWx3 image and the sample fields every training mapper
    emits for it: ``image`` (uint8 [3, H, W], padded), ``valid_mask``, ``sample_seed``."""
    image_hw = image.shape[:2]
    canvas_hw = padded_size(*image_hw, size_divisibility)
    fields = {
        "image": pad_bottom_right(hwc_to_chw_tensor(image), canvas_hw, pad_value),
        "valid_mask": valid_mask(image_hw, canvas_hw),
        "sample_seed": sample_seed_of(rng),
    }
    return canvas_hw, fields


# ----------------------------------------------------------------------------- SSD colour (labeled)
@dataclass(frozen=True)
class SSDColorParams:
    """One draw of SSD's photometric distortion; ``None`` means the step is skipped."""

    brightness_delta: Optional[float]
    contrast_alpha: Optional[float]
    saturation_alpha: Optional[float]
    hue_delta: Optional[int]
    contrast_first: bool  # contrast before (True) or after (False) saturation and hue


def sample_ssd_color(
    rng, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta=18
) -> SSDColorParams:
    """Each of brightness / contrast / saturation / hue applied with probability 1/2 (SSD defaults).

    All nine values are drawn every time, so the number of draws does not depend on the outcome.
    """
    do_brightness, contrast_first, do_contrast, do_saturation, do_hue = rng.random(5) < 0.5
    brightness = float(rng.uniform(-brightness_delta, brightness_delta))
    contrast = float(rng.uniform(*contrast_range))
    saturation = float(rng.uniform(*saturation_range))
    hue = int(rng.integers(-hue_delta, hue_delta + 1))
    return SSDColorParams(
        brightness_delta=brightness if do_brightness else None,
        contrast_alpha=contrast if do_contrast else None,
        saturation_alpha=saturation if do_saturation else None,
        hue_delta=hue if do_hue else None,
        contrast_first=bool(contrast_first),
    )


def _affine_uint8(values: np.ndarray, alpha=1.0, beta=0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def apply_ssd_color(image_rgb: np.ndarray, params: SSDColorParams) -> np.ndarray:
    """SSD distortion of an RGB uint8 HWC image, pixel for pixel detectron2's ``ColorAugSSDTransform``:
    saturation and hue each make their own round trip through OpenCV's HSV (H in 0..179), so the
    uint8 rounding in between is the reference's (one shared round trip differs by up to 3 levels)."""
    image = image_rgb
    if params.brightness_delta is not None:
        image = _affine_uint8(image, beta=params.brightness_delta)
    if params.contrast_first and params.contrast_alpha is not None:
        image = _affine_uint8(image, alpha=params.contrast_alpha)
    if params.saturation_alpha is not None:
        image = _scale_saturation(image, params.saturation_alpha)
    if params.hue_delta is not None:
        image = _shift_hue(image, params.hue_delta)
    if not params.contrast_first and params.contrast_alpha is not None:
        image = _affine_uint8(image, alpha=params.contrast_alpha)
    return image


def _scale_saturation(image_rgb: np.ndarray, alpha: float) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2HSV)
    hsv[:, :, 1] = _affine_uint8(hsv[:, :, 1], alpha=alpha)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _shift_hue(image_rgb: np.ndarray, delta: int) -> np.ndarray:
    hsv = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + delta) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# ----------------------------------------------------------------------------- strong colour (unlabeled)
@dataclass(frozen=True)
class StrongColorSpec:
    """ColorJitter strengths (always applied), grayscale and blur probabilities (INPUT.UNLABELED;
    the defaults live there)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_prob: float
    blur_prob: float
    blur_sigma: Tuple[float, float]

    @classmethod
    def from_config(cls, cfg):
        u = cfg.INPUT.UNLABELED
        return cls(
            brightness=u.JITTER_BRIGHTNESS, contrast=u.JITTER_CONTRAST, saturation=u.JITTER_SATURATION,
            hue=u.JITTER_HUE, grayscale_prob=u.GRAYSCALE_PROB, blur_prob=u.BLUR_PROB,
            blur_sigma=tuple(u.BLUR_SIGMA),
        )


@dataclass(frozen=True)
class StrongColorParams:
    """One draw of the strong view's photometric ops; ``None`` factors are skipped."""

    order: Tuple[int, ...]  # permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue), as ColorJitter
    brightness: Optional[float]
    contrast: Optional[float]
    saturation: Optional[float]
    hue: Optional[float]
    grayscale: bool
    blur_sigma: Optional[float]


def _jitter_factor(strength, rng, center=1.0, lower_bound=0.0):
    """torchvision ColorJitter's factor range [max(lower, c - s), c + s]; None when strength is 0."""
    value = float(rng.uniform(max(lower_bound, center - strength), center + strength))
    return value if strength > 0 else None


def sample_strong_color(spec: StrongColorSpec, rng) -> StrongColorParams:
    """ColorJitter (random op order, as torchvision's) -> grayscale -> Gaussian blur parameters."""
    order = tuple(int(i) for i in rng.permutation(4))
    brightness = _jitter_factor(spec.brightness, rng)
    contrast = _jitter_factor(spec.contrast, rng)
    saturation = _jitter_factor(spec.saturation, rng)
    hue = _jitter_factor(spec.hue, rng, center=0.0, lower_bound=-0.5)
    grayscale = bool(rng.random() < spec.grayscale_prob)
    blur = bool(rng.random() < spec.blur_prob)
    sigma = float(rng.uniform(*spec.blur_sigma))
    return StrongColorParams(order, brightness, contrast, saturation, hue, grayscale, sigma if blur else None)


_JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def apply_strong_color(image: torch.Tensor, params: StrongColorParams) -> torch.Tensor:
    """Strong photometric view of a uint8 [3, H, W] image.

    Applied to a PIL image, as the reference applies them: torchvision's ColorJitter ops then take
    their PIL (ImageEnhance / PIL HSV) path and the blur is PIL's ``GaussianBlur(radius=sigma)``, so
    the result equals the reference's pixel for pixel (the uint8-tensor path of the same ops differs
    by up to 6 levels, its blur kernel by up to 11 at sigma 1).
    """
    pil = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    factors = (params.brightness, params.contrast, params.saturation, params.hue)
    for op_index in params.order:
        if factors[op_index] is not None:
            pil = _JITTER_OPS[op_index](pil, factors[op_index])
    if params.grayscale:
        pil = TF.rgb_to_grayscale(pil, num_output_channels=3)
    if params.blur_sigma is not None:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=params.blur_sigma))
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------- CutMix box
@dataclass(frozen=True)
class CutMixBox:
    y0: int
    x0: int
    height: int
    width: int

    def mask(self, canvas_hw) -> torch.Tensor:
        """bool [H, W] over the canvas, True inside the box."""
        mask = torch.zeros(canvas_hw, dtype=torch.bool)
        mask[self.y0 : self.y0 + self.height, self.x0 : self.x0 + self.width] = True
        return mask


def sample_cutmix_box(crop_hw, area_range: Sequence[float], ratio_range: Sequence[float], rng, max_tries=1000) -> CutMixBox:
    """A box anywhere in the partner crop ``crop_hw`` (its real pixels), drawn as the reference
    (UniMatch's ``obtain_cutmix_box``) draws it.

    Area = U(area_range) x crop area, drawn once; ratio = U(ratio_range) is HEIGHT / WIDTH, with sides
    ``w = int(sqrt(area / ratio))``, ``h = int(sqrt(area * ratio))`` (truncated). The ratio and the
    top-left corner (x uniform over the crop width, then y over its height) are redrawn together until
    the box fits. U(0.3, 1/0.3) is not symmetric under inversion: about 3 boxes in 4 are taller than
    wide. The reference loops forever when nothing fits (a very thin crop); after ``max_tries``
    rejections the last box is clipped to the crop instead.
    """
    crop_h, crop_w = crop_hw
    area = rng.uniform(*area_range) * crop_h * crop_w
    for _ in range(max_tries):
        ratio = rng.uniform(*ratio_range)
        box_w, box_h = int(math.sqrt(area / ratio)), int(math.sqrt(area * ratio))
        x0, y0 = int(rng.integers(crop_w)), int(rng.integers(crop_h))
        if x0 + box_w <= crop_w and y0 + box_h <= crop_h:
            return CutMixBox(y0, x0, box_h, box_w)
    return CutMixBox(0, 0, min(box_h, crop_h), min(box_w, crop_w))
