"""Pseudo-labels and CutMix: hand-made cases and a per-segment loop oracle."""
import numpy as np
import pytest
import torch

from dearli.engine.pseudo_labels import (
    PanopticLabel,
    build_pseudo_labeled_sample,
    cutmix_labels,
    merge_and_compact,
    pseudo_label_statistics,
)

STUFF, THING = False, True


def make_label(rows, table):
    """rows: list of strings of ids; table: [(class, isthing, score)] for ids 1..N."""
    seg = torch.tensor([[int(c) for c in row] for row in rows], dtype=torch.int64)
    return PanopticLabel(
        seg,
        torch.tensor([t[0] for t in table], dtype=torch.int64),
        torch.tensor([t[1] for t in table], dtype=torch.bool),
        torch.tensor([t[2] for t in table], dtype=torch.float32),
    )


def as_set(label):
    """{(class, isthing, mask bytes)}: targets independent of id order."""
    return {
        (int(c), bool(t), (label.seg == i + 1).numpy().tobytes())
        for i, (c, t) in enumerate(zip(label.classes.tolist(), label.isthing.tolist()))
    }


def mask(rows):
    return np.array([[c == "1" for c in row] for row in rows]).tobytes()


def test_cutmix_by_hand_offsets_overwrites_merges_and_removes():
    # main: stuff class 5 (id 1); thing class 0 (id 2, fully inside the box -> vanishes);
    #       thing class 0 (id 3, half inside the box)
    main = make_label(["1122", "1133", "1133", "1111"],
                      [(5, STUFF, 0.4), (0, THING, 0.8), (0, THING, 0.7)])
    # partner: stuff class 5 (id 1) and a thing of class 0 (id 2) in the box, and one
    # "no segment" pixel (0) in the box
    partner = make_label(["1102", "1112", "1111", "1111"],
                         [(5, STUFF, 0.6), (0, THING, 0.9)])
    box = torch.tensor([[c == "1" for c in row] for row in ["0111", "0111", "0000", "0000"]])
    mixed = merge_and_compact(cutmix_labels(main, partner, box))
    expected = {
        (5, STUFF, mask(["1100", "1110", "1100", "1111"])),  # main + partner class-5 stuff, merged
        (0, THING, mask(["0001", "0001", "0000", "0000"])),  # partner thing (offset id)
        (0, THING, mask(["0000", "0000", "0011", "0000"])),  # what is left of main thing id 3
    }
    assert as_set(mixed) == expected
    assert mixed.seg[0, 2] == 0  # the partner's "no segment" overwrote main thing id 2
    assert mixed.classes.tolist() == [5, 0, 0]  # segment order: main's first
    assert mixed.scores.tolist() == pytest.approx([0.6, 0.7, 0.9])  # merged stuff: larger score
    assert sorted(mixed.seg.unique().tolist()) == [0, 1, 2, 3]  # contiguous ids, vanished id gone


def test_partner_void_inside_box_overwrites_main():
    main = make_label(["11", "11"], [(2, STUFF, 1.0)])
    partner = make_label(["00", "00"], [])
    box = torch.tensor([[True, False], [False, False]])
    mixed = merge_and_compact(cutmix_labels(main, partner, box))
    assert mixed.seg.tolist() == [[0, 1], [1, 1]]


def test_min_area_drops_small_segments():
    label = make_label(["1112", "1113", "1113"], [(0, STUFF, 1.0), (1, THING, 1.0), (2, THING, 1.0)])
    kept = merge_and_compact(label, min_area=2)
    assert kept.classes.tolist() == [0, 2]
    assert kept.seg.tolist() == [[1, 1, 1, 0], [1, 1, 1, 2], [1, 1, 1, 2]]


def reference_cutmix(main, partner, box):
    """Per-segment loop oracle of the rules (offset, overwrite, merge stuff, drop empty)."""
    targets = {}
    sources = [(main, ~box.numpy()), (partner, box.numpy())]
    for origin, (label, region) in enumerate(sources):
        seg = label.seg.numpy()
        for i in range(label.num_segments):
            pixels = (seg == i + 1) & region
            cls, thing = int(label.classes[i]), bool(label.isthing[i])
            key = (origin, i) if thing else ("stuff", cls)
            previous = targets.get(key, (cls, thing, np.zeros_like(pixels)))[2]
            targets[key] = (cls, thing, previous | pixels)
    return {(c, t, m.tobytes()) for c, t, m in targets.values() if m.any()}


