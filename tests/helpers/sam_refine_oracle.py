"""A slow, loop-by-loop oracle of ``dearli.engine.sam_refine.refine_with_sam`` (extensions.md §2.3).

Every count is a Python integer from per-pair loops, every ratio an exact ``Fraction`` compared with
the threshold's decimal value, every pixel of the composition is decided on its own. Written from
the design text, not from the vectorised code, so the two can be compared on random scenes.
"""
from fractions import Fraction

import torch

from dearli.engine.pseudo_labels import PanopticLabel


def _exact(value) -> Fraction:
    return Fraction(str(value))


def _ratio(num: int, den: int) -> Fraction:
    return Fraction(num, den) if den else Fraction(0)


def oracle_refine(label: PanopticLabel, prob_maps, sam_masks, valid, settings):
    """(refined seg [H, W] int64, choice per segment: 0 unmatched, 1 IOM, 2 CPI)."""
    seg = label.seg.tolist()
    height, width = len(seg), len(seg[0])
    num, k = label.num_segments, sam_masks.shape[0]
    low_h, low_w = sam_masks.shape[-2:]
    valid_l = valid.tolist()
    low_pixels = [(r, c) for r in range(low_h) for c in range(low_w)]
    # Matching resolution: the full-resolution pixel holding a low-resolution pixel's centre.
    src = {(r, c): (int((r + 0.5) * height / low_h), int((c + 0.5) * width / low_w)) for r, c in low_pixels}
    sam = [[bool(sam_masks[j, r, c]) and valid_l[src[r, c][0]][src[r, c][1]] for r, c in low_pixels] for j in range(k)]
    teacher = [[seg[src[p][0]][src[p][1]] == i + 1 for p in low_pixels] for i in range(num)]
    valid_area = sum(valid_l[src[p][0]][src[p][1]] for p in low_pixels)
    sam_area = [sum(s) for s in sam]
    kept = [a > 0 and Fraction(a) >= _exact(settings.min_area_frac) * valid_area
            and Fraction(a) <= _exact(settings.max_area_frac) * valid_area for a in sam_area]
    if k == 0 or num == 0 or not any(kept):
        return label.seg.clone(), [0] * num
    inter = [[sum(a and b for a, b in zip(teacher[i], sam[j])) for j in range(k)] for i in range(num)]
    t_area = [sum(t) for t in teacher]
    in_scope = [bool(label.isthing[i]) or settings.apply_to_stuff for i in range(num)]

    choice, regions_low = [], []
    for i in range(num):
        allowed = [in_scope[i] and kept[j] and t_area[i] > 0 for j in range(k)]
        iom_j, iom_iou = None, None
        for j in range(k):
            if allowed[j]:
                iou = _ratio(inter[i][j], t_area[i] + sam_area[j] - inter[i][j])
                if iom_iou is None or iou > iom_iou:
                    iom_j, iom_iou = j, iou
        has_iom = iom_iou is not None and iom_iou > _exact(settings.iom_iou)
        accepted = []
        for j in range(k):
            if not allowed[j]:
                continue
            part = _ratio(inter[i][j], sam_area[j]) > _exact(settings.cpi_cover)
            others = sum(inter[o][j] for o in range(num) if o != i)
            superset = (_ratio(inter[i][j], t_area[i]) > _exact(settings.cpi_cover)
                        and (settings.cpi_max_growth == float("inf")
                             or sam_area[j] <= _exact(settings.cpi_max_growth) * t_area[i])
                        and _ratio(others, sam_area[j]) <= _exact(settings.cpi_max_spill))
            if part or superset:
                accepted.append(j)
        union = [any(sam[j][p] for j in accepted) for p in range(len(low_pixels))]
        u_inter = sum(a and b for a, b in zip(union, teacher[i]))
        cpi_iou = _ratio(u_inter, sum(union) + t_area[i] - u_inter)
        has_cpi = bool(accepted)
        if settings.mode == "iom":
            has_cpi = False
        if settings.mode == "cpi":
            has_iom = False
        if has_iom and (not has_cpi or iom_iou >= cpi_iou):
            choice.append(1)
            regions_low.append(sam[iom_j])
        elif has_cpi:
            choice.append(2)
            regions_low.append(union)
        else:
            choice.append(0)
            regions_low.append(None)

    first_rank = [c != 0 for c in choice]  # refined segments, and later the fallen-back ones
    while True:
        refined = _compose(label, seg, valid_l, prob_maps, choice, regions_low, low_h, low_w,
                           first_rank if settings.refined_first else None)
        present = {v for row in refined for v in row}
        emptied = [i for i in range(num) if choice[i] != 0 and (i + 1) not in present
                   and any(seg[y][x] == i + 1 and valid_l[y][x] for y in range(height) for x in range(width))]
        if not emptied:
            return torch.tensor(refined, dtype=torch.int64), choice
        for i in emptied:
            choice[i], regions_low[i] = 0, None


def _compose(label, seg, valid_l, prob_maps, choice, regions_low, low_h, low_w, first_rank):
    height, width = len(seg), len(seg[0])
    prob_h, prob_w = prob_maps.shape[-2:]
    scores = label.scores.to(torch.float32)
    out = [[0] * width for _ in range(height)]
    for y in range(height):
        for x in range(width):
            if not valid_l[y][x]:
                continue
            members = []
            for i in range(len(choice)):
                if choice[i] == 0:
                    inside = seg[y][x] == i + 1
                else:
                    inside = regions_low[i][int((y + 0.5) * low_h / height) * low_w + int((x + 0.5) * low_w / width)]
                if inside:
                    members.append(i)
            if not members:
                continue
            if first_rank is not None and any(first_rank[i] for i in members):
                members = [i for i in members if first_rank[i]]
            if seg[y][x] - 1 in members:
                out[y][x] = seg[y][x]
                continue
            best, best_value = None, None
            for i in members:
                prob = prob_maps[i, int((y + 0.5) * prob_h / height), int((x + 0.5) * prob_w / width)]
                value = float(scores[i] * prob.to(torch.float32))
                if best_value is None or value > best_value:
                    best, best_value = i, value
            out[y][x] = best + 1
    return out
