"""Resolving target layers: dotted and indexed names, modules, lists, or auto-location."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from camkit.engine.outputs import scores_of, to_channels_first
from camkit.errors import CamkitError, LayerError, LayerNotFoundError, did_you_mean

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

_STEP = re.compile(r"^([^\[\]]*)((?:\[-?\d+\])*)$")


def resolve(model: nn.Module, spec: str | nn.Module) -> tuple[str, nn.Module]:
    """Resolve one layer to ``(dotted name, module)``.

    ``spec`` is a dotted name (``"layer4.1.conv2"``), an indexed name (``"layer4[-1]"``,
    ``"encoder.layers[-1].ln_1"``) or a submodule of ``model``.
    """
    if isinstance(spec, nn.Module):
        for name, candidate in model.named_modules():
            if candidate is spec:
                return name, candidate
        raise LayerNotFoundError(
            f"the module {type(spec).__name__} passed as layer is not a submodule of the model"
        )
    if not isinstance(spec, str):
        raise LayerNotFoundError(
            f"a layer is a name, a module or a list of these, not {type(spec).__name__}"
        )
    plain = _plain_path(model, spec)
    if plain is not None:
        return spec, plain
    module: nn.Module = model
    path: list[str] = []
    for step in spec.split(".") if spec else []:
        match = _STEP.match(step)
        if match is None:
            raise LayerNotFoundError(f"cannot parse layer name {spec!r} at {step!r}")
        attr, indices = match.groups()
        if attr:
            child = module._modules.get(attr)
            if not isinstance(child, nn.Module):
                raise _not_found(model, spec, ".".join([*path, attr]))
            module, path = child, [*path, attr]
        for index in re.findall(r"-?\d+", indices):
            children = [(k, m) for k, m in module._modules.items() if m is not None]
            try:
                key, module = children[int(index)]
            except IndexError:
                where = ".".join(path) or "the model"
                raise LayerNotFoundError(
                    f"layer {spec!r}: {where} has {len(children)} children, so index {index} is "
                    "out of range"
                ) from None
            path.append(key)
    if module is model and spec:
        raise _not_found(model, spec, spec)
    return ".".join(path), module


def _plain_path(model: nn.Module, spec: str) -> nn.Module | None:
    """The submodule a plain dotted name (no index) names, or ``None`` for anything else
    (which :func:`resolve` parses, or reports)."""
    if not spec or "[" in spec:
        return None
    module = model
    for step in spec.split("."):
        child = module._modules.get(step)
        if child is None:
            return None
        module = child
    return module


def resolve_all(model: nn.Module, spec: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Resolve a layer spec that may be a list; duplicates are kept once, in order."""
    if isinstance(spec, (str, nn.Module)):
        specs: list[str | nn.Module] = [spec]
    elif isinstance(spec, Sequence):
        specs = list(spec)
    else:
        raise LayerNotFoundError(
            f"a layer is a name, a module or a list of these, not {type(spec).__name__}"
        )
    if not specs:
        raise LayerNotFoundError("an empty list of layers was given")
    resolved: dict[str, nn.Module] = {}
    for item in specs:
        name, module = resolve(model, item)
        resolved.setdefault(name, module)
    return list(resolved.items())


