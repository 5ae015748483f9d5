import pytest
import torch

import camkit
from camkit.testing import check_method, tiny_inputs, tiny_model


def test_passes_camkits_checks():
    check_method("gradcam-topk", k=3)


def test_is_discovered_through_the_entry_point():
    info = camkit.method_info("gradcam-topk")
    assert info.distribution == "camkit-plugin-example"
    assert info.needs_gradients


@pytest.mark.parametrize("k", [1, 3, 8])
def test_matches_the_formula(k):
    model, x = tiny_model(), tiny_inputs()
    # Grad-CAM weights computed directly, without camkit.
    feats = model.features(x)
    scores = model.fc(model.pool(feats).flatten(1))
    target = scores.argmax(1)
    (grads,) = torch.autograd.grad(scores[torch.arange(2), target].sum(), feats)
    alpha = grads.mean((2, 3))
    expected = torch.zeros_like(alpha)
    for b in range(2):
        for c in alpha[b].argsort(descending=True)[:k]:
            expected[b, c] = alpha[b, c]

    result = camkit.create("gradcam-topk", model, "features", k=k)(x)

    torch.testing.assert_close(result.weights["features"], expected)
    cam = torch.relu((expected[:, :, None, None] * feats.detach()).sum(1))
    torch.testing.assert_close(result.layer_maps["features"], cam)


def test_rejects_k_below_one():
    with pytest.raises(camkit.errors.ConfigError, match="k: Input should be greater than or"):
        camkit.create("gradcam-topk", tiny_model(), "features", k=0)
