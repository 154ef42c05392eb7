"""refine_with_sam (extensions.md §2.3/§2.4) on hand-drawn masks, and against the loop oracle."""
import pytest
import torch
from detectron2.config import get_cfg
from helpers.sam_refine_oracle import oracle_refine

from dearli.config import add_dearli_config
from dearli.engine.pseudo_labels import PanopticLabel
from dearli.engine.sam_refine import (
    _fall_back_until_non_empty, BY_CPI, BY_IOM, UNMATCHED, SamRefineSettings, choose_regions, pwa_weights, refine_with_sam,
    resample_nearest,
)

SIZE = 32
UNGUARDED = dict(cpi_max_growth=float("inf"), cpi_max_spill=1.0)


def box(y0, y1, x0, x1, size=SIZE):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def label_of(masks, isthing=None, scores=None):
    """A PanopticLabel of disjoint bool masks (segment k+1 = masks[k])."""
    seg = torch.zeros(masks[0].shape, dtype=torch.int64)
    for k, mask in enumerate(masks):
        assert not (seg[mask] > 0).any(), "hand-drawn teacher masks must be disjoint"
        seg[mask] = k + 1
    n = len(masks)
    return PanopticLabel(
        seg,
        torch.arange(n, dtype=torch.int64) + 3,
        torch.ones(n, dtype=torch.bool) if isthing is None else torch.tensor(isthing),
        torch.linspace(0.9, 0.5, n) if scores is None else torch.tensor(scores),
    )


def refine(label, sams, valid=None, probs=None, **settings):
    valid = torch.ones(label.seg.shape, dtype=torch.bool) if valid is None else valid
    if probs is None:
        probs = torch.stack([(label.seg == k + 1).float() * 0.8 + 0.1 for k in range(label.num_segments)])
    sam = torch.stack(sams) if sams else torch.zeros(0, *label.seg.shape, dtype=torch.bool)
    return refine_with_sam(label, probs, sam, valid, SamRefineSettings(**settings))


# --- IOM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["iom", "best"])
def test_iom_snaps_a_shifted_square_to_its_sam_mask(mode):
    square = box(8, 20, 8, 20)
    label = label_of([box(10, 22, 10, 22)])  # the square shifted by 2 px: IoU 100 / 188
    sams = [square, box(8, 20, 8, 14), box(8, 20, 14, 20), torch.ones(SIZE, SIZE, dtype=torch.bool)]
    result = refine(label, sams, mode=mode)
    assert torch.equal(result.label.seg, square.long())
    assert result.stats["iom_share"] == 1.0 and result.stats["cpi_share"] == 0.0
    assert result.stats["sam_dropped_share"] == 0.25  # the whole-image mask
    assert result.stats["sam_dropped_large_share"] == 0.25
    assert result.stats["mean_iou_teacher_refined"] == pytest.approx(100 / 188)
    assert result.stats["mean_area_change"] == 0.0


def test_iom_threshold_is_strict():
    teacher = box(8, 16, 8, 16)  # 64 px
    label = label_of([teacher])
    exactly_half = box(8, 16, 8, 24)  # contains the teacher, 128 px: IoU = 64 / 128 = 0.5
    unmatched = refine(label, [exactly_half], mode="iom")
    assert torch.equal(unmatched.label.seg, label.seg)
    assert unmatched.stats["unmatched_share"] == 1.0
    matched = refine(label, [exactly_half], mode="iom", iom_iou=0.49)
    assert torch.equal(matched.label.seg, exactly_half.long())
    just_above = box(8, 16, 8, 23)  # 64 / 120
    assert torch.equal(refine(label, [just_above], mode="iom").label.seg, just_above.long())


