"""Helpers of the compat tests, imported by name (``from compat_helpers import images``): the
peers as oracles (skipped when absent), small models. The fixtures are in ``conftest.py``."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

HAS_TORCHCAM = importlib.util.find_spec("torchcam") is not None
HAS_GRAD_CAM = importlib.util.find_spec("pytorch_grad_cam") is not None
HAS_CONTRIB = importlib.util.find_spec("camkit_contrib") is not None

needs_torchcam = pytest.mark.skipif(
    not HAS_TORCHCAM, reason="torchcam 0.5.0 is not installed (pip install '.[compat-test]')"
)
needs_grad_cam = pytest.mark.skipif(
    not HAS_GRAD_CAM, reason="grad-cam 1.5.7 is not installed (pip install '.[compat-test]')"
)
needs_contrib = pytest.mark.skipif(
    not HAS_CONTRIB, reason="camkit-contrib is not installed (pip install plugins/camkit-contrib)"
)


def small_cnn(channels: int = 6, num_classes: int = 5) -> nn.Module:
    """conv-relu-conv-relu, global pooling, one linear head: every CAM method applies."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, channels, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((1, 1)),
        ),
        nn.Flatten(1),
        nn.Linear(channels, num_classes),
    ).eval()


def images(batch: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_vit() -> nn.Module:
    """A torchvision ViT small enough for a test: 32x32 input, 8x8 patches (a 4x4 grid)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()


def until_landed(factory, *args, **kwargs):
    """``factory(*args, **kwargs)``, or a skip while the shim raises ``MethodNotFoundError``
    (camkit-contrib, which computes several shims, is not installed), so that the ported
    test is skipped there instead of failing. Any other error fails the test."""
    from camkit.errors import MethodNotFoundError

    try:
        return factory(*args, **kwargs)
    except MethodNotFoundError as exc:
        pytest.skip(f"{getattr(factory, '__name__', factory)}: {exc}")
