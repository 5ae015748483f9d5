"""Each contrib method against a direct re-implementation of its formula on a tiny CNN."""

from __future__ import annotations

import camkit_contrib
import numpy as np
import pytest
import torch
from camkit_contrib.eigen import first_component
from torch import Tensor

import camkit
from camkit.testing import check_method, tiny_inputs, tiny_model

LAYER = "features"


@pytest.fixture
def model() -> torch.nn.Module:
    return tiny_model(seed=1, num_classes=5, channels=6)


@pytest.fixture
def x() -> Tensor:
    return tiny_inputs(2, 16, seed=2)


def head(model: torch.nn.Module, feats: Tensor) -> Tensor:
    """The part of the tiny CNN after the target layer."""
    return model.fc(model.pool(feats).flatten(1))


def captured(model: torch.nn.Module, x: Tensor, targets: list[int] | None = None):
    """Activations, gradients of the target score, clean scores and targets, without camkit."""
    feats = model.features(x)
    scores = head(model, feats)
    target = scores.argmax(1) if targets is None else torch.tensor(targets)
    (grads,) = torch.autograd.grad(scores[torch.arange(x.shape[0]), target].sum(), feats)
    return feats.detach(), grads, scores.detach(), target


def layer_map(name: str, model: torch.nn.Module, x: Tensor, **kw) -> camkit.CAMResult:
    targets = kw.pop("targets", None)
    return camkit.create(name, model, LAYER, **kw)(x, targets)


def first_component_np(rows: np.ndarray) -> np.ndarray:
    """(h*w, C) -> (h*w,): projection on v_1, signed to correlate with the channel mean."""
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    projection = rows @ vt[0]
    if np.corrcoef(projection, rows.mean(1))[0, 1] < 0:
        projection = -projection
    return projection


def test_methods_come_from_the_contrib_distribution():
    for cls in camkit_contrib.METHODS:
        info = camkit.method_info(cls.name)
        assert info.distribution == "camkit-contrib"
        assert info.version == camkit_contrib.__version__
        assert info.cls is cls
    (plugin,) = [p for p in camkit.list_plugins() if p.name == "contrib"]
    assert plugin.status == "ok"
    assert sorted(plugin.methods) == sorted(cls.name for cls in camkit_contrib.METHODS)


@pytest.mark.parametrize("targets", [None, [1, 3]])
def test_hirescam_is_relu_of_elementwise_products(model, x, targets):
    A, g, _, _ = captured(model, x, targets)
    expected = torch.relu(sum(g[:, k] * A[:, k] for k in range(A.shape[1])))
    res = layer_map("hirescam", model, x, targets=targets)
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.weights[LAYER], g, rtol=1e-5, atol=1e-7)


def test_hirescam_alias(model, x):
    a = layer_map("hirescam", model, x).layer_maps[LAYER]
    b = layer_map("hires-cam", model, x).layer_maps[LAYER]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("targets", [None, [4, 0]])
def test_gradcam_elementwise_rectifies_each_product(model, x, targets):
    A, g, _, _ = captured(model, x, targets)
    expected = sum(torch.relu(g[:, k] * A[:, k]) for k in range(A.shape[1]))
    res = layer_map("gradcam-elementwise", model, x, targets=targets)
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-5, atol=1e-6)
    hires = layer_map("hirescam", model, x, targets=targets).layer_maps[LAYER]
    # Rectifying inside the sum can only keep more positive evidence than outside it.
    assert bool((res.layer_maps[LAYER] >= hires - 1e-6).all())