def random_scene(generator, size=(24, 28), sam_size=None, prob_size=None, with_padding=True):
    """Disjoint random rectangles as teacher segments (things and stuff), SAM masks made of
    perturbed teacher masks, halves, random rectangles and a large background."""
    height, width = size
    seg = torch.zeros(size, dtype=torch.int64)
    num = int(torch.randint(1, 7, (1,), generator=generator))
    for k in range(num):
        y0, x0 = (int(torch.randint(0, s - 3, (1,), generator=generator)) for s in size)
        h, w = (int(torch.randint(3, 12, (1,), generator=generator)) for _ in range(2))
        seg[y0:y0 + h, x0:x0 + w] = k + 1
    valid = torch.ones(size, dtype=torch.bool)
    if with_padding and bool(torch.rand(1, generator=generator) < 0.5):
        valid[:, width - int(torch.randint(1, 6, (1,), generator=generator)):] = False
    seg = torch.where(valid, seg, 0)
    present = [k for k in range(1, num + 1) if (seg == k).any()]
    lookup = torch.zeros(num + 1, dtype=torch.int64)
    lookup[torch.tensor(present, dtype=torch.int64)] = torch.arange(1, len(present) + 1)
    seg = lookup[seg]
    n = len(present)
    label = PanopticLabel(seg, torch.randint(0, 5, (n,), generator=generator),
                          torch.rand(n, generator=generator) < 0.7, torch.rand(n, generator=generator))
    sam_size = sam_size or size
    sams = []
    for k in range(1, n + 1):
        shifted = torch.roll(seg == k, shifts=(int(torch.randint(-2, 3, (1,), generator=generator)),
                                               int(torch.randint(-2, 3, (1,), generator=generator))), dims=(0, 1))
        sams.append(shifted)
        half = shifted.clone()
        cols = shifted.any(0).nonzero()
        if len(cols) > 1:
            half[:, int(cols.float().mean()):] = False
        sams.append(half)
    for _ in range(int(torch.randint(0, 4, (1,), generator=generator))):
        y0, x0 = (int(torch.randint(0, s - 2, (1,), generator=generator)) for s in size)
        sams.append(box(y0, y0 + int(torch.randint(2, 16, (1,), generator=generator)), x0,
                        x0 + int(torch.randint(2, 16, (1,), generator=generator)), size=max(size))[:height, :width])
    sams.append(seg == 0)
    sam = torch.stack(sams)[:, :height, :width]
    if sam_size != size:
        rows = torch.arange(sam_size[0]) * height // sam_size[0]
        cols = torch.arange(sam_size[1]) * width // sam_size[1]
        sam = sam[:, rows[:, None], cols[None, :]]
    prob_size = prob_size or size
    probs = torch.rand(n, *prob_size, generator=generator)
    return label, probs, sam, valid


def test_iom_never_gives_one_sam_mask_to_two_segments():
    generator = torch.Generator().manual_seed(0)
    assignments = 0
    for _ in range(200):
        label, _, sam, valid = random_scene(generator, with_padding=False)
        ids = torch.arange(1, label.num_segments + 1)
        teacher = (label.seg.flatten()[None] == ids[:, None]).float()
        sam_flat = sam.flatten(1).float()
        choice = choose_regions(teacher, sam_flat, torch.ones(len(sam), dtype=torch.bool),
                                torch.ones(label.num_segments, dtype=torch.bool), SamRefineSettings(mode="iom"))
        chosen = choice.iom_index[choice.code == BY_IOM]
        assert len(chosen.unique()) == len(chosen)
        assignments += len(chosen)
    assert assignments > 200  # the scenes do exercise IOM


