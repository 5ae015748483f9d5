"""FullGrad, Guided Backpropagation and Guided Grad-CAM against direct re-implementations of
their formulas: a tiny network whose backward pass is written out by hand below (convolutions
through ``torch.nn.grad.conv2d_input``, ReLUs and batch norm by their derivatives), and the
post-processing by loops; and the hygiene of the guided pass (model, hooks, function modes)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from camkit_contrib import guided_backprop, guided_gradcam
from torch import Tensor, nn

import camkit
from camkit.errors import CamkitWarning
from camkit.testing import no_hooks_left


class Net(nn.Module):
    """conv(bias) -> batch norm -> nn.ReLU(inplace) -> conv(bias, stride 2) -> F.relu ->
    mean -> linear: one ReLU module and one functional ReLU."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
            self.fc = nn.Linear(6, 5)
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(self.bn1.weight, 0.5, 1.5)
            nn.init.uniform_(self.bn1.bias, -0.3, 0.3)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        a2 = F.relu(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.fc(a2.mean((2, 3)))


def inputs(batch: int = 2, size: int = 12) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7))


def by_hand(net: Net, x: Tensor, classes: list[int], guided: bool) -> dict[str, Tensor]:
    """The forward values and the backward pass of ``Net``, written out."""
    with torch.no_grad():
        z1 = net.conv1(x)
        std = torch.sqrt(net.bn1.running_var + net.bn1.eps)
        n1 = (z1 - net.bn1.running_mean[:, None, None]) / std[:, None, None]
        n1 = n1 * net.bn1.weight[:, None, None] + net.bn1.bias[:, None, None]
        a1 = n1.clamp_min(0)
        z2 = net.conv2(a1)
        h, w = z2.shape[2:]
        da2 = net.fc.weight[classes][:, :, None, None].expand_as(z2) / (h * w)
        gate2 = (z2 > 0) & ((da2 > 0) if guided else True)
        dz2 = da2 * gate2
        da1 = torch.nn.grad.conv2d_input(a1.shape, net.conv2.weight, dz2, stride=2, padding=1)
        dn1 = da1 * ((n1 > 0) & ((da1 > 0) if guided else True))
        dz1 = dn1 * (net.bn1.weight / std)[:, None, None]
        dx = torch.nn.grad.conv2d_input(x.shape, net.conv1.weight, dz1, padding=1)
        bn_bias = net.bn1.bias - net.bn1.running_mean * net.bn1.weight / std
        terms = [
            net.conv1.bias[:, None, None] * dz1,
            bn_bias[:, None, None] * dn1,
            net.conv2.bias[:, None, None] * dz2,
        ]
    return {"dx": dx, "z2": z2, "dz2": dz2, "terms": terms}


