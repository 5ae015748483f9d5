"""Loading models as people load them, with the preprocessing their weights expect.

Sources: ``camkit:shapes-cnn`` (embedded), ``torchvision:<name>``, ``timm:<name>`` (needs
``pip install camkit[timm]``), ``python:<file.py>:<factory>`` (or an importable module,
``python:pkg.module:factory``), or a whole model saved with
``torch.save(model)`` (``path/to/model.pt``). Weights: ``"DEFAULT"`` (the source's pretrained
weights), ``"none"`` (random), a weights name (torchvision enums, e.g. ``"IMAGENET1K_V1"``), or
a checkpoint file holding a ``state_dict``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit import zoo
from camkit.errors import CamkitError, ConfigError, WeightsDownloadError, WeightsError
from camkit.experiment.config import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

Triple = tuple[float, float, float]
#: Interpolation modes of F.interpolate that preprocessing metadata may name.
_MODES = ("bilinear", "bicubic", "nearest", "nearest-exact")
#: ``python:pkg.module:factory``: an importable module instead of a file.
_MODULE_NAME = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
#: The side of the images camkit:shapes-cnn was trained on.
SHAPES_SIZE = 64
#: Examples of a key list in an error message; the rest is counted, not listed.
_SHOWN = 3


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its images: RGB in ``[0, 1]``, resized, then ``(x - mean) / std``.

    Attributes:
        mean, std: per-channel normalization.
        size: the ``(H, W)`` the model was trained at.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        fixed_size: whether the model takes only ``size`` (e.g. ViTs with a fixed patch grid);
            other models get an image's own aspect ratio, its shorter side scaled to ``size``.

    Example:
        >>> prep = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, (224, 224))
        >>> prep.input_size(240, 320)
        (224, 299)
    """

    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)
    size: tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    fixed_size: bool = False

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(H, W)`` an image of ``height x width`` pixels is resized to for the model."""
        if self.fixed_size:
            return self.size
        scale = min(self.size) / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in ``[0, 1]`` -> resized and normalized model inputs."""
        size = self.input_size(images.shape[-2], images.shape[-1])
        if tuple(images.shape[-2:]) != size:
            # Other modes of the metadata (e.g. "random" for training) read as bilinear.
            mode = self.interpolation if self.interpolation in _MODES else "bilinear"
            smooth = mode in ("bilinear", "bicubic")
            images = F.interpolate(
                images,
                size=size,
                mode=mode,
                align_corners=False if smooth else None,
                antialias=smooth,
            ).clamp(0, 1)
        return self.normalize(images)

    def normalize(self, images: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel of ``(B, 3, H, W)`` images."""
        mean, std = (
            torch.tensor(v, dtype=images.dtype).reshape(3, 1, 1) for v in (self.mean, self.std)
        )
        return (images - mean.to(images.device)) / std.to(images.device)


@dataclass
class LoadedModel:
    """A model in eval mode on the CPU, with what its source says about it.

    Attributes:
        model: the ``nn.Module``.
        preprocessing: what its weights expect (:class:`Preprocessing`).
        classes: class names by index, where the weights' metadata has them, else ``None``.
        source: the source it was loaded from.
        weights: the weights it carries (``"none"`` for random ones).
    """

    model: nn.Module
    preprocessing: Preprocessing
    classes: tuple[str, ...] | None
    source: str
    weights: str


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
    """The model ``spec`` names, in eval mode, on the CPU (see :func:`load_model`)."""
    return load_model(spec.source, spec.weights, spec.kwargs, base_dir).model


def load_model(
    source: str,
    weights: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> LoadedModel:
    """Load the model ``source`` names with ``weights``; relative paths resolve in ``base_dir``.

    ``weights=None`` is the source's default in a config file: the shipped weights of
    ``camkit:`` models, random weights otherwise. ``"DEFAULT"`` downloads pretrained weights
    once into torch's cache (``TORCH_HOME``) or, for timm, the Hugging Face cache (``HF_HOME``).

    Example:
        >>> loaded = load_model("torchvision:resnet18", "none")
        >>> loaded.preprocessing.mean
        (0.485, 0.456, 0.406)
    """
    base = Path.cwd() if base_dir is None else base_dir
    options = dict(kwargs or {})
    kind, sep, rest = source.partition(":")
    if not sep or kind not in _LOADERS:
        return _saved_model(source, weights, options, base)
    if not rest:
        raise ConfigError(f"model.source: {source!r} names no model after {kind + ':'!r}")
    return _LOADERS[kind](rest, weights, options, base)


def preprocessing_of(spec: ModelSpec) -> Preprocessing | None:
    """What a config's model expects, where that is known without building it, else ``None``.

    Example:
        >>> preprocessing_of(ModelSpec(source="torchvision:resnet18")).mean
        (0.485, 0.456, 0.406)
    """
    kind, _, name = spec.source.partition(":")
    if kind == "torchvision":
        # every torchvision classification weight is ImageNet-normalized
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD)
    if kind == "timm":
        return _timm_preprocessing(_timm_config(name))
    return None


# -- sources --------------------------------------------------------------------------------


def _camkit(name: str, weights: str | None, kwargs: dict[str, Any], base: Path) -> LoadedModel:
    source = f"camkit:{name}"
    _check_kwargs(zoo.load_model, kwargs, source, taken=frozenset({"name"}))
    shipped = weights is None or weights.upper() == "DEFAULT"
    kwargs.setdefault("pretrained", shipped)
    try:
        model = zoo.load_model(name, **kwargs)
    except CamkitError as exc:
        raise ConfigError(f"model.source: {exc}") from None
    label = "DEFAULT" if shipped else _load_weights(model, weights, base, source, named=False)
    prep = Preprocessing(size=(SHAPES_SIZE, SHAPES_SIZE))
    return LoadedModel(model.eval(), prep, tuple(zoo.CLASSES), source, label)


def _torchvision(name: str, weights: str | None, kwargs: dict[str, Any], base: Path) -> LoadedModel:
    import torchvision

    source = f"torchvision:{name}"
    if name not in torchvision.models.list_models():
        raise ConfigError(
            f"model.source: torchvision has no model {name!r}; see "
            "torchvision.models.list_models()"
            + _did_you_mean(name, torchvision.models.list_models())
        )
    enums = _torchvision_weights(name)
    enum = None
    if weights is not None and weights.lower() != "none" and not _is_path(weights):
        if enums is None or (weights.upper() != "DEFAULT" and weights not in enums.__members__):
            choices = ", ".join(["DEFAULT", *enums.__members__]) if enums else "none"
            raise WeightsError(
                f"model.weights: torchvision:{name} has no weights {weights!r}; expected one "
                f"of {choices}, 'none' or a checkpoint file"
            )
        enum = enums[weights.upper() if weights.upper() == "DEFAULT" else weights]
    if kwargs.get("weights_backbone") == "none":
        kwargs["weights_backbone"] = None  # TOML has no null
    builder = torchvision.models.get_model_builder(name)
    if enum is None and "weights_backbone" in _parameters(builder):
        # random weights: no pretrained backbone either (detectors, segmenters); never a download
        kwargs.setdefault("weights_backbone", None)
    try:
        model = torchvision.models.get_model(name, weights=enum, **kwargs)
    except OSError as exc:
        raise _download_error(source, str(enum), exc, enum.url if enum else None) from None
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"model: {source} with weights={weights!r}: {_first_line(exc)}") from None
    label = _load_weights(model, weights, base, source, named=enum is not None)
    meta = enum if enum is not None else (enums.DEFAULT if enums is not None else None)
    prep = _torchvision_preprocessing(meta, model)
    classes = (
        tuple(enum.meta["categories"]) if enum is not None and "categories" in enum.meta else None
    )
    return LoadedModel(model.eval(), prep, classes, source, str(enum) if enum else label)


def _timm(name: str, weights: str | None, kwargs: dict[str, Any], base: Path) -> LoadedModel:
    timm = _import_timm()
    source = f"timm:{name}"
    if not timm.is_model(name):
        raise ConfigError(
            f"model.source: timm has no model {name!r}; see timm.list_models()"
            + _did_you_mean(name, timm.list_models())
        )
    pretrained = weights is not None and weights.upper() == "DEFAULT"
    if (
        weights is not None
        and not pretrained
        and weights.lower() != "none"
        and not _is_path(weights)
    ):
        raise WeightsError(
            f"model.weights: for timm models expected 'DEFAULT', 'none' or a checkpoint file, "
            f"got {weights!r} (name a pretrained tag in the model: 'timm:{name}.<tag>')"
        )
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as exc:
        raise _download_error(source, "DEFAULT", exc, None) from None
    except TypeError as exc:
        raise ConfigError(f"model.kwargs: {source} does not take {_first_line(exc)}") from None
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"model: {source} with weights={weights!r}: {_first_line(exc)}") from None
    label = _load_weights(model, weights, base, source, named=pretrained)
    config = dict(getattr(model, "pretrained_cfg", None) or _timm_config(name))
    classes = _timm_classes(model, timm) if pretrained else None
    prep = _timm_preprocessing(config)
    return LoadedModel(model.eval(), prep, classes, source, "DEFAULT" if pretrained else label)


def _python(target: str, weights: str | None, kwargs: dict[str, Any], base: Path) -> LoadedModel:
    file, _, factory = target.rpartition(":")
    if not file:
        raise ConfigError("model.source: expected 'python:path/to/file.py:factory'")
    path = _path(file, base)
    if path.is_file():
        module_spec = importlib.util.spec_from_file_location(f"camkit_user_model_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        where = str(path)
    elif _MODULE_NAME.fullmatch(file) and not file.endswith(".py"):
        try:
            module = importlib.import_module(file)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"model.source: no Python file at {path} and no importable module {file!r} ({exc})"
            ) from None
        where = file
    else:
        raise ConfigError(f"model.source: no Python file at {path}")
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ConfigError(f"model.source: {where} defines no callable {factory!r}")
    _check_kwargs(fn, kwargs, f"python:{target}")
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.source: {where}:{factory} returned {type(model).__name__}, not an nn.Module"
        )
    if weights is not None and weights.upper() == "DEFAULT":
        weights = None  # the factory's own weights
    label = _load_weights(model, weights, base, f"python:{target}", named=False)
    return LoadedModel(model.eval(), Preprocessing(), None, f"python:{target}", label)


def _saved_model(file: str, weights: str | None, kwargs: dict[str, Any], base: Path) -> LoadedModel:
    path = _path(file, base)
    if not path.is_file():
        raise ConfigError(
            f"model.source: {file!r} is neither a file nor 'camkit:NAME', 'torchvision:NAME', "
            "'timm:NAME' or 'python:FILE.py:FACTORY'"
        )
    if kwargs:
        raise ConfigError(f"model.kwargs: a saved model ({path}) takes no keyword arguments")
    try:
        # A whole pickled model runs code when loaded: it is trusted like a python: source.
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(
            f"model.source: {path} is not a saved model: {_first_line(exc)}"
        ) from None
    if isinstance(model, Mapping):
        raise ConfigError(
            f"model.source: {path} holds weights (a state_dict), not a model: name the "
            f"architecture as the model and pass this file as its weights (--weights {file})"
        )
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.source: {path} holds a {type(model).__name__}, not an nn.Module")
    label = _load_weights(model, weights if weights != "DEFAULT" else None, base, file, named=False)
    return LoadedModel(model.eval(), Preprocessing(), None, file, label)


_LOADERS: dict[str, Callable[[str, str | None, dict[str, Any], Path], LoadedModel]] = {
    "camkit": _camkit,
    "torchvision": _torchvision,
    "timm": _timm,
    "python": _python,
}


# -- weights --------------------------------------------------------------------------------


def _load_weights(
    model: nn.Module, weights: str | None, base: Path, source: str, *, named: bool
) -> str:
    """Load a checkpoint file into ``model`` when ``weights`` is one; the weights' label."""
    if weights is None or weights.lower() == "none" or named:
        return weights or "none"
    if not _is_path(weights) and not _path(weights, base).is_file():
        raise WeightsError(
            f"model.weights: {source} has no weights named {weights!r}; expected a checkpoint "
            "file or 'none'"
        )
    path = _path(weights, base)
    state = _checkpoint(path)
    _check_fits(model, state, path, source)
    model.load_state_dict(state)
    return str(path)


def _checkpoint(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise WeightsError(f"model.weights: no checkpoint file at {path}")
    if not _looks_saved_by_torch(path):
        raise WeightsError(
            f"model.weights: {path} is not a PyTorch checkpoint (neither the zip archive nor the "
            "pickle that torch.save writes)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"model.weights: {path} holds more than tensors (a whole model saved with "
            "torch.save(model)?): pass it as the model itself, or save model.state_dict()"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(
            f"model.weights: {path} is not a PyTorch checkpoint ({_first_line(exc)})"
        ) from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"model.weights: {path} holds no state_dict (a mapping of tensors)")
    state = dict(state)
    # Checkpoints saved from DataParallel / DistributedDataParallel prefix every key.
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _looks_saved_by_torch(path: Path) -> bool:
    """Whether ``path`` starts like what ``torch.save`` writes: a zip archive, or (the legacy
    format) a pickle."""
    with path.open("rb") as handle:
        head = handle.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _check_fits(model: nn.Module, state: Mapping[str, Tensor], path: Path, source: str) -> None:
    """A summary of how a state_dict misses the model, not a multi-KB key list."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = [
        _summary(len(missing), "missing from the checkpoint", missing),
        _summary(len(unexpected), "not in the model", unexpected),
        _summary(len(shapes), "of another shape", shapes),
    ]
    raise WeightsError(
        f"model.weights: {path} does not fit {source} ({type(model).__name__}, "
        f"{len(expected)} tensors; checkpoint: {len(state)}): "
        + "; ".join(p for p in parts if p)
        + ". Is it the checkpoint of another architecture or class count?"
    )


def _summary(count: int, what: str, keys: list[str]) -> str:
    if not count:
        return ""
    shown = ", ".join(keys[:_SHOWN]) + (f", ... ({count - _SHOWN} more)" if count > _SHOWN else "")
    return f"{count} {what} ({shown})"


def _download_error(source: str, weights: str, exc: OSError, url: str | None) -> WeightsError:
    reason = _first_line(exc)
    if source.startswith("timm:"):
        from huggingface_hub import constants

        where = (
            f"copy a Hugging Face hub cache that holds them into {constants.HF_HUB_CACHE} "
            "(HF_HOME / HF_HUB_CACHE choose it)"
        )
    else:
        file = url.rsplit("/", 1)[-1] if url else "the weights file"
        where = (
            f"put {file} into {Path(torch.hub.get_dir()) / 'checkpoints'} (TORCH_HOME chooses it)"
        )
    return WeightsDownloadError(
        f"model.weights: the {weights} weights of {source} are not in the cache and cannot be "
        f"downloaded ({reason}). On a machine without network, {where}; or pass a checkpoint "
        "file as the weights, or use weights 'none' (--weights none) for random weights"
    )


# -- metadata ------------------------------------------------------------------------------


def _torchvision_weights(name: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _torchvision_preprocessing(enum: Any, model: nn.Module) -> Preprocessing:
    mean, std, crop, mode = IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear"
    if enum is not None:
        transforms = enum.transforms()
        mean = _triple(getattr(transforms, "mean", mean))
        std = _triple(getattr(transforms, "std", std))
        crop = int(getattr(transforms, "crop_size", [crop])[0])
        given = getattr(transforms, "interpolation", None)
        mode = str(getattr(given, "value", given or mode))
    # torchvision's ViT asserts its image size; its other classifiers take any size.
    fixed = getattr(model, "image_size", None)
    size = (fixed, fixed) if isinstance(fixed, int) else (crop, crop)
    return Preprocessing(mean, std, size, mode, fixed_size=isinstance(fixed, int))


def _timm_config(name: str) -> dict[str, Any]:
    timm = _import_timm()
    config = timm.models.get_pretrained_cfg(name)
    return config.to_dict() if config is not None else {}


def _timm_preprocessing(config: Mapping[str, Any]) -> Preprocessing:
    _, height, width = config.get("input_size", (3, 224, 224))
    return Preprocessing(
        _triple(config.get("mean", IMAGENET_MEAN)),
        _triple(config.get("std", IMAGENET_STD)),
        (int(height), int(width)),
        str(config.get("interpolation") or "bilinear"),
        fixed_size=bool(config.get("fixed_input_size", False)),
    )


def _timm_classes(model: nn.Module, timm: Any) -> tuple[str, ...] | None:
    subset = timm.data.infer_imagenet_subset(model)
    if subset is None:
        return None
    info = timm.data.ImageNetInfo(subset)
    count = int(getattr(model, "num_classes", 0))
    return tuple(info.index_to_description(i).split(",")[0] for i in range(count)) or None


def _import_timm() -> Any:
    try:
        import timm
        import timm.data
    except ImportError:
        raise ConfigError(
            "model.source: timm models need timm: pip install 'camkit[timm]'"
        ) from None
    return timm


# -- small helpers --------------------------------------------------------------------------


def _check_kwargs(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    source: str,
    taken: frozenset[str] = frozenset(),
) -> None:
    """Unknown ``model.kwargs`` named before the constructor fails somewhere inside."""
    if not kwargs:
        return
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n not in {"self", *taken} and p.kind in _NAMED]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(
            f"model.kwargs: {source} takes no argument {', '.join(map(repr, unknown))}; it takes "
            + (", ".join(accepted) if accepted else "none")
            + _did_you_mean(unknown[0], accepted)
        )


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def _did_you_mean(given: str, choices: list[str]) -> str:
    from camkit.errors import did_you_mean

    return did_you_mean(given, choices)


def _is_path(weights: str | None) -> bool:
    return weights is not None and (
        os.sep in weights or "/" in weights or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))
    )


def _path(file: str, base: Path) -> Path:
    path = Path(file).expanduser()
    return path if path.is_absolute() else base / path


def _triple(values: Any) -> Triple:
    a, b, c = (float(v) for v in values)
    return a, b, c


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