def test_eigencam_projects_on_the_first_singular_vector(model, x):
    A, _, _, _ = captured(model, x)
    res = layer_map("eigencam", model, x)
    cam = res.layer_maps[LAYER]
    for b in range(x.shape[0]):
        rows = A[b].reshape(A.shape[1], -1).T.double().numpy()
        expected = first_component_np(rows).reshape(A.shape[2:])
        np.testing.assert_allclose(cam[b].double().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert res.weights == {}


def test_eigencam_ignores_the_target(model, x):
    a = layer_map("eigencam", model, x, targets=[0, 1]).layer_maps[LAYER]
    b = layer_map("eigencam", model, x, targets=[2, 2]).layer_maps[LAYER]
    torch.testing.assert_close(a, b)


def test_eigencam_keeps_the_signed_projection(model, x):
    # The conv before the last ReLU has signed outputs, so the projection has negative values
    # that a ReLU would remove.
    with torch.no_grad():
        A = model.features[:3](x)
    cam = camkit.create("eigencam", model, "features.2")(x).layer_maps["features.2"]
    assert bool((cam < 0).any())
    for b in range(x.shape[0]):
        rows = A[b].reshape(A.shape[1], -1).T.double().numpy()
        expected = first_component_np(rows).reshape(A.shape[2:])
        np.testing.assert_allclose(cam[b].double().numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("targets", [None, [3, 1]])
def test_eigengradcam_projects_gradient_times_activation(model, x, targets):
    A, g, _, _ = captured(model, x, targets)
    cam = layer_map("eigengradcam", model, x, targets=targets).layer_maps[LAYER]
    for b in range(x.shape[0]):
        rows = (g[b] * A[b]).reshape(A.shape[1], -1).T.double().numpy()
        expected = first_component_np(rows).reshape(A.shape[2:])
        np.testing.assert_allclose(cam[b].double().numpy(), expected, rtol=1e-4, atol=1e-7)


def test_eigen_sign_follows_the_channel_mean():
    # Two locations; the dominant direction is (1, 1), so whichever sign the SVD returns,
    # the map must be high where the channel mean is high.
    feats = torch.tensor([[[[4.0, 1.0]], [[5.0, 1.5]]]])  # (1, C=2, 1, 2)
    for sign in (1.0, -1.0):
        out = first_component(sign * feats)[0, 0]
        mean = (sign * feats).mean(1)[0, 0]
        assert (out[0] - out[1]) * (mean[0] - mean[1]) > 0


@pytest.mark.parametrize(("targets", "batch_size"), [(None, 32), ([2, 4], 5), (None, 1)])
def test_ablationcam_relative_score_drop(model, x, targets, batch_size):
    A, _, scores, target = captured(model, x, targets)
    B, C = A.shape[:2]
    weights = torch.empty(B, C)
    with torch.no_grad():
        for b in range(B):
            y = scores[b, target[b]]
            for k in range(C):
                ablated = A[b : b + 1].clone()
                ablated[:, k] = 0
                y_k = head(model, ablated)[0, target[b]]
                weights[b, k] = (y - y_k) / y
    expected = torch.relu(torch.einsum("bc,bchw->bhw", weights, A))
    res = layer_map("ablationcam", model, x, targets=targets, batch_size=batch_size)
    torch.testing.assert_close(res.weights[LAYER], weights, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-4, atol=1e-5)


def test_ablationcam_divides_by_a_negative_score(model, x):
    _, _, scores, _ = captured(model, x)
    lowest = scores.argmin(1)
    assert bool((scores.gather(1, lowest[:, None]) < 0).all()), (
        "fixture should have a negative logit"
    )
    res = layer_map("ablationcam", model, x, targets=lowest.tolist())
    A, _, _, _ = captured(model, x, lowest.tolist())
    with torch.no_grad():
        y = scores.gather(1, lowest[:, None])
        keep = 1 - torch.eye(A.shape[1])
        y_k = torch.stack(
            [head(model, A[b][None] * keep[:, :, None, None])[:, lowest[b]] for b in range(2)]
        )
    torch.testing.assert_close(res.weights[LAYER], (y - y_k) / y, rtol=1e-4, atol=1e-5)


def test_ablationcam_rejects_a_bad_batch_size(model):
    with pytest.raises(camkit.errors.ConfigError, match="batch_size"):
        camkit.create("ablationcam", model, LAYER, batch_size=0)


@pytest.mark.parametrize("seed", [0, 7])
def test_randomcam_uniform_weights_from_the_seed(model, x, seed):
    A, _, _, _ = captured(model, x)
    weights = torch.rand(2, A.shape[1], generator=torch.Generator().manual_seed(seed)) * 2 - 1
    res = layer_map("randomcam", model, x, seed=seed)
    torch.testing.assert_close(res.weights[LAYER], weights)
    expected = torch.relu(torch.einsum("bc,bchw->bhw", weights, A))
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-5, atol=1e-6)


def test_randomcam_without_seed_draws_fresh_weights(model, x):
    a = layer_map("randomcam", model, x, seed=None).weights[LAYER]
    b = layer_map("randomcam", model, x, seed=None).weights[LAYER]
    assert not torch.equal(a, b)
    assert bool(((a >= -1) & (a <= 1)).all())


@pytest.mark.parametrize("cls", camkit_contrib.METHODS, ids=lambda c: c.name)
def test_camkit_testing_checks_pass(cls):
    if cls.needs_attention:  # ViT-only: a small torchvision ViT (4 x 4 patches of 8 px)
        from torchvision.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        vit = VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=5).eval()
        torch.nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initializes it
        check_method(cls.name, vit, "encoder.layers", inputs=torch.randn(2, 3, 32, 32))
        return
    check_method(cls.name, batch_consistent=cls.name != "randomcam")


def test_paper_and_formula_in_every_docstring():
    for cls in camkit_contrib.METHODS:
        assert cls.paper and cls.summary
        assert ".. math::" in (cls.__doc__ or "")
