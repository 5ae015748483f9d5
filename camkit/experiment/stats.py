"""Statistics of per-image metrics: mean, seeded bootstrap interval, best method per metric.

The interval is the percentile bootstrap: resample the images with replacement ``RESAMPLES``
times, take each resample's mean, and report the 2.5th and 97.5th percentiles of those
means. The resampling is seeded by the experiment's seed, and every method of a run is
resampled with the same draws (the images are paired), so intervals are reproducible and
comparable across methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Bootstrap resamples per interval.
RESAMPLES = 1000
#: Which direction is better, per metric: these lower, the others higher. A sane method's
#: maps change when the model is randomized, so the sanity checks' similarities are too.
LOWER_IS_BETTER = frozenset(
    {
        "average_drop",
        "deletion",
        "road_morf",
        "arcc_complexity",
        "sanity_cascading_spearman",
        "sanity_cascading_ssim",
        "sanity_independent_spearman",
        "sanity_independent_ssim",
    }
)


def bootstrap_interval(
    values: np.ndarray, seed: int, resamples: int = RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values``, shape ``(N,)``.

    Example:
        >>> low, high = bootstrap_interval(np.array([0.0, 1.0, 1.0, 0.0]), seed=0)
        >>> 0.0 <= low <= 0.5 <= high <= 1.0
        True
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def describe(values: np.ndarray, seed: int) -> dict[str, Any]:
    """Mean, count and 95% bootstrap interval of ``(N,)`` values, NaNs (not applicable) left
    out; ``None`` where nothing is left.

    Example:
        >>> describe(np.array([1.0, np.nan, 3.0]), seed=0)["mean"]
        2.0
    """
    kept = values[~np.isnan(values)].astype(np.float64)
    if not kept.size:
        return {"mean": None, "count": 0, "ci95": None}
    return {
        "mean": float(kept.mean()),
        "count": int(kept.size),
        "ci95": list(bootstrap_interval(kept, seed)),
    }


def step_means(values: np.ndarray) -> list[float | None]:
    """The mean of each column of ``(N, S)`` values, NaNs left out; ``None`` for a column
    of NaNs only.

    Example:
        >>> step_means(np.array([[1.0, np.nan], [3.0, np.nan]]))
        [2.0, None]
    """
    kept = ~np.isnan(values)
    sums = np.where(kept, values, 0.0).sum(axis=0)
    counts = kept.sum(axis=0)
    return [float(s / c) if c else None for s, c in zip(sums.tolist(), counts.tolist())]


def best(methods: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    """Per metric, the method with the best mean (ties: the first listed).

    Example:
        >>> best({"a": {"deletion": {"mean": 0.3}}, "b": {"deletion": {"mean": 0.2}}})
        {'deletion': 'b'}
    """
    out: dict[str, str] = {}
    for method, metrics in methods.items():
        for name, stat in metrics.items():
            if stat["mean"] is None:
                continue
            sign = 1 if name in LOWER_IS_BETTER else -1
            current = out.get(name)
            if current is None or sign * stat["mean"] < sign * methods[current][name]["mean"]:
                out[name] = method
    return out


def distinct(values: np.ndarray) -> list[str]:
    """The distinct strings of ``values`` in order of first appearance.

    Example:
        >>> distinct(np.array(["features", "features"]))
        ['features']
    """
    return list(dict.fromkeys(str(v) for v in values.tolist()))
