"""Small models and slow, independent reference computations for the method tests.

The references use their own hooks and autograd calls and process one image (and one masked
input) at a time, channel by channel, so they share no code with the engine they check.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyCNN(nn.Module):
    """A small CNN whose target layer ``layer4`` is followed by a non-linear head, so that
    gradients vary over positions. 16x16 inputs give ``(B, channels, 8, 8)`` at ``layer4``."""

    def __init__(self, channels: int = 12, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.layer4 = nn.Sequential(nn.Conv2d(8, channels, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.Tanh())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.head(self.layer4(self.stem(x)))).flatten(1))


class Scaled(nn.Module):
    """``model``'s scores times ``factor``."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model = model
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.factor


def tiny_cnn(channels: int = 12, seed: int = 0, dead: int = 0) -> TinyCNN:
    """A seeded :class:`TinyCNN` whose first ``dead`` ``layer4`` channels are constant zero."""
    torch.manual_seed(seed)
    model = TinyCNN(channels).eval()
    conv = model.layer4[0]
    with torch.no_grad():
        conv.weight[:dead] = 0
        conv.bias[:dead] = -1
    return model


def _module(model: nn.Module, layer: str) -> nn.Module:
    return dict(model.named_modules())[layer]


def activation_and_gradient(
    model: nn.Module, layer: str, image: Tensor, target: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For one ``(C_in, H, W)`` image: the layer's ``(C, h, w)`` activation, the gradient of
    the target score with respect to it, and the ``(num_classes,)`` scores."""
    seen: list[Tensor] = []
    handle = _module(model, layer).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.enable_grad():
            scores = model(image.unsqueeze(0).clone().requires_grad_(True))[0]
            (grad,) = torch.autograd.grad(scores[target], seen[0])
    finally:
        handle.remove()
    return seen[0][0].detach(), grad[0].detach(), scores.detach()


def target_score(model: nn.Module, image: Tensor, target: int) -> float:
    """The target score of one ``(C_in, H, W)`` image, forwarded alone."""
    with torch.no_grad():
        return float(model(image.unsqueeze(0))[0, target])


def channel_mask(activation: Tensor) -> Tensor:
    """One ``(h, w)`` channel min-max normalized over its positions (constant -> zeros)."""
    lo, hi = activation.min(), activation.max()
    if hi == lo:
        return torch.zeros_like(activation)
    return (activation - lo) / (hi - lo)


def upsample(mask: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear (``align_corners=False``) upsampling of one ``(h, w)`` mask."""
    return F.interpolate(mask[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def weighted_map(weights: Tensor, activation: Tensor) -> Tensor:
    """ReLU(sum_k w_k A_k) for one image, channel by channel."""
    total = torch.zeros_like(activation[0])
    for k in range(activation.shape[0]):
        total = total + weights[k] * activation[k]
    return torch.relu(total)


def reference_score_weights(
    model: nn.Module,
    layer: str,
    images: Tensor,
    targets: list[int],
    perturbed: Callable[[Tensor, list[Tensor]], list[list[Tensor]]],
) -> tuple[Tensor, Tensor]:
    """Score-family weights, one forward per perturbed input.

    For each image, in order: its channel masks (normalized, upsampled), then
    ``perturbed(image, masks)[i][k]``, the ``i``-th sample of channel ``k``'s perturbed input.
    Returns ``(B, C)`` weights ``softmax_k(mean_i(Y(input_ik) - Y(image)))`` and the ``(B, C,
    h, w)`` activations.
    """
    weights, acts = [], []
    for image, target in zip(images, targets):
        act = activation_and_gradient(model, layer, image, target)[0]
        masks = [upsample(channel_mask(a), tuple(image.shape[1:])) for a in act]
        base = target_score(model, image, target)
        samples = perturbed(image, masks)
        gains = [
            sum(target_score(model, s[k], target) - base for s in samples) / len(samples)
            for k in range(len(masks))
        ]
        weights.append(torch.softmax(torch.tensor(gains, dtype=torch.float64), 0).float())
        acts.append(act)
    return torch.stack(weights), torch.stack(acts)


def reference_maps(weights: Tensor, activations: Tensor) -> Tensor:
    """``(B, h, w)``: ReLU(sum_k w_k A_k) for channel or pixel weights, image by image."""
    return torch.stack([weighted_map(w, a) for w, a in zip(weights, activations)])


def _minmax(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo)).reshape(maps.shape)


def assert_maps_close(got: Tensor, want: Tensor, atol: float = 1e-5) -> None:
    """``(B, h, w)`` maps agree to ``atol`` relative to the reference's scale, and again after
    per-map min-max normalization (what the user sees)."""
    assert got.shape == want.shape
    assert bool((want.flatten(1).amax(1) > want.flatten(1).amin(1)).all()), (
        "a reference map is constant: the comparison would check nothing"
    )
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=atol * scale)
    torch.testing.assert_close(_minmax(got), _minmax(want), rtol=0, atol=atol)


def reference_gradient_weights(
    model: nn.Module,
    layer: str,
    images: Tensor,
    targets: list[int],
    channel_weight: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Gradient-method weights, image by image and channel by channel.

    ``channel_weight(A_k, g_k)`` maps one channel's ``(h, w)`` activation and gradient to its
    weight (a scalar, or ``(h, w)`` pixel weights). Returns the stacked weights and the
    ``(B, C, h, w)`` activations.
    """
    weights, acts = [], []
    for image, target in zip(images, targets):
        act, grad, _ = activation_and_gradient(model, layer, image, target)
        weights.append(torch.stack([channel_weight(a, g) for a, g in zip(act, grad)]))
        acts.append(act)
    return torch.stack(weights), torch.stack(acts)


def assert_weights_close(got: Tensor, want: Tensor, rtol: float = 1e-5) -> None:
    """Weights agree to ``rtol``, element-wise or relative to the largest weight: batched and
    one-image convolutions round differently, which matters for near-zero weights."""
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))