def test_chosen_masks_are_pasted_from_full_resolution_when_given():
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (yy - 15.3) ** 2 + (xx - 14.6) ** 2 < 7.5 ** 2
    other = box(0, 3, 0, 30)
    label = label_of([torch.roll(disc, (1, 1), (0, 1))])
    full = torch.stack([disc, other, ~disc])
    low = resample_nearest(full, (SIZE // 4, SIZE // 4))
    valid = torch.ones(SIZE, SIZE, dtype=torch.bool)
    probs = torch.ones(1, 8, 8)
    blocky = refine_with_sam(label, probs, low, valid, SamRefineSettings()).label.seg
    assert torch.equal(blocky, resample_nearest(low[0], (SIZE, SIZE)).long())
    assert not torch.equal(blocky, disc.long())
    assert torch.equal(refine_with_sam(label, probs, low, valid, SamRefineSettings(), full).label.seg, disc.long())
    asked = []

    def decode(indices):
        asked.append(indices.tolist())
        return full[indices]

    assert torch.equal(refine_with_sam(label, probs, low, valid, SamRefineSettings(), decode).label.seg, disc.long())
    assert asked == [[0]]  # only the chosen mask is decoded
    with pytest.raises(ValueError, match=r"^paste_masks must give bool \[1, 32, 32\] for the chosen SAM masks, "
                                         r"got torch.bool of shape \(1, 16, 16\)$"):
        refine_with_sam(label, probs, low, valid, SamRefineSettings(), lambda i: full[i][:, :16, :16])


# --- CPI and its guards ------------------------------------------------------------------------

def test_cpi_unites_three_parts_and_drops_the_noise_pixel():
    obj = box(6, 26, 6, 26)
    parts = [box(6, 26, 6, 13), box(6, 26, 13, 20), box(6, 26, 20, 26)]
    teacher = obj & ~box(0, SIZE, 6, 8)  # misses a 2-px sliver of the first part (5/7 of it left)
    teacher[1, 1] = True  # 1-px noise
    label = label_of([teacher])
    sams = parts + [~obj]  # plus the background
    for mode in ("cpi", "best"):
        result = refine(label, sams, mode=mode)
        assert torch.equal(result.label.seg, obj.long()), mode
        assert result.stats["cpi_share"] == 1.0
    assert refine(label, sams, mode="iom").stats["unmatched_share"] == 1.0  # no single part has IoU > 0.5


def table_scene():
    """Two small objects on a big 'table' SAM mask that holds them both (and a whole-image mask)."""
    label = label_of([box(4, 10, 4, 10), box(20, 26, 20, 26)])
    return label, [box(2, 30, 2, 30), torch.ones(SIZE, SIZE, dtype=torch.bool)]


def test_guards_reject_the_table_and_the_whole_image():
    label, sams = table_scene()
    result = refine(label, sams, mode="cpi")
    assert torch.equal(result.label.seg, label.seg)
    assert result.stats["unmatched_share"] == 1.0
    assert result.stats["sam_dropped_share"] == 0.5  # the whole image, by the pre-filter


def test_unguarded_cpi_swallows_the_table():
    """Regression guard: SemiRES's superset rule alone (r1 > 0.7) turns each small segment into the
    whole table; the first segment (higher score) takes every table pixel outside the teachers."""
    label, sams = table_scene()
    result = refine(label, sams, mode="cpi", **UNGUARDED)
    area = torch.bincount(result.label.seg.flatten(), minlength=3)
    assert result.stats["cpi_share"] == 1.0
    assert int(area[1]) == 28 * 28 - 36 and int(area[2]) == 36
    assert result.stats["mean_iou_teacher_refined"] < 0.55


def test_spill_guard_rejects_a_mask_shared_by_two_segments():
    label = label_of([box(0, 12, 0, 12), box(12, 24, 0, 12)])
    both = box(0, 24, 0, 12)  # 288 px: growth 2.0 passes, spill 0.5 does not
    assert refine(label, [both], mode="cpi").stats["unmatched_share"] == 1.0
    assert refine(label, [both], mode="cpi", cpi_max_spill=0.5).stats["cpi_share"] == 1.0


def test_stuff_is_refined_only_when_asked():
    label = label_of([box(10, 22, 10, 22)], isthing=[False])
    sams = [box(8, 20, 8, 20)]
    assert torch.equal(refine(label, sams).label.seg, label.seg)
    assert refine(label, sams).stats["segments_in_scope"] == 0.0
    assert torch.equal(refine(label, sams, apply_to_stuff=True).label.seg, sams[0].long())


# --- composition and validity ------------------------------------------------------------------

def test_overlapping_regions_go_to_the_teacher_then_to_the_higher_score():
    a, b = box(4, 12, 4, 12), box(4, 12, 14, 22)
    label = label_of([a, b], scores=[0.9, 0.6])
    # Both SAM masks grow into the gap columns 12:14; each also covers a bit of the other segment.
    sam_a, sam_b = box(4, 12, 4, 15), box(4, 12, 11, 22)
    result = refine(label, [sam_a, sam_b], mode="iom")
    expected = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    expected[4:12, 4:14] = 1  # col 12-13 contested by nobody's teacher: higher score 0.9 * P wins
    expected[4:12, 14:22] = 2  # col 14 is b's teacher pixel
    expected[4:12, 11] = 1  # a's teacher pixel
    assert torch.equal(result.label.seg, expected)


def test_a_refined_thing_takes_back_pixels_the_teacher_gave_to_unrefined_stuff():
    stuff = torch.ones(SIZE, SIZE, dtype=torch.bool) & ~box(10, 22, 10, 22)
    label = label_of([box(10, 22, 10, 22), stuff], isthing=[True, False])
    square = box(8, 20, 8, 20)
    taken = refine(label, [square])
    # The teacher's thing pixels outside the square are in no region: no segment.
    assert torch.equal(taken.label.seg, torch.where(square, 1, torch.where(stuff, 2, 0)))
    literal = refine(label, [square], refined_first=False)  # every region ranks equally: stuff keeps its pixels
    assert torch.equal(literal.label.seg, torch.where(square & ~stuff, 1, torch.where(stuff, 2, 0)))


@pytest.mark.parametrize("refined_first", [True, False])
def test_a_segment_emptied_by_its_neighbours_falls_back_to_its_teacher_mask(refined_first):
    """A safety net: with centre-aligned resampling a chosen region always keeps a teacher pixel,
    so the regions are drawn by hand here: the small segment's region misses its own teacher pixel
    and lies inside the big segment's teacher mask, so composition empties it."""
    seg = torch.zeros(7, 7, dtype=torch.int64)
    seg[2, 2] = 1
    seg[3:7, 3:7] = 2
    label = PanopticLabel(seg, torch.tensor([1, 2]), torch.tensor([True, True]), torch.tensor([0.9, 0.1]))
    regions = torch.zeros(2, 7, 7, dtype=torch.bool)
    regions[0, 3:5, 3:5] = True
    regions[1, 2:7, 2:7] = True
    valid = torch.ones(7, 7, dtype=torch.bool)
    choice, refined = _fall_back_until_non_empty(label, torch.tensor([BY_CPI, BY_IOM]), regions, torch.ones(2, 7, 7),
                                                 valid, refined_first)
    assert choice.tolist() == [UNMATCHED, BY_IOM]
    expected = seg.clone()
    expected[2, 3:7] = 2
    expected[3:7, 2] = 2
    assert torch.equal(refined, expected)


@pytest.mark.parametrize("seed", range(5))
def test_output_is_a_valid_label(seed):
    generator = torch.Generator().manual_seed(100 + seed)
    for _ in range(10):
        label, probs, sam, valid = random_scene(generator)
        for settings in (dict(), dict(mode="cpi", **UNGUARDED), dict(apply_to_stuff=True, mode="iom")):
            out = refine_with_sam(label, probs, sam, valid, SamRefineSettings(**settings)).label
            assert out.seg.shape == label.seg.shape and out.seg.dtype == torch.int64
            assert out.classes is label.classes and out.isthing is label.isthing and out.scores is label.scores
            assert int(out.seg.min()) >= 0 and int(out.seg.max()) <= label.num_segments
            present = torch.bincount(out.seg.flatten(), minlength=label.num_segments + 1)[1:]
            assert bool((present > 0).all())
            assert not bool(out.seg[~valid].any())


def test_empty_sam_list_is_the_identity():
    label = label_of([box(2, 9, 2, 9), box(12, 20, 3, 30)])
    result = refine(label, [], pwa_enabled=True)
    assert result.label is label
    assert torch.equal(result.weight_maps, torch.ones(2, SIZE, SIZE))
    assert result.stats["sam_dropped_share"] == 0.0 and result.stats["unmatched_share"] == 1.0


# --- PWA ---------------------------------------------------------------------------------------

def test_pwa_closed_form_values_and_symmetry():
    weights = pwa_weights(torch.tensor([0.5, 0.0, 1.0, 0.4, 0.6, 0.25, 0.1]), SamRefineSettings())
    # 1.3 - exp(-(p - 0.5)^2 / 0.2) / sqrt(0.2 pi), by hand: 1/sqrt(0.2 pi) = 1.261566,
    # exp(-1.25) = 0.286505, exp(-0.05) = 0.951229, exp(-0.3125) = 0.731616, exp(-0.8) = 0.449329.
    expected = torch.tensor([0.038434, 0.938555, 0.938555, 0.099960, 0.099960, 0.377018, 0.733142])
    assert torch.allclose(weights, expected, atol=1e-4)
    probs = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(pwa_weights(probs, SamRefineSettings()), pwa_weights(1 - probs, SamRefineSettings()),
                          atol=1e-6)


def test_pwa_weights_only_the_unmatched_segments():
    label = label_of([box(10, 22, 10, 22), box(0, 4, 24, 32)])  # the second has no SAM candidate
    probs = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    sams = torch.stack([box(8, 20, 8, 20)])
    valid = torch.ones(SIZE, SIZE, dtype=torch.bool)
    on = refine_with_sam(label, probs, sams, valid, SamRefineSettings(pwa_enabled=True))
    assert torch.equal(on.weight_maps[0], torch.ones(8, 8))
    assert torch.allclose(on.weight_maps[1], 1.3 - torch.exp(-(probs[1] - 0.5) ** 2 / 0.2) / (0.2 * torch.pi) ** 0.5)
    off = refine_with_sam(label, probs, sams, valid, SamRefineSettings())
    assert torch.equal(off.weight_maps, torch.ones(2, 8, 8))


# --- oracle equivalence ------------------------------------------------------------------------

SETTINGS = [
    SamRefineSettings(),
    SamRefineSettings(mode="iom", apply_to_stuff=True),
    SamRefineSettings(mode="cpi", min_area_frac=0.01, refined_first=False),
    SamRefineSettings(mode="best", apply_to_stuff=True, **UNGUARDED),
    SamRefineSettings(mode="best", refined_first=False, **UNGUARDED),
    SamRefineSettings(mode="best", iom_iou=0.3, cpi_cover=0.5, max_area_frac=0.6),
]


def test_vectorised_function_equals_the_loop_oracle_on_random_scenes():
    generator = torch.Generator().manual_seed(7)
    sizes = [((24, 28), None, None), ((24, 28), (12, 14), (6, 7)), ((20, 24), (7, 9), (10, 12))]
    refined_segments = 0
    for scene in range(50):
        size, sam_size, prob_size = sizes[scene % len(sizes)]
        label, probs, sam, valid = random_scene(generator, size, sam_size, prob_size)
        settings = SETTINGS[scene % len(SETTINGS)]
        result = refine_with_sam(label, probs, sam, valid, settings)
        expected_seg, expected_choice = oracle_refine(label, probs, sam, valid, settings)
        assert torch.equal(result.label.seg, expected_seg), scene
        # Pasting the upsampled matching masks (cut to the matching-resolution valid area) is the default.
        upsampled = resample_nearest(sam & resample_nearest(valid, sam.shape[-2:]), label.seg.shape)
        assert torch.equal(refine_with_sam(label, probs, sam, valid, settings, upsampled).label.seg, expected_seg)
        in_scope = [bool(t) or settings.apply_to_stuff for t in label.isthing]
        n_scope = max(sum(in_scope), 1)
        for code, key in ((BY_IOM, "iom_share"), (BY_CPI, "cpi_share"), (UNMATCHED, "unmatched_share")):
            share = sum(c == code and s for c, s in zip(expected_choice, in_scope)) / n_scope
            assert result.stats[key] == pytest.approx(share), (scene, key)
        refined_segments += sum(c != UNMATCHED for c in expected_choice)
    assert refined_segments > 50


# --- settings ----------------------------------------------------------------------------------

def test_settings_from_config_and_errors_name_the_key():
    cfg = get_cfg()
    add_dearli_config(cfg)
    assert SamRefineSettings.from_config(cfg) == SamRefineSettings()
    assert cfg.SSL.SAM_REFINE.ENABLED is False and cfg.SSL.SAM_REFINE.MISSING_MASKS == "error"
    cfg.SSL.SAM_REFINE.PWA.VAR = 0.0
    with pytest.raises(ValueError, match=r"^SSL\.SAM_REFINE\.PWA\.VAR=0\.0: expected a finite value > 0$"):
        SamRefineSettings.from_config(cfg)
    with pytest.raises(ValueError, match=r"^SSL\.SAM_REFINE\.MODE='all': expected one of \('best', 'iom', 'cpi'\)$"):
        SamRefineSettings(mode="all")
    with pytest.raises(ValueError, match=r"^SSL\.SAM_REFINE\.MAX_AREA_FRAC=0\.1: must be larger than "
                                         r"SSL\.SAM_REFINE\.MIN_AREA_FRAC=0\.2$"):
        SamRefineSettings(min_area_frac=0.2, max_area_frac=0.1)
    with pytest.raises(ValueError, match=r"^SSL\.SAM_REFINE\.MATCH_STRIDE=2\.0: expected an integer >= 1$"):
        SamRefineSettings(match_stride=2.0)


def test_sam_masks_all_dropped_by_the_prefilter_leave_the_label_and_weight_the_misses():
    label = label_of([box(2, 9, 2, 9)])
    tiny, whole = box(0, 1, 0, 1), torch.ones(SIZE, SIZE, dtype=torch.bool)
    result = refine(label, [tiny, whole], min_area_frac=0.01, pwa_enabled=True)
    assert result.label is label
    assert result.stats["sam_dropped_share"] == 1.0 and result.stats["unmatched_share"] == 1.0
    assert result.stats["sam_dropped_large_share"] == 0.5
    assert float(result.weight_maps.min()) < 1.0
