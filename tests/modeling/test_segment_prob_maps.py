"""Per-segment probability maps of the panoptic inference (for the teacher's SAM refinement): a
hand-computed case, a loop oracle on random cases, segments unchanged, and the teacher's
``predict_panoptic(..., with_prob_maps=True)`` at the stride-4 mask resolution."""
import pytest
import torch
from detectron2.modeling import build_model

from dearli.modeling.inference import panoptic_segments, thing_table_of, trim_segments
from dearli.modeling.meta_arch import _upsample
from helpers.tiny import tiny_cfg


def test_hand_case_thing_map_and_merged_stuff_max():
    # Classes: 0 thing, 1 stuff; column 2 = void. q0 thing, q1 and q2 stuff of class 1, q3 void.
    class_logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 9.0, 0], [0, 0, 9.0]])
    logits = torch.full((4, 2, 3), -4.0)
    logits[0, 0, 0] = 4.0  # the thing holds pixel (0, 0)
    logits[1, 0, 1:] = 3.0  # q1 holds (0, 1), (0, 2); weaker than q2 at (0, 2)
    logits[2, :, 2] = 5.0  # q2 holds column 2
    logits[2, 1, 0] = 1.0  # q2's map also rises at (1, 0), where it wins too
    logits[3] = 8.0  # void: never a segment, never in a map
    table = thing_table_of({0}, 2, "cpu")
    [out] = trim_segments([panoptic_segments(class_logits, logits, table, 0.0, 0.0, prob_logits=logits)])
    assert out.seg.tolist() == [[1, 2, 2], [2, 0, 2]]
    assert out.classes.tolist() == [0, 1] and out.isthing.tolist() == [True, False]
    sig = torch.sigmoid
    expected_stuff = torch.maximum(sig(logits[1]), sig(logits[2]))
    assert torch.equal(out.prob_maps[0], sig(logits[0])) and torch.equal(out.prob_maps[1], expected_stuff)
    assert out.prob_maps.shape == (2, 2, 3) and out.prob_maps.dtype == torch.float32


def _random_case(seed, num_queries=12, num_classes=4, size=(10, 14)):
    g = torch.Generator().manual_seed(seed)
    class_logits = 3 * torch.randn(num_queries, num_classes + 1, generator=g)
    coarse = 6 * torch.randn(num_queries, 1, 3, 4, generator=g)
    return class_logits, coarse[:, 0], torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")[:, 0]


def _oracle_prob_maps(class_logits, coarse, fine, seg, num_segments, object_threshold):
    """Loop oracle: the queries of segment k are the owners (argmax of score x sigmoid over kept
    queries) of its pixels; its map is the max of their sigmoid maps at the coarse resolution."""
    scores, labels = class_logits.softmax(-1).max(-1)
    kept = [q for q in range(len(scores)) if labels[q] != class_logits.shape[-1] - 1 and scores[q] > object_threshold]
    maps = []
    for k in range(1, num_segments + 1):
        queries = set()
        for y, x in zip(*torch.nonzero(seg == k, as_tuple=True)):
            queries.add(max(kept, key=lambda q: (float(scores[q] * torch.sigmoid(fine[q, y, x])), -q)))
        maps.append(torch.stack([torch.sigmoid(coarse[q]) for q in sorted(queries)]).amax(0))
    return torch.stack(maps) if maps else torch.zeros(0, *coarse.shape[1:])


@pytest.mark.parametrize("seed", range(8))
def test_equals_a_loop_oracle_and_leaves_the_segments_unchanged(seed):
    class_logits, coarse, fine = _random_case(seed)
    table = thing_table_of({0, 2}, 4, "cpu")
    plain, mapped = trim_segments([
        panoptic_segments(class_logits, fine, table, 0.0, 0.8),
        panoptic_segments(class_logits, fine, table, 0.0, 0.8, prob_logits=coarse),
    ])
    assert plain.prob_maps is None
    for name in ("seg", "classes", "isthing", "scores", "count"):
        assert torch.equal(getattr(plain, name), getattr(mapped, name)), name
    expected = _oracle_prob_maps(class_logits, coarse, fine, mapped.seg, len(mapped.classes), 0.0)
    assert torch.equal(mapped.prob_maps, expected)


def test_predict_panoptic_keeps_stride_4_maps_of_each_image():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (3, 32, 64), dtype=torch.uint8, generator=g)]
    kwargs = dict(zero_shot=False, object_threshold=0.0, overlap_threshold=0.3, as_segments=True)
    plain = model.predict_panoptic(images, **kwargs)
    mapped = model.predict_panoptic(images, with_prob_maps=True, **kwargs)
    with torch.no_grad():
        batch = model.preprocess_images(images)
        _, outputs = model.predict_raw(batch.tensor)
    table = thing_table_of(model.thing_ids, outputs["pred_logits"].shape[-1] - 1, "cpu")
    for index, (a, b, (h, w)) in enumerate(zip(plain, mapped, [(64, 96), (32, 64)])):
        assert a.prob_maps is None and torch.equal(a.seg, b.seg) and torch.equal(a.scores, b.scores)
        assert b.prob_maps.shape == (len(b.classes), h // 4, w // 4) and len(b.classes) > 0
        # The image's own cells of the batch's stride-4 logits (the second image is padded to 64x96).
        logits = outputs["pred_masks"][index]
        fine = _upsample(logits, batch.tensor.shape[-2:])[:, :h, :w]
        [expected] = trim_segments([panoptic_segments(outputs["pred_logits"][index], fine, table, 0.0, 0.3,
                                                      prob_logits=logits[:, : h // 4, : w // 4])])
        assert torch.equal(b.prob_maps, expected.prob_maps)
