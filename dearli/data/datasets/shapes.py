"""``dearli_shapes_*``: a small synthetic panoptic dataset, generated deterministically from a seed.

Each image has two textured stuff regions split by a wavy horizon — the upper one "sky" (smooth
gradient) or "wall" (bricks), the lower one "ground" (blotchy noise) or "water" (ripples) — and 1–4
thing instances: circle, square, triangle, star or cross, of several sizes and rotations, that may
occlude each other (every instance keeps at least 40 % of its pixels visible). The class is the
shape; each class has a colour family, but 30 % of the instances take a random colour and all colours
are jittered, so a model has to learn shapes and textures rather than read off a colour.

Files (COCO panoptic layout, so Detectron2's loader and evaluators read them unchanged) are written
into ``<cache>/shapes/<split>_n<N>_<H>x<W>_seed<S>_v<version>/``: ``images/*.jpg``,
``panoptic/*.png`` (ids encoded as R + 256 G + 256^2 B), ``panoptic.json``, ``semantic/*.png``
(contiguous class ids). ``<cache>`` is ``$DEARLI_CACHE`` or ``~/.cache/dearli``. A split is
generated on first use into a temporary folder that is then renamed, so concurrent processes and
killed runs never see a half-written split.

Registered names (``register_shapes``): ``<prefix>_train_labeled``, ``<prefix>_train_unlabeled``
(images only), ``<prefix>_train_unlabeled_tagged`` (the same images with tags derived from
their ground truth, :mod:`.tagged`) and ``<prefix>_val``. The defaults (``dearli_shapes_*``: 24 labeled, 200 unlabeled,
24 val images of 96x96, seed 0) are registered on import; nothing is generated until a split is loaded.
"""
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from panopticapi.utils import id2rgb

from ...utils.atomic_io import NEW_DIR_MODE, process_umask
from .metadata import build_panoptic_metadata, register_dataset
from .panoptic import load_panoptic_json
from .prepare_utils import paint_segments, segment_records
from .tagged import register_tagged

GENERATOR_VERSION = 1  # bump when the rendering changes: it is part of the cache folder name
# (dataset category id, name, synonyms, OpenCV hue 0..179 of the colour family)
THING_CLASSES = (
    (1, "circle", ("circle", "disc"), 0),
    (2, "square", ("square", "box"), 110),
    (3, "triangle", ("triangle",), 60),
    (4, "star", ("star",), 25),
    (5, "cross", ("cross", "plus sign"), 150),
)
# (dataset category id, name, synonyms); ids deliberately not contiguous with the things'.
STUFF_CLASSES = (
    (11, "sky", ("sky",)),
    (12, "wall", ("wall", "brick wall")),
    (13, "ground", ("ground", "dirt")),
    (14, "water", ("water", "sea")),
)
# Visualizer colours per contiguous class (things, then stuff).
CLASS_COLOURS = ((220, 40, 40), (40, 80, 220), (40, 180, 60), (230, 200, 30), (170, 50, 190),
                 (140, 200, 250), (150, 90, 60), (120, 150, 60), (20, 90, 160))
UPPER_STUFF, LOWER_STUFF = (11, 12), (13, 14)
SPLITS = {"train_labeled": 0, "train_unlabeled": 1, "val": 2}  # name -> index (part of image seeds/ids)
RANDOM_COLOUR_PROB = 0.3
MIN_VISIBLE_FRACTION = 0.4  # of an instance's in-frame area, after later instances are drawn on top
MIN_INSTANCE_AREA = 12  # pixels
JPEG_QUALITY = 95


# ----------------------------------------------------------------------------- metadata
def shapes_categories():
    """COCO-panoptic json categories, in contiguous order (things, then stuff)."""
    things = [{"id": cid, "name": name, "isthing": 1} for cid, name, _, _ in THING_CLASSES]
    stuff = [{"id": cid, "name": name, "isthing": 0} for cid, name, _ in STUFF_CLASSES]
    return [dict(c, color=list(colour)) for c, colour in zip(things + stuff, CLASS_COLOURS)]


