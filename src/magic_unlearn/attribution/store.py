"""Where MAGIC keeps the training states s_t it replays from: device memory, pinned CPU, or disk.

A state is the list of live tensors (parameters, then optimiser buffers). ``put`` snapshots it
and returns a key, ``load_into`` copies a stored state back into the live tensors, ``delete``
drops it. The REPLAY schedule (``replay.py``) decides which states to keep; this module only
stores them, as cheaply as the storage allows.

Storage "auto" (the default) keeps states on the GPU while they fit in a budget of free device
memory (``set_gpu_budget``, planned by the replay from the measured size of a training step) and
puts the rest in pinned host memory: no host copies, no page-locking and no PCIe traffic when
the run fits, which is most of a small model's cold-start cost.
"""

from __future__ import annotations

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

# Pinned host memory comes in chunks of this size (a power of two: torch's caching host
# allocator rounds every request up to one, so 650 MB states cost 1 GB each when pinned whole).
# Tensors larger than a chunk get a block of whole chunks.
CHUNK_BYTES = 256 * 2**20
_ALIGN = 256  # byte alignment of each tensor inside a chunk
# Free pinned chunks kept for reuse by later runs in this process, by size in bytes:
# page-locking costs ~0.3-0.5 s per GB (measured on an H200 host).
_PINNED_POOL: dict[int, list[Tensor]] = {}


def release_pinned_memory() -> None:
    """Free the pinned host buffers that MAGIC keeps for reuse across runs in this process."""
    _PINNED_POOL.clear()
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None and torch.cuda.is_available():
        empty()  # torch's caching host allocator keeps freed pinned blocks too


def pinned_pool_bytes() -> int:
    """Bytes of idle pinned chunks the pool holds for reuse (what ``release_pinned_memory``
    would free)."""
    return sum(c.numel() for cs in _PINNED_POOL.values() for c in cs)


def nbytes(tensors: list[Tensor]) -> int:
    """Total bytes of a state."""
    return sum(t.numel() * t.element_size() for t in tensors)


def _pin(size: int) -> Tensor:
    """A new page-locked host buffer of ``size`` bytes (the one place that pins memory)."""
    return torch.empty(size, dtype=torch.uint8, pin_memory=True)


