"""Fixtures of the method tests: models, inputs and a forward counter."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torchvision
from reference_impl import TinyCNN, tiny_cnn
from torch import Tensor, nn


@pytest.fixture
def tiny_net() -> TinyCNN:
    return tiny_cnn()


@pytest.fixture
def tiny_input() -> Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture
def resnet_input() -> Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def count_rows() -> Iterator[Callable[[nn.Module], list[int]]]:
    """Attach a forward pre-hook recording the batch size of every forward of ``model``."""
    handles = []

    def attach(model: nn.Module) -> list[int]:
        rows: list[int] = []
        handles.append(model.register_forward_pre_hook(lambda _m, args: rows.append(len(args[0]))))
        return rows

    yield attach
    for handle in handles:
        handle.remove()
