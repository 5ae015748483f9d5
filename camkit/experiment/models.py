"""Building the experiment's model from ``[model]``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from camkit import zoo
from camkit.errors import CamkitError, ConfigError
from camkit.experiment.config import ModelSpec


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for ``(B, 3, H, W)`` images in ``[0, 1]``."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def build_model(spec: ModelSpec, base_dir: Path) -> nn.Module:
    """The model ``spec`` names, in eval mode, on the CPU.

    ``torchvision:<name>`` with an enum ``weights`` name downloads the weights through
    torchvision (once, into torch's cache); a checkpoint path loads a ``state_dict``.
    """
    kind, _, rest = spec.source.partition(":")
    if kind == "camkit":
        try:
            return zoo.load_model(rest, **spec.kwargs)
        except CamkitError as exc:
            raise ConfigError(f"model.source: {exc}") from None
    model = (
        _torchvision(rest, spec) if kind == "torchvision" else _from_python(rest, spec, base_dir)
    )
    weights = None if spec.weights is None or spec.weights.lower() == "none" else spec.weights
    if weights is not None and (kind == "python" or _is_checkpoint(weights)):
        model.load_state_dict(_checkpoint(weights, base_dir))
    return model.eval()


def _torchvision(name: str, spec: ModelSpec) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ConfigError(
            f"model.source: torchvision has no model {name!r}; see torchvision.models.list_models()"
        )
    weights = spec.weights
    enum = (
        None if weights is None or weights.lower() == "none" or _is_checkpoint(weights) else weights
    )
    # an enum name downloads through torchvision; a checkpoint is loaded by the caller
    try:
        return torchvision.models.get_model(name, weights=enum, **spec.kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"model: torchvision:{name} with weights={weights!r}: {exc}") from None


def _is_checkpoint(weights: str | None) -> bool:
    return weights is not None and (
        "/" in weights or "\\" in weights or weights.endswith((".pt", ".pth", ".bin"))
    )


def _checkpoint(weights: str, base_dir: Path) -> dict[str, Tensor]:
    path = Path(weights).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise ConfigError(f"model.weights: no checkpoint file at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights: {path} holds no state_dict")
    return state


def _from_python(target: str, spec: ModelSpec, base_dir: Path) -> nn.Module:
    file, _, factory = target.rpartition(":")
    path = Path(file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise ConfigError(f"model.source: no Python file at {path}")
    module_spec = importlib.util.spec_from_file_location(f"camkit_user_model_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ConfigError(f"model.source: {path} defines no callable {factory!r}")
    model = fn(**spec.kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.source: {path}:{factory} returned {type(model).__name__}, not an nn.Module"
        )
    return model
