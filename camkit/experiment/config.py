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
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from camkit.engine.options import RunOptions
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
    "road_morf",
    "road_lerf",
    "road_combined",
    "cam_mult_confidence_change",
    "arcc",
    "arcc_coherency",
    "arcc_complexity",
    "arcc_confidence",
    "sanity_cascading_spearman",
    "sanity_cascading_ssim",
    "sanity_independent_spearman",
    "sanity_independent_ssim",
]
METRICS: tuple[Metric, ...] = get_args(Metric)
#: What ``[metrics] compute`` defaults to: the metrics of one model pass or one curve per
#: image; ROAD, ARCC and the sanity checks (many passes per image) are asked for by name.
DEFAULT_METRICS: tuple[Metric, ...] = METRICS[:6]
_ROAD = ("road_morf", "road_lerf", "road_combined")
_ARCC = ("arcc", "arcc_coherency", "arcc_complexity", "arcc_confidence")
#: ``[metrics]`` keys that change only the metrics listed with them.
METRIC_OPTIONS: dict[str, tuple[str, ...]] = {
    "road_removed": _ROAD,
    "road_noise": (*_ROAD, *_ARCC),
    "arcc_removed": _ARCC,
    "sanity_layers": METRICS[-4:],
    "sanity_seed": METRICS[-4:],
}
ImageFormat = Literal["png", "jpg"]
#: ``targets``: the predicted class, the ground-truth label, or one class index.
TargetChoice = Literal["predicted", "label"] | int
MODEL_KINDS = ("camkit", "torchvision", "timm", "python")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_METHOD_KEYS = ("name", "id", "layer")


#: Bounds that keep a typo from asking for terabytes or hours before anything is written.
MAX_SIDE = 8192
MAX_COUNT = 10_000_000
MAX_BATCH = 4096
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda|cuda:\d{1,3}|xpu|xpu:\d{1,3})$")

# strict types: no bool for an int, no string for a bool or a number, finite floats; lists
# are accepted where a fixed-length tuple is expected, their items strict as well
_Int = Annotated[int, Strict()]
_Float = Annotated[float, Strict()]
_Size = Annotated[tuple[_Int, _Int], Field(strict=False)]
_Triple = Annotated[tuple[_Float, _Float, _Float], Field(strict=False)]
_Share = Annotated[float, Strict(), Field(gt=0, lt=1)]
#: ROAD's default shares, those of ``camkit.metrics.imputation.DEFAULT_REMOVED`` (written out:
#: reading a config imports no torch).
ROAD_REMOVED = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: ROAD's shares of imputed pixels: at most one per percent.
MAX_SHARES = 99


