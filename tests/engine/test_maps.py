"""Map arithmetic against hand-computed values."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit.engine.maps import resize, weighted_sum
from camkit.errors import InputError
from camkit.method import minmax_normalize as normalize


def test_normalize_is_per_sample():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[-4.0, -4.0], [0.0, 4.0]]])
    expected = torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.5, 1.0]]])
    torch.testing.assert_close(normalize(maps), expected)


@pytest.mark.parametrize("value", [0.0, 7.5, -3.0])
def test_constant_map_becomes_zeros(value):
    maps = torch.stack([torch.full((3, 3), value), torch.eye(3)])
    out = normalize(maps)
    assert not bool(out.isnan().any())
    torch.testing.assert_close(out[0], torch.zeros(3, 3))
    torch.testing.assert_close(out[1], torch.eye(3))


def test_normalize_three_spatial_dims():
    maps = torch.arange(2 * 2 * 2 * 3.0).reshape(2, 2, 2, 3)
    out = normalize(maps, spatial_dims=3)
    torch.testing.assert_close(out[1], torch.arange(12.0).reshape(2, 2, 3) / 11)


def test_resize_is_bilinear_with_half_pixel_centres():
    # f(i, j) = 2 i + j is linear, so bilinear upsampling samples it exactly at the source
    # coordinates (dst + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    pos = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = 2 * pos[:, None] + pos[None, :]
    torch.testing.assert_close(resize(maps, (4, 4))[0], expected)


def test_resize_to_the_same_size_is_a_no_op():
    maps = torch.rand(2, 5, 7)
    assert resize(maps, (5, 7)) is maps


def test_weighted_sum_with_channel_weights():
    acts = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    weights = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    expected = torch.stack(
        [acts[0, 0] - acts[0, 2], 0.5 * acts[1, 0] + 2.0 * acts[1, 1]],
    )
    torch.testing.assert_close(weighted_sum(weights, acts), expected)


def test_weighted_sum_with_pixel_weights():
    acts = torch.arange(1 * 2 * 2 * 2.0).reshape(1, 2, 2, 2)
    weights = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [0.0, 0.0]]]])
    # channel 0 = [[0, 1], [2, 3]], channel 1 = [[4, 5], [6, 7]]
    expected = torch.tensor([[[0.0 + 8.0, 10.0], [0.0, 3.0]]])
    torch.testing.assert_close(weighted_sum(weights, acts), expected)


def test_fuse_normalizes_upsamples_to_the_largest_and_takes_the_max(ref):
    small = torch.tensor([[[0.0, 4.0], [2.0, 2.0]]])
    large = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)) * 10
    expected = torch.maximum(ref.upsample(ref.normalize(small), (4, 4)), ref.normalize(large))
    fused = camkit.fuse([small, large])
    assert fused.shape == (1, 4, 4)
    torch.testing.assert_close(fused, expected)
    assert not torch.equal(fused, ref.normalize(large))


def test_fuse_to_a_given_size(ref):
    maps = [torch.rand(2, 3, 3), torch.rand(2, 6, 6)]
    expected = torch.maximum(
        ref.upsample(ref.normalize(maps[0]), (8, 10)),
        ref.upsample(ref.normalize(maps[1]), (8, 10)),
    )
    torch.testing.assert_close(camkit.fuse(maps, size=(8, 10)), expected)


def test_fuse_of_one_map_is_its_normalization():
    m = torch.tensor([[[2.0, 4.0], [6.0, 10.0]]])
    torch.testing.assert_close(camkit.fuse([m]), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))


@pytest.mark.parametrize(
    "maps",
    [[], [torch.zeros(1, 2, 2), torch.zeros(2, 2, 2)], [torch.zeros(1, 2, 2), torch.zeros(1, 2)]],
)
def test_fuse_rejects_incompatible_maps(maps):
    with pytest.raises(InputError, match="fuse"):
        camkit.fuse(maps)


@pytest.mark.parametrize(
    ("low", "size"),
    [
        ((7, 7), (224, 224)),
        ((8, 8), (32, 32)),
        ((14, 9), (224, 113)),
        ((1, 1), (5, 5)),
        ((10, 10), (3, 5)),
        ((5, 3), (5, 9)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resize_equals_torch_bilinear_interpolation(low, size, dtype):
    # resize() multiplies by interpolation matrices; F.interpolate is the independent reference,
    # for upsampling, downsampling, one axis of each, and a single pixel.
    maps = torch.rand(3, *low, generator=torch.Generator().manual_seed(0), dtype=dtype)
    expected = torch.nn.functional.interpolate(
        maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False
    ).squeeze(1)
    out = resize(maps, size)
    assert out.dtype == dtype and out.shape == (3, *size)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, rtol=0, atol=tol)


def test_resize_of_video_maps_is_trilinear():
    maps = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.interpolate(
        maps.unsqueeze(1), size=(6, 8, 8), mode="trilinear", align_corners=False
    ).squeeze(1)
    torch.testing.assert_close(resize(maps, (6, 8, 8)), expected)


def test_fused_maps_stay_in_the_unit_interval():
    maps = torch.rand(64, 7, 7, generator=torch.Generator().manual_seed(2))
    out = camkit.fuse([maps], size=(224, 224))
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


@pytest.mark.parametrize(
    ("maps", "size", "match"),
    [
        (torch.rand(2, 4, 4), None, r"a list of maps.*not one tensor \(got shape \(2, 4, 4\)\)"),
        ([torch.rand(2, 4, 4), "x"], None, "non-empty list of map tensors"),
        ([torch.rand(2, 4)], None, r"\(B, h, w\) or \(B, t, h, w\) maps, got \[\(2, 4\)\]"),
        ([torch.rand(2, 0, 4)], None, "non-empty"),
        (
            [torch.ones(1, 2, 2, dtype=torch.long)],
            None,
            "floating-point maps, got \\[torch.int64\\]",
        ),
        ([torch.tensor([[[0.0, float("nan")], [1.0, 2.0]]])], None, "NaN or Inf"),
        ([torch.rand(1, 2, 2)], (4,), r"size=None or 2 positive ints, got \(4,\)"),
        ([torch.rand(1, 2, 2)], (4, 0), "positive ints"),
    ],
)
def test_fuse_validates_like_an_extractor(maps, size, match):
    """A bare tensor (``res.maps`` by mistake) would otherwise be read as B maps of batch H."""
    with pytest.raises(InputError, match=match):
        camkit.fuse(maps, size=size)
