"""``torch.compile`` of the engine's hand-derived double backwards (attention, LayerNorm, GELU).

MAGIC's reverse step differentiates the training gradient once more. Through plain autograd,
every elementwise op of a layer's backward is differentiated again op by op: a LayerNorm's
double backward alone is ~90 kernels. The engine's fused nodes (``attention.py``, ``layers.py``)
write each double backward out by hand, and on a GPU inductor fuses it into a few kernels.

Compiling costs seconds once per function, shape and process; the compiled code is cached on
disk (``compile_cache_dir``), so later processes load it instead of compiling again. If
compiling fails, a warning is given and every double backward runs eagerly (same math).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

logger = logging.getLogger(__name__)

# whether nodes created inside ``compiled_double_backward`` compile their double backward
_COMPILE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "magic_compile_double_backward", default=False
)
# name -> compiled function; "failed" -> the first compile error (then nothing is compiled)
_COMPILED: dict[str, Any] = {}
# signatures of the double backwards the nodes will call, noted by their forwards
_NOTED: dict[tuple, tuple[str, Callable[..., Any], tuple]] = {}
_LOCK = threading.Lock()


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` of a double backward failed; it runs eagerly (same math, slower)."""


@contextlib.contextmanager
def compiled_double_backward(enabled: bool = True) -> Iterator[None]:
    """Fused nodes created inside run their double backward through ``torch.compile`` on a GPU.

    A Pythia-160m reverse step at batch 8 x 512 went from 84 to 63 ms on an H200 with the
    attention double backward compiled. CPUs always run eagerly.
    """
    token = _COMPILE.set(enabled)
    try:
        yield
    finally:
        _COMPILE.reset(token)


