"""Fixtures of the compat tests; the helpers they import by name are in ``compat_helpers.py``
(a ``conftest`` module is not importable by name when pytest collects several test folders)."""

from __future__ import annotations

import pytest
import torch
from compat_helpers import small_cnn
from torch import nn


@pytest.fixture
def cnn() -> nn.Module:
    return small_cnn()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).eval()
