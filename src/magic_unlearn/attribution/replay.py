"""REPLAY: serve the training states s_T-1, ..., s_0 to the reverse pass from a few checkpoints.

Engstrom et al. 2025, "Optimizing ML Training with Metagradient Descent". The forward pass runs
the whole trajectory once, storing the states at the "top" positions of the checkpointing mode
(``TrajectoryConfig.checkpointing``):

- ``every``: every state (no recomputation, T states);
- ``sqrt``: every k-th state; a segment is replayed from its start when the reverse pass
  reaches it (k = ceil(sqrt(T)): O(sqrt T) states, one extra forward pass);
- ``kary``: k top states; each segment is split k ways recursively (O(k log_k T) states,
  O(log_k T) extra forward passes);
- ``auto``: sqrt, but the last m steps keep every state, m as large as GPU memory allows
  (``plan_auto``); m = T (no replay at all) when the whole run fits. The budget is planned after
  the first training step, from the device memory that step took.

Every replayed state is checked against a fingerprint of the recorded one, so a replay that is
not the recorded run (dropout on, changed data, nondeterministic kernels) raises
:class:`TrajectoryDriftError` instead of giving wrong scores.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from magic_unlearn.attribution.compiled import Precompile, clear_noted
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.optim import TrajectoryOptimizer
from magic_unlearn.attribution.store import StateStore, nbytes
from magic_unlearn.attribution.trajectory import Batches, StepGrads, iter_steps

logger = logging.getLogger(__name__)


# The reverse step (forward, backward with graph, double backward) holds a few times the memory
# of a training step (measured: ~2x for Pythia-160m, bf16 and fp32); the budget keeps 4x free
_REVERSE_MEMORY_FACTOR = 4.0
_GIB = 2**30


def gpu_state_budget(device: torch.device, step_bytes: int, reserve_bytes: int = 0) -> int:
    """Bytes of free device memory that checkpoints may use.

    Free memory minus the reverse step's working set (``_REVERSE_MEMORY_FACTOR`` x the measured
    training step), ``reserve_bytes`` (adjoints) and a margin of max(2 GiB, 10% of the card).
    """
    free, total = torch.cuda.mem_get_info(device)
    keep = _REVERSE_MEMORY_FACTOR * step_bytes + reserve_bytes + max(2 * _GIB, 0.1 * total)
    return max(0, int(free - keep))


def plan_auto(T: int, k: int, n_fit: int) -> list[int]:
    """Forward checkpoint positions of "auto": every k-th step, then every step of a dense tail.

    The tail has the largest length m with ceil((T - m) / k) + max(m, k) <= n_fit: the sparse
    checkpoints plus either the tail (at the start of the reverse pass, whose dense states are
    freed as it walks back) or one replayed segment (later). Every step when n_fit >= T.
    """
    if n_fit >= T:
        return list(range(T))
    m = 0
    for cand in range(T - 1, 0, -1):
        if math.ceil((T - cand) / k) + max(cand, k) <= n_fit:
            m = cand
            break
    return sorted(set(range(0, T - m, k)) | set(range(T - m, T)))


class TrajectoryDriftError(RuntimeError):
    """A replayed training step did not reproduce the recorded trajectory."""


class Fingerprint:
    """Random bilinear projections r_a^T P r_b of each trained tensor: a cheap state checksum.

    Replays are compared in units of a training update: drift = |fp_replay - fp_recorded| /
    |fp_t - fp_{t-1}| (projected), so a wrong batch or learning rate reads ~1 while
    nondeterministic kernels read ~1e-7 (fp32) to ~1e-2 (bf16 autocast, where fused attention
    and embedding backward sum in varying order and bf16 rounding turns that into 1-ulp flips).
    """

    def __init__(self, params: list[Tensor], seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.vecs: list[tuple[Tensor, Tensor | None]] = []
        for p in params:
            rows = p.shape[0] if p.dim() >= 2 else p.numel()
            dt = p.dtype if p.dtype == torch.float64 else torch.float32
            ra = torch.randn(rows, generator=g, dtype=torch.float64).to(p.device, dt)
            rb = None
            if p.dim() >= 2:
                rb = torch.randn(p[0].numel(), generator=g, dtype=torch.float64).to(p.device, dt)
            self.vecs.append((ra, rb))

    @torch.no_grad()
    def __call__(self, params: list[Tensor]) -> Tensor:
        """(P,) float64 projections."""
        out = []
        for p, (ra, rb) in zip(params, self.vecs, strict=True):
            p = p.to(ra.dtype)  # half-precision tensors are projected in fp32
            if rb is None:
                out.append(torch.dot(p.reshape(-1), ra))
            else:
                out.append(ra @ (p.reshape(ra.shape[0], -1) @ rb))
        return torch.stack(out).double()


class Replay:
    """Live training state plus the REPLAY machinery that serves states s_t in reverse order.

    Args:
        model, params: the prepared model and its trained tensors (at theta_0).
        opt: the trajectory optimiser; its buffers start at zero.
        batches: the fixed data order.
        cfg: the trajectory config (steps, checkpointing, drift tolerance).
        store: where the checkpointed states live.

    Attributes:
        params, bufs: the live state (``live`` = params then buffers, the stored unit).
        grads: the training-gradient function (owns the CUDA-graph cache of both step kinds).
        fps: fingerprints of theta_t, t = 0..T, recorded by ``forward``.
        losses: the training loss of every step, recorded by ``forward``.
        replayed, max_drift: replay statistics for the timings.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[Tensor],
        opt: TrajectoryOptimizer,
        batches: Batches,
        cfg: TrajectoryConfig,
        store: StateStore,
    ) -> None:
        self.model, self.params, self.opt, self.batches, self.cfg = model, params, opt, batches, cfg
        self.bufs = opt.init_buffers(params)
        self.live = params + [b for bl in self.bufs for b in bl]
        self.store = store
        self.T = cfg.steps
        self.fingerprint = self.make_fingerprint(params)
        self.fps: list[Tensor] = []  # fingerprint of theta_t, t = 0..T
        self.denoms: Tensor | None = None  # (T+1,) drift units, see _drift
        self.losses: list[Tensor] = []
        self.top: list[tuple[int, int]] = []  # (position, store key) of forward checkpoints
        self.replayed = 0
        self.max_drift = 0.0
        self.plan: dict[str, float] = {}
        self.grads = StepGrads(model, params, cfg)

    def make_fingerprint(self, params: list[Tensor]) -> Fingerprint:
        """The state checksum of the trained tensors (``sharded.py`` sums it over ranks)."""
        return Fingerprint(params, seed=self.cfg.seed)

    def _top_positions(self, n_fit: int = 0) -> list[int]:
        mode, T, k = self.cfg.checkpointing, self.T, self.cfg.segment_k
        if mode == "every":
            return list(range(T))
        if mode == "sqrt":
            return list(range(0, T, k))
        if mode == "auto":
            return plan_auto(T, k, n_fit)
        return list(range(0, T, math.ceil(T / k)))

    def agree_states_fit(self, n_fit: int) -> int:
        """The number of states that fit, as every process replaying the run must use it.

        One process: ``n_fit`` itself. A run split over ranks must replay the same steps on
        every rank (collectives), so its subclass returns the minimum over the ranks.
        """
        return n_fit

    def _plan(self, step_bytes: int, reserve_bytes: int) -> list[int]:
        """The forward checkpoint positions; sets the GPU budget of "auto" storage."""
        n_fit = 0
        dev = self.params[0].device
        if dev.type == "cuda" and self.store.kind in ("auto", "gpu"):
            budget = gpu_state_budget(dev, step_bytes, reserve_bytes)
            if self.store.kind == "auto":
                self.store.set_gpu_budget(budget)
            n_fit = budget // max(1, nbytes(self.live))
        n_fit = self.agree_states_fit(int(n_fit))
        tops = self._top_positions(n_fit)
        self.plan = {
            "step_gb": step_bytes / _GIB,
            "state_gb": nbytes(self.live) / _GIB,
            "states_fit_gpu": int(n_fit),
            "checkpoints": len(tops),
        }
        logger.debug("checkpoint plan: %s", self.plan)
        return tops

    def _seg_len(self, a: int, b: int) -> int:
        if self.cfg.checkpointing == "kary":
            return math.ceil((b - a) / self.cfg.segment_k)
        return 1

    def _steps(self, start: int, stop: int) -> Iterator[tuple[int, Tensor]]:
        return iter_steps(
            self.model,
            self.params,
            self.bufs,
            self.opt,
            self.batches,
            self.cfg,
            start,
            stop,
            before_update=self.store.before_write,
            grad_fn=self.grads,
        )

    def forward(self, progress: bool, reserve_bytes: int = 0, stop: int | None = None) -> None:
        """The recorded trajectory: run the T steps (or the first ``stop``), keep fingerprints
        and top checkpoints.

        The checkpoint positions are planned once the first training step has run (its memory
        sets the GPU budget); state 0 is stored then, before that step's update.
        ``reserve_bytes``: device memory the reverse pass will need besides the reverse step
        itself (adjoints), kept out of the checkpoint budget.
        """
        n = self.T if stop is None else min(stop, self.T)
        dev = self.params[0].device
        cuda = dev.type == "cuda"
        a0 = torch.cuda.memory_allocated(dev) if cuda else 0
        m0 = torch.cuda.max_memory_allocated(dev) if cuda else 0
        self.fps = [self.fingerprint(self.params)]
        clear_noted()  # the nodes of this run's first step note what the reverse will compile
        top: set[int] = set()
        planned = False
        pre: Precompile | None = None

        def before_update() -> None:
            nonlocal top, planned, pre
            if not planned:  # step 0's gradient has run, the parameters are still theta_0
                planned = True
                m1 = torch.cuda.max_memory_allocated(dev) if cuda else 0
                # a new high-water mark is this step's own; otherwise an upper bound
                step_bytes = max(0, (m1 if m1 > m0 else m0) - a0)
                top = set(self._plan(step_bytes, reserve_bytes))
                if 0 in top:
                    self.top.append((0, self.store.put(self.live)))
                if cuda and self.cfg.compile_attention and self.grads.graphs.enabled:
                    # the training step is a captured graph now: compile the reverse step's
                    # double backwards on a worker thread while the forward replays it
                    pre = Precompile(self.cfg.reverse_microbatch)
            self.store.before_write()

        it = iter_steps(
            self.model,
            self.params,
            self.bufs,
            self.opt,
            self.batches,
            self.cfg,
            0,
            n,
            before_update=before_update,
            grad_fn=self.grads,
        )
        if progress:
            it = tqdm(it, total=n, desc="magic forward", leave=False)
        for t, loss in it:
            self.losses.append(loss)
            self.fps.append(self.fingerprint(self.params))
            if t + 1 in top:
                self.top.append((t + 1, self.store.put(self.live)))
        if pre is not None:
            t_wait = time.perf_counter()
            pre.join()  # what the precompile adds to the forward (issue 15's cold start)
            self.plan.update(
                precompiled=pre.n,
                precompile_s=pre.seconds,
                precompile_wait_s=time.perf_counter() - t_wait,
                **{f"precompile_{k}_s": v for k, v in pre.per_node.items()},
            )
        logger.debug("forward pass: %d steps, %d stored states", n, len(self.top))

    def _drift(self, t: int) -> Tensor:
        """|fingerprint(live) - recorded fp_t| in units of a training update, on the device."""
        if self.denoms is None:  # once: per-step update sizes, floored by the mean one
            fps = torch.stack(self.fps)  # (T+1, P)
            steps = fps.diff(dim=0).norm(dim=1)  # (T,) projected updates
            scale = float(steps.mean()) or 1e-30
            self.denoms = torch.cat([steps[:1], steps]).clamp_min(max(scale, 1e-30))
        return (self.fingerprint(self.params) - self.fps[t]).norm() / self.denoms[t]

    def _check(self, ts: list[int], rels: list[Tensor]) -> None:
        """Raise if a replayed state drifted (one host sync per replayed segment)."""
        if not rels:
            return
        rel = torch.stack(rels).cpu()
        self.max_drift = max(self.max_drift, float(rel.max()))
        bad = [(t, float(r)) for t, r in zip(ts, rel, strict=True) if not r <= self.cfg.drift_limit]
        if bad:
            t, r = bad[0]
            raise TrajectoryDriftError(
                f"replayed training state at step {t} differs from the recorded trajectory "
                f"by {r:.3g} of a training update (drift_tol {self.cfg.drift_limit:g}). The "
                f"replay is not the recorded run: dropout on, data or schedule changed, or "
                f"nondeterministic kernels; raise TrajectoryConfig.drift_tol if it is noise"
            )

    def _advance(self, a: int, b: int) -> None:
        ts, rels = [], []
        for t, _ in self._steps(a, b):
            self.replayed += 1
            ts.append(t + 1)
            rels.append(self._drift(t + 1))
        self._check(ts, rels)

    def reverse_states(self, t_hi: int) -> Iterator[int]:
        """Yield t = t_hi, ..., 0 with the live state set to s_t at each yield."""
        for i in reversed(range(len(self.top))):
            a, key = self.top[i]
            b = self.top[i + 1][0] if i + 1 < len(self.top) else self.T
            b = min(b, t_hi + 1)
            nxt = self.top[i - 1][1] if i > 0 else None
            if b > a:  # a top state is freed once its segment is done, except s_0: the trust
                # report and the float64 prefix retrain from it after the reverse pass
                yield from self._rev(a, b, key, owned=i > 0, next_key=nxt)

    def _rev(self, a: int, b: int, key: int, owned: bool, next_key: int | None) -> Iterator[int]:
        """Reverse segment [a, b) from its stored start state; ``next_key`` is loaded after it."""
        self.store.load_into(key, self.live)
        if b - a == 1:
            self.store.prefetch(next_key)  # overlaps the reverse step at a
            yield a
        else:
            pts = list(range(a, b, self._seg_len(a, b)))
            keys = [key]
            for p0, p1 in zip(pts, pts[1:], strict=False):
                self._advance(p0, p1)
                keys.append(self.store.put(self.live))
            for i in reversed(range(len(pts))):
                end = pts[i + 1] if i + 1 < len(pts) else b
                yield from self._rev(
                    pts[i], end, keys[i], owned=i > 0, next_key=keys[i - 1] if i > 0 else next_key
                )
        if owned:
            self.store.delete(key)


__all__ = ["Fingerprint", "Replay", "TrajectoryDriftError"]
