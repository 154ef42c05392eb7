"""DEARLi meta-architecture on the tiny CPU config: build, train step, evaluators, teacher API, errors."""
import math

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, ImageList, Instances

from dearli.data.datasets import shapes
from dearli.modeling.inference import panoptic_inference
from helpers.tiny import tiny_cfg

NUM_CLASSES = 9  # the shapes dataset: 5 things + 4 stuff


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def _sample(seed, size=(64, 64), classes=(0, 6), masks_type="tensor"):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
    masks = torch.zeros(len(classes), *size, dtype=torch.bool)
    for i in range(len(classes)):
        top, left = i * size[0] // 4, i * size[1] // 4
        masks[i, top:top + size[0] // 2, left:left + size[1] // 2] = True
    instances = Instances(size, gt_classes=torch.tensor(classes, dtype=torch.int64),
                          gt_masks=BitMasks(masks) if masks_type == "bitmasks" else masks)
    valid = torch.ones(size, dtype=torch.bool)
    return {"file_name": f"sample{seed}.jpg", "image": image, "instances": instances, "valid_mask": valid, "sample_seed": seed}


def test_tiny_model_builds_with_a_frozen_backbone(model):
    assert type(model).__name__ == "DEARLi"
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.sem_seg_head.parameters())
    assert model.void_embedding.weight.shape == (1, 64)
    assert "pixel_mean" not in model.state_dict() and "criterion.empty_weight" not in model.state_dict()


def test_training_step_reaches_decoder_and_head_but_not_the_backbone(model):
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model([_sample(1), _sample(2, masks_type="bitmasks")])
    expected = {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.sem_seg_head.pixel_decoder, model.sem_seg_head.predictor, model.void_embedding):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.backbone.parameters())


def test_pseudo_labeled_losses_are_prefixed_and_weighted(model):
    model.train()
    labeled, pseudo = [_sample(3)], [_sample(4, classes=(2, 2, 7))]
    pseudo[0]["segment_weights"] = torch.tensor([0.9, 0.5, 0.7])
    model.pseudo_loss_weight = 0.5
    try:
        losses = model({"labeled": labeled, "pseudo_labeled": pseudo})
        alone = model.losses(pseudo, seed_stream=1)
        only_pseudo = model({"pseudo_labeled": pseudo})
    finally:
        model.pseudo_loss_weight = 1.0
    assert set(losses) == set(alone) | {"pseudo_" + k for k in alone}
    for key, value in alone.items():
        assert losses["pseudo_" + key].item() == pytest.approx(0.5 * value.item(), rel=1e-6)
        assert only_pseudo["pseudo_" + key].item() == pytest.approx(0.5 * value.item(), rel=1e-6)
    assert losses["loss_ce"].item() == pytest.approx(model(labeled)["loss_ce"].item(), rel=1e-6)


def test_training_batch_sets_are_named(model):
    model.train()
    with pytest.raises(KeyError, match="unlabeled.*teacher"):
        model({"labeled": [_sample(1)], "unlabeled": [_sample(2)]})
    with pytest.raises(ValueError, match="no samples"):
        model({"labeled": [], "pseudo_labeled": []})


def test_gt_masks_of_the_wrong_type_or_size_are_named(model):
    model.train()
    bad = _sample(5)
    bad["instances"].gt_masks = bad["instances"].gt_masks.float()
    with pytest.raises(TypeError, match=r"instances.gt_masks of 'sample5.jpg'.*float32"):
        model([bad])
    small = _sample(6)
    small["instances"] = Instances((32, 32), gt_classes=torch.tensor([1]), gt_masks=torch.ones(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"sample6.jpg.*\(32, 32\).*\(64, 64\)"):
        model([small])


def test_wrong_class_count_names_both_values():
    with pytest.raises(ValueError, match=r"NUM_CLASSES=5.*dearli_shapes_train_labeled.*9 classes"):
        build_model(tiny_cfg(**{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 5}))


def test_input_too_small_for_the_backbone_names_size_and_key(model):
    model.eval()
    model.size_divisibility = 0
    try:
        with pytest.raises(ValueError, match=r"\(20, 20\).*SIZE_DIVISIBILITY"):
            model([{"image": torch.zeros(3, 20, 20, dtype=torch.uint8)}])
    finally:
        model.size_divisibility = 32


def test_eval_outputs_are_at_the_original_size(model):
    model.eval()
    with torch.no_grad():
        [out] = model([{"image": torch.zeros(3, 64, 48, dtype=torch.uint8), "height": 100, "width": 75}])
    assert out["sem_seg"].shape == (NUM_CLASSES, 100, 75)
    pan, info = out["panoptic_seg"]
    assert pan.shape == (100, 75) and pan.dtype == torch.int32 and isinstance(info, list)


def test_predict_panoptic_is_panoptic_inference_at_canvas_size(model):
    model.eval()
    images = [_sample(7, size=(70, 50))["image"], _sample(8, size=(64, 64))["image"]]
    results = model.predict_panoptic(images, zero_shot=False, object_threshold=0.0, overlap_threshold=0.3)
    assert [r[0].shape for r in results] == [(70, 50), (64, 64)]
    # Same numbers through the evaluation path (64x64 needs no resize) and through an ImageList.
    with torch.no_grad():
        batch = model.preprocess_images(images)
        _, outputs = model.predict_raw(batch.tensor)
    masks = torch.nn.functional.interpolate(outputs["pred_masks"], size=batch.tensor.shape[-2:], mode="bilinear")
    expected = panoptic_inference(outputs["pred_logits"][1], masks[1, :, :64, :64], model.thing_ids, 0.0, 0.3)
    assert torch.equal(results[1][0], expected[0]) and results[1][1] == expected[1]
    padded = ImageList.from_tensors(images, 32)
    again = model.predict_panoptic(padded, zero_shot=False, object_threshold=0.0, overlap_threshold=0.3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, results))


