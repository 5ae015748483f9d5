"""camkit-contrib: more CAM methods for camkit, installed as a plugin distribution.

``pip install camkit-contrib`` adds ``hirescam``, ``gradcam-elementwise``, ``eigencam``,
``eigengradcam``, ``ablationcam``, ``randomcam``,
``kpcacam``, ``fem``, ``segeigencam``, ``shapleycam`` and ``legrad`` to
``camkit.list_methods()``; camkit
finds them through this package's entry point in the ``camkit`` group. The methods use only
camkit's public plugin contract. :class:`FinerTarget` (Finer-CAM's contrastive objective) is a
target for any gradient method, and :func:`refine` (RefineCAM) fuses a multi-layer
extractor's maps by their product; neither is a method.
"""

from __future__ import annotations

import camkit
from camkit_contrib.ablation import AblationCAM
from camkit_contrib.baseline import RandomCAM
from camkit_contrib.eigen import EigenCAM, EigenGradCAM
from camkit_contrib.fem import FEM
from camkit_contrib.finer import FinerTarget
from camkit_contrib.gradient import GradCAMElementWise, HiResCAM
from camkit_contrib.kpca import KPCACAM
from camkit_contrib.legrad import LeGrad
from camkit_contrib.refine import refine
from camkit_contrib.seg_eigen import SegEigenCAM
from camkit_contrib.shapley import ShapleyCAM

__version__ = "0.1.0"

METHODS: list[type[camkit.Method]] = [
    HiResCAM,
    GradCAMElementWise,
    EigenCAM,
    EigenGradCAM,
    AblationCAM,
    RandomCAM,
    KPCACAM,
    FEM,
    SegEigenCAM,
    ShapleyCAM,
    LeGrad,
]

__all__ = [
    "FEM",
    "KPCACAM",
    "METHODS",
    "AblationCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FinerTarget",
    "GradCAMElementWise",
    "HiResCAM",
    "LeGrad",
    "RandomCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "camkit_methods",
    "refine",
]


@camkit.hookimpl
def camkit_methods() -> list[type[camkit.Method]]:
    return list(METHODS)
