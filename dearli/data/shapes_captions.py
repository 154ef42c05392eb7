"""Captioned synthetic scenes for pretraining the tiny CLIP (``tools/pretrain_tiny_clip.py``).

Scenes come from the shapes generator (``render_sample``) on a random stream of its own: image
seeds are ``[seed, PRETRAIN_STREAM, step, index, GENERATOR_VERSION]``, five numbers where every
``dearli_shapes_*`` split uses four with a split index in ``SPLITS``, so no evaluation image is ever
drawn here. Each scene gives:

- a caption of the whole scene composed from its segments: class names or synonyms, counts,
  colour and size words, "above"/"below" between things and between the two stuff regions;
- the mask of every segment with a caption naming it (a thing with its colour, size and the stuff
  behind it, or a stuff region). The pretraining tool pairs these with the mask-pooled dense
  features of the scene: region-level recognition is what the zero-shot branch needs.

Every choice is drawn from a numpy Generator, so a (seed, step) pair always gives the same pairs.
"""
import cv2
import numpy as np

from .datasets.shapes import GENERATOR_VERSION, STUFF_CLASSES, THING_CLASSES, render_sample

# Random stream of the pretraining scenes (any value outside SPLITS.values() is disjoint).
PRETRAIN_STREAM = 7
# Dataset category id -> synonyms (the names the text classifier uses, via shapes_metadata()).
SYNONYMS = {c[0]: c[2] for c in THING_CLASSES + STUFF_CLASSES}
THING_IDS = frozenset(c[0] for c in THING_CLASSES)
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")
# (upper OpenCV hue bound, word) over 0..179; saturated colours only (grey-ish ones are named below).
HUE_WORDS = ((8, "red"), (22, "orange"), (35, "yellow"), (80, "green"), (95, "cyan"),
             (130, "blue"), (150, "purple"), (170, "pink"), (180, "red"))
# Fraction of the image a thing covers -> size word (quantiles of the generator's radius range).
SIZE_WORDS = ((0.03, "small"), (0.07, "medium"), (1.0, "large"))
# "A above B" is said only when the centres differ by this fraction of the image height.
ABOVE_MIN_GAP = 0.15

THING_CAPTIONS = ("a photo of a {name}.", "a {size} {name}.", "a {colour} {name}.",
                  "a {size} {colour} {name} on the {stuff}.", "there is a {name} in the picture.",
                  "the {name}.", "a {colour} {name} in front of the {stuff}.", "a {name}")
STUFF_CAPTIONS = ("the {name}.", "a photo of the {name}.", "a patch of {name}.", "{name}",
                  "this is the {name}.", "a view of the {name}.")


def scene_rng(seed, step, index):
    """The Generator of pretraining scene ``index`` of ``step`` (disjoint from every split's)."""
    key = [seed, PRETRAIN_STREAM, step, index, GENERATOR_VERSION]
    return np.random.default_rng(np.random.SeedSequence(key))


def colour_word(pixels_rgb):
    """A colour name for the mean of ``pixels_rgb`` [N,3] uint8."""
    mean = np.asarray(pixels_rgb, dtype=np.float32).reshape(-1, 3).mean(0)
    hue, sat, val = cv2.cvtColor(np.uint8(np.round(mean))[None, None], cv2.COLOR_RGB2HSV)[0, 0]
    if val < 50:
        return "black"
    if sat < 50:
        return "white" if val > 200 else "grey"
    return next(word for bound, word in HUE_WORDS if hue < bound)


def size_word(area_fraction):
    return next(word for bound, word in SIZE_WORDS if area_fraction < bound)


def plural(name):
    return name + ("es" if name.endswith(("s", "x", "ch", "sh")) else "s")


def _pick_name(rng, category_id):
    names = SYNONYMS[category_id]
    return names[int(rng.integers(len(names)))]


def _describe_segments(image, ids, segments):
    """Per segment: dataset id, visible mask, centre (y, x), colour word, area fraction."""
    described = []
    for segment_id, category_id in segments:
        mask = ids == segment_id
        ys, xs = np.nonzero(mask)
        described.append({"category_id": category_id, "mask": mask, "centre": (ys.mean(), xs.mean()),
                          "colour": colour_word(image[mask]), "area": mask.mean()})
    return described


