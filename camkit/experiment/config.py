"""The experiment file: schema, loading (TOML or YAML), ``--set`` overrides and defaults.

Every problem is a :class:`~camkit.errors.ConfigError` naming the file, the key path
(``methods[1].num_samples``) and what was expected. Relative paths inside the file (data
folders, checkpoints, ``python:`` model files) are relative to the file's folder; the
output folder is relative to the current directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from camkit.errors import CamkitError, ConfigError
from camkit.registry import registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Metric = Literal[
    "average_drop",
    "increase_in_confidence",
    "deletion",
    "insertion",
    "pointing_game",
    "energy_pointing_game",
]
METRICS: tuple[Metric, ...] = get_args(Metric)
ImageFormat = Literal["png", "jpg"]
MODEL_KINDS = ("camkit", "torchvision", "timm", "python")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_METHOD_KEYS = ("name", "id", "layer")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    """``[model]``: what to explain."""

    source: str = Field(
        "camkit:shapes-cnn",
        description="'camkit:shapes-cnn', 'torchvision:<name>', 'timm:<name>' or "
        "'python:<file.py>:<factory>'",
    )
    weights: str | None = Field(
        None,
        description="torchvision: a weights enum name ('DEFAULT', 'IMAGENET1K_V1'), 'none', or "
        "a checkpoint path (a state_dict); python: a checkpoint path",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the model constructor/factory"
    )

    @field_validator("source")
    @classmethod
    def _known_kind(cls, source: str) -> str:
        kind, _, rest = source.partition(":")
        if kind not in MODEL_KINDS or not rest:
            raise ValueError(
                "expected 'camkit:shapes-cnn', 'torchvision:<name>', 'timm:<name>' or "
                "'python:path/to/file.py:factory'"
            )
        if kind == "python" and ":" not in rest:
            raise ValueError("expected 'python:path/to/file.py:factory' (the factory is missing)")
        return source

    @property
    def kind(self) -> str:
        return self.source.partition(":")[0]


class DataSpec(_Section):
    """``[data]``: the images."""

    source: str = Field(
        "camkit:shapes", description="'camkit:shapes', an image folder, or a glob pattern"
    )
    count: int = Field(64, ge=1, description="camkit:shapes: how many images to generate")
    limit: int | None = Field(None, ge=1, description="use only the first `limit` images")
    image_size: int | tuple[int, int] | None = Field(
        None, description="(H, W) or one side; default 64 for camkit:shapes, 224 for files"
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="normalization mean; default by model (ImageNet for torchvision)"
    )
    std: tuple[float, float, float] | None = Field(
        None, description="normalization std; default by model (ImageNet for torchvision)"
    )

    @field_validator("std")
    @classmethod
    def _positive(cls, std: tuple[float, float, float] | None) -> tuple[float, ...] | None:
        if std is not None and min(std) <= 0:
            raise ValueError("expected three positive numbers")
        return std

    @field_validator("image_size")
    @classmethod
    def _size(cls, size: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sides = (size,) if isinstance(size, int) else size or ()
        if any(s < 8 for s in sides):
            raise ValueError("expected sides of at least 8 pixels")
        return size

    @property
    def embedded(self) -> bool:
        return self.source == "camkit:shapes"


class MethodSpec(BaseModel):
    """One entry of ``[[methods]]``: a method, its layer(s) and its own config keys."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="a method name or alias (see `camkit methods`)")
    id: str | None = Field(
        None, description="the method's name in outputs (default: its name); must be unique"
    )
    layer: str | list[str] | None = Field(
        None, description="target layer(s); default: the last layer with spatial output"
    )

    @property
    def options(self) -> dict[str, Any]:
        """The method's own config keys (everything but name, id and layer)."""
        return dict(self.model_extra or {})


class MetricsSpec(_Section):
    """``[metrics]``: what to measure and how."""

    compute: list[Metric] = Field(default_factory=lambda: list(METRICS))
    softmax: bool = Field(True, description="compare softmax probabilities, not raw scores")
    step: int | None = Field(
        None, ge=1, description="deletion/insertion pixels per step; default H*W/32"
    )
    deletion_substrate: Literal["zeros", "blur"] = "zeros"
    insertion_substrate: Literal["zeros", "blur"] = "blur"
    blur_sigma: float = Field(5.0, gt=0, description="Gaussian blur substrate's sigma")
    tolerance: float | None = Field(
        None, ge=0, description="pointing-game tolerance in pixels; default 15 per 224 pixels"
    )


