"""Pixel-weight maps (SSL.SAM_REFINE.PWA) through CutMix and compaction (dearli/engine/mask_weights.py
via build_pseudo_labeled_sample): inside the box from the partner, outside from the main image,
merged stuff, dropped segments, and nothing new without weights."""
import pytest
import torch

from dearli.engine.mask_weights import compact_weight_maps
from dearli.engine.pseudo_labels import build_pseudo_labeled_sample, merge_and_compact
from test_pseudo_labels import STUFF, THING, make_label


def _sample(box_rows=None, size=(3, 6)):
    sample = {"file_name": "main.png", "image_id": 0, "height": size[0], "width": size[1],
              "strong_image": torch.zeros(3, *size, dtype=torch.uint8), "valid_mask": torch.ones(size, dtype=torch.bool),
              "sample_seed": 5, "cutmix": None}
    if box_rows is not None:
        box = torch.tensor([[c == "1" for c in row] for row in box_rows])
        sample["cutmix"] = {"strong_image": torch.full((3, *size), 9, dtype=torch.uint8), "box_mask": box,
                            "valid_mask": torch.ones(size, dtype=torch.bool)}
    return sample


def _constant_maps(values, size=(3, 6)):
    return torch.stack([torch.full(size, float(v)) for v in values])


def test_inside_the_box_the_weights_come_from_the_partner():
    # Main: thing 1 (left), stuff 2 of class 7 (right). Partner: stuff 1 of class 7, thing 2 of class 3.
    main = make_label(["111222", "111222", "111222"], [(0, THING, 0.9), (7, STUFF, 0.8)])
    partner = make_label(["111122", "111122", "111122"], [(7, STUFF, 0.7), (3, THING, 0.6)])
    box = ["000111", "000111", "000000"]  # holds partner stuff (column 3) and the partner thing
    main_w, partner_w = _constant_maps([0.5, 0.2]), _constant_maps([0.7, 0.3])
    out, label = build_pseudo_labeled_sample(_sample(box), main, partner, mask_weights=(main_w, partner_w))
    weights = out["mask_weights"]
    inside = _sample(box)["cutmix"]["box_mask"]
    # Targets in segment order: main thing, merged stuff of class 7, partner thing (class 3).
    assert label.classes.tolist() == [0, 7, 3]
    assert label.seg.tolist() == [[1, 1, 1, 2, 3, 3], [1, 1, 1, 2, 3, 3], [1, 1, 1, 2, 2, 2]]
    assert weights.shape == (3, 3, 6)
    assert torch.equal(weights[0], torch.where(inside, 1.0, 0.5))  # main thing: 1 where its image is hidden
    assert torch.equal(weights[1], torch.where(inside, 0.7, 0.2))  # merged stuff: partner inside, main outside
    assert torch.equal(weights[2], torch.where(inside, 0.3, 1.0))  # partner thing: 1 where its image is hidden
    for k in range(3):  # every target's own pixels carry the weight of the image they come from
        own = label.seg == k + 1
        source = torch.where(inside, torch.tensor([1.0, 0.7, 0.3])[k], torch.tensor([0.5, 0.2, 1.0])[k])
        assert torch.equal(weights[k][own], source[own])


def test_weights_without_cutmix_and_a_skipped_partner():
    main = make_label(["110", "220"], [(1, THING, 0.9), (2, THING, 0.5)])
    sample = _sample(size=(2, 3))
    maps = torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(0))
    out, _ = build_pseudo_labeled_sample(sample, main, None, mask_weights=(maps, None))
    assert torch.equal(out["mask_weights"], maps)
    out, _ = build_pseudo_labeled_sample(sample, main, None, mask_weights=(None, None))  # image without masks
    assert torch.equal(out["mask_weights"], torch.ones(2, 2, 3))
    partner = make_label(["001", "001"], [(4, THING, 0.3)])
    box = torch.tensor([[0, 1, 1], [0, 1, 1]]).bool()
    mixed = dict(sample, cutmix={"strong_image": sample["strong_image"], "box_mask": box, "valid_mask": sample["valid_mask"]})
    out, label = build_pseudo_labeled_sample(mixed, main, partner, mask_weights=(maps, None))
    # Thing 2 of the main image is hidden except (1, 0); thing 1 keeps (0, 0); the partner's weights are 1.
    assert label.seg.tolist() == [[1, 0, 3], [2, 0, 3]]
    assert torch.equal(out["mask_weights"][:2, :, 0], maps[:, :, 0]) and (out["mask_weights"][:2, :, 1:] == 1).all()
    assert (out["mask_weights"][2] == 1).all()


def test_dropped_segments_lose_their_maps_and_no_weights_means_no_key():
    main = make_label(["1122", "1133"], [(1, THING, 0.9), (2, THING, 0.5), (3, THING, 0.4)])
    maps = _constant_maps([0.1, 0.2, 0.3], size=(2, 4))
    sample = _sample(size=(2, 4))
    out, label = build_pseudo_labeled_sample(sample, main, None, min_area=3, mask_weights=(maps, None))
    assert label.classes.tolist() == [1] and torch.equal(out["mask_weights"], maps[:1])
    plain, plain_label = build_pseudo_labeled_sample(sample, main, None, min_area=3)
    assert "mask_weights" not in plain and torch.equal(plain_label.seg, label.seg)


def test_compaction_multiplies_the_maps_of_merged_segments():
    # Two stuff segments of class 5 from one label merge (not a teacher output, but the rule is a product).
    label = make_label(["1223", "1223"], [(5, STUFF, 0.5), (1, THING, 0.5), (5, STUFF, 0.9)])
    maps = _constant_maps([0.5, 0.4, 0.6], size=(2, 4))
    merged = merge_and_compact(label)
    out = compact_weight_maps(label, merged, maps)
    assert merged.classes.tolist() == [5, 1]
    assert torch.allclose(out, _constant_maps([0.3, 0.4], size=(2, 4)))
    with pytest.raises(ValueError, match=r"weight maps \(2, 2, 4\) do not fit the label's 3 segments of \(2, 4\)"):
        compact_weight_maps(label, merged, maps[:2])
