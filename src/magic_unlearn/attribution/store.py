"""Where MAGIC keeps the training states s_t it replays from: device memory, pinned CPU, or disk.

A state is the list of live tensors (parameters, then optimiser buffers). ``put`` snapshots it
and returns a key, ``load_into`` copies a stored state back into the live tensors, ``delete``
drops it. The REPLAY schedule (``replay.py``) decides which states to keep; this module only
stores them, as cheaply as the storage allows.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from magic_unlearn.attribution.config import STORAGE

logger = logging.getLogger(__name__)

# Flat pinned host buffers kept for reuse by later runs in this process: page-locking costs
# ~0.3-0.5 s per GB (measured on an H200 host), about as long as the attribution itself. Only one
# state layout is kept idle: a run with another layout frees the others before it pins its own
# (issue 19: on 2 H200s the SGD run's pinned checkpoints, 56 GiB/rank after rounding, stayed
# pinned while the AdamW run pinned 80 GiB/rank more, and the host's 256 GiB ran out).
_PINNED_POOL: dict[tuple, list[dict[torch.dtype, Tensor]]] = {}
# data_ptr -> the buffers this module page-locked with cudaHostRegister. Held here so that their
# memory is never freed while registered: only ``_unpin`` unregisters and lets them go.
_REGISTERED: dict[int, Tensor] = {}


def _pool_key(sizes: dict[torch.dtype, int]) -> tuple:
    """Pool key of a state layout: its element count per dtype."""
    return tuple(sorted((str(d), n) for d, n in sizes.items()))


def _pin_flat(n: int, dtype: torch.dtype) -> Tensor:
    """A page-locked host tensor of exactly ``n`` elements.

    ``torch.empty(..., pin_memory=True)`` goes through the CUDA caching host allocator, which
    rounds every block up to a power of two (a 6.4 GiB state takes 8 GiB) and keeps freed blocks
    pinned until its cache is emptied. So the buffer is ordinary host memory page-locked with
    ``cudaHostRegister`` (what the allocator's ``pinned_use_cuda_host_register`` option does);
    where that is not available the caching allocator's buffer is used.
    """
    t = torch.empty(n, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if nbytes > 0 and torch.cuda.is_available():
        try:
            rc = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), nbytes, 0)
            if int(rc) == 0 and t.is_pinned():
                _REGISTERED[t.data_ptr()] = t
                return t
            if int(rc) == 0:
                torch.cuda.cudart().cudaHostUnregister(t.data_ptr())
        except (AttributeError, RuntimeError, TypeError) as e:
            logger.debug("cudaHostRegister unavailable (%s): caching host allocator", e)
    return torch.empty(n, dtype=dtype, pin_memory=True)


def _unpin(flats: dict[torch.dtype, Tensor]) -> None:
    """Unregister the page-locked buffers of one state (before the memory is freed)."""
    for t in flats.values():
        if _REGISTERED.pop(t.data_ptr(), None) is not None:
            torch.cuda.cudart().cudaHostUnregister(t.data_ptr())


def _unpin_all() -> None:
    """Unregister every buffer this module page-locked (no store may be using one)."""
    for ptr in list(_REGISTERED):
        del _REGISTERED[ptr]
        torch.cuda.cudart().cudaHostUnregister(ptr)


def _empty_host_cache() -> None:
    """Return the CUDA caching host allocator's free pinned blocks to the operating system."""
    if not torch.cuda.is_available():
        return
    fn = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None)
    fn = fn or getattr(torch._C, "_host_emptyCache", None)
    if fn is not None:
        fn()


def _drop_pool(keep: tuple | None = None) -> None:
    """Free the pooled buffers of every layout except ``keep``."""
    for key in [k for k in _PINNED_POOL if k != keep]:
        for flats in _PINNED_POOL.pop(key):
            _unpin(flats)


def pinned_pool_bytes() -> int:
    """Bytes of pinned host memory idle in the pool (kept for the next run of the same layout)."""
    return sum(
        t.numel() * t.element_size()
        for pool in _PINNED_POOL.values()
        for flats in pool
        for t in flats.values()
    )


def release_pinned_memory() -> None:
    """Free the pinned host buffers that MAGIC keeps for reuse across runs in this process, and
    give the CUDA caching host allocator's free pinned blocks back to the operating system.

    Call it between runs (no :class:`StateStore` open): buffers of a store that was never closed
    are unregistered too.
    """
    _drop_pool()
    _unpin_all()
    gc.collect()
    _empty_host_cache()