class _PinnedState:
    """Pinned host buffers shaped like one state, packed into chunks from the process pool."""

    def __init__(self, tensors: list[Tensor]) -> None:
        self.chunks: list[Tensor] = []
        self.pin_s = 0.0
        self.views: list[Tensor] = []
        cur: Tensor | None = None
        off = 0
        for t in tensors:
            n = t.numel() * t.element_size()
            if n > CHUNK_BYTES:  # a block of its own
                buf = self._chunk(-(-n // CHUNK_BYTES) * CHUNK_BYTES)
                self.views.append(self._view(buf, 0, t))
                continue
            if cur is None or off + n > cur.numel():
                cur, off = self._chunk(CHUNK_BYTES), 0
            self.views.append(self._view(cur, off, t))
            off += -(-n // _ALIGN) * _ALIGN

    def _chunk(self, size: int) -> Tensor:
        pool = _PINNED_POOL.get(size)
        if pool:
            buf = pool.pop()
        else:
            t0 = time.perf_counter()
            buf = _pin(size)
            self.pin_s += time.perf_counter() - t0
            logger.debug("pinned %.0f MB of host memory", size / 2**20)
        self.chunks.append(buf)
        return buf

    @staticmethod
    def _view(buf: Tensor, off: int, like: Tensor) -> Tensor:
        n = like.numel() * like.element_size()
        return buf[off : off + n].view(like.dtype).view(like.shape)

    def release(self) -> None:
        """Give the chunks back to the process pool."""
        for c in self.chunks:
            _PINNED_POOL.setdefault(c.numel(), []).append(c)
        self.chunks, self.views = [], []


def _flat_like(tensors: list[Tensor], device: torch.device) -> list[Tensor]:
    """Views shaped like ``tensors`` into one new buffer per dtype on ``device`` (one
    allocation per state instead of one per tensor)."""
    sizes: dict[torch.dtype, int] = {}
    layout = []
    for t in tensors:
        layout.append((t.dtype, sizes.get(t.dtype, 0), t.numel(), t.shape))
        sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
    flats = {d: torch.empty(n, dtype=d, device=device) for d, n in sizes.items()}
    return [flats[d][o : o + n].view(shape) for d, o, n, shape in layout]


class StateStore:
    """Checkpoint storage: on the model's device, in pinned CPU memory, or on disk.

    With host storage on a GPU, copies run on a side stream: a snapshot's device-to-host copy
    overlaps the next step's forward/backward (the parameter update waits for it, see
    ``before_write``), and the state the reverse pass needs next is prefetched into a device
    staging buffer while the current reverse step runs. Host buffers are pinned chunks taken
    from (and given back to) a process-wide pool.

    Args:
        kind: "auto" (GPU while within ``set_gpu_budget``, then pinned host memory; "cpu" on a
            CPU device), "gpu" (the model's device), "cpu" or "disk".
        device: the model's device.
        folder: where "disk" storage writes its files (emptied first); None: a temporary
            folder, removed by ``close``. Unused by the other kinds.

    Use as a context manager (or call ``close``): it gives the pinned buffers back to the pool
    and removes a temporary folder.
    """

    def __init__(self, kind: str, device: torch.device, folder: Path | None = None) -> None:
        if kind not in STORAGE:
            raise ValueError(f"storage {kind!r} unknown; use one of {STORAGE}")
        if kind == "auto" and device.type != "cuda":
            kind = "cpu"  # host memory is the device's memory
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
        self.on_gpu: set[int] = set()  # keys of states kept in device memory
        self.pinned: dict[int, _PinnedState] = {}
        self.free: list[_PinnedState] = []
        self.next = 0
        self.n_live = 0
        self.peak = 0
        self.gpu_budget: int | None = None  # bytes of device memory "auto" may use for states
        self.gpu_bytes = 0
        self.peak_gpu_states = 0
        self.host_states = 0  # states that went to host memory (pinned or not)
        self.async_cpu = kind in ("cpu", "auto") and device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.async_cpu else None
        self.put_event: Any = None
        self.staging: list[Tensor] | None = None
        self.staged: tuple[int, Any] | None = None  # (key, ready event)
        self.pin_s = 0.0

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_gpu_budget(self, budget_bytes: int) -> None:
        """Device memory that "auto" storage may fill with states (counted from now on)."""
        self.gpu_budget = max(0, int(budget_bytes))

    def close(self) -> None:
        """Give the pinned buffers back to the process pool (the stored states are dropped)."""
        if self.stream is not None:
            self.stream.synchronize()
        for st in [*self.pinned.values(), *self.free]:
            st.release()
        self.pinned, self.mem, self.free, self.staging = {}, {}, [], None
        self.on_gpu.clear()
        self.gpu_bytes = 0
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _file(self, k: int) -> Path:
        assert self.folder is not None
        return self.folder / f"state_{k}.safetensors"

    def _to_gpu(self, size: int) -> bool:
        if self.kind == "gpu":
            return True
        if self.kind != "auto":
            return False
        budget = self.gpu_budget if self.gpu_budget is not None else 0
        return self.gpu_bytes + size <= budget

    def put(self, tensors: list[Tensor]) -> int:
        """Snapshot ``tensors``; returns the key of the stored state."""
        k = self.next
        self.next += 1
        size = nbytes(tensors)
        if self._to_gpu(size):
            bufs = _flat_like(tensors, self.device)
            torch._foreach_copy_(bufs, [t.detach() for t in tensors])
            self.mem[k] = bufs
            self.on_gpu.add(k)
            self.gpu_bytes += size
            self.peak_gpu_states = max(self.peak_gpu_states, len(self.on_gpu))
        elif self.async_cpu:
            st = self.free.pop() if self.free else _PinnedState(tensors)
            self.pin_s += st.pin_s
            st.pin_s = 0.0
            cur = torch.cuda.current_stream(self.device)
            # the copy reads the live tensors once the current stream produced them; reusing a
            # freed host buffer is safe because every earlier read of it was on ``cur``
            self.stream.wait_stream(cur)
            with torch.cuda.stream(self.stream):
                for b, t in zip(st.views, tensors, strict=True):
                    b.copy_(t.detach(), non_blocking=True)
                self.put_event = self.stream.record_event()
            self.pinned[k] = st
            self.mem[k] = st.views
            self.host_states += 1
        elif self.kind == "cpu":
            self.mem[k] = [t.detach().cpu().clone() for t in tensors]
            self.host_states += 1
        else:
            save_file(
                {str(i): t.detach().cpu().contiguous() for i, t in enumerate(tensors)},
                str(self._file(k)),
            )
            self.host_states += 1
        self.n_live += 1
        self.peak = max(self.peak, self.n_live)
        return k

    def before_write(self) -> None:
        """Make the current stream wait for snapshot copies still reading the live tensors."""
        if self.put_event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.put_event)
            self.put_event = None

    def prefetch(self, k: int | None) -> None:
        """Start copying host state ``k`` to the device staging buffer (host storage on a GPU)."""
        if not self.async_cpu or k is None or k not in self.pinned:
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
        """Drop stored state ``k`` (device memory is freed, pinned buffers reused)."""
        self.n_live -= 1
        if self.staged is not None and self.staged[0] == k:
            self.staged = None
        if self.kind == "disk":
            self._file(k).unlink(missing_ok=True)
            return
        bufs = self.mem.pop(k)
        if k in self.on_gpu:
            self.on_gpu.discard(k)
            self.gpu_bytes -= nbytes(bufs)
        elif k in self.pinned:
            self.free.append(self.pinned.pop(k))


__all__ = ["CHUNK_BYTES", "StateStore", "nbytes", "pinned_pool_bytes", "release_pinned_memory"]
