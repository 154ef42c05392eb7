"""Multi-scale deformable attention checked against facts of bilinear sampling, not a second copy."""
import math

import pytest
import torch

from dearli.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn, ms_deform_attn_sample


def centre(row, col, height, width):
    """Normalised (x, y) of the centre of pixel (row, col) of an height x width map."""
    return ((col + 0.5) / width, (row + 0.5) / height)


def flatten_levels(maps):
    """Per-level [D, H, W] maps -> value [1, S, 1, D] (one head) and their spatial shapes."""
    flat = torch.cat([m.flatten(1).t() for m in maps], dim=0)
    return flat[None, :, None, :], [tuple(m.shape[-2:]) for m in maps]


def sample_points(maps, points):
    """Sample every (level, x, y) point on its own (weight one): [len(points), D]."""
    value, shapes = flatten_levels(maps)
    locations = torch.zeros(1, len(points), 1, len(maps), 1, 2)
    weights = torch.zeros(1, len(points), 1, len(maps), 1)
    for query, (level, x, y) in enumerate(points):
        locations[0, query, 0, level, 0] = torch.tensor([x, y])
        weights[0, query, 0, level, 0] = 1.0
    return ms_deform_attn_sample(value, shapes, locations, weights)[0]


def bilinear_by_hand(image, px, py):
    """The 4-neighbour bilinear formula in pixel coordinates (pixel centres at integers), with
    zeros outside the map: sum over the corners of (1-|dx|)(1-|dy|) * image[corner]."""
    channels, height, width = image.shape
    x0, y0 = math.floor(px), math.floor(py)
    result = torch.zeros(channels)
    for row in (y0, y0 + 1):
        for col in (x0, x0 + 1):
            if 0 <= row < height and 0 <= col < width:
                result += (1 - abs(px - col)) * (1 - abs(py - row)) * image[:, row, col]
    return result


def identity_module(n_levels, n_heads=1, n_points=1, d_model=4):
    """MSDeformAttn whose value and output projections are the identity."""
    module = MSDeformAttn(d_model, n_levels, n_heads, n_points)
    with torch.no_grad():
        for linear in (module.value_proj, module.output_proj):
            linear.weight.copy_(torch.eye(d_model))
            linear.bias.zero_()
    return module


def test_sampling_at_a_pixel_centre_returns_that_pixel():
    torch.manual_seed(0)
    maps = [torch.randn(3, 3, 4), torch.randn(3, 2, 5)]
    points, expected = [], []
    for level, image in enumerate(maps):
        _, height, width = image.shape
        for row in range(height):
            for col in range(width):
                points.append((level, *centre(row, col, height, width)))
                expected.append(image[:, row, col])
    torch.testing.assert_close(sample_points(maps, points), torch.stack(expected), rtol=0, atol=1e-6)


def test_points_outside_the_map_read_zeros():
    image = torch.arange(1.0, 13.0).view(1, 3, 4)
    outside = [
        (0, -0.7, 0.3),                 # far left
        (0, 1.6, 0.5),                  # far right
        (0, 0.5, -3.0),                 # far above
        (0, *centre(1, -1, 3, 4)),      # centre of the column just left of the map
        (0, *centre(3, 2, 3, 4)),       # centre of the row just below the map
    ]
    assert torch.equal(sample_points([image], outside), torch.zeros(len(outside), 1))


def test_fractional_points_equal_the_four_neighbour_formula():
    torch.manual_seed(1)
    image = torch.arange(12.0).view(1, 3, 4)  # value = 4 * row + col
    # Pixel coordinates (px, py): normalised x = (px + 0.5) / W, y = (py + 0.5) / H.
    # (1.25, 0.5): 0.375*v[0,1] + 0.125*v[0,2] + 0.375*v[1,1] + 0.125*v[1,2] = 0.375 + 0.25 + 1.875 + 0.75
    # (-0.25, 2.25): only v[2,0] = 8 is inside, with weight 0.75 * 0.75 -> 4.5
    hand_values = {(1.25, 0.5): 3.25, (-0.25, 2.25): 4.5}
    points = [(0, (px + 0.5) / 4, (py + 0.5) / 3) for px, py in hand_values]
    torch.testing.assert_close(
        sample_points([image], points)[:, 0], torch.tensor(list(hand_values.values())), rtol=0, atol=1e-5
    )

    random_image = torch.randn(2, 5, 7)
    pixel_points = [(0.3, 0.9), (4.71, 2.2), (6.2, 3.6), (-0.4, 4.4), (2.0, 1.5)]
    points = [(0, (px + 0.5) / 7, (py + 0.5) / 5) for px, py in pixel_points]
    expected = torch.stack([bilinear_by_hand(random_image, px, py) for px, py in pixel_points])
    torch.testing.assert_close(sample_points([random_image], points), expected, rtol=0, atol=1e-5)


def test_weights_mix_points_across_levels():
    maps = [torch.randn(2, 3, 3), torch.randn(2, 2, 4)]
    value, shapes = flatten_levels(maps)
    locations = torch.tensor([centre(1, 2, 3, 3), centre(0, 3, 2, 4)]).view(1, 1, 1, 2, 1, 2)
    weights = torch.tensor([0.3, 0.7]).view(1, 1, 1, 2, 1)
    expected = 0.3 * maps[0][:, 1, 2] + 0.7 * maps[1][:, 0, 3]
    torch.testing.assert_close(ms_deform_attn_sample(value, shapes, locations, weights)[0, 0], expected)


