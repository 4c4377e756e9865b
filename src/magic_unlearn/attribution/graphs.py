"""CUDA-graph capture of the engine's fixed-shape steps (training gradient, fused reverse pass).

A ~160M model at batch 8 x 512 is launch-bound on an H100/H200: eager PyTorch spends most of a
step issuing ~1-3k small kernels from Python and the autograd engine, and a double backward
issues about three times as many. Every step of a MAGIC run has the same shapes (fixed-length
rows, fixed batch), so each step function is captured once and replayed; the GPU then runs at
its own speed. Inputs are copied into static buffers; outputs are static tensors that the next
replay overwrites, so callers consume them at once (the engine's graphs share one memory pool,
which is safe for exactly that reason: no graph's output is alive when another graph replays).

Capture needs every op to be free of host synchronisation. When capture fails (a model whose
forward syncs, an op without graph support) the engine warns once and runs eagerly: same
numbers, only slower.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


class GraphCaptureWarning(UserWarning):
    """A CUDA graph capture failed and the engine runs that step eagerly (same results)."""


class GraphedFn:
    """``fn(*inputs, *persistent) -> list[Tensor]`` captured once as a CUDA graph, then replayed.

    Args:
        fn: a function of tensors only, free of host syncs; its output structure is fixed.
        inputs: example inputs (shapes and dtypes of every later call); copied to static buffers.
        persistent: tensors passed by reference (never copied) that keep their storage for the
            graph's life, e.g. adjoints the graph updates in place.
        pool: memory pool handle to share with another graph (``other.pool``).
        warmup: eager runs on a side stream before capture (autograd and cuBLAS set-up). They
            run ``fn`` for real, so ``fn`` must not change ``persistent`` tensors when
            ``warmup > 0`` (pass ``warmup=0`` for in-place functions: the engine warms them up
            with its first eager call).
    """

    def __init__(
        self,
        fn: Callable[..., list[Tensor]],
        inputs: Sequence[Tensor],
        persistent: Sequence[Tensor] = (),
        pool: Any = None,
        warmup: int = 2,
    ) -> None:
        self.static_in = [x.detach().clone() for x in inputs]
        self.persistent = list(persistent)
        if warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    out = fn(*self.static_in, *self.persistent)
                    del out
            torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_out = fn(*self.static_in, *self.persistent)
        self.pool = self.graph.pool()

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        if len(inputs) != len(self.static_in):
            raise ValueError(
                f"graphed function takes {len(self.static_in)} inputs, got {len(inputs)}"
            )
        pairs = [(d, x) for d, x in zip(self.static_in, inputs, strict=True) if d is not x]
        if pairs:
            torch._foreach_copy_([d for d, _ in pairs], [x for _, x in pairs], non_blocking=True)
        self.graph.replay()
        return self.static_out


class GraphCache:
    """Runs step functions through CUDA graphs keyed by (name, input shapes, persistent tensors).

    All graphs share one memory pool. ``enabled`` turns off for good after the first failed
    capture; every later call runs eagerly (same results).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.graphs: dict[tuple, GraphedFn] = {}
        self.seen: set[tuple] = set()
        self.pool: Any = None
        self.error: str | None = None

    def run(
        self,
        name: str,
        fn: Callable[..., list[Tensor]],
        inputs: Sequence[Tensor],
        persistent: Sequence[Tensor] = (),
        in_place: bool = False,
    ) -> list[Tensor]:
        """``fn(*inputs, *persistent)``, replayed from a graph when possible.

        Args:
            name: step kind (part of the key).
            fn, inputs, persistent: as in ``GraphedFn``.
            in_place: ``fn`` updates ``persistent`` tensors, so it cannot be warmed up by
                running it for nothing: its first call runs eagerly (on a side stream, as a
                warm-up should) and the second one is captured.

        Returns:
            The outputs; from a graph they are static tensors the next replay overwrites.
        """
        if not self.enabled:
            return fn(*inputs, *persistent)
        key = (
            name,
            *((tuple(x.shape), x.dtype) for x in inputs),
            *(x.data_ptr() for x in persistent),
        )
        g = self.graphs.get(key)
        if g is None:
            if in_place and key not in self.seen:
                self.seen.add(key)
                cur = torch.cuda.current_stream()
                side = torch.cuda.Stream()
                side.wait_stream(cur)
                with torch.cuda.stream(side):
                    out = fn(*inputs, *persistent)
                cur.wait_stream(side)
                return out
            try:
                g = GraphedFn(fn, inputs, persistent, pool=self.pool, warmup=0 if in_place else 2)
            except Exception as e:  # noqa: BLE001 - any capture failure means "run eagerly"
                torch.cuda.synchronize()
                self.enabled = False
                self.error = f"{type(e).__name__}: {str(e)[:300]}"
                warnings.warn(
                    f"CUDA graph capture of the {name} step failed ({self.error}); "
                    f"running eagerly (same results, slower). Set "
                    f"TrajectoryConfig.cuda_graphs=false to skip the attempt",
                    GraphCaptureWarning,
                    stacklevel=2,
                )
                return fn(*inputs, *persistent)
            self.pool = g.pool
            self.graphs[key] = g
            logger.debug("captured the %s step as CUDA graph %d", name, len(self.graphs))
        return g(*inputs)


__all__ = ["GraphCache", "GraphCaptureWarning", "GraphedFn"]
