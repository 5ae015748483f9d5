"""ShapleyCAM against a direct re-implementation (the full Hessian, built entry by entry by
``torch.autograd.functional.hessian``) and against pytorch-grad-cam 1.5.7's ShapleyCAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import GradientError
from camkit.testing import check_method, tiny_inputs


def smooth_model(seed: int = 0) -> nn.Sequential:
    """conv -> softplus (the layer) -> conv -> tanh -> pool -> linear: a curved tail, so the
    Hessian of the score at the layer is not zero."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(
            nn.Conv2d(4, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        model = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Softplus()),
            nn.Sequential(*head, nn.Linear(6, 5)),
        )
    return model.double().eval()


def reference(model: nn.Sequential, x: Tensor, targets: list[int]) -> tuple[Tensor, Tensor]:
    """``relu(sum_k w_k A_k)``, ``w_k = mean_ij (g - H A / 2)_k``, with the explicit Hessian."""
    with torch.no_grad():
        acts = model[0](x)
    weights, maps = [], []
    for b, c in enumerate(targets):
        a = acts[b : b + 1]

        def score(flat: Tensor, a: Tensor = a, c: int = c) -> Tensor:
            return model[1](flat.view_as(a))[0, c]

        flat = a.flatten()
        g = torch.autograd.functional.jacobian(score, flat)
        hessian = torch.autograd.functional.hessian(score, flat)  # (n, n), entry by entry
        w = (g - 0.5 * hessian @ flat).view_as(a).mean((2, 3))  # (1, C)
        weights.append(w)
        maps.append(torch.relu((w[:, :, None, None] * a).sum(1)))
    return torch.cat(weights), torch.cat(maps)


def test_matches_the_explicit_hessian() -> None:
    model, x = smooth_model(), tiny_inputs(size=8).double()
    result = camkit.create("shapleycam", model, "0")(x, [1, 3])
    weights, expected = reference(model, x, [1, 3])
    torch.testing.assert_close(result.weights["0"], weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.layer_maps["0"].double(), expected, rtol=1e-6, atol=1e-7)
    # The second-order term matters here (else this test could not tell it from Grad-CAM).
    gradcam = camkit.create("gradcam", model, "0")(x, [1, 3]).layer_maps["0"].double()
    assert (gradcam - expected).abs().max() > 1e-3 * expected.abs().max()


def test_chunks_do_not_change_the_map() -> None:
    model, x = smooth_model(), tiny_inputs(size=8).double()
    whole = camkit.create("shapleycam", model, "0")(x, [1, 3]).layer_maps["0"]
    chunked = camkit.create("shapleycam", model, "0", batch_size=1)(x, [1, 3]).layer_maps["0"]
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=1e-14)


def test_equals_gradcam_where_the_score_is_linear_after_the_layer() -> None:
    result = check_method("shapleycam")  # TinyCNN: ReLU block, pooling, linear head
    gradcam = camkit.create("gradcam", camkit.testing.tiny_model(), "features")(tiny_inputs())
    torch.testing.assert_close(result.layer_maps["features"], gradcam.layer_maps["features"])


def test_model_left_as_it_was_and_no_hooks() -> None:
    check_method("shapleycam", smooth_model(), "0", inputs=tiny_inputs(size=8).double())


def test_no_second_derivative_is_a_gradient_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardsigmoid(), nn.Flatten(), nn.LazyLinear(3))
    x = tiny_inputs(size=8)
    model(x)
    with pytest.raises(GradientError, match="no second derivative"):
        camkit.create("shapleycam", model.eval(), "0")(x)


# -- against pytorch-grad-cam ------------------------------------------------------------


def peer_raw_map(model: nn.Module, layer: nn.Module, x: Tensor, targets: list[int], **kw) -> Tensor:
    """pytorch-grad-cam ShapleyCAM's map of ``layer`` before its ReLU and scaling."""
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = grad_cam.ShapleyCAM(model=model, target_layers=[layer], **kw)
    recorded: list[np.ndarray] = []
    compute = cam.get_cam_image

    def record(*args, **kwargs):
        recorded.append(compute(*args, **kwargs))
        return recorded[-1]

    cam.get_cam_image = record
    cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    cam.activations_and_grads.release()
    return torch.from_numpy(np.maximum(np.asarray(recorded[0], dtype=np.float64), 0))


def pearson(a: Tensor, b: Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


def test_matches_pytorch_grad_cam_on_resnet18() -> None:
    torchvision = pytest.importorskip("torchvision")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = tiny_inputs(size=64)
    ours = camkit.create("shapleycam", model, "layer3")(x, [3, 7]).layer_maps["layer3"]
    peer = peer_raw_map(model, model.layer3, x, [3, 7])
    assert pearson(ours, peer) >= 0.999
    torch.testing.assert_close(ours.double(), peer, rtol=1e-4, atol=1e-5 * float(peer.max()))


def test_matches_pytorch_grad_cam_where_the_hessian_term_matters() -> None:
    """The smooth model's tail is curved (tanh), so ``H A != 0`` and the second-order term
    is tested. (pytorch-grad-cam's ShapleyCAM cannot run on token layers: it applies
    ``reshape_transform`` to the weights but not to the activations it weights.)"""
    model, x = smooth_model().float(), tiny_inputs(size=16)
    ours = camkit.create("shapleycam", model, "0")(x, [1, 3]).layer_maps["0"]
    peer = peer_raw_map(model, model[0], x, [1, 3])
    assert pearson(ours, peer) >= 0.999
    torch.testing.assert_close(ours.double(), peer, rtol=1e-4, atol=1e-5 * float(peer.max()))
    gradcam = camkit.create("gradcam", model, "0")(x, [1, 3]).layer_maps["0"]
    assert (gradcam - ours).abs().max() > 1e-3 * ours.abs().max()  # the Hessian term matters
