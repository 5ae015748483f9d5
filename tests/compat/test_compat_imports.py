"""Importing a shim never imports its peer, nor OpenCV: camkit has no runtime dependency on them."""

from __future__ import annotations

import subprocess
import sys

SHIMS = [
    "camkit.compat.torchcam",
    "camkit.compat.torchcam.methods",
    "camkit.compat.torchcam.metrics",
    "camkit.compat.torchcam.utils",
    "camkit.compat.pytorch_grad_cam",
    "camkit.compat.pytorch_grad_cam.utils.image",
    "camkit.compat.pytorch_grad_cam.utils.model_targets",
    "camkit.compat.pytorch_grad_cam.utils.reshape_transforms",
    "camkit.compat.pytorch_grad_cam.metrics.cam_mult_image",
    "camkit.compat.pytorch_grad_cam.metrics.road",
    "camkit.compat.pytorch_grad_cam.finer_cam",
    "camkit.compat.torchcam.methods.wrappers",
]


def test_importing_the_shims_imports_neither_peer_nor_opencv():
    code = (
        "import importlib, sys\n"
        f"for name in {SHIMS!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('torchcam', 'pytorch_grad_cam', 'cv2', 'ttach', 'matplotlib')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
