"""pytorch-grad-cam's ``SESS``: a base CAM class run over scaled, sliding windows of each
image, computed by camkit's engine (:mod:`camkit.engine.sess`, the ``sess`` run option)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from camkit.compat._shared import eval_mode
from camkit.compat.pytorch_grad_cam.base_cam import GradCAM, Target, camkit_targets, scale
from camkit.compat.pytorch_grad_cam.finer_cam import _base_class, _Wrapper
from camkit.engine.options import describe
from camkit.engine.sess import SESSOptions, explain_sess
from camkit.errors import ConfigError

__all__ = ["SESS"]


class SESS(_Wrapper):
    """SESS (Tursun et al., ECCV 2022): ``base_method``'s maps of square windows slid over the
    input resized to several scales, weighted by their window's target score, pasted back and
    fused (a mean over the windows covering each pixel, or a max), blurred and normalized.

    The arguments are the original's; ``scales`` ... ``use_softmax_scores`` are camkit's
    ``sess`` run option (:class:`camkit.engine.sess.SESSOptions`), invalid values a
    :class:`~camkit.errors.ConfigError` (a ``ValueError``, as in the original). Every window's
    map is ``base_method``'s (this shim's class, with ``**kwargs``), ``batch_size`` windows
    per call.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import SESS, GradCAM
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> with SESS(model, [model.layer4[-1]], base_method=GradCAM, num_scales=4) as cam:
        ...     grayscale_cam = cam(input_tensor, [ClassifierOutputTarget(281)])
        >>> grayscale_cam.shape
        (1, 64, 64)
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        base_method: type = GradCAM,
        scales: Sequence[int] | None = None,
        num_scales: int = 12,
        scale_step_ratio: float = 2.0 / 7.0,
        window_size: int | None = None,
        step_size: int | None = None,
        pre_filter_ratio: float = 0.0,
        theta: float = 0.0,
        pool: str = "mean",
        smooth: bool = True,
        use_softmax_scores: bool = True,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        options: dict[str, Any] = {
            "scales": None if scales is None else list(scales),
            "num_scales": num_scales,
            "scale_step_ratio": scale_step_ratio,
            "window_size": window_size,
            "step_size": step_size,
            "pre_filter_ratio": pre_filter_ratio,
            "theta": theta,
            "pool": pool,
            "smooth": smooth,
            "use_softmax_scores": use_softmax_scores,
        }
        try:
            self.options = SESSOptions.model_validate(options)
        except ValidationError as exc:
            raise ConfigError(f"invalid SESS options: {describe(exc)}") from None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self.base_cam = _base_class(base_method)(model, target_layers, reshape_transform, **kwargs)
        self.model = model
        self.batch_size = batch_size
        for key, value in options.items():
            setattr(self, key, value)

    def forward(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """``(B, H, W)`` float32 maps in ``[0, 1]`` (targets default to the predicted class);
        ``eigen_smooth`` is passed to the base method."""
        param = next(self.model.parameters(), None)
        x = input_tensor.detach()
        x = x.to(param.device) if param is not None else x

        def windows(patches: Tensor, target: Any) -> Tensor:
            maps = self.base_cam._maps(patches, target, eigen_smooth)
            return torch.from_numpy(maps).to(patches.device)

        with eval_mode(self.model):
            _, _, fused, _ = explain_sess(
                self.model,
                x,
                camkit_targets(targets, x.shape[0]),
                self.options,
                windows,
                self.batch_size,
            )
        return scale(fused.float()).cpu().numpy().astype(np.float32)
