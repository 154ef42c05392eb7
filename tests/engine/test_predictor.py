"""DEARLiPredictor on the real sample images with a tiny random model loaded from a checkpoint."""
import numpy as np
import pytest
import torch
from detectron2.data.detection_utils import read_image

from dearli.engine.predictor import DEARLiPredictor, normalise_class_list
from dearli.engine.trainer import DEARLiTrainer
from helpers.tiny import tiny_cfg
from helpers.tiny_weights import save_tiny_checkpoint

TINY_NUM_CLASSES = 9  # 5 shapes + 4 textures of dearli_shapes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tiny_cfg(), tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture
def predictor(checkpoint, tmp_path):
    # Overlap threshold 0: a random model's overlapping masks still give segments to check.
    return DEARLiPredictor(tiny_cfg(
        MODEL__WEIGHTS=str(checkpoint), MODEL__CLIP_HEAD__CACHE_DIR=str(tmp_path),
        MODEL__MASK_FORMER__TEST__OVERLAP_THRESHOLD=0.0,
    ))


@pytest.fixture(scope="module")
def sample_images(shared_data):
    paths = sorted((shared_data / "coco_panoptic_sample" / "images").glob("*.jpg"))[:1]
    paths += sorted((shared_data / "ade20k_semantic_sample" / "images").glob("*.jpg"))[:1]
    assert len(paths) == 2, f"sample images missing under {shared_data}"
    return {path.name: read_image(str(path), format="RGB") for path in paths}


def test_loads_model_weights_and_is_in_eval_mode(predictor, checkpoint):
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    loaded = predictor.model.state_dict()
    assert saved, "the checkpoint holds no tensors"
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name
    assert not predictor.model.training


def test_weights_differ_without_checkpoint(predictor):
    # Guards the test above: a predictor built without MODEL.WEIGHTS has other decoder weights.
    fresh = DEARLiPredictor(tiny_cfg()).model.state_dict()
    name = "sem_seg_head.predictor.query_feat.weight"
    assert not torch.equal(fresh[name], predictor.model.state_dict()[name])


def test_random_frozen_clip_is_the_one_the_trainer_built(tmp_path):
    # A frozen CLIP without pretrained weights is not saved in checkpoints, so the predictor must
    # rebuild the trainer's random CLIP from cfg.SEED; the caller's generators are left untouched.
    cfg = tiny_cfg(OUTPUT_DIR=str(tmp_path))
    trainer_clip = DEARLiTrainer(cfg).model.backbone.clip_model.state_dict()
    torch.manual_seed(7)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(7)
    predictor_clip = DEARLiPredictor(cfg).model.backbone.clip_model.state_dict()
    assert torch.equal(torch.rand(3), expected_next_draw)
    assert trainer_clip.keys() == predictor_clip.keys()
    for name, tensor in trainer_clip.items():
        assert torch.equal(tensor, predictor_clip[name]), name


def test_outputs_have_the_input_size(predictor, sample_images):
    for name, image in sample_images.items():
        outputs = predictor(image)
        height, width = image.shape[:2]
        pan_seg, segments_info = outputs["panoptic_seg"]
        assert tuple(pan_seg.shape) == (height, width), name
        assert tuple(outputs["sem_seg"].shape) == (TINY_NUM_CLASSES, height, width), name
        ids = {s["id"] for s in segments_info}
        assert ids and set(torch.unique(pan_seg).tolist()) - {0} == ids, name
        assert all(0 <= s["category_id"] < TINY_NUM_CLASSES for s in segments_info), name


def test_model_sees_the_image_resized_to_min_size_test(predictor, sample_images, monkeypatch):
    seen = []
    inference = predictor.model.inference
    monkeypatch.setattr(predictor.model, "inference", lambda inputs: seen.append(inputs) or inference(inputs))
    image = sample_images["000000142238.jpg"]  # 427 x 640
    predictor(image)
    (sample,) = seen[0]
    # ResizeShortestEdge(64, max 128): short side 427 -> 64, long side 640 * 64 / 427 = 95.9 -> 96.
    assert tuple(sample["image"].shape) == (3, 64, 96)
    assert sample["image"].dtype == torch.uint8
    assert (sample["height"], sample["width"]) == (427, 640)