def compile_wanted() -> bool:
    """Read when a node is created: backward nodes run on autograd's worker threads, which see
    no context variables."""
    return _COMPILE.get()


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels across processes.

    ``TORCHINDUCTOR_CACHE_DIR`` when set; otherwise ``$XDG_CACHE_HOME/magic_unlearn/inductor``
    (default ``~/.cache/...``), which survives reboots (inductor's own default is under /tmp).
    """
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "magic_unlearn" / "inductor"


def use_persistent_compile_cache() -> Path:
    """Point inductor at ``compile_cache_dir()`` unless the user chose a folder already.

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` when it first compiles, so this runs before the
    first ``torch.compile`` call of the process (it changes nothing afterwards).
    """
    path = compile_cache_dir()
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # read-only home: keep inductor's default folder
            logger.debug("compile cache folder %s unavailable (%s)", path, e)
            return path
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def fused_nodes_apply(device_type: str, dtype: torch.dtype) -> bool:
    """Where the engine runs its fused nodes (attention, LayerNorm, GELU): GPUs in half precision
    and fp32. float64 (the reference) and CPU runs keep plain ops, whose rounding the CPU tests
    and demos were measured with (fp32 AdamW scores are ill-conditioned at the first step, so a
    different summation order moves them by chance: docs/benchmarks.md)."""
    return device_type == "cuda" and dtype in (torch.float16, torch.bfloat16, torch.float32)


def _pick(name: str, fn: Callable[..., Any], cuda: bool, want: bool) -> Callable[..., Any]:
    if not (cuda and want) or "failed" in _COMPILED:
        return fn
    if name not in _COMPILED:
        _wait_warm()  # two threads importing inductor at once is not safe
        use_persistent_compile_cache()
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def _normalised(args: tuple) -> tuple:
    """Detached, contiguous tensors: compiled code is specialised on strides and requires_grad,
    which autograd's saved tensors, cotangents and the kernels' outputs do not fix."""
    return tuple(a.detach().contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def run_double_backward(name: str, fn: Callable[..., Any], want: bool, *args: Any) -> Any:
    """``fn(*args)``, compiled when ``want`` and the tensors are on a GPU.

    A compile failure is remembered: a warning is given once and every later call runs eagerly.
    """
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    f = _pick(name, fn, cuda, want)
    if f is fn:
        return fn(*args)
    args = _normalised(args)
    try:
        return f(*args)
    except Exception as e:  # noqa: BLE001 - any compile failure means "run eagerly"
        _COMPILED["failed"] = f"{type(e).__name__}: {str(e)[:300]}"
        warnings.warn(
            f"torch.compile of the {name} double backward failed ({_COMPILED['failed']}); "
            f"running the double backwards eagerly (same math, slower)",
            CompileFallbackWarning,
            stacklevel=2,
        )
        return fn(*args)


class TensorSpec(NamedTuple):
    """Shape, dtype and device of a double backward's tensor argument (for ``precompile``)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def note_double_backward(name: str, fn: Callable[..., Any], *args: Any) -> None:
    """Record the call ``run_double_backward(name, fn, True, *args)`` that a reverse step will make.

    ``args`` are ``TensorSpec``s (or None / constants). Nodes note their double backward when
    their forward runs on a GPU, so ``precompile`` can compile it during the forward trajectory.
    """
    key = (name, *args)
    if key not in _NOTED:
        with _LOCK:
            _NOTED[key] = (name, fn, args)


def clear_noted() -> None:
    """Forget the noted signatures (a new run notes its own)."""
    with _LOCK:
        _NOTED.clear()


def _materialise(spec: Any, rows: int | None) -> Any:
    if not isinstance(spec, TensorSpec):
        return spec
    shape = spec.shape
    if rows is not None and len(shape) >= 2:  # batch-first activations: the reverse micro-batch
        shape = (min(rows, shape[0]), *shape[1:])
    return torch.zeros(shape, dtype=spec.dtype, device=spec.device)


def precompile(
    rows: int | None = None,
    device_types: tuple[str, ...] = ("cuda",),
    seconds: dict[str, float] | None = None,
) -> int:
    """Compile (or load from the disk cache) every noted double backward; returns how many.

    Runs each once on zeros, in no-grad mode as autograd runs them (on a side stream on a GPU).
    ``rows``: the reverse pass's micro-batch size (noted shapes are the training step's).
    ``device_types``: which noted devices to compile for (only GPUs compile; tests pass "cpu").
    ``seconds``: filled with each node's compile (or load) time, by name (issue 15's cold start).
    """
    with _LOCK:
        todo = list(_NOTED.values())
    n = 0
    for name, fn, specs in todo:
        if "failed" in _COMPILED:
            break
        dev = next(s.device for s in specs if isinstance(s, TensorSpec))
        if dev.type not in device_types:
            continue
        t0 = time.perf_counter()
        side = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        with torch.no_grad(), torch.cuda.stream(side) if side else contextlib.nullcontext():
            args = tuple(_materialise(s, rows) for s in specs)
            run_double_backward(name, fn, True, *args)
        if side is not None:
            side.synchronize()
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        n += 1
    return n


_WARM: list[threading.Thread] = []  # the warm_compiler thread of this process, once started


def _warm() -> None:
    t0 = time.perf_counter()
    try:
        use_persistent_compile_cache()
        # import-time work only: no CUDA call, so a CUDA graph captured meanwhile on the main
        # thread (capture_error_mode "global") cannot be disturbed
        import torch._dynamo  # noqa: F401
        import torch._inductor.codecache  # noqa: F401
        import torch._inductor.compile_fx  # noqa: F401
        import torch._inductor.lowering  # noqa: F401

        with contextlib.suppress(ImportError):
            import triton  # noqa: F401
            import triton.compiler  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an optimisation only
        logger.debug("warming the compiler failed: %s", e)
    logger.debug("compiler imports warmed in %.1f s", time.perf_counter() - t0)


def warm_compiler() -> threading.Thread | None:
    """Import ``torch.compile``'s machinery (dynamo, inductor, Triton) on a worker thread.

    A fresh process pays seconds for these imports on its first compile (issue 15's cold
    start); started while the caller still loads its data and model, they are paid off the
    critical path. Only on a machine with a GPU (CPUs never compile); started once per process.
    ``precompile`` and the first compiled call wait for it.
    """
    if not torch.cuda.is_available():
        return None
    with _LOCK:
        if not _WARM:
            _WARM.append(threading.Thread(target=_warm, daemon=True, name="warm-compiler"))
            _WARM[0].start()
    return _WARM[0]


def _wait_warm() -> None:
    if _WARM and _WARM[0] is not threading.current_thread():
        _WARM[0].join()


class Precompile:
    """``precompile`` on a worker thread, overlapping the forward trajectory.

    The engine starts it once the training step is captured as a CUDA graph (from then on the
    forward only replays graphs, which a compile on another thread cannot disturb) and joins it
    before the reverse pass. Failures are logged and ignored: the reverse step then compiles
    as it would have anyway.
    """

    def __init__(self, rows: int | None) -> None:
        self.n = 0
        self.seconds = 0.0
        self.per_node: dict[str, float] = {}  # compile (or load) seconds by node name
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, args=(rows,), daemon=True)
        self.thread.start()

    def _run(self, rows: int | None) -> None:
        t0 = time.perf_counter()
        try:
            self.n = precompile(rows, seconds=self.per_node)
        except Exception as e:  # noqa: BLE001 - an optimisation only
            self.error = f"{type(e).__name__}: {str(e)[:300]}"
            logger.debug("precompiling the double backwards failed: %s", self.error)
        self.seconds = time.perf_counter() - t0

    def join(self) -> None:
        self.thread.join()


__all__ = [
    "Precompile",
    "TensorSpec",
    "clear_noted",
    "CompileFallbackWarning",
    "compile_cache_dir",
    "compile_wanted",
    "compiled_double_backward",
    "fused_nodes_apply",
    "note_double_backward",
    "precompile",
    "run_double_backward",
    "use_persistent_compile_cache",
    "warm_compiler",
]
