"""Colour augmentations against the reference's own implementations, run here as oracles.

Labeled view: detectron2's ``ColorAugSSDTransform`` (PointRend project), as the reference uses it.
Unlabeled strong view: torchvision ``transforms.v2.ColorJitter`` / ``Grayscale`` on a PIL image and
PIL's ``GaussianBlur(radius=sigma)``, as the reference applies them. The random draws differ (dearli
draws from a seeded numpy generator), so the oracles are fed the same parameters.
"""
import numpy as np
import pytest
import torch
from detectron2.projects.point_rend import color_augmentation
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from dearli.config import load_config
from dearli.data.mappers import augmentation as aug

STRONG = aug.StrongColorSpec.from_config(load_config())  # INPUT.UNLABELED defaults


def _photo(seed, size=(24, 32)):
    """A smooth RGB uint8 image with saturated and grey parts (more like a photo than noise)."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    base = np.stack([xx * 255 / size[1], yy * 255 / size[0], (xx + yy) * 255 / sum(size)], -1)
    return np.clip(base + g.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


class ScriptedRandom:
    """Stands in for the ``random`` module of detectron2's transform: plays back given values."""

    def __init__(self, values):
        self.values = list(values)

    def randrange(self, n):
        return self.values.pop(0)

    def uniform(self, low, high):
        return self.values.pop(0)

    def randint(self, low, high):
        return self.values.pop(0)


def _detectron2_ssd(image_rgb, params: aug.SSDColorParams, monkeypatch):
    """The reference transform with its coin flips and values scripted from ``params``."""
    script = [1, params.brightness_delta] if params.brightness_delta is not None else [0]
    script.append(1 if params.contrast_first else 0)
    ops = {
        "contrast": [1, params.contrast_alpha] if params.contrast_alpha is not None else [0],
        "saturation": [1, params.saturation_alpha] if params.saturation_alpha is not None else [0],
        "hue": [1, params.hue_delta] if params.hue_delta is not None else [0],
    }
    order = ("contrast", "saturation", "hue") if params.contrast_first else ("saturation", "hue", "contrast")
    for name in order:
        script += ops[name]
    scripted = ScriptedRandom(script)
    monkeypatch.setattr(color_augmentation, "random", scripted)
    out = color_augmentation.ColorAugSSDTransform(img_format="RGB").apply_image(image_rgb.copy())
    assert scripted.values == []
    return out


@pytest.mark.parametrize("contrast_first", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_ssd_colour_equals_detectron2_per_op_transform(seed, contrast_first, monkeypatch):
    image = _photo(seed)
    g = np.random.default_rng(100 + seed)
    full = aug.SSDColorParams(float(g.uniform(-32, 32)), float(g.uniform(0.5, 1.5)), float(g.uniform(0.5, 1.5)),
                              int(g.integers(-18, 19)), contrast_first)
    # Every subset of the ops: saturation and hue together is where one HSV round trip differs.
    for keep in range(16):
        params = aug.SSDColorParams(
            full.brightness_delta if keep & 1 else None, full.contrast_alpha if keep & 2 else None,
            full.saturation_alpha if keep & 4 else None, full.hue_delta if keep & 8 else None, contrast_first,
        )
        expected = _detectron2_ssd(image, params, monkeypatch)
        assert np.array_equal(aug.apply_ssd_color(image, params), expected), params


def _reference_strong_view(image_chw: torch.Tensor, params: aug.StrongColorParams) -> torch.Tensor:
    """ColorJitter with each factor pinned (range (f, f)) and its op order taken from a seeded
    torch generator, then Grayscale, then PIL's GaussianBlur, all on a PIL image."""
    pil = Image.fromarray(image_chw.permute(1, 2, 0).numpy())
    pinned = [(f, f) if f is not None else None for f in (params.brightness, params.contrast, params.saturation)]
    hue = (params.hue, params.hue) if params.hue is not None else None
    jitter = v2.ColorJitter(brightness=pinned[0], contrast=pinned[1], saturation=pinned[2], hue=hue)
    torch.manual_seed(0)
    order = tuple(torch.randperm(4).tolist())  # ColorJitter's first draw under the same seed
    torch.manual_seed(0)
    pil = jitter(pil)
    if params.grayscale:
        pil = v2.Grayscale(num_output_channels=3)(pil)
    if params.blur_sigma is not None:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=params.blur_sigma))
    return order, torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("seed", range(6))
def test_strong_view_equals_torchvision_and_pil_on_pil_images(seed):
    image = torch.from_numpy(_photo(seed, size=(30, 40))).permute(2, 0, 1).contiguous()
    params = aug.sample_strong_color(STRONG, np.random.default_rng(seed))
    grayscale, blur_sigma = seed % 3 == 0, (None, 0.1, 1.7)[seed % 3]
    factors = (params.brightness, params.contrast, params.saturation, params.hue)
    order, expected = _reference_strong_view(image, aug.StrongColorParams(params.order, *factors, grayscale, blur_sigma))
    out = aug.apply_strong_color(image, aug.StrongColorParams(order, *factors, grayscale, blur_sigma))
    assert out.dtype == torch.uint8 and out.shape == image.shape
    assert torch.equal(out, expected)