class StateStore:
    """Checkpoint storage: on the model's device, in pinned CPU memory, or on disk.

    With CPU storage on a GPU, copies run on a side stream: a snapshot's device-to-host copy
    overlaps the next step's forward/backward (the parameter update waits for it, see
    ``before_write``), and the state the reverse pass needs next is prefetched into a device
    staging buffer while the current reverse step runs. Host buffers are one flat pinned tensor
    per dtype and state, taken from (and given back to) a process-wide pool.

    Args:
        kind: "gpu" (the model's device), "cpu" or "disk".
        device: the model's device.
        folder: where "disk" storage writes its files (emptied first); None: a temporary
            folder, removed by ``close``. Unused by the other kinds.

    Use as a context manager (or call ``close``): it gives the pinned buffers back to the pool
    and removes a temporary folder.
    """

    def __init__(self, kind: str, device: torch.device, folder: Path | None = None) -> None:
        if kind not in STORAGE:
            raise ValueError(f"storage {kind!r} unknown; use one of {STORAGE}")
        self.kind = kind
        self.device = device
        self.folder: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if kind == "disk":
            if folder is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="magic-ckpt-")
                folder = Path(self._tmp.name)
            else:
                shutil.rmtree(folder, ignore_errors=True)  # states of an earlier, killed run
            folder.mkdir(parents=True, exist_ok=True)
            self.folder = folder
        self.mem: dict[int, list[Tensor]] = {}
        self.free: list[list[Tensor]] = []
        self.next = 0
        self.n_live = 0
        self.peak = 0
        self.async_cpu = kind == "cpu" and device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.async_cpu else None
        self.put_event: Any = None
        self.staging: list[Tensor] | None = None
        self.staged: tuple[int, Any] | None = None  # (key, ready event)
        self.owned: list[dict[torch.dtype, Tensor]] = []  # flat pinned buffers of this store
        self.pin_s = 0.0

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _host_buffers(self, tensors: list[Tensor]) -> list[Tensor]:
        """Pinned host views shaped like ``tensors``, backed by one flat buffer per dtype."""
        sizes: dict[torch.dtype, int] = {}
        layout = []
        for t in tensors:
            layout.append((t.dtype, sizes.get(t.dtype, 0), t.numel(), t.shape))
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
        key = _pool_key(sizes)
        pool = _PINNED_POOL.setdefault(key, [])
        if pool:
            flats = pool.pop()
        else:
            if len(_PINNED_POOL) > 1:  # idle buffers of another layout: free them first
                _drop_pool(keep=key)
                gc.collect()
                _empty_host_cache()
            t0 = time.perf_counter()
            flats = {d: _pin_flat(n, d) for d, n in sizes.items()}
            self.pin_s += time.perf_counter() - t0
            logger.debug("pinned %.1f MB of host memory", sum(sizes.values()) / 2**20)
        self.owned.append(flats)
        return [flats[d][o : o + n].view(shape) for d, o, n, shape in layout]

    def close(self) -> None:
        """Give the pinned buffers back to the process pool (the stored states are dropped)."""
        if self.stream is not None:
            self.stream.synchronize()
        for flats in self.owned:
            _PINNED_POOL.setdefault(_pool_key({d: t.numel() for d, t in flats.items()}), []).append(
                flats
            )
        self.owned, self.mem, self.free, self.staging = [], {}, [], None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _file(self, k: int) -> Path:
        assert self.folder is not None
        return self.folder / f"state_{k}.safetensors"

    def put(self, tensors: list[Tensor]) -> int:
        """Snapshot ``tensors``; returns the key of the stored state."""
        k = self.next
        self.next += 1
        if self.async_cpu:
            bufs = self.free.pop() if self.free else self._host_buffers(tensors)
            cur = torch.cuda.current_stream(self.device)
            # the copy reads the live tensors once the current stream produced them; reusing a
            # freed host buffer is safe because every earlier read of it was on ``cur``
            self.stream.wait_stream(cur)
            with torch.cuda.stream(self.stream):
                for b, t in zip(bufs, tensors, strict=True):
                    b.copy_(t.detach(), non_blocking=True)
                self.put_event = self.stream.record_event()
            self.mem[k] = bufs
        elif self.kind in ("gpu", "cpu"):
            self.mem[k] = [
                t.detach().clone() if self.kind == "gpu" else t.detach().cpu().clone()
                for t in tensors
            ]
        else:
            save_file(
                {str(i): t.detach().cpu().contiguous() for i, t in enumerate(tensors)},
                str(self._file(k)),
            )
        self.n_live += 1
        self.peak = max(self.peak, self.n_live)
        return k

    def before_write(self) -> None:
        """Make the current stream wait for snapshot copies still reading the live tensors."""
        if self.put_event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.put_event)
            self.put_event = None

    def prefetch(self, k: int | None) -> None:
        """Start copying state ``k`` to the device staging buffer (CPU storage on a GPU)."""
        if not self.async_cpu or k is None or k not in self.mem:
            return
        src = self.mem[k]
        if self.staging is None:
            self.staging = [torch.empty(t.shape, dtype=t.dtype, device=self.device) for t in src]
        # the staging buffer may still be read by the previous load on the current stream
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for d, t in zip(self.staging, src, strict=True):
                d.copy_(t, non_blocking=True)
            self.staged = (k, self.stream.record_event())

    def load_into(self, k: int, live: list[Tensor]) -> None:
        """Copy stored state ``k`` into the live tensors."""
        with torch.no_grad():
            self.before_write()
            if self.kind == "disk":
                dev = str(self.device) if self.device.type != "cuda" else self.device.index or 0
                with safe_open(str(self._file(k)), "pt", device=dev) as f:
                    for i, t in enumerate(live):
                        t.copy_(f.get_tensor(str(i)))
            elif self.staged is not None and self.staged[0] == k:
                assert self.staging is not None
                torch.cuda.current_stream(self.device).wait_event(self.staged[1])
                torch._foreach_copy_(live, self.staging)
                self.staged = None
            else:
                torch._foreach_copy_(live, self.mem[k], non_blocking=True)

    def delete(self, k: int) -> None:
        """Drop stored state ``k`` (its pinned buffers are reused by the next ``put``)."""
        self.n_live -= 1
        if self.staged is not None and self.staged[0] == k:
            self.staged = None
        if self.kind == "disk":
            self._file(k).unlink(missing_ok=True)
            return
        bufs = self.mem.pop(k)
        if self.async_cpu:
            self.free.append(bufs)


__all__ = ["StateStore", "pinned_pool_bytes", "release_pinned_memory"]
