"""Ablation-CAM over a detector's feature pyramid: pytorch-grad-cam 1.5.7's
``AblationLayerFasterRCNN``, computed by camkit's ``ablationcam``.

The original explains torchvision's Faster R-CNN at ``model.backbone``, whose output is a
dict of pyramid levels (``"0"``, ``"1"``, ..., ``"pool"``) of 256 channels each. Its channels
are the levels' channels in the dict's order (the order ``fasterrcnn_reshape_transform``
concatenates them in); ablating one sets it to ``-1000`` everywhere, and its weight is the
relative drop of the target score (e.g. ``FasterRCNNBoxScoreTarget``).

camkit's engine explains layers that output one tensor. The shim therefore hands camkit a
stand-in layer, a ``(B, C, 1, 1)`` gate of ones (``C`` the pyramid's channels): a forward
hook on the pyramid module, attached for one call, routes the levels through the gate, and
channel ``k`` of a level becomes ``v * g_k + (1 - g_k) * (-1000)``, the level itself where the
gate is 1 and the original's ablation where camkit's Ablation-CAM zeroes it. camkit's
``ablationcam`` computes the weights (its chunked layer-scoring pass, the run option
``batch_size``); the shim weights the clean pyramid's transformed activations with them and
post-processes as every CAM of the shim does.

Ablating a pyramid channel changes nothing upstream of the pyramid, so each ablated forward
gives the pyramid module the same input as the clean forward did. As the original, the shim
does not recompute the pyramid then: for the one call, the module's ``forward`` answers an input
equal, image by image, to the clean forward's with the clean pyramid's levels (any other input,
or another thread, runs the module itself); only the detector's heads run per ablated channel.
The module's own ``forward`` is back when the call returns or raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.compat._shared import eval_mode, extractor
from camkit.compat.pytorch_grad_cam.base_cam import AblationLayer
from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform
from camkit.errors import CamkitError, ConfigError, LayerError, TargetError

if TYPE_CHECKING:
    from camkit.compat.pytorch_grad_cam.base_cam import AblationCAM

__all__ = ["AblationLayerFasterRCNN", "PyramidAblation", "detections_of", "pyramid_ablation_maps"]


class AblationLayerFasterRCNN(AblationLayer):
    """Pass to ``AblationCAM(..., ablation_layer=AblationLayerFasterRCNN())`` to ablate the
    channels of a detector's feature pyramid (``target_layers=[model.backbone]``), each set to
    :attr:`ablation_value`, as the original.

    Example (not run by the test suite: it runs the detector once per pyramid channel, 1280
    forwards for a ResNet FPN; ``tests/compat/test_ablation_fasterrcnn.py`` runs it on a
    smaller detector):
        >>> from camkit.compat.pytorch_grad_cam import AblationCAM
        >>> from camkit.compat.pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import (
        ...     FasterRCNNBoxScoreTarget,
        ... )
        >>> from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import (
        ...     fasterrcnn_reshape_transform,
        ... )
        >>> found = detector(input_tensor)[0]
        >>> targets = [FasterRCNNBoxScoreTarget(found["labels"][:1], found["boxes"][:1])]
        >>> cam = AblationCAM(  # doctest: +SKIP
        ...     detector,
        ...     [detector.backbone],
        ...     fasterrcnn_reshape_transform,
        ...     ablation_layer=AblationLayerFasterRCNN(),
        ... )
        >>> cam(input_tensor, targets=targets).shape  # doctest: +SKIP
        (1, 64, 64)
    """

    #: the value an ablated channel takes (the original's).
    ablation_value: float = -1000.0


class _Gate(nn.Module):
    """Ones ``(B, C, 1, 1)`` for a pyramid of ``C`` channels: the layer camkit ablates."""

    def forward(self, levels: Mapping[str, Tensor]) -> Tensor:
        first = next(iter(levels.values()))
        channels = sum(v.shape[1] for v in levels.values())
        return first.new_ones(first.shape[0], channels, 1, 1)


class _Gated(nn.Module):
    """The detector (a child, unchanged) and the gate its pyramid goes through."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.gate = _Gate()

    def forward(self, x: Tensor) -> Any:
        return self.model(x)


