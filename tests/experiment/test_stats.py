"""Statistics of the summary: the bootstrap interval against a direct re-implementation, its
width against the normal approximation, NaN handling and the best method per metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from camkit.experiment.stats import best, bootstrap_interval, describe


def _reference_interval(values: list[float], seed: int, resamples: int) -> tuple[float, float]:
    """The percentile bootstrap written out: the same draws, means and order statistics by
    hand, percentiles by linear interpolation between order statistics."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    means = sorted(sum(values[j] for j in row) / len(values) for row in draws.tolist())

    def percentile(p: float) -> float:
        position = p / 100 * (len(means) - 1)
        below = math.floor(position)
        above = min(below + 1, len(means) - 1)
        return means[below] + (position - below) * (means[above] - means[below])

    return percentile(2.5), percentile(97.5)


def test_bootstrap_interval_matches_the_direct_computation():
    values = np.random.default_rng(3).random(37)
    got = bootstrap_interval(values, seed=11, resamples=400)
    assert got == pytest.approx(_reference_interval(values.tolist(), 11, 400), abs=1e-12)


def test_bootstrap_interval_is_seeded_and_near_the_normal_interval():
    values = np.random.default_rng(0).normal(2.0, 1.0, 2000)
    low, high = bootstrap_interval(values, seed=5)
    assert (low, high) == bootstrap_interval(values, seed=5)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.15 * half)


def test_describe_leaves_out_nan_and_handles_nothing_left():
    values = np.array([0.2, np.nan, 0.4, 0.9])
    stat = describe(values, seed=0)
    assert stat["mean"] == pytest.approx(0.5) and stat["count"] == 3
    assert stat["ci95"] == list(bootstrap_interval(np.array([0.2, 0.4, 0.9]), seed=0))
    assert describe(np.array([np.nan, np.nan]), seed=0) == {"mean": None, "count": 0, "ci95": None}


def test_best_follows_each_metrics_direction_and_skips_missing_values():
    methods = {
        "a": {
            "deletion": {"mean": 0.30},
            "insertion": {"mean": 0.8},
            "pointing_game": {"mean": None},
        },
        "b": {
            "deletion": {"mean": 0.20},
            "insertion": {"mean": 0.7},
            "pointing_game": {"mean": 0.5},
        },
        "c": {
            "deletion": {"mean": 0.20},
            "insertion": {"mean": 0.9},
            "pointing_game": {"mean": 0.4},
        },
    }
    # lower deletion wins (a tie goes to the first listed), higher insertion wins
    assert best(methods) == {"deletion": "b", "insertion": "c", "pointing_game": "b"}
