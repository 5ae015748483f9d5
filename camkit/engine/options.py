"""Run options: how the engine runs the model, whatever the method; and the :class:`Setup`
an extractor fixes for all its calls.

A method's config holds its weight strategy's parameters (``num_samples``, ``std``, ...);
:class:`RunOptions` holds everything that governs *how* the model's forward and backward
passes run. :func:`camkit.create` accepts both as keywords and splits them with
:func:`split_options`; experiment files carry run options in their ``[engine]`` table.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from camkit.engine.accel import Accelerator, accelerator
from camkit.engine.outputs import Layout
from camkit.engine.sess import SESSOptions
from camkit.errors import ConfigError, did_you_mean

Precision = Literal["fp32", "bf16", "auto"]


class RunOptions(BaseModel):
    """How the engine runs the model for one extractor (validated once, immutable).

    Whatever changes how the model is run for every method, not what a method computes,
    belongs here (e.g. test-time augmentation smoothing), never in a method's config.

    Example:
        >>> camkit.RunOptions(batch_size=64, precision="bf16").batch_size
        64
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    batch_size: int = Field(
        32,
        gt=0,
        strict=True,
        description="rows per forward pass of methods that run many forwards (masked inputs, "
        "ablated channels, noisy copies); memory is bounded by this many inputs",
    )
    precision: Precision = Field(
        "fp32",
        description="precision of the inference-mode forwards (masked and ablated scoring): "
        "'fp32' (exact), 'bf16' (bfloat16 forwards, for speed; activations, gradients, scores "
        "and maps stay float32) or 'auto' (bf16 where the hardware runs bfloat16 natively, "
        "else fp32)",
    )
    channels_last: bool | None = Field(
        None,
        strict=True,
        description="memory layout of the model's forward passes: None (channels-last where "
        "torch's convolutions run it faster), False (inputs as given), True (always)",
    )
    progress: bool | None = Field(
        None,
        strict=True,
        description="progress bars for long work (None: when stderr is a terminal)",
    )
    aug_smooth: bool = Field(
        False,
        strict=True,
        description="test-time augmentation smoothing: the mean of the maps of six copies of "
        "the input (horizontal flip x intensity 0.9, 1, 1.1), each mapped back (six calls)",
    )
    eigen_smooth: bool = Field(
        False,
        strict=True,
        description="each layer's map is the first principal component of the weighted "
        "activations w_k A_k instead of their sum (methods with channel or pixel weights)",
    )
    sess: SESSOptions | None = Field(
        None,
        description="SESS (Tursun et al. 2022): the method over scaled, sliding windows, "
        "fused; True for the default parameters, or a table of them (scales, num_scales, "
        "scale_step_ratio, window_size, step_size, pre_filter_ratio, theta, pool, smooth, "
        "use_softmax_scores)",
    )

    @field_validator("sess", mode="before")
    @classmethod
    def _sess_flag(cls, value: Any) -> Any:
        """``sess=True`` is SESS with its default parameters, ``False`` no SESS."""
        if value is True:
            return SESSOptions.model_validate({})
        if value is False:
            return None
        return value


@dataclass(frozen=True)
class Setup:
    """What an extractor fixes for all its calls: the model, how to run it (run options and
    the :class:`~camkit.engine.accel.Accelerator`), how to read layers, and the method."""

    model: nn.Module
    options: RunOptions
    accel: Accelerator
    layout: Layout = "auto"
    grid: tuple[int, int] | None = None
    method: str = ""
    #: Modules resolved by name (``Services.module``), once per extractor.
    resolved: dict[str, nn.Module] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        options: RunOptions | None = None,
        *,
        layout: Layout = "auto",
        grid: tuple[int, int] | None = None,
        method: str = "",
    ) -> Setup:
        """The setup for ``model`` under ``options`` (default run options when ``None``).

        Example:
            >>> setup = Setup.of(model, RunOptions(precision="bf16"), method="scorecam")
        """
        options = options if options is not None else RunOptions.model_validate({})
        accel = accelerator(model, precision=options.precision, channels_last=options.channels_last)
        return cls(model, options, accel, layout, grid, method)


def split_options(
    options: Mapping[str, Any], method_fields: Iterable[str], method: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keywords into ``(run options, method config)`` by the two schemas' fields.

    A key that both schemas declare goes to both (a plugin written before run options keeps
    its field, and the engine obeys it too).

    Raises:
        ConfigError: a key that neither schema declares, naming both schemas' fields.

    Example:
        >>> split_options({"batch_size": 8, "std": 0.1}, ["std"], "sscam")
        ({'batch_size': 8}, {'std': 0.1})
    """
    own = set(method_fields)
    run_fields = set(RunOptions.model_fields)
    unknown = [key for key in options if key not in own and key not in run_fields]
    if unknown:
        key = unknown[0]
        hint = did_you_mean(key, [*run_fields, *own])
        raise ConfigError(
            f"invalid config for method {method!r}: {key}: unknown option (got "
            f"{options[key]!r}).{hint} Run options: {', '.join(RunOptions.model_fields)}; "
            f"{method}'s config: {', '.join(sorted(own)) or '(no fields)'}"
        )
    run = {k: v for k, v in options.items() if k in run_fields}
    config = {k: v for k, v in options.items() if k in own}
    return run, config


def run_options(**options: Any) -> RunOptions:
    """Validate run options; :class:`ConfigError` names the field and what was given.

    Example:
        >>> run_options(precision="bf16").precision
        'bf16'
    """
    try:
        return validated(RunOptions, options)
    except ValidationError as exc:
        raise ConfigError(f"invalid run options: {describe(exc)}") from None


_Schema = TypeVar("_Schema", bound=BaseModel)
_SCALARS = (int, float, str, bool, type(None))


def validated(schema: type[_Schema], values: Mapping[str, Any]) -> _Schema:
    """``schema(**values)``, remembered for values that are all plain scalars: run options and
    method configs are immutable, and extractors made in a loop (a compat shim per image)
    would validate the same few keywords each time.

    Raises:
        ValidationError: as ``schema(**values)`` does.
    """
    if not all(type(v) in _SCALARS for v in values.values()):
        return schema(**values)
    key = tuple(sorted((k, type(v).__name__, v) for k, v in values.items()))
    return _validated_scalars(schema, key)  # type: ignore[return-value]


@functools.lru_cache(maxsize=256)
def _validated_scalars(schema: type[BaseModel], key: tuple[tuple[str, str, Any], ...]) -> BaseModel:
    return schema(**{name: value for name, _, value in key})


def describe(exc: ValidationError) -> str:
    """pydantic's errors as ``field: message (got value)``, joined by ``; ``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: {err['msg']}"
        + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
        for err in exc.errors()
    )
