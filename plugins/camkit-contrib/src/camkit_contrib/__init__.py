"""camkit-contrib: more CAM methods for camkit, installed as a plugin distribution.

``pip install camkit-contrib`` adds ``hirescam``, ``gradcam-elementwise``, ``eigencam``,
``eigengradcam``, ``ablationcam``, ``randomcam``, ``kpcacam``, ``fem``, ``segeigencam``,
``fullgrad``, ``guidedbackprop``, ``guidedgradcam``, ``finercam``, ``refinecam``,
``shapleycam`` and ``legrad`` to ``camkit.list_methods()``; camkit finds them through this
package's entry point in the ``camkit`` group. The methods use only camkit's public plugin
contract. :class:`FinerTarget` (Finer-CAM's contrastive objective) is also a target for any
gradient method, and :func:`refine` (RefineCAM's fusion) fuses any multi-layer extractor's
maps by their product. :func:`guided_backprop` and :func:`guided_gradcam` return the full
``(B, C_in, H, W)`` guided gradients. :func:`deep_feature_factorization` (Deep Feature
Factorization) is no CAM method: it returns a :class:`DFFResult` with a map per concept;
``camkit methods`` lists it as an explainer (``dff``), through the ``camkit_explainers`` hook.
"""

from __future__ import annotations

import camkit
from camkit_contrib.ablation import AblationCAM
from camkit_contrib.baseline import RandomCAM
from camkit_contrib.dff import DeepFeatureFactorization, DFFResult, deep_feature_factorization
from camkit_contrib.eigen import EigenCAM, EigenGradCAM
from camkit_contrib.fem import FEM
from camkit_contrib.finer import FinerTarget
from camkit_contrib.fullgrad import FullGrad
from camkit_contrib.gradient import GradCAMElementWise, HiResCAM
from camkit_contrib.guided import GuidedBackprop, GuidedGradCAM, guided_backprop, guided_gradcam
from camkit_contrib.kpca import KPCACAM
from camkit_contrib.legrad import LeGrad
from camkit_contrib.named import FinerCAM, RefineCAM
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
    FullGrad,
    GuidedBackprop,
    GuidedGradCAM,
    FinerCAM,
    RefineCAM,
    ShapleyCAM,
    LeGrad,
]

__all__ = [
    "EXPLAINERS",
    "FEM",
    "KPCACAM",
    "METHODS",
    "AblationCAM",
    "DFFResult",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
    "FinerTarget",
    "FullGrad",
    "GradCAMElementWise",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LeGrad",
    "RandomCAM",
    "RefineCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "camkit_explainers",
    "camkit_methods",
    "deep_feature_factorization",
    "guided_backprop",
    "guided_gradcam",
    "refine",
]


@camkit.hookimpl
def camkit_methods() -> list[type[camkit.Method]]:
    return list(METHODS)


#: The explainers camkit-contrib provides: not CAM methods, listed by ``camkit methods``.
EXPLAINERS: list[camkit.ExplainerSpec] = [
    camkit.ExplainerSpec(
        name="dff",
        aliases=("deep-feature-factorization",),
        summary="Deep Feature Factorization: k concepts (NMF of a layer's activations), "
        "a map per concept and image",
        paper="Collins, Achanta & Süsstrunk, Deep Feature Factorization for Concept "
        "Discovery, ECCV 2018",
        target="camkit_contrib.dff:DeepFeatureFactorization",
        function="camkit_contrib.dff:deep_feature_factorization",
        returns="camkit_contrib.dff:DFFResult",
        example='DeepFeatureFactorization(model, "layer4", n_components=4, '
        "classifier=model.fc)(images)",
    ),
]


@camkit.hookimpl
def camkit_explainers() -> list[camkit.ExplainerSpec]:
    return list(EXPLAINERS)
