"""torch.distributed set-up for commands launched by ``torchrun`` or ``accelerate launch``.

Both launchers start one process per GPU with ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in the environment; :func:`distributed_session` turns that into
an initialised default process group (NCCL on GPUs, gloo on the CPU) and the process's device.
Without a launcher (``WORLD_SIZE`` unset or 1) it does nothing, so the same code runs in one
process. :func:`torchrun_command` builds the command line the pipeline uses to start a
multi-process stage (``docs/scale.md``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def env_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank() -> int:
    """Global rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """World size (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, and in a process without a process group."""
    return rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when a process group is initialised."""
    if world_size() > 1:
        dist.barrier()


def _device_for(device: str | torch.device | None) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA request under a launcher."""
    if device is None or str(device) == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and env_world_size() > 1:
        if dev.index not in (None, env_local_rank()):
            logger.warning(
                "device %s ignored under a multi-process launcher: rank %d uses cuda:%d",
                dev,
                rank(),
                env_local_rank(),
            )
        dev = torch.device("cuda", env_local_rank())
    return dev


@contextlib.contextmanager
def distributed_session(device: str | torch.device = "auto") -> Iterator[torch.device]:
    """Initialise the default process group if a launcher asked for one; yield the device.

    Under ``torchrun`` / ``accelerate launch`` with ``WORLD_SIZE`` > 1 the group is created
    (NCCL for CUDA devices, gloo for the CPU), the CUDA device of this process is set to
    ``cuda:LOCAL_RANK``, and the group is destroyed on exit if this call created it. An already
    initialised group is used as it is. Without a launcher this only resolves ``device``.
    """
    dev = _device_for(device)
    created = False
    if env_world_size() > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kw)
        created = True
        logger.debug("rank %d of %d on %s (%s)", rank(), world_size(), dev, backend)
    try:
        yield dev
    finally:
        if created and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.barrier()
            dist.destroy_process_group()


def torchrun_command(nproc_per_node: int, module: str, args: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m MODULE ARGS``.

    ``torch.distributed.run`` is ``torchrun`` itself, started with this interpreter, so the
    command works wherever this package imports (no reliance on ``PATH``).
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node={nproc_per_node} is invalid; use an integer >= 1")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        module,
        *args,
    ]


__all__ = [
    "barrier",
    "distributed_session",
    "env_local_rank",
    "env_world_size",
    "is_main_process",
    "rank",
    "torchrun_command",
    "world_size",
]
