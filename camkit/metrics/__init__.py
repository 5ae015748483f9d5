"""Faithfulness and localization metrics for saliency maps, usable without an experiment run.

Every function takes plain tensors (and, for faithfulness, a model or any callable from
images to scores) and returns one value per image; average them for the dataset metric.

- :func:`average_drop`, :func:`increase_in_confidence`, :func:`confidence_change`
  (Grad-CAM++ paper)
- :func:`deletion`, :func:`insertion`, :func:`perturbation_curve`, :func:`auc` (RISE paper)
- :func:`pointing_game` (excitation backprop paper), :func:`energy_pointing_game` (Score-CAM
  paper), :func:`centre_map` (the centre-bias baseline)
"""

from __future__ import annotations

from camkit.metrics.confidence import (
    average_drop,
    confidence_change,
    explanation_maps,
    increase_in_confidence,
)
from camkit.metrics.localization import (
    box_masks,
    centre_map,
    energy_pointing_game,
    peak,
    pointing_game,
)
from camkit.metrics.perturbation import (
    auc,
    deletion,
    gaussian_blur,
    insertion,
    perturbation_curve,
    substrate_of,
)
from camkit.metrics.scores import target_scores

__all__ = [
    "auc",
    "average_drop",
    "box_masks",
    "centre_map",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "explanation_maps",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion",
    "peak",
    "perturbation_curve",
    "pointing_game",
    "substrate_of",
    "target_scores",
]