class PyramidAblation:
    """The pyramid module's stand-in ``forward`` and forward hook for one call: levels through
    the gate, ablated channels set to ``value``; the first (clean) pyramid and its input are
    recorded, and later forwards of an input equal to the clean one reuse the clean levels."""

    def __init__(
        self,
        gate: nn.Module,
        value: float,
        check: Callable[[dict[str, Tensor]], Any] | None = None,
    ) -> None:
        self.gate, self.value = gate, value
        self.check = check  # called on the clean pyramid, before any ablated forward
        self.checked: Any = None  # what it returned
        self.clean: dict[str, Tensor] | None = None
        self.clean_input: Tensor | None = None
        self.recalled: dict[str, Tensor] | None = None  # the last levels recalled
        self.reused = 0
        self._thread = threading.get_ident()

    def attach(self, module: nn.Module) -> Callable[[], None]:
        """Hook ``module`` (and stand in for its ``forward``); returns the undo."""
        handle = module.register_forward_hook(self.hook)
        own = module.__dict__.get("forward")
        run = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._thread and len(args) == 1 and not kwargs:
                levels = self.recall(args[0])
                if levels is not None:
                    return levels
                if self.clean_input is None and isinstance(args[0], Tensor):
                    self.clean_input = args[0].detach().clone()
            return run(*args, **kwargs)

        try:
            module.forward = forward
            patched = True
        except (AttributeError, RuntimeError, TypeError):  # a scripted module: run it each time
            patched = False

        def undo() -> None:
            handle.remove()
            if patched:
                if own is None:
                    del module.forward
                else:
                    module.forward = own

        return undo

    def recall(self, x: Any) -> dict[str, Tensor] | None:
        """The clean levels for ``x`` when each of its images is one the clean forward saw
        (compared exactly), else None."""
        clean, seen = self.clean, self.clean_input
        if clean is None or seen is None or not isinstance(x, Tensor):
            return None
        if x.shape[1:] != seen.shape[1:] or x.dtype != seen.dtype or x.device != seen.device:
            return None
        rows: list[int] = []
        for image in x:
            found = next((b for b, known in enumerate(seen) if torch.equal(image, known)), None)
            if found is None:
                return None
            rows.append(found)
        self.reused += 1
        kind: Any = type(clean)  # the module's own mapping type (an OrderedDict)
        if len(set(rows)) == 1:  # one image's rows: views of its levels, copied once, ablated
            first = rows[0]
            views = (
                (k, v[first : first + 1].expand(len(rows), *v.shape[1:])) for k, v in clean.items()
            )
            levels = kind(views)
        else:
            index = torch.tensor(rows, device=x.device)
            levels = kind((k, v.index_select(0, index)) for k, v in clean.items())
        self.recalled = levels
        return levels

    def hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, Mapping) or not all(
            isinstance(v, Tensor) and v.dim() == 4 for v in output.values()
        ):
            raise LayerError(
                "AblationLayerFasterRCNN ablates a module that returns a dict of (B, C, h, w) "
                f"pyramid levels (a detector's backbone), got {type(output).__name__}"
            )
        gate = self.gate(output)
        if self.clean is None:
            self.clean = {k: v.detach().clone() for k, v in output.items()}
            if self.check is not None:
                self.checked = self.check(self.clean)
        if bool((gate == 1).all()):
            # Nothing ablated: the levels as they are, in memory of their own (a recalled
            # pyramid is views of the clean one).
            if self.recalled is None or output is not self.recalled:
                return None
            kind: Any = type(output)
            return kind((k, v.contiguous()) for k, v in self.recalled.items())
        binary = bool(((gate == 0) | (gate == 1)).all())  # as camkit's ablation masks are
        ablated: dict[str, Tensor] = {}
        start = 0
        for key, level in output.items():
            g = gate[:, start : start + level.shape[1]]
            if binary:  # one copy of the level, then the ablated channels set to the value
                out = level.clone(memory_format=torch.contiguous_format)
                rows, channels = (g.flatten(1) == 0).nonzero(as_tuple=True)
                out[rows, channels] = self.value
                ablated[key] = out
            else:
                g = g.to(level.dtype)
                ablated[key] = level * g + (1 - g) * self.value
            start += level.shape[1]
        same: Any = type(output)  # the detector's own mapping type (an OrderedDict)
        return same(ablated)