def scaled(m: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    m = m - m.min()
    return m / (m.max() + eps)


def resized(m: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (as ``align_corners=False``), by loops."""
    n = m.shape[0]
    out = np.zeros((size, size))
    pos = [max((i + 0.5) * n / size - 0.5, 0.0) for i in range(size)]
    for i, si in enumerate(pos):
        i0, fi = int(np.floor(si)), si - np.floor(si)
        i1 = min(i0 + 1, n - 1)
        for j, sj in enumerate(pos):
            j0, fj = int(np.floor(sj)), sj - np.floor(sj)
            j1 = min(j0 + 1, n - 1)
            top = (1 - fj) * m[i0, j0] + fj * m[i0, j1]
            bottom = (1 - fj) * m[i1, j0] + fj * m[i1, j1]
            out[i, j] = (1 - fi) * top + fi * bottom
    return out


def normalized(m: np.ndarray) -> np.ndarray:
    return (m - m.min()) / (m.max() - m.min())


def test_fullgrad_is_the_formula():
    net, x, classes = Net(), inputs(), [1, 4]
    ref = by_hand(net, x, classes, guided=False)
    expected = []
    for b in range(x.shape[0]):
        total = np.zeros(x.shape[2:])
        for c in range(3):
            total += scaled(np.abs((ref["dx"][b, c] * x[b, c]).numpy()))
        for term in ref["terms"]:
            for k in range(term.shape[1]):
                total += resized(scaled(np.abs(term[b, k].numpy())), x.shape[2])
        expected.append(normalized(total))
    maps = camkit.create("fullgrad", net, "conv2")(x, classes).maps
    np.testing.assert_allclose(maps.numpy(), np.array(expected), atol=2e-6)
    # The layer plays no part.
    other = camkit.create("fullgrad", net, "conv1")(x, classes).maps
    torch.testing.assert_close(other, maps)


def test_the_bias_gradients_are_the_decomposition():
    net, x, classes = Net(), inputs(), [1, 4]
    ref = by_hand(net, x, classes, guided=False)
    seen = {}

    class Probe(camkit.Method):
        name = "probe"

        def map(self, ctx):
            seen["grad"], seen["terms"] = ctx.bias_gradients()
            return ctx.activations.sum(1)

    camkit.Extractor(Probe(), net, "conv2")(x, classes)
    torch.testing.assert_close(seen["grad"], ref["dx"], rtol=1e-5, atol=1e-7)
    assert [name for name, _ in seen["terms"]] == ["conv1", "bn1", "conv2"]
    for (_, got), want in zip(seen["terms"], ref["terms"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # Completeness: input term plus every bias term (the linear head's too) is the score.
    scores = net(x)[torch.arange(2), classes]
    total = (seen["grad"] * x).sum((1, 2, 3)) + net.fc.bias[classes]
    total += sum(t.sum((1, 2, 3)) for _, t in seen["terms"])
    torch.testing.assert_close(total, scores, rtol=1e-4, atol=1e-5)


def test_guided_backprop_is_the_formula_and_guides_functional_relu():
    net, x, classes = Net(), inputs(), [0, 2]
    ref = by_hand(net, x, classes, guided=True)
    got = guided_backprop(net, x, classes, layer="conv2")
    torch.testing.assert_close(got, ref["dx"], rtol=1e-5, atol=1e-7)
    plain = by_hand(net, x, classes, guided=False)["dx"]
    assert not torch.allclose(got, plain, atol=1e-4)  # the guide changes the gradient
    maps = camkit.create("guidedbackprop", net, "conv1")(x, classes).maps
    np.testing.assert_allclose(
        maps.numpy(), np.array([normalized(np.abs(d.numpy()).max(0)) for d in ref["dx"]]), atol=1e-6
    )
    summed = camkit.create("guidedbackprop", net, "conv1", channels="sum")(x, classes).maps
    np.testing.assert_allclose(
        summed.numpy(), np.array([normalized(d.numpy().sum(0)) for d in ref["dx"]]), atol=1e-6
    )


def test_guided_gradcam_is_the_formula():
    net, x, classes = Net(), inputs(), [3, 1]
    guided = by_hand(net, x, classes, guided=True)["dx"]
    ref = by_hand(net, x, classes, guided=False)
    z2, dz2 = ref["z2"].numpy(), ref["dz2"].numpy()
    full, maps = [], []
    for b in range(x.shape[0]):
        cam = np.zeros(z2.shape[2:])
        for k in range(z2.shape[1]):
            cam += dz2[b, k].mean() * z2[b, k]
        mask = scaled(resized(scaled(np.maximum(cam, 0)), x.shape[2]))
        full.append(guided[b].numpy() * mask)
        maps.append(normalized(np.abs(full[-1]).max(0)))
    got = guided_gradcam(net, x, "conv2", classes)
    np.testing.assert_allclose(got.numpy(), np.array(full), rtol=1e-5, atol=1e-7)
    res = camkit.create("guidedgradcam", net, "conv2")(x, classes)
    np.testing.assert_allclose(res.maps.numpy(), np.array(maps), atol=1e-6)


def test_each_input_pass_runs_once_per_call():
    net, x = Net(), inputs()
    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        camkit.create("guidedgradcam", net, ["conv1", "conv2"])(x)
        assert len(calls) == 2  # the clean pass and one guided pass for both layers
        calls.clear()
        camkit.create("fullgrad", net, ["conv1", "conv2"], batch_size=1)(x)
        assert len(calls) == 3  # the clean pass and one pass per chunk of one image
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["fullgrad", "guidedbackprop", "guidedgradcam"])
def test_the_model_is_left_as_it_was(name):
    net = Net().train()
    net.conv1.weight.requires_grad_(False)
    for p in net.parameters():
        p.grad = torch.full_like(p, 2.0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    modules = list(net.named_modules())
    x = inputs(1)
    camkit.create(name, net, "conv2")(x)
    assert net.training and all(m.training for m in net.modules())
    assert list(net.named_modules()) == modules and net.relu1.inplace
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert not x.requires_grad and x.grad is None
    no_hooks_left(net)
    assert torch._C._len_torch_function_stack() == 0


class Failing(Net):
    def forward(self, x: Tensor) -> Tensor:
        self.relu1(self.bn1(self.conv1(x)))
        raise RuntimeError("model failed after a ReLU")


@pytest.mark.parametrize("name", ["fullgrad", "guidedbackprop"])
def test_nothing_is_left_behind_when_the_model_raises(name):
    net = Failing()
    with pytest.raises(RuntimeError, match="model failed"):
        camkit.Extractor(_method(name), net, "conv1")(inputs(1), 0)
    no_hooks_left(net)
    assert torch._C._len_torch_function_stack() == 0
    # ReLU is plain again: a negative gradient flows back through a positive input.
    y = torch.ones(3, requires_grad=True)
    (g,) = torch.autograd.grad((F.relu(y) * -1).sum(), y)
    assert torch.equal(g, -torch.ones(3))


def _method(name: str) -> camkit.Method:
    import camkit_contrib

    return {m.name: m for m in camkit_contrib.METHODS}[name]()


def test_other_threads_are_not_guided():
    """The function mode belongs to the thread that entered it."""
    from camkit.engine.guided import GuidedReLUs

    results = {}
    entered, done = threading.Event(), threading.Event()

    def other() -> None:
        entered.wait()
        y = torch.ones(3, requires_grad=True)
        (results["grad"],) = torch.autograd.grad((F.relu(y) * -1).sum(), y)
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with GuidedReLUs() as guide:
        entered.set()
        done.wait(10)
        y = torch.ones(3, requires_grad=True)
        (mine,) = torch.autograd.grad((F.relu(y) * -1).sum(), y)
    thread.join()
    assert torch.equal(results["grad"], -torch.ones(3))  # plain in the other thread
    assert torch.equal(mine, torch.zeros(3)) and guide.count == 1  # guided here


def test_a_model_without_relu_warns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    with pytest.warns(CamkitWarning, match="no ReLU"):
        camkit.create("guidedbackprop", model, "0")(inputs(1))
