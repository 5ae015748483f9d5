"""Sanity checks: rank correlation and SSIM against direct re-implementations, and the
randomization schedule observed from inside ``explain``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.metrics import model_randomization, spearman, ssim
from camkit.metrics.sanity import average_ranks, parameter_layers, randomize_
from camkit.testing import tiny_model


def ranks_np(row: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank, by counting (no sorting)."""
    return np.array([(row < v).sum() + ((row == v).sum() + 1) / 2 for v in row])


def ssim_np(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM with an explicit 11x11 Gaussian window (sigma 1.5) over replicate-padded maps."""
    half = 5
    g = np.exp(-(np.arange(-half, half + 1) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    pa, pb = np.pad(a, half, mode="edge"), np.pad(b, half, mode="edge")
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            wa = pa[i : i + 2 * half + 1, j : j + 2 * half + 1]
            wb = pb[i : i + 2 * half + 1, j : j + 2 * half + 1]
            ma, mb = (window * wa).sum(), (window * wb).sum()
            va = (window * wa * wa).sum() - ma**2
            vb = (window * wb * wb).sum() - mb**2
            cov = (window * wa * wb).sum() - ma * mb
            values.append(
                ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
            )
    return float(np.mean(values))


def test_average_ranks_share_ties():
    values = torch.tensor([[0.3, 0.1, 0.3, 0.3, 0.0, 0.9]])
    np.testing.assert_array_equal(average_ranks(values)[0].numpy(), ranks_np(values[0].numpy()))


def test_spearman_is_pearson_of_ranks():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 6, 6, generator=gen).round(decimals=1)  # ties on purpose
    b = torch.rand(3, 6, 6, generator=gen)
    for i, value in enumerate(spearman(a, b)):
        ra, rb = ranks_np(a[i].flatten().numpy()), ranks_np(b[i].flatten().numpy())
        assert float(value) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-6)


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 8, 8, generator=gen).round(decimals=1), torch.rand(2, 8, 8, generator=gen)
    for i, value in enumerate(spearman(a, b)):
        expected = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(value) == pytest.approx(expected, abs=1e-6)


def test_spearman_of_a_constant_map_is_nan():
    assert math.isnan(float(spearman(torch.zeros(1, 3, 3), torch.rand(1, 3, 3))[0]))


def test_ssim_matches_the_windowed_formula():
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(2, 12, 13, generator=gen)
    b = (a + 0.3 * torch.rand(2, 12, 13, generator=gen)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):
        assert float(ours[i]) == pytest.approx(
            ssim_np(a[i].double().numpy(), b[i].double().numpy()), abs=1e-6
        )
    torch.testing.assert_close(ssim(a, a), torch.ones(2))


def test_parameter_layers_go_from_output_to_input():
    assert parameter_layers(tiny_model()) == ["fc", "features.2", "features.0"]


def test_randomize_redraws_within_two_spreads():
    layer = nn.Linear(50, 40)
    before = layer.weight.detach().clone()
    randomize_(layer, torch.Generator().manual_seed(0))
    after = layer.weight.detach()
    mean, spread = float(before.mean()), float(before.std())
    assert not torch.equal(before, after)
    assert float(after.min()) >= mean - 2 * spread - 1e-6
    assert float(after.max()) <= mean + 2 * spread + 1e-6
    # a truncated normal at +-2 sigma has 0.88 sigma; 2000 draws pin it within a few percent
    assert float(after.std()) == pytest.approx(0.88 * spread, rel=0.06)


def changed_layers(model: nn.Module, reference: nn.Module) -> list[str]:
    ref = dict(reference.named_parameters())
    return sorted(
        {
            name.rsplit(".", 1)[0]
            for name, p in model.named_parameters()
            if not torch.equal(p, ref[name])
        }
    )


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_model_randomization_schedule_and_scores(mode):
    model = tiny_model(seed=5, num_classes=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([1, 2])
    seen: list[list[str]] = []
    maps_seen: list[Tensor] = []

    def explain(m: nn.Module) -> Tensor:
        assert m is not model
        seen.append(changed_layers(m, model))
        maps_seen.append(camkit.create("gradcam", m, "features")(x, targets).maps)
        return maps_seen[-1]

    result = model_randomization(model, explain, mode=mode, seed=3)
    assert result.layers == ["fc", "features.2", "features.0"]
    if mode == "cascading":
        assert seen == [[], ["fc"], ["fc", "features.2"], ["fc", "features.0", "features.2"]]
    else:
        assert seen == [[], ["fc"], ["features.2"], ["features.0"]]
    for step in range(3):
        for i in range(2):
            ra = ranks_np(maps_seen[0][i].flatten().numpy())
            rb = ranks_np(maps_seen[step + 1][i].flatten().numpy())
            expected = np.corrcoef(ra, rb)[0, 1] if rb.std() and ra.std() else float("nan")
            np.testing.assert_allclose(float(result.spearman[step, i]), expected, atol=1e-5)
            np.testing.assert_allclose(
                float(result.ssim[step, i]),
                ssim_np(maps_seen[0][i].double().numpy(), maps_seen[step + 1][i].double().numpy()),
                atol=1e-5,
            )
    # the user's model is untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_model_independent_explanation_fails_the_check():
    model = tiny_model(seed=5)
    fixed = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    result = model_randomization(model, lambda m: fixed, mode="cascading")
    torch.testing.assert_close(result.spearman, torch.ones(3, 2))
    torch.testing.assert_close(result.ssim, torch.ones(3, 2))


def test_model_randomization_rejects_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="mode"):
        model_randomization(model, lambda m: torch.rand(1, 4, 4), mode="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'featurs'"):
        model_randomization(model, lambda m: torch.rand(1, 4, 4), layers=["featurs"])
