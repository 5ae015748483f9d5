"""The layer scoring service: target scores with a layer's channels rescaled, in chunks.

Ablation-style methods ask "what does the target score become when channel ``k`` of this
layer is switched off?". The service answers for many channel masks at once: each row of
work is one image forwarded with the target layer's output multiplied channel-wise by one
mask. A forward hook on the layer applies the masks; it is attached for one call, removed in
``finally``, and only acts for the thread that attached it, like every camkit hook. Memory is
bounded by ``batch_size`` inputs, and the masks are read one chunk at a time, so a broadcast
``(B, C, C)`` mask tensor (e.g. from ``expand``) is never materialized.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from camkit.engine.outputs import layer_tensor, scores_of, with_layer_tensor
from camkit.engine.scoring import PROGRESS_AFTER
from camkit.errors import LayerError, PluginError


class LayerScorer:
    """Forward the input with one layer's output multiplied channel-wise by each mask.

    Args:
        model: the model being explained.
        inputs: ``(B, C_in, H, W)`` the clean batch.
        layer: ``(name, module)`` of the target layer.
        channels: ``C``, the layer's channel count in camkit's channels-first view.
        to_features: the engine's reading of the layer's output as ``(n, C, h, w)``; it must
            return a view, through which the masks are applied, so that a channels-last or
            token output is masked on exactly the channels a method sees (class tokens that
            the view drops stay untouched).
        score: ``score(rows, index) -> (n,)`` target scores of output rows from images
            ``index``.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        layer: tuple[str, nn.Module],
        channels: int,
        to_features: Callable[[Tensor], Tensor],
        score: Callable[[Tensor, Tensor], Tensor],
        *,
        batch_size: int = 32,
        progress: bool | None = None,
        desc: str = "layer scoring",
    ) -> None:
        self.model = model
        self.inputs = inputs.detach()
        self.name, self.module = layer
        self.channels = channels
        self.to_features = to_features
        self.score_rows = score
        self.batch_size = batch_size
        self.progress = progress
        self.desc = desc
        self._thread = threading.get_ident()
        self._mask: Tensor | None = None
        self._ran = False

    def __call__(self, masks: Tensor) -> Tensor:
        """Target scores for ``(B, M, C)`` channel masks; returns ``(B, M)``.

        Row ``(b, m)`` is image ``b`` forwarded with channel ``k`` of the layer's output
        multiplied by ``masks[b, m, k]``, under ``torch.inference_mode()``.
        """
        batch = self.inputs.shape[0]
        if masks.dim() != 3 or masks.shape[0] != batch or masks.shape[2] != self.channels:
            raise PluginError(
                f"score_layer() needs masks of shape (B={batch}, M, C={self.channels}) for "
                f"layer {self.name!r}, got {tuple(masks.shape)}"
            )
        count = masks.shape[1]
        total = batch * count
        scores = torch.empty(total, device=self.inputs.device, dtype=torch.float32)
        starts = range(0, total, self.batch_size)
        show = (
            self.progress
            if self.progress is not None
            else (len(starts) >= PROGRESS_AFTER and sys.stderr.isatty())
        )
        with torch.inference_mode():
            handle = self.module.register_forward_hook(self._hook)
            try:
                for start in tqdm(starts, desc=self.desc, disable=not show, leave=False):
                    rows = torch.arange(start, min(start + self.batch_size, total))
                    image, which = rows // count, rows % count
                    self._mask = masks[image.to(masks.device), which.to(masks.device)].detach()
                    self._ran = False
                    index = image.to(self.inputs.device)
                    out = scores_of(self.model(self.inputs[index]))
                    if not self._ran:
                        raise LayerError(
                            f"layer {self.name!r} did not run during the model's forward pass"
                        )
                    scores[start : start + rows.numel()] = self.score_rows(out, index).float()
            finally:
                handle.remove()
                self._mask = None
        return scores.reshape(batch, count)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self._thread or self._mask is None:
            return None
        masked = layer_tensor(output, self.name).clone()
        features = self.to_features(masked)
        if features.untyped_storage().data_ptr() != masked.untyped_storage().data_ptr():
            raise LayerError(
                f"cannot mask the channels of layer {self.name!r}: its output of shape "
                f"{tuple(masked.shape)} has no channels-first view"
            )
        mask = self._mask.to(features.device, features.dtype)
        features.mul_(mask.reshape(*mask.shape, *([1] * (features.dim() - 2))))
        self._ran = True
        return with_layer_tensor(output, masked)
