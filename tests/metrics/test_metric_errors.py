"""The metrics validate their arguments as the extractors do: one row per mistake, each a
typed error naming the argument (issue 15, addendum). Add a row to extend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from camkit.errors import ConfigError, InputError, ModelOutputError, TargetError
from camkit.metrics import (
    average_drop,
    confidence_change,
    deletion,
    energy_pointing_game,
    insertion,
    pointing_game,
    target_scores,
)

IMAGES = torch.rand(2, 3, 8, 8)
MAPS = torch.rand(2, 8, 8)
TARGETS = torch.tensor([0, 1])
BOXES = torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8]])


def model(x: torch.Tensor) -> torch.Tensor:
    """Three class scores per image."""
    return x.flatten(1)[:, :3]


def fewer_rows(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)[:1, :3]


def _deletion(fn: Callable[..., object] = deletion, **changed: Any) -> Callable[[], object]:
    """A call of ``fn`` (deletion or insertion) with valid arguments but ``changed``."""
    args = {"images": IMAGES, "saliency": MAPS, "targets": TARGETS, "step": 8, **changed}
    return lambda: fn(model, **args)


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("targets-list", lambda: target_scores(model, IMAGES, [0, 1]), TargetError, "targets"),
    ("targets-string", lambda: target_scores(model, IMAGES, "0"), TargetError, "targets"),
    (
        "targets-float",
        lambda: target_scores(model, IMAGES, TARGETS.float()),
        TargetError,
        "integer",
    ),
    ("targets-length", lambda: target_scores(model, IMAGES, TARGETS[:1]), TargetError, r"\(2,\)"),
    (
        "targets-range",
        lambda: target_scores(model, IMAGES, torch.tensor([0, 3])),
        TargetError,
        "0..2",
    ),
    (
        "targets-negative",
        lambda: target_scores(model, IMAGES, torch.tensor([-1, 0])),
        TargetError,
        "0..2",
    ),
    (
        "fewer-score-rows",
        lambda: target_scores(fewer_rows, IMAGES, TARGETS),
        ModelOutputError,
        "2 images",
    ),
    ("images-3d", lambda: target_scores(model, IMAGES[0], TARGETS), InputError, "images"),
    ("images-int", lambda: target_scores(model, IMAGES.long(), TARGETS), InputError, "floating"),
    ("maps-batch", lambda: confidence_change(model, IMAGES, MAPS[:1], TARGETS), InputError, "maps"),
    (
        "maps-size",
        lambda: confidence_change(model, IMAGES, MAPS[:, :4], TARGETS),
        InputError,
        "maps",
    ),
    ("step-fraction", _deletion(step=2.5), ConfigError, "step"),
    ("step-bool", _deletion(step=True), ConfigError, "step"),
    ("step-zero", _deletion(step=0), ConfigError, "step"),
    ("substrate-shape", _deletion(substrate=torch.zeros(2, 3, 4, 4)), InputError, "substrate"),
    ("substrate-name", _deletion(substrate="noise"), ConfigError, "substrate"),
    ("saliency-shape", _deletion(saliency=MAPS[None]), InputError, "saliency"),
    ("insertion-targets", _deletion(fn=insertion, targets=[0, 1]), TargetError, "targets"),
    (
        "drop-shapes",
        lambda: average_drop(TARGETS.float(), TARGETS[:1].float()),
        InputError,
        "scores",
    ),
    ("boxes-shape", lambda: pointing_game(MAPS, BOXES[:1]), InputError, "boxes"),
    ("boxes-fraction", lambda: energy_pointing_game(MAPS, BOXES + 0.5), InputError, "boxes"),
    ("tolerance-negative", lambda: pointing_game(MAPS, BOXES, -1.0), ConfigError, "tolerance"),
    ("tolerance-nan", lambda: pointing_game(MAPS, BOXES, float("nan")), ConfigError, "tolerance"),
    ("pointing-maps", lambda: pointing_game(IMAGES, BOXES), InputError, "maps"),
]


@pytest.mark.parametrize(
    ("call", "error", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_wrong_argument_is_a_typed_error_naming_it(call, error, names):
    with pytest.raises(error, match=names):
        call()


def test_valid_arguments_still_compute():
    assert target_scores(model, IMAGES, TARGETS).shape == (2,)
    assert _deletion(substrate=torch.zeros(1, 3, 8, 8))().shape == (2,)
    assert pointing_game(MAPS, BOXES.float()).shape == (2,)
