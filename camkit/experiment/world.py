"""The processes of a run: one, or several started by ``torchrun`` (torch.distributed).

Shards are dealt round-robin to ranks, so each rank's share is deterministic, disjoint
from the others' and together complete; rank 0 prepares the folder and merges the results
after a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from camkit.errors import ConfigError


@dataclass
class World:
    """This process's rank among ``size`` processes (``0`` of ``1`` without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str) -> World:
        """Join the process group ``torchrun`` describes in the environment, if any.

        The backend is nccl when ``device`` is CUDA and gloo otherwise.
        """
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1 or not dist.is_available():
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        owns = not dist.is_initialized()
        if owns:
            # a missing GPU is reported by device(), naming the config key
            cuda = (device.startswith("cuda") or device == "auto") and torch.cuda.is_available()
            if cuda:
                # nccl collectives run on the current device: one GPU per local rank
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        return cls(
            rank=dist.get_rank(),
            size=dist.get_world_size(),
            local_rank=local_rank,
            owns_group=owns,
        )

    def device(self, requested: str) -> torch.device:
        """The device of this rank: ``auto`` picks CUDA when present; CUDA ranks use
        ``cuda:LOCAL_RANK`` unless an index is given.

        Raises:
            ConfigError: this machine has no such device (the message says what it has).
        """
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None and self.size > 1:
            # one GPU per process on each machine
            device = torch.device("cuda", self.local_rank)
        check_device(device, requested)
        return device

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a single process)."""
        if self.size > 1:
            dist.barrier()

    def from_rank0(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group if this object joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def check_device(device: torch.device, requested: str) -> None:
    """Raise :class:`~camkit.errors.ConfigError` (naming the ``device`` key) when this
    machine has no ``device``.

    Example:
        >>> check_device(torch.device("cpu"), "cpu")  # always there
    """
    if device.type == "cpu":
        return
    # torch.cuda, torch.xpu, ...; MPS says whether it is there in torch.backends
    backend: Any = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    available = backend is not None and bool(backend.is_available())
    count = int(torch.cuda.device_count()) if device.type == "cuda" and available else 1
    if device.type == "xpu" and available:
        count = int(backend.device_count())
    if not available:
        raise ConfigError(
            f"device: {requested!r}: this machine has no {device.type} device (torch "
            f"{torch.__version__}); use 'cpu' or 'auto'"
        )
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"device: {requested!r}: this machine has {count} {device.type} device(s), "
            f"{device.type}:0 to {device.type}:{count - 1}"
        )
