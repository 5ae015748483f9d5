"""Every method on a CUDA device: same maps as on the CPU, seeded noise on the device, no leaks.

Skipped where no GPU is present (CI has none); run on a GPU machine with
``pytest tests/engine/test_cuda.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torchvision.models import resnet18

import camkit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Small settings so every method runs in seconds; a seed wherever the method has one.
SMALL = {"batch_size": 64, "num_samples": 2, "seed": 0}


def small_config(name: str) -> dict[str, object]:
    fields = camkit.method_info(name).config.model_fields
    return {key: value for key, value in SMALL.items() if key in fields}


@pytest.fixture(scope="module")
def models() -> Iterator[tuple[torch.nn.Module, torch.nn.Module]]:
    # TF32 convolutions differ from the CPU by ~1e-3 relative; compare full float32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cpu = resnet18(weights=None, num_classes=10).eval()
    yield cpu, copy.deepcopy(cpu).cuda()
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    stacked = torch.stack([a.flatten().double(), b.flatten().double()])
    return float(torch.corrcoef(stacked)[0, 1])


@pytest.mark.parametrize("name", camkit.list_methods())
def test_method_on_cuda_matches_cpu(name, models):
    cpu_model, gpu_model = models
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    config = small_config(name)
    on_gpu = camkit.create(name, gpu_model, "layer4", **config)(x.cuda(), targets=[1, 2])
    assert on_gpu.maps.device.type == "cuda"
    assert bool(torch.isfinite(on_gpu.maps).all())
    assert not any(m._forward_hooks for m in gpu_model.modules())
    again = camkit.create(name, gpu_model, "layer4", **config)(x.cuda(), targets=[1, 2])
    if "seed" in config:
        # Noise is drawn on the device, so only repeatability is comparable with the CPU run.
        torch.testing.assert_close(on_gpu.maps, again.maps)
        return
    on_cpu = camkit.create(name, cpu_model, "layer4", **config)(x, targets=[1, 2])
    torch.testing.assert_close(on_gpu.maps.cpu(), on_cpu.maps, atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", ["scorecam", "iscam"])
def test_bf16_scoring_on_cuda_is_close_to_fp32(name, models):
    _, gpu_model = models
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)).cuda()
    exact = camkit.create(name, gpu_model, "layer4", batch_size=64)(x, targets=[3, 4])
    fast = camkit.create(name, gpu_model, "layer4", batch_size=64, precision="bf16")(
        x, targets=[3, 4]
    )
    assert fast.maps.dtype == torch.float32
    assert correlation(exact.maps, fast.maps) > 0.98