def test_zero_shot_ensemble_with_alpha_zero_keeps_the_decoder_distribution(model):
    model.eval()
    images = [_sample(9)["image"]]
    plain = model.predict_panoptic(images, zero_shot=False, object_threshold=0.0, overlap_threshold=0.3)
    ensembled = model.predict_panoptic(images, zero_shot=True, object_threshold=0.0, overlap_threshold=0.3)
    assert torch.equal(plain[0][0], ensembled[0][0])
    model.ensemble_alpha = 0.9
    try:
        with torch.no_grad():
            scores, _ = model._scores_and_masks(model.preprocess_images(images), zero_shot=True)
            raw = model.predict_raw(model.preprocess_images(images).tensor)[1]["pred_logits"]
    finally:
        model.ensemble_alpha = 0.0
    assert not torch.allclose(scores.softmax(-1), raw.softmax(-1), atol=1e-3)


def test_standard_evaluators_accept_the_outputs(model, tmp_path):
    shapes.register_shapes(prefix="dearli_test_eval", num_labeled=1, num_unlabeled=1, num_val=2, image_size=80,
                           cache_dir=tmp_path / "cache")
    dataset = "dearli_test_eval_val"
    mapper = DatasetMapper(tiny_cfg(), is_train=False)
    inputs = [mapper(d) for d in DatasetCatalog.get(dataset)]
    model.eval()
    model.overlap_threshold = 0.3  # random weights: many overlapping masks
    try:
        with torch.no_grad():
            outputs = model(inputs)
    finally:
        model.overlap_threshold = 0.8
    assert any(len(o["panoptic_seg"][1]) for o in outputs)
    panoptic = COCOPanopticEvaluator(dataset, output_dir=str(tmp_path / "pan"))
    semantic = SemSegEvaluator(dataset, distributed=False, output_dir=str(tmp_path / "sem"))
    for evaluator in (panoptic, semantic):
        evaluator.reset()
        evaluator.process(inputs, outputs)
    pq, miou = panoptic.evaluate()["panoptic_seg"]["PQ"], semantic.evaluate()["sem_seg"]["mIoU"]
    assert math.isfinite(pq) and 0 <= pq <= 100 and math.isfinite(miou) and 0 <= miou <= 100


def test_one_student_forward_for_both_sets_equals_two_when_canvases_agree(model, monkeypatch):
    model.train()
    labeled, pseudo = [_sample(5), _sample(6)], [_sample(7, classes=(1, 3, 8))]
    forwards = []
    predict_raw = model.predict_raw
    monkeypatch.setattr(model, "predict_raw", lambda images: forwards.append(len(images)) or predict_raw(images))
    joint = model({"labeled": labeled, "pseudo_labeled": pseudo})
    assert forwards == [3]
    separate = {**model.losses(labeled, 0), **{"pseudo_" + k: v for k, v in model.losses(pseudo, 1).items()}}
    assert set(joint) == set(separate)
    for key in separate:
        assert joint[key].item() == pytest.approx(separate[key].item(), rel=1e-5, abs=1e-7), key
    forwards.clear()
    model({"labeled": labeled, "pseudo_labeled": [_sample(8, size=(96, 64))]})  # another canvas: two passes
    assert forwards == [2, 1]