def random_label(generator, size, num_segments, num_classes):
    seg = torch.from_numpy(generator.integers(0, num_segments + 1, size=(size, size)))
    return PanopticLabel(
        seg,
        torch.from_numpy(generator.integers(0, num_classes, size=num_segments)),
        torch.from_numpy(generator.random(num_segments) < 0.5),
        torch.from_numpy(generator.random(num_segments)).float(),
    )


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_cutmix_matches_loop_oracle(seed):
    generator = np.random.default_rng(seed)
    main = random_label(generator, 12, int(generator.integers(0, 8)), 4)
    partner = random_label(generator, 12, int(generator.integers(0, 8)), 4)
    box = torch.zeros(12, 12, dtype=torch.bool)
    y, x = generator.integers(0, 8, size=2)
    box[y:y + int(generator.integers(1, 5)), x:x + int(generator.integers(1, 5))] = True
    mixed = merge_and_compact(cutmix_labels(main, partner, box))
    assert as_set(mixed) == reference_cutmix(main, partner, box)
    assert len(as_set(mixed)) == mixed.num_segments  # no duplicate or empty target


def sample_with_cutmix():
    weak = torch.zeros(3, 4, 4, dtype=torch.uint8)
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[:, :3] = True  # last column is padding
    box = torch.zeros(4, 4, dtype=torch.bool)
    box[2:, 3] = True
    return {
        "file_name": "u.png", "image_id": 1, "height": 4, "width": 3, "sample_seed": 123,
        "weak_image": weak, "strong_image": torch.full((3, 4, 4), 10, dtype=torch.uint8), "valid_mask": valid,
        "cutmix": {"file_name": "p.png", "weak_image": weak, "strong_image": torch.full((3, 4, 4), 200, dtype=torch.uint8),
                   "valid_mask": torch.ones(4, 4, dtype=torch.bool), "box_mask": box},
    }


def test_build_sample_mixes_image_targets_and_valid_mask():
    sample = sample_with_cutmix()
    main = make_label(["1111", "1111", "2222", "2222"], [(0, STUFF, 0.5), (1, THING, 0.25)])
    partner = make_label(["1111", "1111", "1111", "1111"], [(3, THING, 0.75)])
    out, label = build_pseudo_labeled_sample(sample, main, partner, restrict_to_valid=True, with_segment_weights=True)
    box = sample["cutmix"]["box_mask"]
    assert torch.equal(out["image"][0], torch.where(box, 200, 10).to(torch.uint8))
    assert torch.equal(out["valid_mask"], sample["valid_mask"] | box)
    assert out["sample_seed"] == 123
    # main's padding column is cleared before mixing; the box puts the partner thing there
    assert label.seg[:, 3].tolist() == [0, 0, 3, 3]
    instances = out["instances"]
    assert instances.gt_classes.tolist() == label.classes.tolist() == [0, 1, 3]  # segment order
    assert instances.gt_masks.shape == (3, 4, 4) and instances.gt_masks.dtype == torch.bool
    assert torch.equal(instances.gt_masks.sum((1, 2)), torch.tensor([6, 6, 2]))
    torch.testing.assert_close(out["segment_weights"], torch.tensor([0.5, 0.25, 0.75]))


def test_partner_without_pseudo_label_is_an_error():
    main = make_label(["1111"] * 4, [(0, STUFF, 1.0)])
    with pytest.raises(ValueError, match="u.png"):
        build_pseudo_labeled_sample(sample_with_cutmix(), main, None)


def test_statistics_by_hand():
    a = make_label(["11", "02"], [(0, STUFF, 0.5), (2, THING, 1.0)])
    b = make_label(["00", "01"], [(2, THING, 0.0)])
    valid = [torch.ones(2, 2, dtype=torch.bool), torch.tensor([[True, True], [False, True]])]
    stats = pseudo_label_statistics([a, b], valid, num_classes=3)
    assert stats["pseudo_segments_per_image"] == 1.5
    assert stats["mean_teacher_score"] == pytest.approx(0.5)
    assert stats["pseudo_pixel_coverage"] == pytest.approx(4 / 7)
    assert stats["class_counts"].tolist() == [1, 0, 2]
    assert stats["classes"].tolist() == [0, 2, 2] and stats["classes"].device.type == "cpu"
