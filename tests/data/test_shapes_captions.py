"""Captioned pretraining scenes of the tiny CLIP: disjoint from the evaluation splits, deterministic,
and captions that name what is in the picture."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from dearli.data import shapes
from dearli.data.shapes_captions import (PRETRAIN_STREAM, SYNONYMS, colour_word, plural,
                                         pretraining_pairs, scene_rng)


def test_the_pretraining_stream_is_no_split_of_the_shapes_datasets():
    assert PRETRAIN_STREAM not in shapes.SPLITS.values()
    # Split images use 4-number seeds [seed, split, index, version]; pretraining scenes use 5.
    split_state = np.random.SeedSequence([0, shapes.SPLITS["val"], 0, shapes.GENERATOR_VERSION]).generate_state(4)
    assert not np.array_equal(scene_rng(0, 0, 0).bit_generator.seed_seq.generate_state(4), split_state)


def test_no_pretraining_scene_equals_a_validation_image():
    val_images = [shapes.render_sample(np.random.default_rng(np.random.SeedSequence(
        [0, shapes.SPLITS["val"], i, shapes.GENERATOR_VERSION])), (96, 96))[0] for i in range(24)]
    assert len(DatasetCatalog.get("dearli_shapes_val")) == 24  # the split rendered above is all of val
    for step in range(3):
        for index in range(4):
            scene = shapes.render_sample(scene_rng(0, step, index), (96, 96))[0]
            assert not any(np.array_equal(scene, v) for v in val_images)


def test_pairs_are_a_function_of_seed_and_step():
    first = pretraining_pairs(3, 5, 2, 2, (96, 96), 64, 32)
    again = pretraining_pairs(3, 5, 2, 2, (96, 96), 64, 32)
    other = pretraining_pairs(3, 6, 2, 2, (96, 96), 64, 32)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[2], again[2])
    assert first[1] == again[1] and first[3] == again[3]
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (2, 64, 64, 3) and first[2].shape == (4, 32, 32, 3)
    assert len(first[1]) == 2 and len(first[3]) == 4


def test_every_crop_caption_names_a_class_of_the_scene():
    all_names = {name: cid for cid, names in SYNONYMS.items() for name in names}
    for step in range(3):
        _, _, _, crop_texts = pretraining_pairs(0, step, 3, 3, (96, 96), 64, 32)
        for text in crop_texts:
            # "brick wall" and "plus sign" contain other words; the longest match is the class named
            named = [n for n in all_names if n in text]
            assert named, text


@pytest.mark.parametrize("rgb, word", [((250, 10, 10), "red"), ((20, 200, 30), "green"),
                                       ((20, 40, 230), "blue"), ((240, 220, 20), "yellow"),
                                       ((128, 128, 128), "grey"), ((250, 250, 250), "white"),
                                       ((10, 10, 10), "black")])
def test_colour_words(rgb, word):
    assert colour_word(np.array([rgb], dtype=np.uint8)) == word


def test_plurals():
    assert [plural(n) for n in ("cross", "box", "circle", "plus sign")] == \
        ["crosses", "boxes", "circles", "plus signs"]
