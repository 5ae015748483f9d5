"""The layer-masked scoring pass: target scores with a layer's channels rescaled, in chunks.

Ablation-style methods ask "what does the target score become when channel ``k`` of this
layer is switched off?". The pass answers for many channel masks at once: each row of work
is one image forwarded with the target layer's output multiplied channel-wise by one mask. A
forward hook on the layer applies the masks; it is attached for one pass, removed in
``finally``, and only acts for the thread that attached it, like every camkit hook. Memory is
bounded by the run option ``batch_size`` inputs, and the masks are read one chunk at a time,
so a broadcast ``(B, C, C)`` mask tensor (e.g. from ``expand``) is never materialized. The
forwards run in the run options' precision (under autocast: the hook needs the model's own
modules, never an inference copy).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camkit.engine.outputs import layer_tensor, with_layer_tensor
from camkit.errors import LayerError, PluginError

if TYPE_CHECKING:
    from camkit.engine.services import Services


def score_layer(door: Services, layer: str, masks: Tensor) -> Tensor:
    """Target scores ``(B, M)`` for ``(B, M, C)`` channel masks of ``layer``.

    Row ``(b, m)`` is image ``b`` forwarded with channel ``k`` of the layer's output
    multiplied by ``masks[b, m, k]``, under ``torch.inference_mode()``.
    """
    inputs = door.inputs
    batch = inputs.shape[0]
    if masks.dim() != 3 or masks.shape[0] != batch:
        raise PluginError(
            f"score_layer() needs masks of shape (B={batch}, M, C) for layer {layer!r}, got "
            f"{tuple(masks.shape)}"
        )
    count = masks.shape[1]
    total = batch * count
    scores = torch.empty(total, device=inputs.device, dtype=torch.float32)
    plan = door.accel.scoring(inputs, hooked=True, rows=total)
    channels_last = plan.channels_last
    mask = _ChannelMask(door, layer)
    handle = door.layers[layer].register_forward_hook(mask.hook)
    try:
        with door.inference(plan):
            for start, stop in door.chunks(total, f"{layer} layer scoring"):
                rows = torch.arange(start, stop)
                image, which = rows // count, rows % count
                mask.values = masks[image.to(masks.device), which.to(masks.device)].detach()
                index = image.to(inputs.device)
                out, channels_last = door.run(plan.model, inputs[index], channels_last)
                if not mask.ran:
                    raise LayerError(f"layer {layer!r} did not run during the model's forward pass")
                mask.ran = False
                scores[start:stop] = door.target_scores(out, index)
    finally:
        handle.remove()
    return scores.reshape(batch, count)


class _ChannelMask:
    """The forward hook that multiplies a layer's output channel-wise by the chunk's masks,
    through the engine's channels-first view, so that a channels-last or token output is
    masked on exactly the channels a method sees (class tokens the view drops stay as they
    are)."""

    def __init__(self, door: Services, layer: str) -> None:
        self.door, self.layer = door, layer
        self.thread = threading.get_ident()
        self.values: Tensor | None = None
        self.ran = False

    def hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self.thread or self.values is None:
            return None
        masked = layer_tensor(output, self.layer).clone()
        features = self.door.view(masked, self.layer)
        if features.untyped_storage().data_ptr() != masked.untyped_storage().data_ptr():
            raise LayerError(
                f"cannot mask the channels of layer {self.layer!r}: its output of shape "
                f"{tuple(masked.shape)} has no channels-first view"
            )
        if self.values.shape[1] != features.shape[1]:
            raise PluginError(
                f"score_layer() needs masks of shape (B={self.door.inputs.shape[0]}, M, "
                f"C={features.shape[1]}) for layer {self.layer!r}, got masks of "
                f"{self.values.shape[1]} channels"
            )
        mask = self.values.to(features.device, features.dtype)
        features.mul_(mask.reshape(*mask.shape, *([1] * (features.dim() - 2))))
        self.ran = True
        return with_layer_tensor(output, masked)
