"""The gradients-at-other-inputs pass: gradients at a layer for inputs other than the
explained batch (noisy copies, for Smooth Grad-CAM++), forward and backward chunk by chunk.

Each chunk is one forward with a capture on the layer (the autograd graph starts at the
layer, as in the clean pass) and one ``torch.autograd.grad`` of its rows' target scores; the
memory layout follows the clean pass's rule, and the gradients are returned channels first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from camkit.engine.capture import Capture, check_gradients, grad_enabled
from camkit.errors import PluginError

if TYPE_CHECKING:
    from camkit.engine.services import Services


def gradients_at(door: Services, layer: str, inputs: Tensor) -> Tensor:
    """``(N * B, C, h, w)`` gradients at ``layer`` for ``(N * B, C_in, H, W)`` inputs.

    Row ``i`` is scored for the target of image ``i % B``.
    """
    batch = door.targets.shape[0]
    if inputs.shape[0] % batch:
        raise PluginError(
            f"gradients_at() needs a multiple of the batch size {batch} inputs, "
            f"got {inputs.shape[0]}"
        )
    parts = []
    for start, stop in door.chunks(inputs.shape[0], f"{layer} gradients"):
        chunk = inputs[start:stop].detach()
        index = torch.arange(start, stop, device=chunk.device) % batch
        capture = Capture([(layer, door.layers[layer])], gradients=True)
        layout = door.accel.explain_channels_last(chunk)  # before any hook (may be measured)
        with grad_enabled():
            with capture:
                out = door.run(door.model, chunk, layout, restart=capture.restart)[0]
            capture.check_ran()
            capture.check_finite()
            grads = capture.grad(door.chosen.score(out, index).sum())
        check_gradients(grads)
        parts.append(door.view(grads[layer], layer).contiguous())
    return torch.cat(parts)
