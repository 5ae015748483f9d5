"""The second-order pass: the gradient at a layer and a Hessian-vector product there.

For the target score :math:`y` and a layer's activations :math:`A`, the pass returns
:math:`g = \\partial y / \\partial A` and :math:`H v` with :math:`H = \\partial^2 y /
\\partial A^2` (the Hessian of the score with respect to the layer's output) for a given
``v`` of the activations' shape (ShapleyCAM uses :math:`v = A`). It is the double backward
of Pearlmutter's trick: one forward with a capture on the layer (the autograd graph starts at
the layer, as in the clean pass), ``torch.autograd.grad`` with ``create_graph=True`` for
:math:`g`, then the gradient of :math:`\\langle g, v \\rangle` with respect to :math:`A`.
Chunk by chunk (the run option ``batch_size``), never through ``.backward()``, so no
parameter's ``.grad`` is touched.

Where the score is linear in the activations after the layer (a ReLU network's piecewise
linear tail, a linear head on pooled features) the Hessian is zero almost everywhere and the
product is exactly zero. The pass runs scaled-dot-product attention on torch's math backend
(the fused kernels have no second derivative); it computes the same function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from camkit.engine.capture import Capture, check_gradients, grad_enabled
from camkit.errors import GradientError, PluginError

if TYPE_CHECKING:
    from camkit.engine.services import Services


def hessian_vector_product(door: Services, layer: str, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """``(g, H v)``, both ``(B, C, h, w)`` like the layer's activations, for the explained
    batch: ``g`` the gradient of each image's target score at ``layer``, ``H v`` the product
    of that score's Hessian there with ``vectors`` (``(B, C, h, w)``, channels first)."""
    door.before_pass()
    x = door.inputs
    shape = door.activations(layer).shape
    if tuple(vectors.shape) != tuple(shape):
        raise PluginError(
            f"hessian_vector_product() needs vectors shaped like the activations {tuple(shape)}, "
            f"got {tuple(vectors.shape)}"
        )
    grads, products = [], []
    for start, stop in door.chunks(x.shape[0], f"{layer} Hessian-vector products"):
        chunk = x[start:stop].detach()
        index = torch.arange(start, stop, device=chunk.device)
        capture = Capture([(layer, door.layers[layer])], gradients=True)
        layout = door.accel.explain_channels_last(chunk)  # before any hook (may be measured)
        with grad_enabled():
            with capture, sdpa_kernel(SDPBackend.MATH):  # fused attention: no 2nd derivative
                out = door.run(door.model, chunk, layout, restart=capture.restart)[0]
            capture.check_ran()
            capture.check_finite()
            act = capture.activations[layer]
            total = door.chosen.score(out, index).sum()
            if not total.requires_grad:
                capture.grad(total)  # raises the GradientError that says why
            (g,) = torch.autograd.grad(total, act, create_graph=True, allow_unused=True)
            if g is None:
                raise GradientError(f"the target score does not depend on layer {layer!r}")
            g_view = door.view(g, layer)
            v = vectors[start:stop].to(g_view.dtype)
            hv = None
            if g.requires_grad:  # else the gradient is constant in A: H = 0
                try:
                    (hv,) = torch.autograd.grad((g_view * v).sum(), act, allow_unused=True)
                except RuntimeError as exc:  # e.g. hardsigmoid: no double backward in torch
                    raise GradientError(
                        f"the model's operations after layer {layer!r} have no second "
                        f"derivative in torch ({exc}); choose a later layer or another method"
                    ) from exc
        check_gradients({layer: g.detach()})
        hv_view = torch.zeros_like(g_view) if hv is None else door.view(hv, layer)
        if not bool(torch.isfinite(hv_view).all()):
            raise GradientError(
                f"the Hessian-vector product of the target score at layer {layer!r} has NaN or "
                "Inf values (a non-differentiable point or an overflow after this layer)"
            )
        grads.append(g_view.detach().contiguous())
        products.append(hv_view.detach().contiguous())
    return torch.cat(grads), torch.cat(products)
