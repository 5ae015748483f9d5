"""pytorch-grad-cam 1.5.7's CAM classes, computed by camkit.

Every class takes ``model``, ``target_layers`` (modules) and ``reshape_transform``, and
``cam(input_tensor, targets=None, aug_smooth=False, eigen_smooth=False)`` returns ``(B, H, W)``
float32 NumPy maps in ``[0, 1]`` at the input's size: per layer, the map after a ReLU is
normalized as ``(m - min) / (max(m - min) + 1e-7)`` and resized (bilinear) to the input; the
layers' maps are averaged and normalized again, as in pytorch-grad-cam. ``aug_smooth`` and
``eigen_smooth`` are camkit's engine smoothing (:mod:`camkit.engine.smoothing`): the
augmentations are the engine's, and ``eigen_smooth`` is the run option of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit.compat._shared import CompatTypeError, EpsilonXGradCAM, eval_mode, extractor
from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from camkit.engine.smoothing import augmented_maps
from camkit.errors import ConfigError, TargetError

__all__ = [
    "FEM",
    "KPCA_CAM",
    "AblationCAM",
    "AblationLayer",
    "AblationLayerVit",
    "BaseCAM",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "XGradCAM",
]

Target = Callable[[Tensor], Tensor]


def scale(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """``(m - min) / (max(m - min) + eps)`` per map of ``(N, h, w)`` maps."""
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    return (flat / (flat.amax(1, keepdim=True) + eps)).view(maps.shape)


def projection(features: Tensor) -> Tensor:
    """pytorch-grad-cam's ``eigen_smooth`` with ``legacy_numerics=True``: each image's
    ``(h w, C)`` features, centred per channel, projected on their first right-singular vector
    (NumPy's SVD, so the sign it picks is the original's). ``(B, C, h, w) -> (B, h, w)``.
    """
    out = []
    for image in np.nan_to_num(features.detach().cpu().float().numpy(), nan=0.0):
        rows = image.reshape(image.shape[0], -1).T
        rows = rows - rows.mean(axis=0)
        _, _, vt = np.linalg.svd(rows, full_matrices=True)
        out.append((rows @ vt[0, :]).reshape(image.shape[1:]))
    return torch.from_numpy(np.array(out, dtype=np.float32))


def camkit_targets(targets: Sequence[Target] | None, batch: int) -> Any:
    """camkit's ``targets`` for pytorch-grad-cam's list of per-sample callables."""
    if targets is None:
        return None
    targets = list(targets)
    if len(targets) != batch:
        raise TargetError(f"got {len(targets)} targets for a batch of {batch}; give one per image")
    if all(type(t) is ClassifierOutputTarget for t in targets):
        return [
            int(t.category) for t in targets if isinstance(t, ClassifierOutputTarget)
        ]  # class indices: camkit's fast path

    def score(rows: Tensor, index: Tensor) -> Tensor:
        values = [targets[int(i)](row) for row, i in zip(rows, index.tolist())]
        return torch.stack([v.reshape(()) for v in values])

    return score


class BaseCAM:
    """The pytorch-grad-cam protocol over one camkit method.

    Args:
        model: the model; it is run in eval mode for each call and left as it was.
        target_layers: modules of ``model`` (their maps are averaged).
        reshape_transform: turns a layer's output into ``(B, C, h, w)``; camkit reads token
            and channels-last outputs itself, the transform is applied to the activations
            ``legacy_numerics`` uses.
        legacy_numerics: reproduce pytorch-grad-cam's values where camkit fixes them (with
            ``eigen_smooth``: the sign NumPy's SVD happens to pick, where camkit's engine
            picks the component that agrees with the unsmoothed map).
    """

    #: camkit's name of the method.
    method: ClassVar[str] = ""
    #: whether ``eigen_smooth`` applies (the Eigen methods ignore it, as the originals do).
    smoothable: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        compute_input_gradient: bool = False,
        uses_gradients: bool = True,
        tta_transforms: Any = None,
        detach: bool = True,
        *,
        legacy_numerics: bool = False,
        **config: Any,
    ) -> None:
        if not isinstance(target_layers, (list, tuple)) or not all(
            isinstance(m, nn.Module) for m in target_layers
        ):
            raise CompatTypeError(
                f"target_layers must be a list of modules of the model, got {target_layers!r}"
            )
        if tta_transforms is not None or not detach or compute_input_gradient:
            raise ConfigError(
                "camkit's pytorch-grad-cam shim supports the default tta_transforms, detach "
                "and compute_input_gradient only"
            )
        if reshape_transform is not None and not callable(reshape_transform):
            raise CompatTypeError("reshape_transform must be callable")
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.uses_gradients = uses_gradients
        self.legacy_numerics = legacy_numerics
        self._config = config
        self._extractor: camkit.Extractor | None = None
        self._eigen_smooth = False  # the engine's eigen_smooth for this call
        self.outputs: Tensor | None = None

    # -- camkit ---------------------------------------------------------------------------

    def _camkit_method(self) -> str | camkit.Method:
        return self.method

    def _camkit_config(self) -> dict[str, Any]:
        return dict(self._config)

    def _camkit(self) -> camkit.Extractor:
        eigen = self._eigen_smooth
        if self._extractor is not None and self._extractor.options.eigen_smooth != eigen:
            self._extractor = None
        if self._extractor is None:
            options = {"eigen_smooth": True} if eigen else {}
            self._extractor = extractor(
                self._camkit_method(),
                self.model,
                self.target_layers,
                self._camkit_config(),
                **options,
            )
        return self._extractor

    def _needs_activations(self, eigen_smooth: bool) -> bool:
        return self.legacy_numerics

    # -- the call -------------------------------------------------------------------------

    def __call__(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """``(B, H, W)`` float32 maps in ``[0, 1]`` for ``targets`` (default: predicted class).

        ``aug_smooth`` averages the maps of six augmented copies (horizontal flip x
        intensity 0.9, 1, 1.1), each mapped back; ``eigen_smooth`` replaces the weighted
        channel sum by its first principal component (camkit's run options of those names).
        """
        if aug_smooth:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth)
        return self.forward(input_tensor, targets, eigen_smooth)

    def forward(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """The maps of one input batch, without augmentation."""
        param = next(self.model.parameters(), None)
        x = input_tensor.to(param.device) if param is not None else input_tensor
        return self._maps(x, camkit_targets(targets, x.shape[0]), eigen_smooth)

    def _maps(self, x: Tensor, targets: Any, eigen_smooth: bool) -> np.ndarray:
        """The ``(B, H, W)`` maps of ``x`` for camkit's ``targets``."""
        activations: list[Tensor] = []
        handles = []
        self._eigen_smooth = eigen_smooth and self.smoothable and not self.legacy_numerics
        if self._needs_activations(eigen_smooth):
            for layer in self.target_layers:
                handles.append(layer.register_forward_hook(self._recorder(activations)))
        try:
            with eval_mode(self.model):
                result = self._camkit()(x, targets)
        finally:
            for handle in handles:
                handle.remove()
        self.outputs = result.scores
        layer_maps = [
            self._layer_map(result, name, activations[i] if activations else None, eigen_smooth)
            for i, name in enumerate(result.layers)
        ]
        size = tuple(x.shape[2:])
        mode = "bilinear" if len(size) == 2 else "trilinear"
        per_layer = [
            F.interpolate(
                scale(torch.relu(m.float()))[:, None], size, mode=mode, align_corners=False
            )[:, 0]
            for m in layer_maps
        ]
        fused = torch.relu(torch.stack(per_layer, 1)).mean(1)
        return scale(fused).cpu().numpy().astype(np.float32)

    def _recorder(self, into: list[Tensor]) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            shown = self.reshape_transform(output) if self.reshape_transform else output
            into.append(shown.detach().clone())

        return hook

    def _layer_map(
        self, result: camkit.CAMResult, name: str, acts: Tensor | None, eigen_smooth: bool
    ) -> Tensor:
        """``(B, h, w)`` map of one layer before the ReLU and the scaling (``eigen_smooth``:
        the engine's projection, or the original's with ``legacy_numerics``)."""
        if eigen_smooth and self.smoothable and self.legacy_numerics:
            assert acts is not None
            return projection(self._weighted(result.weights[name], acts))
        return result.layer_maps[name]

    @staticmethod
    def _weighted(weights: Tensor, acts: Tensor) -> Tensor:
        """``(B, C, h, w)`` activations times channel ``(B, C)`` or pixel weights."""
        w = weights.to(acts.device, acts.dtype)
        return acts * (w[(...,) + (None,) * (acts.ndim - 2)] if w.ndim == 2 else w)

    def forward_augmentation_smoothing(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """The mean of the maps of six augmented copies of the input, each mapped back (the
        engine's augmentations; each copy's targets are resolved on it, as the original)."""

        def run(x: Tensor) -> Tensor:
            return torch.from_numpy(self.forward(x, targets, eigen_smooth))

        return augmented_maps(run, input_tensor).numpy().astype(np.float32)

    # -- context --------------------------------------------------------------------------

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # camkit holds no hooks between calls, so there is nothing to release; unlike the
        # original, no exception is swallowed.
        self._extractor = None


class GradCAM(BaseCAM):
    """Grad-CAM (camkit's ``gradcam``): channels weighted by their averaged gradient.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import GradCAM
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        ...     grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
        >>> grayscale_cam.shape
        (1, 64, 64)
    """

    method = "gradcam"


class HiResCAM(BaseCAM):
    """HiResCAM (camkit's ``hirescam``): gradients times activations, element-wise.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import HiResCAM
        >>> grayscale_cam = HiResCAM(model, [model.layer4[-1]])(input_tensor)
    """

    method = "hirescam"


class GradCAMElementWise(BaseCAM):
    """Element-wise Grad-CAM (camkit's ``gradcam-elementwise``).

    Example:
        >>> from camkit.compat.pytorch_grad_cam import GradCAMElementWise
        >>> grayscale_cam = GradCAMElementWise(model, [model.layer4[-1]])(input_tensor)
    """

    method = "gradcam-elementwise"


class XGradCAM(BaseCAM):
    r"""XGrad-CAM (camkit's ``xgradcam``).

    pytorch-grad-cam adds :math:`10^{-7}` to the activations' sum it divides by, which
    divides by almost zero for channels summing to about :math:`-10^{-7}` (untrained models);
    camkit guards only exact zeros, and ``legacy_numerics=True`` reproduces the original.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import XGradCAM
        >>> grayscale_cam = XGradCAM(model, [model.layer4[-1]])(input_tensor)
    """

    method = "xgradcam"

    def _camkit_method(self) -> str | camkit.Method:
        if self.legacy_numerics:
            return EpsilonXGradCAM(EpsilonXGradCAM.Config(eps=1e-7))
        return self.method


class LayerCAM(BaseCAM):
    """Layer-CAM (camkit's ``layercam``).

    Example:
        >>> from camkit.compat.pytorch_grad_cam import LayerCAM
        >>> grayscale_cam = LayerCAM(model, [model.layer3[-1], model.layer4[-1]])(input_tensor)
    """

    method = "layercam"


class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++ (camkit's ``gradcampp``) with the paper's coefficients.

    pytorch-grad-cam adds :math:`10^{-6}` to the denominator of
    :math:`\alpha = g^2 / (2 g^2 + \sum A\, g^3)`, which dominates it when gradients are
    below about :math:`10^{-3}` (untrained or low-temperature models) and turns the weights
    into :math:`\sum g^3 / 10^{-6}`. camkit guards only exact zeros;
    ``legacy_numerics=True`` reproduces the original.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import GradCAMPlusPlus
        >>> grayscale_cam = GradCAMPlusPlus(model, [model.layer4[-1]])(input_tensor)
    """

    method = "gradcampp"

    def _camkit_method(self) -> str | camkit.Method:
        return "layercam" if self.legacy_numerics else self.method  # ReLU(g) as pixel weights

    def _layer_map(
        self, result: camkit.CAMResult, name: str, acts: Tensor | None, eigen_smooth: bool
    ) -> Tensor:
        if not self.legacy_numerics:
            return super()._layer_map(result, name, acts, eigen_smooth)
        assert acts is not None
        g = result.weights[name].to(acts.dtype)  # ReLU(g): only g > 0 enters the weights
        dims = tuple(range(2, acts.ndim))
        sums = acts.sum(dims, keepdim=True)
        alpha = g**2 / (2 * g**2 + sums * g**3 + 1e-6)
        weights = (g * torch.where(g != 0, alpha, 0)).sum(dims)
        if eigen_smooth:
            return projection(self._weighted(weights, acts))
        return self._weighted(weights, acts).sum(1)


class ScoreCAM(BaseCAM):
    """Score-CAM (camkit's ``scorecam``). Set ``cam.batch_size`` as with the original
    (default 16 masked inputs per forward).

    Example:
        >>> from camkit.compat.pytorch_grad_cam import ScoreCAM
        >>> cam = ScoreCAM(model, [model.layer4[-1]])
        >>> cam.batch_size = 32
        >>> grayscale_cam = cam(input_tensor)
    """

    method = "scorecam"

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False, **kw)
        self.batch_size = 16

    def _camkit(self) -> camkit.Extractor:
        if self._extractor is not None and self._extractor.options.batch_size != self.batch_size:
            self._extractor = None
        return super()._camkit()

    def _camkit_config(self) -> dict[str, Any]:
        return {**self._config, "batch_size": self.batch_size}


class AblationLayer(nn.Module):
    """Accepted for compatibility: camkit ablates channels itself (by zeroing them)."""


class AblationLayerVit(AblationLayer):
    """Accepted for compatibility: camkit ablates token channels itself."""


class AblationCAM(BaseCAM):
    """Ablation-CAM (camkit's ``ablationcam``): weights from the relative score drop when a
    channel is zeroed.

    With ``ablation_layer=AblationLayerFasterRCNN()`` it explains a torchvision detector's
    feature pyramid (``target_layers=[model.backbone]``, ``fasterrcnn_reshape_transform``,
    ``FasterRCNNBoxScoreTarget`` targets): see
    :mod:`camkit.compat.pytorch_grad_cam.ablation_fasterrcnn`.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import AblationCAM
        >>> grayscale_cam = AblationCAM(model, [model.layer4[-1]], batch_size=64)(input_tensor)
    """

    method = "ablationcam"

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        ablation_layer: nn.Module | None = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
        **kw: Any,
    ) -> None:
        if ratio_channels_to_ablate != 1.0:
            raise ConfigError(
                f"ratio_channels_to_ablate={ratio_channels_to_ablate}: camkit ablates every "
                "channel (1.0)"
            )
        if ablation_layer is not None and not isinstance(ablation_layer, AblationLayer):
            raise ConfigError(
                f"ablation_layer {type(ablation_layer).__name__}: camkit ablates channels "
                "itself; pass AblationLayer(), AblationLayerVit(), AblationLayerFasterRCNN() "
                "(a detector's pyramid), or nothing"
            )
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False, **kw)
        self.batch_size = batch_size
        self.ratio_channels_to_ablate = ratio_channels_to_ablate
        self.ablation_layer = ablation_layer
        self._config["batch_size"] = batch_size

    def forward(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """The maps of one input batch (a detector's pyramid with ``AblationLayerFasterRCNN``:
        :mod:`camkit.compat.pytorch_grad_cam.ablation_fasterrcnn`)."""
        from camkit.compat.pytorch_grad_cam import ablation_fasterrcnn as pyramid

        if isinstance(self.ablation_layer, pyramid.AblationLayerFasterRCNN):
            param = next(self.model.parameters(), None)
            x = input_tensor.to(param.device) if param is not None else input_tensor
            return pyramid.pyramid_ablation_maps(
                self, self.ablation_layer, x, targets, eigen_smooth
            )
        return super().forward(input_tensor, targets, eigen_smooth)


class EigenCAM(BaseCAM):
    """Eigen-CAM (camkit's ``eigencam`` with ``center=True``): the centred activations' first
    principal component, as pytorch-grad-cam computes it, its sign chosen to agree with the
    activations' mean.

    pytorch-grad-cam keeps whatever sign the SVD returns (after the ReLU a flipped map shows
    the complement); ``legacy_numerics=True`` reproduces that with NumPy's SVD.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import EigenCAM
        >>> grayscale_cam = EigenCAM(model, [model.layer4[-1]])(input_tensor)
    """

    method = "eigencam"
    smoothable = False

    def _camkit_config(self) -> dict[str, Any]:
        return {**self._config, "center": True}

    def _layer_map(
        self, result: camkit.CAMResult, name: str, acts: Tensor | None, eigen_smooth: bool
    ) -> Tensor:
        if not self.legacy_numerics:
            return result.layer_maps[name]
        assert acts is not None
        return projection(self._legacy_features(result, name, acts))

    def _legacy_features(self, result: camkit.CAMResult, name: str, acts: Tensor) -> Tensor:
        return acts


class EigenGradCAM(EigenCAM):
    """Eigen-Grad-CAM (camkit's ``eigengradcam`` with ``center=True``): Eigen-CAM of
    gradients times activations.

    ``legacy_numerics=True`` reproduces pytorch-grad-cam's centred, sign-ambiguous projection.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import EigenGradCAM
        >>> grayscale_cam = EigenGradCAM(model, [model.layer4[-1]])(input_tensor)
    """

    method = "eigengradcam"

    def _camkit_method(self) -> str | camkit.Method:
        return "hirescam" if self.legacy_numerics else self.method  # weights g for g * A

    def _camkit_config(self) -> dict[str, Any]:
        return dict(self._config) if self.legacy_numerics else super()._camkit_config()

    def _legacy_features(self, result: camkit.CAMResult, name: str, acts: Tensor) -> Tensor:
        return self._weighted(result.weights[name], acts)


class RandomCAM(BaseCAM):
    """Random-CAM (camkit's ``randomcam``): uniform random channel weights in ``[-1, 1]``,
    seeded from NumPy's global generator (``np.random.seed`` makes it reproducible).

    Example:
        >>> from camkit.compat.pytorch_grad_cam import RandomCAM
        >>> grayscale_cam = RandomCAM(model, [model.layer4[-1]])(input_tensor)
    """

    method = "randomcam"

    def _camkit(self) -> camkit.Extractor:
        self._extractor = None  # fresh weights on every call, as the original
        return super()._camkit()

    def _camkit_config(self) -> dict[str, Any]:
        return {**self._config, "seed": int(np.random.randint(0, 2**31 - 1))}


class KPCA_CAM(BaseCAM):
    """KPCA-CAM (camkit's ``kpcacam``): the activations' first kernel principal component, its
    sign chosen to agree with the activations' mean (scikit-learn's, in the original, makes
    the largest-magnitude entry positive, so after the ReLU the original may show the
    complement).

    Example:
        >>> from camkit.compat.pytorch_grad_cam import KPCA_CAM
        >>> grayscale_cam = KPCA_CAM(model, [model.layer4[-1]], kernel="rbf")(input_tensor)
    """

    method = "kpcacam"
    smoothable = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False, **kw)
        self.kernel = kernel
        self.gamma = gamma
        self._config.update(kernel=kernel, gamma=gamma)


class FEM(BaseCAM):
    """FEM (camkit's ``fem``): channels weighted by their share of locations above
    ``mean + k * std``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import FEM
        >>> grayscale_cam = FEM(model, [model.layer3[-1]], k=2)(input_tensor)
    """

    method = "fem"
    smoothable = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        k: float = 2,
        **kw: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False, **kw)
        self.k = k
        self._config["k"] = k


class SegEigenCAM(BaseCAM):
    """Seg-Eigen-CAM (camkit's ``segeigencam``): the first principal component of
    ``|gradients| * activations``, flipped when its most extreme value is negative.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import SegEigenCAM
        >>> grayscale_cam = SegEigenCAM(model, [model.layer4[-1]])(input_tensor)
    """

    method = "segeigencam"
    smoothable = False