def shapes_metadata():
    """Detectron2 metadata (dearli's shared builder) plus ``class_synonyms`` for the text classifier."""
    metadata = build_panoptic_metadata(shapes_categories())
    metadata["class_synonyms"] = [list(c[2]) for c in THING_CLASSES + STUFF_CLASSES]
    metadata["evaluator_type"] = "coco_panoptic_seg"
    return metadata


# ----------------------------------------------------------------------------- rendering
def _hsv_colour(rng, hue, hue_jitter, sat_range, val_range):
    hsv = np.array([[[int(hue + rng.uniform(-hue_jitter, hue_jitter)) % 180,
                      int(rng.uniform(*sat_range)), int(rng.uniform(*val_range))]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng, shape_hw, cell):
    """Blotchy noise in [-1, 1]: coarse random values upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, (shape_hw[0] // cell + 2, shape_hw[1] // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (shape_hw[1], shape_hw[0]), interpolation=cv2.INTER_LINEAR)


def _stuff_texture(category_id, shape_hw, rng):
    """HxWx3 float32 texture of a whole canvas for one stuff class."""
    h, w = shape_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if category_id == 11:  # sky: vertical gradient from a deeper to a paler blue
        top, bottom = _hsv_colour(rng, 105, 8, (120, 200), (170, 230)), _hsv_colour(rng, 100, 8, (30, 90), (220, 255))
        t = (ys / max(h - 1, 1))[..., None]
        texture = top * (1 - t) + bottom * t
    elif category_id == 12:  # wall: bricks with dark mortar lines, alternate rows shifted
        texture = np.broadcast_to(_hsv_colour(rng, 12, 8, (60, 160), (110, 190)), (h, w, 3)).copy()
        brick_h = int(rng.integers(5, 9))
        brick_w = 2 * brick_h + int(rng.integers(0, 5))
        row = (ys // brick_h).astype(np.int64)
        mortar = (ys % brick_h < 1) | ((xs + (row % 2) * brick_w // 2) % brick_w < 1)
        texture[mortar] *= 0.55
    elif category_id == 13:  # ground: earthy colour with coarse blotches
        texture = _hsv_colour(rng, 20, 12, (80, 200), (80, 170)) * (1 + 0.25 * _smooth_noise(rng, shape_hw, 6))[..., None]
    else:  # water: blue with horizontal ripples
        phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(4, 9)
        ripple = np.sin(2 * np.pi * ys / period + phase + 0.8 * np.sin(xs / 7.0))
        texture = _hsv_colour(rng, 108, 8, (150, 255), (110, 200)) * (1 + 0.18 * ripple)[..., None]
    return texture + rng.normal(0, 5, (h, w, 3)).astype(np.float32)


def _shape_polygon(name, radius, angle):
    """Vertices (unit: pixels, centred at 0) of a polygonal shape of circumradius ``radius``."""
    if name == "square":
        corners = np.deg2rad([45, 135, 225, 315])
        points = radius * np.stack([np.cos(corners), np.sin(corners)], 1)
    elif name == "triangle":
        corners = np.deg2rad([90, 210, 330])
        points = radius * np.stack([np.cos(corners), np.sin(corners)], 1)
    elif name == "star":
        corners = np.deg2rad(90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
        points = np.stack([radii * np.cos(corners), radii * np.sin(corners)], 1)
    else:  # cross: a plus sign with arms 0.36 radius wide
        a, b = radius, 0.36 * radius
        points = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                           [-b, b], [-a, b], [-a, -b], [-b, -b]])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T


def _shape_mask(name, centre_xy, radius, angle, shape_hw):
    mask = np.zeros(shape_hw, dtype=np.uint8)
    if name == "circle":
        cv2.circle(mask, (int(round(centre_xy[0])), int(round(centre_xy[1]))), int(round(radius)), 1, -1)
    else:
        points = np.round(_shape_polygon(name, radius, angle) + np.asarray(centre_xy)).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
    return mask.astype(bool)


def _occludes_too_much(new_mask, visible_masks, full_areas):
    """Would drawing ``new_mask`` on top leave an earlier instance with too few visible pixels?"""
    for visible, full_area in zip(visible_masks, full_areas):
        remaining = np.count_nonzero(visible & ~new_mask)
        if remaining < max(MIN_INSTANCE_AREA, MIN_VISIBLE_FRACTION * full_area):
            return True
    return False


def _place_things(rng, shape_hw, max_tries=10):
    """Full masks and class indices of 1–4 instances (drawn in order, later ones on top); a
    placement that hides too much of an earlier instance is re-drawn, at most ``max_tries`` times."""
    side = min(shape_hw)
    masks, classes, visible_masks, full_areas = [], [], [], []
    for _ in range(int(rng.integers(1, 5))):
        class_index = int(rng.integers(len(THING_CLASSES)))
        for _ in range(max_tries):
            radius = rng.uniform(0.07, 0.2) * side
            centre = (rng.uniform(0.5 * radius, shape_hw[1] - 0.5 * radius),
                      rng.uniform(0.5 * radius, shape_hw[0] - 0.5 * radius))
            mask = _shape_mask(THING_CLASSES[class_index][1], centre, radius, rng.uniform(0, 2 * np.pi), shape_hw)
            if mask.sum() >= MIN_INSTANCE_AREA and not _occludes_too_much(mask, visible_masks, full_areas):
                visible_masks = [visible & ~mask for visible in visible_masks] + [mask]
                masks.append(mask)
                classes.append(class_index)
                full_areas.append(int(mask.sum()))
                break
    return masks, classes


def _thing_colour(rng, class_index, shape_hw):
    hue = THING_CLASSES[class_index][3] if rng.random() >= RANDOM_COLOUR_PROB else rng.uniform(0, 180)
    base = _hsv_colour(rng, hue, 10, (140, 255), (140, 255))
    shading = 1 + 0.12 * _smooth_noise(rng, shape_hw, 8)
    return base * shading[..., None]


def render_sample(rng, shape_hw):
    """One synthetic image: (RGB uint8 HxWx3, segment id map int32 HxW, segments [(id, dataset id)])."""
    h, w = shape_hw
    upper, lower = int(rng.choice(UPPER_STUFF)), int(rng.choice(LOWER_STUFF))
    xs = np.arange(w, dtype=np.float32)
    horizon = h * rng.uniform(0.35, 0.65) + h * rng.uniform(0, 0.08) * np.sin(
        2 * np.pi * xs / rng.uniform(0.5 * w, 1.5 * w) + rng.uniform(0, 2 * np.pi))
    is_lower = np.arange(h, dtype=np.float32)[:, None] >= horizon[None, :]
    image = np.where(is_lower[..., None], _stuff_texture(lower, shape_hw, rng), _stuff_texture(upper, shape_hw, rng))
    ids = np.where(is_lower, 2, 1).astype(np.int32)
    segments = [(1, upper), (2, lower)]
    masks, classes = _place_things(rng, shape_hw)
    for segment_id, (mask, class_index) in enumerate(zip(masks, classes), start=3):
        image[mask] = _thing_colour(rng, class_index, shape_hw)[mask]
        ids[mask] = segment_id
        segments.append((segment_id, THING_CLASSES[class_index][0]))
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    present = set(np.unique(ids).tolist())
    return image, ids, [s for s in segments if s[0] in present]


# ----------------------------------------------------------------------------- writing a split
def split_dirname(split, num_images, image_hw, seed):
    return f"{split}_n{num_images}_{image_hw[0]}x{image_hw[1]}_seed{seed}_v{GENERATOR_VERSION}"


def _write_image_files(out_dir, stem, image, ids, semantic):
    cv2.imwrite(str(out_dir / "images" / f"{stem}.jpg"), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    cv2.imwrite(str(out_dir / "panoptic" / f"{stem}.png"), id2rgb(ids)[:, :, ::-1])
    cv2.imwrite(str(out_dir / "semantic" / f"{stem}.png"), semantic)


def _write_split(out_dir, split, num_images, image_hw, seed):
    """Render ``num_images`` images of ``split`` and write every file into ``out_dir``."""
    categories = shapes_categories()
    to_contiguous = {c["id"]: i for i, c in enumerate(categories)}
    for sub in ("images", "panoptic", "semantic"):
        (out_dir / sub).mkdir(parents=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index, GENERATOR_VERSION]))
        image, ids, segments = render_sample(rng, image_hw)
        image_id, stem = SPLITS[split] * 1_000_000 + index, f"{split}_{index:06d}"
        category_of = dict(segments)
        semantic = paint_segments(ids, {i: to_contiguous[c] for i, c in category_of.items()}, 255)
        _write_image_files(out_dir, stem, image, ids, semantic)
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": image_hw[0], "width": image_hw[1]})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                            "segments_info": segment_records(ids, category_of)})
    panoptic = {"images": images, "annotations": annotations, "categories": categories}
    (out_dir / "panoptic.json").write_text(json.dumps(panoptic, sort_keys=True))


def ensure_split(split_dir, split, num_images, image_hw, seed):
    """Generate ``split_dir`` unless it exists; atomic (temporary folder + rename), safe to race."""
    split_dir = Path(split_dir)
    if split_dir.is_dir():
        return split_dir
    split_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{split_dir.name}.tmp-", dir=split_dir.parent))
    tmp_dir.chmod(NEW_DIR_MODE & ~process_umask())  # a mkdir() folder, not mkdtemp's private 0700
    try:
        _write_split(tmp_dir, split, num_images, image_hw, seed)
        os.rename(tmp_dir, split_dir)
    except OSError:
        if not split_dir.is_dir():  # a lost race leaves the winner's complete folder; anything else is real
            raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return split_dir


# ----------------------------------------------------------------------------- registration
def shapes_cache_root(cache_dir=None):
    return Path(cache_dir or os.environ.get("DEARLI_CACHE") or Path.home() / ".cache" / "dearli") / "shapes"


def _load_split(split_dir, split, num_images, image_hw, seed, labeled, metadata):
    ensure_split(split_dir, split, num_images, image_hw, seed)
    if labeled:
        return load_panoptic_json(str(split_dir / "panoptic.json"), str(split_dir / "images"),
                                  str(split_dir / "panoptic"), metadata, str(split_dir / "semantic"))
    images = json.loads((split_dir / "panoptic.json").read_text())["images"]
    return [{"file_name": str(split_dir / "images" / im["file_name"]), "image_id": im["id"],
             "height": im["height"], "width": im["width"]} for im in images]


def register_shapes(prefix="dearli_shapes", num_labeled=24, num_unlabeled=200, num_val=24,
                    image_size=96, seed=0, cache_dir=None):
    """Register ``<prefix>_train_labeled``, ``<prefix>_train_unlabeled`` and ``<prefix>_val``.

    ``image_size`` is an int (square) or (height, width). Files are generated when a split is first
    loaded. Registering an existing name replaces it. Returns {registered name: split folder}.
    """
    image_hw = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    root = shapes_cache_root(cache_dir)
    registered = {}
    for split, num_images in (("train_labeled", num_labeled), ("train_unlabeled", num_unlabeled), ("val", num_val)):
        if num_images < 1:
            raise ValueError(f"register_shapes: the {split} split needs at least 1 image, got {num_images}")
        name, labeled = f"{prefix}_{split}", split != "train_unlabeled"
        split_dir = root / split_dirname(split, num_images, image_hw, seed)
        metadata = shapes_metadata()
        paths = {"image_root": str(split_dir / "images"), "panoptic_root": str(split_dir / "panoptic"),
                 "panoptic_json": str(split_dir / "panoptic.json"), "sem_seg_root": str(split_dir / "semantic")}
        load = functools.partial(_load_split, split_dir, split, num_images, image_hw, seed, labeled, metadata)
        register_dataset(name, load, dict(metadata, **paths))
        registered[name] = split_dir
        if not labeled:  # every split's json holds ground truth: the unlabeled images' gives their tags
            ground_truth = functools.partial(_load_split, split_dir, split, num_images, image_hw, seed, True, metadata)
            register_tagged(f"{name}_tagged", ground_truth, dict(metadata, **paths))
    return registered


register_shapes()