class OutputSpec(_Section):
    """``[output]``: where and what to write."""

    folder: str = Field("runs/experiment", description="output folder")
    overlays: bool = Field(True, description="write an overlay image per image and method")
    formats: list[ImageFormat] = Field(
        default_factory=lambda: list[ImageFormat](["png"]),
        min_length=1,
        description="overlay file formats",
    )
    colormap: Literal["jet", "viridis", "gray"] = "jet"
    alpha: float = Field(0.5, ge=0, le=1, description="heatmap weight in overlays")
    map_dtype: Literal["float16", "float32"] = Field(
        "float16", description="precision of the stored maps"
    )
    report_images: int = Field(16, ge=0, description="images shown in report.html")


class ExperimentConfig(_Section):
    """A whole experiment file."""

    model: ModelSpec = Field(default_factory=lambda: ModelSpec.model_validate({}))
    data: DataSpec = Field(default_factory=lambda: DataSpec.model_validate({}))
    methods: list[MethodSpec] = Field(min_length=1)
    targets: Literal["predicted", "label"] | int = Field(
        "predicted", description="'predicted', 'label' (ground truth) or a class index"
    )
    metrics: MetricsSpec = Field(default_factory=lambda: MetricsSpec.model_validate({}))
    output: OutputSpec = Field(default_factory=lambda: OutputSpec.model_validate({}))
    seed: int = 0
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', ... or 'auto'")
    batch_size: int = Field(16, ge=1, description="images per forward pass and per shard")

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file this config was read from (``None`` when built in code)."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the config are relative to."""
        return self._source.parent if self._source is not None else Path.cwd()

    def resolved(self) -> dict[str, Any]:
        """The config as plain data, every default filled in (the method configs too)."""
        return self.model_dump(mode="json", exclude_none=False)

    def comparable(self) -> dict[str, Any]:
        """:meth:`resolved` without ``output.folder``: the keys that change results."""
        data = self.resolved()
        data["output"].pop("folder")
        return data

    def fingerprint(self) -> str:
        """A hash of :meth:`comparable`: equal configs resume each other's runs."""
        text = json.dumps(self.comparable(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_config(
    path: str | Path, overrides: list[str] | None = None, output: str | Path | None = None
) -> ExperimentConfig:
    """Read, override, validate and complete an experiment file.

    Args:
        path: a ``.toml``, ``.yaml`` or ``.yml`` file.
        overrides: ``"key.path=value"`` strings applied before validation; values are read
            as YAML scalars or lists (``3``, ``true``, ``[1, 2]``, ``gradcam``).
        output: replaces ``output.folder``.
    """
    path = Path(path)
    data = read_file(path)
    for item in overrides or []:
        apply_override(data, item)
    if output is not None:
        data.setdefault("output", {})
        if not isinstance(data["output"], dict):
            raise ConfigError(f"{path}: output: expected a table, got {data['output']!r}")
        data["output"]["folder"] = str(output)
    return validate(data, path)


def read_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a TOML or YAML file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: expected a .toml, .yaml or .yml file, got {suffix!r}")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


_PATH_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path_steps(key_path: str) -> list[str | int]:
    steps: list[str | int] = []
    for part in key_path.split("."):
        matches = list(_PATH_STEP.finditer(part))
        if not part or "".join(m.group(0) for m in matches) != part:
            raise ValueError(f"cannot parse key path {key_path!r}")
        for m in matches:
            name, index = m.groups()
            steps.append(int(index) if index is not None else int(name) if name.isdigit() else name)
    return steps


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``--set key.path=value`` to raw config ``data`` in place.

    List items are addressed by index: ``methods[0].layer=...`` or ``methods.0.layer=...``.
    """
    key_path, sep, raw = item.partition("=")
    if not sep or not key_path.strip():
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
    try:
        steps = _path_steps(key_path.strip())
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"--set {item!r}: {exc}") from None
    node: Any = data
    for depth, step in enumerate(steps):
        last = depth == len(steps) - 1
        where = _format_loc(steps[: depth + 1])
        if isinstance(step, int):
            if not isinstance(node, list) or not 0 <= step < len(node):
                size = len(node) if isinstance(node, list) else "no"
                raise ConfigError(f"--set {item!r}: {where}: there are {size} items to index")
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {where}: the parent is not a table")
        if last:
            node[step] = value
        else:
            if isinstance(step, str) and step not in node:
                node[step] = [] if isinstance(steps[depth + 1], int) else {}
            node = node[step]


def validate(data: dict[str, Any], path: Path | None = None) -> ExperimentConfig:
    """Validate raw config ``data``, the method configs included, and fill in defaults."""
    where = str(path) if path is not None else "(config)"
    try:
        config = ExperimentConfig.model_validate(copy.deepcopy(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(where, exc)) from None
    config._source = path
    methods = []
    seen: set[str] = set()
    for i, spec in enumerate(config.methods):
        methods.append(_validated_method(spec, f"{where}: methods[{i}]", seen))
    config.methods = methods
    _complete(config, where)
    return config


def _validated_method(spec: MethodSpec, where: str, seen: set[str]) -> MethodSpec:
    try:
        info = registry.info(spec.name)
    except CamkitError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    try:
        method_config = info.config(**spec.options)
    except ValidationError as exc:
        raise ConfigError(
            _format_errors(where, exc, info.config, sep=".", also_allowed=_METHOD_KEYS)
        ) from None
    ident = spec.id or info.name
    if not _ID.match(ident):
        raise ConfigError(
            f"{where}.id: expected lower-case letters, digits, '-' and '_' (it names output "
            f"folders), got {ident!r}"
        )
    if ident in seen:
        raise ConfigError(
            f"{where}.id: {ident!r} is already used by another method; give each entry of the "
            "same method a distinct id"
        )
    seen.add(ident)
    return MethodSpec(name=info.name, id=ident, layer=spec.layer, **method_config.model_dump())


def _complete(config: ExperimentConfig, where: str) -> None:
    """Fill in defaults that depend on other keys, so the resolved file says everything."""
    data, model, metrics = config.data, config.model, config.metrics
    from camkit.experiment.models import preprocessing_of  # it imports this module

    prep = preprocessing_of(model)  # what the model's weights metadata says
    if data.image_size is None:
        data.image_size = 64 if data.embedded else prep.size if prep else 224
    if isinstance(data.image_size, int):
        data.image_size = (data.image_size, data.image_size)
    if data.mean is None:
        data.mean = prep.mean if prep else (0.0, 0.0, 0.0)
    if data.std is None:
        data.std = prep.std if prep else (1.0, 1.0, 1.0)
    height, width = data.image_size
    if metrics.step is None:
        metrics.step = math.ceil(height * width / 32)
    if metrics.tolerance is None:
        metrics.tolerance = round(15 * min(height, width) / 224, 2)
    if model.kind == "camkit" and model.weights is not None:
        raise ConfigError(
            f"{where}: model.weights: camkit models ship their weights; expected no "
            f"'weights' key, got {model.weights!r}"
        )
    if "count" in data.model_fields_set and not data.embedded:
        raise ConfigError(
            f"{where}: data.count: only camkit:shapes is generated to a count; for files "
            f"use data.limit (data.source is {data.source!r})"
        )
    if config.targets == "label" and not data.embedded:
        raise ConfigError(
            f"{where}: targets: 'label' needs ground-truth labels, which only camkit:shapes "
            f"has; expected 'predicted' or a class index for data {data.source!r}"
        )


def _format_loc(loc: list[str | int] | tuple[str | int, ...]) -> str:
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out or "(top level)"


_TYPE_TAGS = {"int", "str", "float", "bool", "none"}


def _is_key(step: str | int) -> bool:
    """Whether a pydantic error location step is a key, not the tag of a union member."""
    return isinstance(step, int) or not ("[" in step or "'" in step or step in _TYPE_TAGS)


def _format_errors(
    where: str,
    exc: ValidationError,
    root: type[BaseModel] = ExperimentConfig,
    sep: str = ": ",
    also_allowed: tuple[str, ...] = (),
) -> str:
    """One line per offending key: ``file: key.path: what is wrong (got ...)``."""
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [p for p in err["loc"] if _is_key(p)]
        if err["type"] == "extra_forbidden":
            allowed = [*also_allowed, *_allowed_keys(root, loc)]
            message = f"unknown key; expected one of: {', '.join(allowed)}"
        elif err["type"] == "missing":
            message = "missing required key"
        else:
            message = f"{err['msg']} (got {err['input']!r})"
        problems.setdefault(_format_loc(loc), []).append(message)
    return "\n".join(
        f"{where}{sep}{key}: {' | or: '.join(dict.fromkeys(messages))}"
        for key, messages in problems.items()
    )


def _allowed_keys(root: type[BaseModel], loc: list[str | int]) -> list[str]:
    """The keys of the table that holds the key at ``loc``."""
    model = root
    for step in loc[:-1]:
        if isinstance(step, int):
            continue
        annotation = model.model_fields[step].annotation if step in model.model_fields else None
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)