def _stuff_under(described, thing):
    """Name of the stuff region the thing's centre lies in (the one with more of its mask rows)."""
    stuff = [s for s in described if s["category_id"] not in THING_IDS]
    below = [s for s in stuff if s["centre"][0] > thing["centre"][0]]
    return (below or stuff)[0]["category_id"]


def _things_phrase(rng, things):
    """"two circles and a red star": per class a count, or a coloured article for a single one."""
    by_class = {}
    for thing in things:
        by_class.setdefault(thing["category_id"], []).append(thing)
    parts = []
    for category_id, members in by_class.items():
        name = _pick_name(rng, category_id)
        if len(members) == 1:
            parts.append(f"a {members[0]['colour']} {name}" if rng.random() < 0.5 else f"a {name}")
        else:
            parts.append(f"{NUMBER_WORDS[len(members)]} {plural(name)}")
    order = rng.permutation(len(parts))
    parts = [parts[i] for i in order]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _above_phrase(rng, things, image_height):
    """"a star above a circle" for a random pair far enough apart vertically, else None."""
    pairs = [(a, b) for a in things for b in things
             if b["centre"][0] - a["centre"][0] > ABOVE_MIN_GAP * image_height]
    if not pairs:
        return None
    upper, lower = pairs[int(rng.integers(len(pairs)))]
    if rng.random() < 0.5:
        return f"a {_pick_name(rng, upper['category_id'])} above a {_pick_name(rng, lower['category_id'])}"
    return f"a {_pick_name(rng, lower['category_id'])} below a {_pick_name(rng, upper['category_id'])}"


def scene_caption(rng, described, image_height):
    """A caption of a whole scene from its described segments (see the module docstring)."""
    things = [d for d in described if d["category_id"] in THING_IDS]
    upper, lower = sorted((d for d in described if d["category_id"] not in THING_IDS),
                          key=lambda d: d["centre"][0])
    upper_name, lower_name = _pick_name(rng, upper["category_id"]), _pick_name(rng, lower["category_id"])
    things_phrase = _things_phrase(rng, things) if things else None
    clauses = [f"the {upper_name} above the {lower_name}" if rng.random() < 0.5
               else f"the {lower_name} below the {upper_name}"]
    if things_phrase:
        shapes = "a shape" if len(things) == 1 else f"{NUMBER_WORDS[len(things)]} shapes"
        clauses += [f"{things_phrase} in front of the {upper_name} and the {lower_name}",
                    f"a photo of {things_phrase}", f"{shapes}: {things_phrase}"]
        above = _above_phrase(rng, things, image_height)
        if above:
            clauses.append(above)
    first, second = rng.choice(len(clauses), size=min(2, len(clauses)), replace=False)
    return f"{clauses[first]}, {clauses[second]}." if rng.random() < 0.5 else f"{clauses[first]}."


def region_caption(rng, described, segment):
    """A caption naming one described segment (a thing with colour/size/stuff words, or a stuff)."""
    name = _pick_name(rng, segment["category_id"])
    if segment["category_id"] not in THING_IDS:
        return STUFF_CAPTIONS[int(rng.integers(len(STUFF_CAPTIONS)))].format(name=name)
    template = THING_CAPTIONS[int(rng.integers(len(THING_CAPTIONS)))]
    return template.format(name=name, size=size_word(segment["area"]), colour=segment["colour"],
                           stuff=_pick_name(rng, _stuff_under(described, segment)))


def pretraining_scenes(seed, step, num_scenes, image_hw):
    """The scenes of one pretraining step: images [S,h,w,3] uint8, one caption per scene, and per
    scene the visible masks [R,h,w] (bool) of all its segments with one caption each."""
    images, scene_texts, region_masks, region_texts = [], [], [], []
    for index in range(num_scenes):
        rng = scene_rng(seed, step, index)
        image, ids, segments = render_sample(rng, image_hw)
        described = _describe_segments(image, ids, segments)
        images.append(image)
        scene_texts.append(scene_caption(rng, described, image_hw[0]))
        region_masks.append(np.stack([d["mask"] for d in described]))
        region_texts.append([region_caption(rng, described, d) for d in described])
    return np.stack(images), scene_texts, region_masks, region_texts
