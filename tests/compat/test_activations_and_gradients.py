"""camkit.compat.pytorch_grad_cam.ActivationsAndGradients against autograd directly and against
pytorch-grad-cam 1.5.7's (the oracle), on ResNet-18 and a ViT with a reshape transform."""

from __future__ import annotations

import gc
import warnings
from functools import partial

import pytest
import torch
from compat_helpers import images, needs_grad_cam, small_cnn, tiny_vit
from torch import Tensor, nn

from camkit.compat._shared import CompatTypeError
from camkit.compat.pytorch_grad_cam import ActivationsAndGradients
from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from camkit.errors import LayerError


def peer_class():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorch_grad_cam import ActivationsAndGradients as Original

    return Original


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def record(cls, model, layers, x, transform=None, cls_index=3):
    """Run ``cls``'s protocol: forward through it, back-propagate one class, release."""
    helper = cls(model, layers, transform)
    try:
        out = helper(x)
        out[:, cls_index].sum().backward()
        return list(helper.activations), list(helper.gradients)
    finally:
        helper.release()


def direct(model, layers, x, transform=None, cls_index=3):
    """The reference: each layer's output in the order the layers run and
    ``torch.autograd.grad`` of the class score with respect to it."""
    outputs: list[Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o)) for m in layers]
    try:
        score = model(x)[:, cls_index].sum()
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(score, outputs)
    shown = transform or (lambda t: t)
    return [shown(o).detach() for o in outputs], [shown(g) for g in grads]


@pytest.fixture(scope="module")
def resnet():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def assert_same(got: list[Tensor], expected: list[Tensor]) -> None:
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_records_the_layers_in_the_order_they_run(resnet):
    # layer4 given first: both lists follow the forward order (layer3, then layer4).
    layers = [resnet.layer4[-1], resnet.layer3[-1]]
    x = images(2, size=64)
    acts, grads = record(ActivationsAndGradients, resnet, layers, x)
    ref_acts, ref_grads = direct(resnet, layers, x)
    assert [a.shape[1] for a in acts] == [256, 512]
    assert_same(acts, ref_acts)
    assert_same(grads, ref_grads)
    assert all(not a.requires_grad and a.device.type == "cpu" for a in acts + grads)
    assert hook_count(resnet) == 0


@needs_grad_cam
def test_matches_grad_cam_on_resnet18(resnet):
    layers = [resnet.layer4[-1], resnet.layer3[-1], resnet.layer2]
    x = images(2, size=64)
    ours = record(ActivationsAndGradients, resnet, layers, x)
    theirs = record(peer_class(), resnet, layers, x)
    assert_same(ours[0], theirs[0])
    assert_same(ours[1], theirs[1])


@needs_grad_cam
def test_matches_grad_cam_on_a_vit_with_a_reshape_transform():
    model = tiny_vit()
    layers = [model.encoder.layers[-1].ln_1, model.encoder.layers[0].ln_1]
    transform = partial(vit_reshape_transform, height=4, width=4)
    x = images(2)
    ours = record(ActivationsAndGradients, model, layers, x, transform)
    theirs = record(peer_class(), model, layers, x, transform)
    ref = direct(model, layers, x, transform)
    assert [a.shape for a in ours[0]] == [torch.Size([2, 16, 4, 4])] * 2
    assert_same(ours[0], theirs[0])
    assert_same(ours[1], theirs[1])
    assert_same(ours[0], ref[0])
    assert_same(ours[1], ref[1])
    assert hook_count(model) == 0


def test_each_call_starts_fresh_lists_and_no_backward_means_no_gradients():
    model = small_cnn()
    with ActivationsAndGradients(model, [model[0][1]], None) as helper:
        with torch.no_grad():
            helper(images(1))
        assert len(helper.activations) == 1 and helper.gradients == []
        helper(images(2))[:, 0].sum().backward()
        assert [a.shape[0] for a in helper.activations] == [2]
        assert [g.shape[0] for g in helper.gradients] == [2]
        assert len(helper.handles) == 1
    assert helper.handles == [] and helper.activations == [] and hook_count(model) == 0


def test_detach_false_keeps_the_graph_and_skips_the_transform():
    model = small_cnn()
    seen = []
    helper = ActivationsAndGradients(model, [model[0][1]], lambda t: seen.append(t) or t, False)
    out = helper(images(1))
    (act,) = helper.activations
    assert act.requires_grad and seen == []
    out[:, 0].sum().backward()
    (grad,) = helper.gradients
    helper.release()
    ref_acts, ref_grads = direct(model, [model[0][1]], images(1), cls_index=0)
    assert_same([act.detach(), grad], [*ref_acts, *ref_grads])
    assert not act.requires_grad  # release() detaches, as the original's clear()
    assert hook_count(model) == 0


def test_hooks_are_removed_on_release_and_when_dropped():
    model = small_cnn()
    helper = ActivationsAndGradients(model, [model[0][1], model[0][3]], None)
    assert hook_count(model) == 2
    helper.release()
    helper.release()  # idempotent
    assert hook_count(model) == 0
    ActivationsAndGradients(model, [model[0][1]], None)  # never released, dropped at once
    gc.collect()
    assert hook_count(model) == 0


def test_bad_arguments_are_typed_errors():
    model = small_cnn()
    with pytest.raises(CompatTypeError, match="target_layers"):
        ActivationsAndGradients(model, model[0][1], None)
    with pytest.raises(CompatTypeError, match="reshape_transform"):
        ActivationsAndGradients(model, [model[0][1]], "vit")

    class Pair(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return x, x

    wrapped = nn.Sequential(Pair())
    with (
        ActivationsAndGradients(wrapped, [wrapped[0]], None) as helper,
        pytest.raises(LayerError, match="reshape_transform"),
    ):
        helper(images(1))
    assert hook_count(wrapped) == 0