def detections_of(rows: Tensor) -> dict[str, Tensor]:
    """One image's packed detections ``(M, 6)`` (camkit's ``[x1, y1, x2, y2, score, label]``,
    label ``-1`` pads) as the dict a torchvision detector returns, for the original's targets.

    Example:
        >>> detections_of(torch.tensor([[0.0, 0, 2, 2, 0.9, 3], [0, 0, 0, 0, 0, -1]]))["labels"]
        tensor([3])
    """
    found = rows[rows[:, 5] >= 0]
    return {"boxes": found[:, :4], "scores": found[:, 4], "labels": found[:, 5].round().long()}


def _score(targets: Sequence[Callable[[Any], Tensor]]) -> Callable[[Tensor, Tensor], Tensor]:
    def score(rows: Tensor, index: Tensor) -> Tensor:
        if rows.dim() != 3 or rows.shape[2] != 6:
            raise TargetError(
                "AblationLayerFasterRCNN needs a detector returning one dict of boxes, scores "
                f"and labels per image; its scores have shape {tuple(rows.shape)}"
            )
        values = [targets[int(i)](detections_of(row)) for row, i in zip(rows, index.tolist())]
        return torch.stack([torch.as_tensor(v).reshape(()).to(rows) for v in values])

    return score


def pyramid_ablation_maps(
    cam: AblationCAM,
    layer: AblationLayerFasterRCNN,
    x: Tensor,
    targets: Sequence[Any] | None,
    eigen_smooth: bool,
) -> np.ndarray:
    """The ``(B, H, W)`` maps of ``cam`` (an ``AblationCAM`` with ``layer`` as its ablation
    layer) on ``x``, as the original computes them."""
    from camkit.compat.pytorch_grad_cam.base_cam import projection, scale

    if targets is None:
        raise TargetError(
            "a detector has no predicted class: pass targets, e.g. one "
            "FasterRCNNBoxScoreTarget(labels, bounding_boxes) per image"
        )
    targets = list(targets)
    if len(targets) != x.shape[0]:
        raise TargetError(f"got {len(targets)} targets for a batch of {x.shape[0]}")
    if len(cam.target_layers) != 1:
        raise ConfigError(
            "AblationLayerFasterRCNN ablates one pyramid module (the detector's backbone); "
            f"got {len(cam.target_layers)} target layers"
        )
    gated = _Gated(cam.model)
    transform: Callable[[Any], Tensor] = cam.reshape_transform or fasterrcnn_reshape_transform
    ablation = PyramidAblation(
        gated.gate, layer.ablation_value, lambda levels: _activations(transform, levels)
    )
    camkit_cam = extractor(
        cam._camkit_method(),
        gated,
        "gate",
        {**cam._camkit_config(), "channels_last": False},
    )
    undo = ablation.attach(cam.target_layers[0])
    try:
        with eval_mode(cam.model):
            result = camkit_cam(x, _score(targets))
    finally:
        undo()
    acts: Tensor = ablation.checked  # the clean pyramid's, checked before the ablations
    weights = result.weights[result.layers[0]].float().to(acts.device)
    cam.outputs = result.scores
    weighted = acts * weights[:, :, None, None]
    layer_map = projection(weighted) if eigen_smooth else weighted.sum(1)
    size = tuple(x.shape[2:])
    upsampled = F.interpolate(
        scale(torch.relu(layer_map.float()))[:, None], size, mode="bilinear", align_corners=False
    )[:, 0]
    return scale(torch.relu(upsampled)).cpu().numpy().astype(np.float32)


def _activations(transform: Callable[[Any], Tensor], levels: dict[str, Tensor]) -> Tensor:
    """The pyramid's ``(B, C, h, w)`` activations by ``transform`` (checked: ``C`` is the
    pyramid's channels, in the dict's order), in float32; a :class:`ConfigError` otherwise."""
    channels = sum(v.shape[1] for v in levels.values())
    try:
        acts = transform(levels)
    except CamkitError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"reshape_transform failed on the pyramid's levels {list(levels)} "
            f"({type(exc).__name__}: {exc}); pass one for this pyramid, returning its "
            f"{channels} channels concatenated in the dict's order as (B, C, h, w)"
        ) from exc
    if not isinstance(acts, Tensor) or acts.dim() != 4 or acts.shape[1] != channels:
        got = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
        raise ConfigError(
            f"reshape_transform gave {got}; AblationLayerFasterRCNN needs the "
            f"pyramid's {channels} channels concatenated in the dict's order, "
            "(B, C, h, w) (fasterrcnn_reshape_transform)"
        )
    return acts.float()
