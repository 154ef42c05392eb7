"""Captioned pretraining scenes of the tiny CLIP: disjoint from the evaluation splits, deterministic,
and captions that name what is in the picture."""
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from dearli.data.datasets import shapes
from dearli.data.shapes_captions import (PRETRAIN_STREAM, SYNONYMS, THING_IDS, colour_word, plural,
                                         pretraining_scenes, scene_rng)


def test_the_pretraining_stream_is_no_split_of_the_shapes_datasets():
    assert PRETRAIN_STREAM not in shapes.SPLITS.values()
    # Split images use 4-number seeds [seed, split, index, version]; pretraining scenes use 5.
    split_key = [0, shapes.SPLITS["val"], 0, shapes.GENERATOR_VERSION]
    split_state = np.random.SeedSequence(split_key).generate_state(4)
    assert not np.array_equal(scene_rng(0, 0, 0).bit_generator.seed_seq.generate_state(4), split_state)


def test_no_pretraining_scene_equals_a_validation_image():
    val_images = [shapes.render_sample(np.random.default_rng(np.random.SeedSequence(
        [0, shapes.SPLITS["val"], i, shapes.GENERATOR_VERSION])), (96, 96))[0] for i in range(24)]
    assert len(DatasetCatalog.get("dearli_shapes_val")) == 24  # the split rendered above is all of val
    for step in range(3):
        for index in range(4):
            scene = shapes.render_sample(scene_rng(0, step, index), (96, 96))[0]
            assert not any(np.array_equal(scene, v) for v in val_images)


def test_scenes_are_a_function_of_seed_and_step():
    first = pretraining_scenes(3, 5, 2, (96, 96))
    again = pretraining_scenes(3, 5, 2, (96, 96))
    other = pretraining_scenes(3, 6, 2, (96, 96))
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1] and first[3] == again[3]
    assert all(np.array_equal(a, b) for a, b in zip(first[2], again[2]))
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (2, 96, 96, 3) and len(first[1]) == 2


def _names_in(text):
    """Dataset ids of every synonym found in ``text`` ("brick wall" also contains "wall")."""
    return {cid for cid, names in SYNONYMS.items() for name in names if name in text}


def test_each_region_has_its_segment_mask_and_a_caption_naming_its_class():
    seed, step = 11, 2
    images, _, region_masks, region_texts = pretraining_scenes(seed, step, 4, (96, 96))
    for index in range(4):
        image, ids, segments = shapes.render_sample(scene_rng(seed, step, index), (96, 96))
        np.testing.assert_array_equal(images[index], image)
        assert len(region_masks[index]) == len(region_texts[index]) == len(segments)
        for (segment_id, category_id), mask, text in zip(segments, region_masks[index], region_texts[index]):
            np.testing.assert_array_equal(mask, ids == segment_id)
            named = _names_in(text)
            assert category_id in named, text
            if category_id in THING_IDS:  # a thing caption may name the stuff behind it, no other thing
                assert named & THING_IDS == {category_id}, text
            else:
                assert named == {category_id}, text


@pytest.mark.parametrize("rgb, word", [((250, 10, 10), "red"), ((20, 200, 30), "green"),
                                       ((20, 40, 230), "blue"), ((240, 220, 20), "yellow"),
                                       ((128, 128, 128), "grey"), ((250, 250, 250), "white"),
                                       ((10, 10, 10), "black")])
def test_colour_words(rgb, word):
    assert colour_word(np.array([rgb], dtype=np.uint8)) == word


def test_plurals():
    assert [plural(n) for n in ("cross", "box", "circle", "plus sign")] == \
        ["crosses", "boxes", "circles", "plus signs"]