def test_set_classes_changes_the_number_of_classes(predictor, sample_images):
    image = sample_images["ADE_val_00000001.jpg"]
    metadata = predictor.set_classes(["person", ["couch", "sofa"], "tv", "floor"], stuff=["floor"])
    outputs = predictor(image)
    assert outputs["sem_seg"].shape[0] == 4 == predictor.num_classes
    assert metadata.stuff_classes == ["person", "couch", "tv", "floor"] == predictor.metadata.thing_classes
    assert metadata.class_synonyms[1] == ["couch", "sofa"]
    assert predictor.model.thing_ids == {0, 1, 2}
    pan_seg, segments_info = outputs["panoptic_seg"]
    assert segments_info, "the tiny model predicts at least one segment on this image"
    for segment in segments_info:
        assert 0 <= segment["category_id"] < 4
        assert segment["isthing"] == (segment["category_id"] != 3)


def test_set_classes_with_text_embeddings_encodes_every_synonym(checkpoint, tmp_path):
    # The method's CLIP text embeddings (of the tiny random text tower here).
    text_predictor = DEARLiPredictor(tiny_cfg(
        MODEL__WEIGHTS=str(checkpoint), MODEL__CLIP_HEAD__CLASS_EMBEDDING="text",
        MODEL__CLIP_HEAD__CACHE_DIR=str(tmp_path),
    ))
    text_predictor.set_classes([["dog", "puppy"], "grass", ["sky", "heavens", "air"]])
    rows, num_synonyms = text_predictor.model.classifier()
    assert num_synonyms == [2, 1, 3]
    assert rows.shape == (2 + 1 + 3 + 1, 64)  # one row per synonym + the void row
    assert torch.allclose(rows.norm(dim=-1), torch.ones(7), atol=1e-5)


def test_thing_or_stuff_defaults_follow_the_current_metadata(predictor):
    # shapes: "circle" is a thing, "sky" is stuff; an unknown name is a thing unless listed as stuff.
    predictor.set_classes(["circle", "sky", "dog", "lawn"], stuff=["Lawn"])
    assert predictor.model.thing_ids == {0, 2}
    assert predictor.metadata.thing_dataset_id_to_contiguous_id == {0: 0, 2: 2}


@pytest.mark.parametrize("classes, message", [
    ([], "the class list is empty"),
    (["dog", "cat", "dog"], "duplicate class name 'dog' in the class list (classes 1 and 3)"),
    ([["dog", "puppy"], "Puppy"], "duplicate class name 'Puppy'"),
    (["dog", " "], "class 2 of the class list has an empty name"),
    ([[]], "class 1 of the class list has an empty name"),
])
def test_bad_class_lists_are_rejected_and_leave_the_model_unchanged(predictor, classes, message):
    with pytest.raises(ValueError) as error:
        predictor.set_classes(classes)
    assert message in str(error.value)
    assert predictor.num_classes == TINY_NUM_CLASSES
    assert predictor.metadata.name == "dearli_shapes_train_labeled"


def test_more_classes_than_orthogonal_rows_is_an_error_before_any_change(predictor):
    with pytest.raises(ValueError, match=r"needs NUM_CLASSES \(65\) <= EMBED_DIM \(64\)"):
        predictor.set_classes([f"class {i}" for i in range(65)])
    assert predictor.num_classes == TINY_NUM_CLASSES


def test_stuff_names_must_be_classes(predictor):
    with pytest.raises(ValueError, match=r"stuff classes \['grass'\] are not in the class list \['dog'\]"):
        predictor.set_classes(["dog"], stuff=["grass"])


def test_class_list_must_not_be_one_string():
    with pytest.raises(TypeError, match="not one string"):
        normalise_class_list("dog,cat")


def test_names_are_stripped():
    assert normalise_class_list([" dog ", ["cat ", " kitty"]]) == [["dog"], ["cat", "kitty"]]


@pytest.mark.parametrize("image, message", [
    (torch.zeros(8, 8, 3, dtype=torch.uint8), "RGB image array HxWx3"),
    (np.zeros((8, 8), "uint8"), "RGB image array HxWx3"),
    (np.zeros((8, 8, 3), "float32"), "uint8 image, got float32"),
])
def test_bad_images_are_rejected(predictor, image, message):
    with pytest.raises(ValueError, match=message):
        predictor(image)