#: ``[engine]`` as :meth:`ExperimentConfig.comparable` writes it when the file has none.
_DEFAULT_ENGINE = {
    k: v for k, v in RunOptions.model_validate({}).model_dump().items() if k != "progress"
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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

    source: str | list[str] = Field(
        "camkit:shapes",
        description="'camkit:shapes', an image file, an image folder, a glob pattern, or a "
        "list of files, folders and patterns",
    )
    on_error: Literal["stop", "skip"] = Field(
        "stop",
        description="an image file that cannot be decoded: stop the run naming it, or skip "
        "it (summary.json and the report list it)",
    )
    count: int = Field(
        64, ge=1, le=MAX_COUNT, description="camkit:shapes: how many images to generate"
    )
    limit: int | None = Field(None, ge=1, description="use only the first `limit` images")
    image_size: int | _Size | None = Field(
        None, description="(H, W) or one side; default 64 for camkit:shapes, 224 for files"
    )
    mean: _Triple | None = Field(
        None, description="normalization mean; default by model (ImageNet for torchvision)"
    )
    std: _Triple | None = Field(
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
        if any(s < 8 or s > MAX_SIDE for s in sides):
            raise ValueError(f"expected sides of 8 to {MAX_SIDE} pixels")
        return size

    @field_validator("source")
    @classmethod
    def _sources(cls, source: str | list[str]) -> str | list[str]:
        if isinstance(source, list):
            if not source:
                raise ValueError("expected at least one file, folder or pattern")
            if "camkit:shapes" in source:
                raise ValueError("'camkit:shapes' cannot be combined with files")
        return source

    annotations: str | None = Field(
        None,
        description="a COCO-style JSON file of ground-truth boxes and classes (detection); "
        "images are matched by file_name",
    )

    @property
    def embedded(self) -> bool:
        return self.source == "camkit:shapes"


class MethodSpec(BaseModel):
    """One entry of ``[[methods]]``: a method, its layer(s) and its own config keys."""

    model_config = ConfigDict(extra="allow", strict=True)

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

    compute: list[Metric] = Field(default_factory=lambda: list(DEFAULT_METRICS))
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
    baselines: bool = Field(True, description="measure random-map chance levels of every metric")
    road_removed: list[_Share] = Field(
        default_factory=lambda: list(ROAD_REMOVED),
        min_length=1,
        max_length=MAX_SHARES,
        description="ROAD: shares of the pixels imputed, each in (0, 1); averaged over",
    )
    road_noise: _Float = Field(
        0.01, ge=0, le=1, description="ROAD and ARCC: imputation noise's standard deviation"
    )
    arcc_removed: list[_Share] = Field(
        default_factory=lambda: [0.2, 0.4, 0.6, 0.8],
        min_length=1,
        max_length=MAX_SHARES,
        description="ARCC: the shares of its ROAD confidence part",
    )
    sanity_layers: list[str] | None = Field(
        None,
        min_length=1,
        description="sanity checks: the modules randomized, one per step, output first; "
        "default: every module that owns parameters",
    )
    sanity_seed: _Int = Field(
        0, ge=0, le=MAX_SEED, description="sanity checks: seed of the re-drawn parameters"
    )

    @field_validator("compute")
    @classmethod
    def _once(cls, compute: list[str]) -> list[str]:
        repeated = [name for i, name in enumerate(compute) if name in compute[:i]]
        if repeated:
            raise ValueError(f"{quote(repeated[0])} is listed twice")
        return compute


class OutputSpec(_Section):
    """``[output]``: where and what to write."""

    folder: str = Field("runs/experiment", description="output folder")
    overlays: bool = Field(True, description="write an overlay image per image and method")
    formats: list[ImageFormat] = Field(
        default_factory=lambda: list[ImageFormat](["png"]),
        min_length=1,
        description="overlay file formats",
    )
    colormap: Literal["jet", "viridis", "cividis", "gray"] = "jet"
    alpha: float = Field(0.5, ge=0, le=1, description="heatmap weight in overlays")
    map_dtype: Literal["float16", "float32"] = Field(
        "float16", description="precision of the stored maps"
    )
    report_images: int | None = Field(
        None, ge=0, le=MAX_COUNT, description="images in report.html's browser (default: all)"
    )


TaskKind = Literal["classification", "detection", "segmentation", "multilabel", "embedding"]
#: The ``[task]`` keys each kind reads, with their defaults (the other kinds refuse them).
TASK_KEYS: dict[str, dict[str, Any]] = {
    "classification": {},
    "detection": {"box": "top", "iou": 0.5},
    "segmentation": {"region": "ground-truth"},
    "multilabel": {},
    "embedding": {"reference": "self"},
}
#: The metrics of a task other than classification (they score one target per image).
TASK_METRICS: tuple[Metric, ...] = (*DEFAULT_METRICS, "road_morf", "road_lerf", "road_combined")


class TaskSpec(_Section):
    """``[task]``: what kind of model, and which score of it each map explains."""

    kind: TaskKind = Field(
        "classification",
        description="'classification', 'detection', 'segmentation', 'multilabel' or 'embedding'",
    )
    box: Literal["top", "ground-truth"] | None = Field(
        None,
        description="detection: explain the top-scoring box the detector finds on the clean "
        "image, or the ground-truth box (default 'top')",
    )
    iou: float | None = Field(
        None,
        ge=0,
        le=1,
        description="detection: a detected box of the class counts as the explained box when "
        "its IoU with it is at least this (default 0.5)",
    )
    region: Literal["ground-truth", "predicted"] | None = Field(
        None,
        description="segmentation: sum the class's logits inside the ground-truth mask of the "
        "class or inside the region the model predicts as the class (default 'ground-truth')",
    )
    reference: Literal["self"] | list[str] | None = Field(
        None,
        description="embedding: 'self' (each image's own clean embedding) or image files, "
        "folders or patterns whose mean embedding is the concept (default 'self')",
    )

    @model_validator(mode="after")
    def _keys_of_kind(self) -> TaskSpec:
        allowed = TASK_KEYS[self.kind]
        for key in ("box", "iou", "region", "reference"):
            if getattr(self, key) is not None and key not in allowed:
                owner = next(k for k, keys in TASK_KEYS.items() if key in keys)
                raise ValueError(f"task.{key} is a {owner} key; task.kind is {self.kind!r}")
        for key, default in allowed.items():
            if getattr(self, key) is None:
                setattr(self, key, default)
        if isinstance(self.reference, list) and not self.reference:
            raise ValueError("task.reference: expected at least one image file, folder or pattern")
        return self


class ExperimentConfig(_Section):
    """A whole experiment file."""

    model: ModelSpec = Field(default_factory=lambda: ModelSpec.model_validate({}))
    data: DataSpec = Field(default_factory=lambda: DataSpec.model_validate({}))
    methods: list[MethodSpec] = Field(min_length=1)
    targets: TargetChoice = Field(
        "predicted", description="'predicted', 'label' (ground truth) or a class index"
    )
    task: TaskSpec = Field(default_factory=lambda: TaskSpec.model_validate({}))
    metrics: MetricsSpec = Field(default_factory=lambda: MetricsSpec.model_validate({}))
    output: OutputSpec = Field(default_factory=lambda: OutputSpec.model_validate({}))
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of camkit:shapes and methods")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:1', ... or 'auto'")
    batch_size: int = Field(
        16, ge=1, le=MAX_BATCH, description="images per forward pass and per shard"
    )
    engine: RunOptions = Field(
        default_factory=lambda: RunOptions.model_validate({}),
        description="run options of every method (see camkit.create)",
    )

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError("expected 'cpu', 'auto', 'cuda', 'cuda:<index>', 'mps' or 'xpu'")
        return device

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
        """:meth:`resolved` without ``output.folder``, ``data.on_error`` and the options of
        metrics not computed, and the ``[engine]`` table when it is the default one: the keys
        that change results (skipping a broken file changes no other image's result; runs from
        before an option or a table existed resume)."""
        data = self.resolved()
        data["output"].pop("folder")
        data["data"].pop("on_error")
        data["engine"].pop("progress")  # progress bars change no result
        if data["engine"] == _DEFAULT_ENGINE:
            data.pop("engine")
        if data["task"] == _DEFAULT_TASK:  # runs from before [task] existed resume
            data.pop("task")
        if data["data"]["annotations"] is None:
            data["data"].pop("annotations")
        for key, names in METRIC_OPTIONS.items():
            if not set(names) & set(self.metrics.compute):
                data["metrics"].pop(key)
        return data

    def fingerprint(self) -> str:
        """A hash of :meth:`comparable`: equal configs resume each other's runs."""
        text = json.dumps(self.comparable(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_DEFAULT_TASK = TaskSpec.model_validate({}).model_dump(mode="json")


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
            raise ConfigError(f"{path}: output: expected a table, got {quote(data['output'])}")
        data["output"]["folder"] = str(output)
    return validate(data, path)


#: The largest experiment file read, and the deepest nesting of tables and lists in it.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
#: Values quoted in error messages are cut to this many characters.
QUOTE_CHARS = 200


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to about ``limit`` characters, for an error message.

    Example:
        >>> quote("x" * 500, limit=10)
        "'xxxxxxxx... (502 characters)"
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}... ({len(text)} characters)"


class _StrictYamlLoader(yaml.SafeLoader):
    """YAML without aliases (``*name``, whose expansion is unbounded) and without duplicate
    keys (YAML would silently keep the last)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem=f"aliases (*{event.anchor}) are not supported in experiment files",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {quote(key)}", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """``text`` read as YAML by the safe loader, aliases and duplicate keys refused.

    Example:
        >>> parse_yaml("a: [1, 2]")
        {'a': [1, 2]}
    """
    return yaml.load(text, Loader=_StrictYamlLoader)  # a SafeLoader subclass: no tags


def read_file(path: Path) -> dict[str, Any]:
    """The raw mapping in a TOML or YAML file (UTF-8, a byte-order mark allowed).

    Raises:
        ConfigError: the file is missing, too large, binary, not UTF-8, not valid TOML or
            YAML, uses YAML aliases or duplicate keys, or nests too deeply.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: expected a .toml, .yaml or .yml file, got {quote(suffix)}")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{path}: {path.stat().st_size} bytes is more than an experiment file may hold "
                f"({MAX_FILE_BYTES} bytes)"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror})") from None
    if b"\0" in raw:
        raise ConfigError(f"{path}: a binary file, not a TOML or YAML text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    try:
        data: Any = tomllib.loads(text) if suffix == ".toml" else parse_yaml(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        message = _one_line(exc)
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {message}") from None
    except RecursionError:
        raise ConfigError(f"{path}: tables or lists nest too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"{path}: tables or lists nest more than {MAX_DEPTH} levels deep")
    return data


def _one_line(exc: Exception) -> str:
    """A parser's error on one short line (YAML's own quotes the offending lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        text = f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    else:
        text = " ".join(str(exc).split())
    return text[: QUOTE_CHARS * 2]


def _depth(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, (dict, list)) and depth <= MAX_DEPTH:
            stack += [(child, depth + 1) for child in children]
    return deepest


_PATH_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path_steps(key_path: str) -> list[str | int]:
    steps: list[str | int] = []
    for part in key_path.split("."):
        matches = list(_PATH_STEP.finditer(part))
        if not part or "".join(m.group(0) for m in matches) != part:
            raise ValueError(f"cannot parse key path {quote(key_path)}")
        for m in matches:
            name, index = m.groups()
            steps.append(int(index) if index is not None else int(name) if name.isdigit() else name)
    return steps


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``--set key.path=value`` to raw config ``data`` in place.

    List items are addressed by index: ``methods[0].layer=...`` or ``methods.0.layer=...``.
    """
    key_path, sep, raw = item.partition("=")
    shown = quote(item)
    if not sep or not key_path.strip():
        raise ConfigError(f"--set {shown}: expected KEY.PATH=VALUE")
    try:
        steps = _path_steps(key_path.strip())
    except ValueError as exc:
        raise ConfigError(f"--set {shown}: {str(exc)[:QUOTE_CHARS]}") from None
    value = _override_value(raw)
    node: Any = data
    for depth, step in enumerate(steps):
        last = depth == len(steps) - 1
        where = _format_loc(steps[: depth + 1])
        if isinstance(step, int):
            if not isinstance(node, list) or not 0 <= step < len(node):
                size = len(node) if isinstance(node, list) else "no"
                raise ConfigError(f"--set {shown}: {where}: there are {size} items to index")
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {shown}: {where}: the parent is not a table")
        if last:
            node[step] = value
        else:
            if isinstance(step, str) and step not in node:
                node[step] = [] if isinstance(steps[depth + 1], int) else {}
            node = node[step]


def _override_value(raw: str) -> Any:
    """A ``--set`` value read as a YAML scalar or list; text YAML cannot read (a glob such
    as ``*.png``, which YAML takes for an alias) is kept as the text itself."""
    if not raw.strip():
        return ""
    try:
        return parse_yaml(raw)
    except (yaml.YAMLError, RecursionError):
        return raw


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
    # Run options given to one method override the [engine] table for it.
    run = {k: v for k, v in spec.options.items() if k in RunOptions.model_fields}
    own = {k: v for k, v in spec.options.items() if k not in run or k in info.config.model_fields}
    try:
        RunOptions(**run)
        method_config = info.config(**own)
    except ValidationError as exc:
        raise ConfigError(
            _format_errors(
                where,
                exc,
                info.config,
                sep=".",
                also_allowed=_METHOD_KEYS,
                then_allowed=tuple(RunOptions.model_fields),
            )
        ) from None
    ident = spec.id or info.name
    if not _ID.match(ident):
        raise ConfigError(
            f"{where}.id: expected lower-case letters, digits, '-' and '_' (it names output "
            f"folders), got {quote(ident)}"
        )
    if ident in seen:
        raise ConfigError(
            f"{where}.id: {quote(ident)} is already used by another method; give each entry of the "
            "same method a distinct id"
        )
    seen.add(ident)
    return MethodSpec(
        name=info.name, id=ident, layer=spec.layer, **run, **method_config.model_dump()
    )


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
            f"'weights' key, got {quote(model.weights)}"
        )
    if "count" in data.model_fields_set and not data.embedded:
        raise ConfigError(
            f"{where}: data.count: only camkit:shapes is generated to a count; for files "
            f"use data.limit (data.source is {quote(data.source)})"
        )
    _check_task(config, where)
    if config.targets == "label" and not data.embedded and config.task.kind != "segmentation":
        raise ConfigError(
            f"{where}: targets: 'label' needs ground-truth labels, which only camkit:shapes "
            f"has; expected 'predicted' or a class index for data {quote(data.source)}"
        )


def _check_task(config: ExperimentConfig, where: str) -> None:
    """The keys ``[task]`` makes wrong: metrics it cannot measure, targets it does not read,
    ground truth it needs."""
    task, data = config.task, config.data
    if task.kind == "classification":
        if data.annotations is not None:
            raise ConfigError(
                f"{where}: data.annotations: ground-truth boxes are read for task.kind = "
                "'detection'; classification runs read none"
            )
        return
    unmeasured = [m for m in config.metrics.compute if m not in TASK_METRICS]
    if unmeasured:
        raise ConfigError(
            f"{where}: metrics.compute: {quote(unmeasured[0])} is measured for classification "
            f"only; task.kind {quote(task.kind)} measures {', '.join(TASK_METRICS)}"
        )
    if task.kind in ("detection", "embedding") and config.targets != "predicted":
        raise ConfigError(
            f"{where}: targets: task.kind {quote(task.kind)} chooses its target with "
            f"[task] keys ({', '.join(TASK_KEYS[task.kind])}); expected no 'targets' key "
            f"(or 'predicted'), got {quote(config.targets)}"
        )
    if data.annotations is not None and task.kind != "detection":
        raise ConfigError(
            f"{where}: data.annotations: ground-truth boxes are read for task.kind = "
            f"'detection', not {quote(task.kind)} (segmentation reads <stem>.mask.png files)"
        )
    if data.annotations is not None and data.embedded:
        raise ConfigError(
            f"{where}: data.annotations: camkit:shapes has its own ground-truth boxes; "
            "annotation files are for image files"
        )
    if task.kind == "detection" and not data.embedded and data.annotations is None:
        raise ConfigError(
            f"{where}: data.annotations: task.kind = 'detection' on image files needs a "
            "COCO-style JSON file of ground-truth boxes (data.annotations = 'instances.json')"
        )
    if config.targets == "label" and not data.embedded and task.kind == "multilabel":
        raise ConfigError(
            f"{where}: targets: 'label' needs ground-truth labels, which only camkit:shapes "
            f"has; expected 'predicted' or a class index for data {quote(data.source)}"
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
    then_allowed: tuple[str, ...] = (),
) -> str:
    """One line per offending key: ``file: key.path: what is wrong (got ...)``."""
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [p for p in err["loc"] if _is_key(p)]
        if err["type"] == "extra_forbidden":
            allowed = list(dict.fromkeys([*also_allowed, *_allowed_keys(root, loc), *then_allowed]))
            message = f"unknown key; expected one of: {', '.join(allowed)}"
        elif err["type"] == "missing":
            message = "missing required key"
        else:
            message = f"{err['msg']} (got {quote(err['input'])})"
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