def test_one_pixel_offset_shifts_by_exactly_one_pixel():
    # Two levels of different sizes: a one-pixel offset must be one pixel of *that* level.
    torch.manual_seed(2)
    shapes = [(3, 4), (2, 6)]
    module = identity_module(n_levels=2)
    with torch.no_grad():
        module.sampling_offsets.weight.zero_()
        module.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]))  # level 0: +x, level 1: +y
        module.attention_weights.weight.zero_()
    maps = [torch.randn(4, *shape) for shape in shapes]
    value_input = torch.cat([m.flatten(1).t() for m in maps])[None]
    for level, (height, width) in enumerate(shapes):
        with torch.no_grad():
            # exp(-1e4) underflows to exactly 0: all weight on this level's point.
            module.attention_weights.bias.copy_(torch.tensor([0.0, -1e4] if level == 0 else [-1e4, 0.0]))
        pixels = [(row, col) for row in range(height) for col in range(width)]
        refs = torch.tensor([centre(row, col, height, width) for row, col in pixels])
        query = torch.randn(1, len(pixels), 4)  # ignored: offsets and weights are query-independent
        out = module(query, refs[None, :, None, :].expand(1, -1, 2, 2), value_input, shapes)[0]
        shifted = torch.nn.functional.pad(maps[level], (0, 1, 0, 1))  # zero beyond the map
        expected = torch.stack(
            [shifted[:, row, col + 1] if level == 0 else shifted[:, row + 1, col] for row, col in pixels]
        )
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_attention_weights_sum_to_one_over_levels_and_points():
    torch.manual_seed(3)
    module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2)
    torch.nn.init.normal_(module.attention_weights.weight)
    probabilities = module.attention_probabilities(torch.randn(2, 5, 16))
    assert probabilities.shape == (2, 5, 4, 3, 2)
    torch.testing.assert_close(probabilities.sum(dim=(-1, -2)), torch.ones(2, 5, 4))

    # Consequence: on a constant map, with every point inside, attention returns the constant.
    module = identity_module(n_levels=2, n_heads=2, n_points=2)
    torch.nn.init.normal_(module.attention_weights.weight)
    shapes = [(9, 9), (5, 5)]
    constant = torch.tensor([1.5, -2.0, 0.25, 3.0])
    value_input = constant.expand(1, 81 + 25, 4)
    refs = torch.full((1, 3, 2, 2), 0.5)  # map centres; initial offsets reach 2 px, still inside
    out = module(torch.randn(1, 3, 4), refs, value_input, shapes)
    torch.testing.assert_close(out[0], constant.expand(3, 4))


def test_initial_offsets_form_a_ring_and_weights_are_uniform():
    module = MSDeformAttn(d_model=32, n_levels=2, n_heads=8, n_points=3)
    offsets = module.sampling_offsets.bias.view(8, 2, 3, 2)
    assert torch.equal(module.sampling_offsets.weight, torch.zeros_like(module.sampling_offsets.weight))
    # Head 0 points right, head 2 down (+y), head 4 left; diagonal head 1 sits on the square's corner.
    for head, direction in [(0, (1.0, 0.0)), (1, (1.0, 1.0)), (2, (0.0, 1.0)), (4, (-1.0, 0.0))]:
        for point in range(3):
            expected = (point + 1) * torch.tensor(direction)
            torch.testing.assert_close(offsets[head, 1, point], expected, rtol=0, atol=1e-6)
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()


def test_samples_in_float32_under_bf16_autocast(monkeypatch):
    """The projections follow autocast; the locations, values and weights sampled are float32."""
    from dearli.modeling.pixel_decoder import ms_deform_attn

    torch.manual_seed(4)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.1)
    shapes = [(6, 5), (3, 3)]
    query, value_input = torch.randn(1, 7, 16), torch.randn(1, 39, 16)
    refs = torch.rand(1, 7, 2, 2)
    reference = module(query, refs, value_input, shapes)
    sampled_dtypes = []
    original = ms_deform_attn.ms_deform_attn_sample

    def recording(value, spatial_shapes, locations, weights):
        sampled_dtypes.append((value.dtype, locations.dtype, weights.dtype, torch.is_autocast_enabled("cpu")))
        return original(value, spatial_shapes, locations, weights)

    monkeypatch.setattr(ms_deform_attn, "ms_deform_attn_sample", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = module(query, refs, value_input, shapes)
    assert sampled_dtypes == [(torch.float32, torch.float32, torch.float32, False)]
    assert autocast_out.dtype == torch.bfloat16  # the output projection ran under autocast
    torch.testing.assert_close(autocast_out.float(), reference, rtol=0.05, atol=0.05)


def test_mismatched_value_length_is_reported():
    module = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match=r"value_input has 10 positions but spatial_shapes \[\(3, 4\)\] need 12"):
        module(torch.randn(1, 2, 8), torch.rand(1, 2, 1, 2), torch.randn(1, 10, 8), [(3, 4)])