def locate(model: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    """The layer to explain when none is named, found by running (two images of) ``x`` once.

    Candidates are the modules whose output reads as a feature map of more than one position:
    ``(B, C, h, w)``, channels-last ``(B, h, w, C)``, or ``(B, N, D)`` tokens whose patch grid
    follows from the input's size (leading class and register tokens dropped). Never a
    candidate: pooling layers, the classifier (``head``, ``heads``, ``classifier``,
    ``pre_logits``), and anything inside an attention module or named as its query, key or
    value, whose outputs are not feature maps of the image.

    Of the candidates, the last whose feature map moves the top score (a non-zero gradient on
    the grid) is chosen: the last convolutional stage of a CNN, the final norm of a Swin, and
    on a ViT that reads its class token the input norm of the last block (the patch tokens
    after the last attention never reach the class token). When no gradient flows (e.g. a
    zero-initialized head), the input of the last attention module is taken, else the last
    candidate.

    Example:
        >>> from torchvision.models import resnet18
        >>> locate(resnet18(), torch.rand(1, 3, 64, 64))[0]
        'layer4'
    """
    size = tuple(x.shape[2:])
    excluded = _not_candidates(model)
    found: list[tuple[str, nn.Module, Tensor]] = []
    attention_inputs: list[int] = []  # len(found) as each attention module starts
    # Other threads may run the model meanwhile; their forwards must not be recorded.
    thread = threading.get_ident()

    def record(name: str, module: nn.Module):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if threading.get_ident() != thread:
                return
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, Tensor) and t.is_floating_point() and _grid(t, size) is not None:
                found.append((name, module, t))

        return hook

    def attention_starts(*_: object) -> None:
        if threading.get_ident() == thread:
            attention_inputs.append(len(found))

    handles = []
    try:
        for name, module in model.named_modules():
            if module is model:
                continue
            if _is_attention(module):
                handles.append(module.register_forward_pre_hook(attention_starts))
            if name not in excluded:
                handles.append(module.register_forward_hook(record(name, module)))
        # Gradients pick the layer: they flow from the input, so frozen models work too. Two
        # images tell as much as the batch (and keep train-mode batch norms working).
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x[:2].detach().clone().requires_grad_(x.is_floating_point())
            out = model(x_in)
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise LayerError(
            "could not find a layer with spatial output to explain (a (B, C, h, w) map, "
            "channels-last map or patch tokens); pass layer=... by name"
        )
    chosen = _last_with_gradient(found, out, size)
    if chosen is None:
        before = attention_inputs[-1] if attention_inputs else 0
        chosen = found[before - 1] if before > 0 else found[-1]
    return chosen[0], chosen[1]


#: Module names (the last part) whose subtree is the classifier, not features.
_HEADS = frozenset({"head", "heads", "classifier", "pre_logits"})
#: Attention internals that are modules of their own in some models.
_QKV = frozenset(
    {"q", "k", "v", "qkv", "query", "key", "value", "q_norm", "k_norm", "q_proj", "k_proj"}
    | {"v_proj", "in_proj", "out_proj"}
)


def _is_attention(module: nn.Module) -> bool:
    kind = type(module).__name__.lower()
    return isinstance(module, nn.MultiheadAttention) or "attention" in kind or kind.endswith("attn")


def _not_candidates(model: nn.Module) -> set[str]:
    """Names of modules that are never an auto-located layer (see :func:`locate`)."""
    excluded: set[str] = set()
    roots: list[str] = []
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if any(name.startswith(root + ".") for root in roots):
            excluded.add(name)
        elif _is_attention(module) or last in _HEADS:
            roots.append(name)
            excluded.add(name)
        elif last in _QKV or "pool" in type(module).__name__.lower():
            excluded.add(name)
    return excluded


def _grid(t: Tensor, size: tuple[int, ...]) -> Tensor | None:
    """``t`` as a ``(B, C, h, w)`` map with more than one position, or ``None``."""
    if t.dim() not in (3, 4) or len(size) != 2 or t.shape[0] == 0:
        return None if t.dim() != len(size) + 2 or t.shape[2:].numel() <= 1 else t
    try:
        grid = to_channels_first(t, input_size=size)
    except LayerError:
        return None
    return grid if grid.shape[2:].numel() > 1 else None


def _last_with_gradient(
    found: list[tuple[str, nn.Module, Tensor]], out: object, size: tuple[int, ...]
) -> tuple[str, nn.Module, Tensor] | None:
    """The last candidate whose map has a non-zero gradient of the top scores."""
    usable = [item for item in found if item[2].requires_grad]
    try:
        scores = scores_of(out)
        top = scores.flatten(1).amax(1).sum() if scores.dim() > 1 else scores.sum()
        if not top.requires_grad:
            return None
        grads = torch.autograd.grad(top, [t for _, _, t in usable], allow_unused=True)
    except (CamkitError, RuntimeError):
        return None  # the model's output or graph does not allow it; fall back to structure
    for item, grad in zip(reversed(usable), reversed(grads)):
        grid = None if grad is None else _grid(grad, size)
        if grid is not None and bool(grid.detach().ne(0).any()):
            return item
    return None


def _not_found(model: nn.Module, spec: str, failed: str) -> LayerNotFoundError:
    names = [n for n, _ in model.named_modules() if n]
    hint = did_you_mean(spec, names) or did_you_mean(failed, names)
    top = [n for n in names if "." not in n]
    return LayerNotFoundError(
        f"no layer {failed!r} in {type(model).__name__} (looking up {spec!r}).{hint} "
        f"Top-level layers: {', '.join(top[:20])}"
    )
