"""The errors camkit raises.

Every error derives from :class:`CamkitError`; most also derive from the builtin a caller
would expect (``KeyError`` for a missing layer, ``ValueError`` for bad values), so existing
``except`` clauses keep working. Messages say what was given, what was expected and where.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CamkitError(Exception):
    """Base class of every error camkit raises on purpose."""

    #: The command line's exit status for this error: 2 for a usage or config mistake,
    #: 1 for a problem of the environment (files, folders, disks, devices).
    exit_code: int = 2


class LayerError(CamkitError, ValueError):
    """A target layer exists but cannot be explained (it never ran, or its output is unusable)."""


class LayerNotFoundError(LayerError, KeyError):
    """A layer name or module does not resolve to a submodule of the model."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TargetError(CamkitError, ValueError):
    """Targets are out of range, of the wrong kind, or do not match the batch."""


class InputError(CamkitError, ValueError):
    """An input (images, or maps given to :func:`camkit.fuse`) is not a finite floating-point
    tensor of a supported shape."""


class MethodNotFoundError(CamkitError, KeyError):
    """No registered method has this name or alias."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(CamkitError, ValueError):
    """A method or experiment configuration is invalid; the message names the field path."""


class PluginError(CamkitError):
    """A plugin failed to load, collides with another, or broke the method contract."""


class ModelOutputError(CamkitError, TypeError):
    """The model's output holds no tensor of scores that camkit can find."""


class GradientError(CamkitError, RuntimeError):
    """Gradients cannot reach the target layer (the model blocks them, or ignores the layer)."""


class WeightsError(ConfigError):
    """Model weights cannot be used: not a checkpoint, another architecture's, or unknown."""


class WeightsDownloadError(WeightsError):
    """Pretrained weights are not cached and cannot be downloaded (e.g. no network); the
    message says where to put the file."""

    exit_code = 1


def did_you_mean(given: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'a' or 'b'?"`` for close matches of ``given``, else ``""``."""
    matches = difflib.get_close_matches(given, list(choices), n=n, cutoff=0.6)
    if not matches:
        return ""
    quoted = [f"'{m}'" for m in matches]
    joined = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f" Did you mean {joined}?"


class OutputFolderError(CamkitError, OSError):
    """An output folder cannot be used: it is a file, not writable, holds files camkit did
    not write, or a stored result in it is damaged; the message names the path."""

    exit_code = 1

    def __str__(self) -> str:  # OSError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class LockError(OutputFolderError):
    """Another camkit process is running in the same output folder; the message names it."""


class DataError(CamkitError, ValueError):
    """An input data file cannot be read or decoded; the message names the file, ``reason``
    says why without it."""

    exit_code = 1

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class CamkitWarning(UserWarning):
    """Base class of every warning camkit issues on purpose."""


class PerformanceWarning(CamkitWarning):
    """A requested option runs slower on this hardware than the user likely expects (e.g.
    ``precision="bf16"`` on a CPU without native bfloat16)."""
