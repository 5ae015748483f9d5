"""Faithfulness and localization metrics for saliency maps, usable without an experiment run.

Every function takes plain tensors (and, for faithfulness, a model or any callable from
images to scores) and returns one value per image; average them for the dataset metric.

- :func:`average_drop`, :func:`increase_in_confidence`, :func:`confidence_change`
  (Grad-CAM++ paper)
- :func:`deletion`, :func:`insertion`, :func:`perturbation_curve`, :func:`auc` (RISE paper)
- :func:`pointing_game` (excitation backprop paper), :func:`energy_pointing_game` (Score-CAM
  paper), :func:`centre_map` (the centre-bias baseline)
- :func:`road`, :func:`road_combined`, :func:`noisy_linear_imputation` (ROAD paper)
- :func:`cam_mult_confidence_change` (signed confidence change under the map-multiplied image)
- :func:`arcc`, :func:`coherency`, :func:`complexity` (ADCC / ARCC)
- :func:`model_randomization`, :func:`spearman`, :func:`ssim` (sanity checks paper)
"""

from __future__ import annotations

from camkit.metrics.arcc import ARCCScore, arcc, coherency, complexity
from camkit.metrics.cam_mult import cam_mult_confidence_change
from camkit.metrics.confidence import (
    average_drop,
    confidence_change,
    explanation_maps,
    increase_in_confidence,
)
from camkit.metrics.imputation import noisy_linear_imputation, removal_mask, road, road_combined
from camkit.metrics.localization import (
    box_masks,
    centre_map,
    energy_pointing_game,
    mask_energy,
    mask_pointing_game,
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
from camkit.metrics.sanity import RandomizationResult, model_randomization, spearman, ssim
from camkit.metrics.scores import target_scores

__all__ = [
    "ARCCScore",
    "RandomizationResult",
    "arcc",
    "auc",
    "average_drop",
    "box_masks",
    "cam_mult_confidence_change",
    "centre_map",
    "coherency",
    "complexity",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "explanation_maps",
    "gaussian_blur",
    "increase_in_confidence",
    "insertion",
    "mask_energy",
    "mask_pointing_game",
    "model_randomization",
    "noisy_linear_imputation",
    "peak",
    "perturbation_curve",
    "pointing_game",
    "removal_mask",
    "road",
    "road_combined",
    "spearman",
    "ssim",
    "substrate_of",
    "target_scores",
]
