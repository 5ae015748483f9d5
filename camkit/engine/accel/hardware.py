"""What this process's devices can do, probed once and cached.

Every fast path of the engine asks here instead of assuming a CPU feature. The probes are
cheap (a look at the CPU's flags, one tiny operator call each) and run on first use. Tests
force any branch with the environment variable ``CAMKIT_CPU_CAPS`` (see :func:`capabilities`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Capabilities:
    """What one device can do.

    Attributes:
        device: the device type, ``"cpu"`` or ``"cuda"``.
        bf16_native: bfloat16 matrix products and convolutions run on native units (faster
            than float32), not emulated.
        fused_post_ops_fp32: oneDNN runs an activation as a float32 convolution's post-op.
        fused_post_ops_bf16: the same for bfloat16 convolutions.
    """

    device: str
    bf16_native: bool
    fused_post_ops_fp32: bool
    fused_post_ops_bf16: bool


@functools.cache
def capabilities(device: str = "cpu") -> Capabilities:
    """The capabilities of ``device`` (a device type such as ``"cpu"``)."""
    from camkit.engine.accel.inference import _fused_activations_work

    if device == "cuda":
        major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 0
        return Capabilities(device, major >= 8, False, False)
    fused = _fused_activations_work()
    return Capabilities(device, True, fused, fused)
