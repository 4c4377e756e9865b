"""MAGIC: exact per-token metagradients through a whole fine-tuning run.

Ilyas & Engstrom 2025, "MAGIC: Near-Optimal Data Attribution for Deep Learning"; reverse pass and
REPLAY checkpointing from Engstrom et al. 2025, "Optimizing ML Training with Metagradient Descent".

Forward: s_{t+1} = U_t(s_t, g_t), s_t = (theta_t, optimiser buffers_t),
g_t = d/dtheta sum_i w_i l_i(theta_t) / n_t. Reverse, per step t (one fused double backward):

    (adj s_t, adj g_t) = VJP of U_t at adj s_{t+1}                 (elementwise, optim.py)
    h = d/d(theta, w) <g_t(theta, w), adj g_t>      (one backward through the graph of g_t)
    adj theta_t += h_theta   (Hessian-vector product)
    score_i     += h_{w_i} = <adj g_t, grad l_i> / n_t             (per-token scores of step t)

starting from adj theta_T = grad f(theta_T), adj buffers_T = 0. Several measurements share the
forward trajectory, the replays and the first backward; each adds one second backward.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from torch import Tensor, nn

from magic_unlearn.attribution.artifact import ScoreArtifact, model_hash_async
from magic_unlearn.attribution.attention import compiled_double_backward
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.optim import FunctionalOptimizer, adjoint_dtype
from magic_unlearn.attribution.trajectory import (
    Batches,
    StepGrads,
    check_corpus,
    iter_steps,
    prepare_model,
    weighted_grads,
)
from magic_unlearn.config import config_hash, to_dict
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.io import atomic_write_bytes, atomic_write_json, bytes_hash, read_json

Measurement = Callable[[nn.Module], Tensor]

# config fields that do not change the scores (a run may resume with other values)
_NON_SEMANTIC = (
    "checkpointing",
    "checkpoint_k",
    "storage",
    "resume_every",
    "drift_tol",
    "max_length",
    "reverse_microbatch",
    "cuda_graphs",
    "compile_attention",
)


class TrajectoryDriftError(RuntimeError):
    """A replayed training step did not reproduce the recorded trajectory."""


class _Interrupted(RuntimeError):
    """Raised by the test hook ``_interrupt_after`` to simulate a killed run."""


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


# Flat pinned host buffers kept for reuse by later runs in this process: page-locking costs
# ~0.3-0.5 s per GB (measured on an H200 host), about as long as the attribution itself.
_PINNED_POOL: dict[tuple, list[dict[torch.dtype, Tensor]]] = {}


def _pool_key(sizes: dict[torch.dtype, int]) -> tuple:
    """Pool key of a state layout: its element count per dtype."""
    return tuple(sorted((str(d), n) for d, n in sizes.items()))


def release_pinned_memory() -> None:
    """Free the pinned host buffers that MAGIC keeps for reuse across runs in this process."""
    _PINNED_POOL.clear()


class _Store:
    """Checkpoint storage: on the model's device, in pinned CPU memory, or on disk.

    With CPU storage on a GPU, copies run on a side stream: a snapshot's device-to-host copy
    overlaps the next step's forward/backward (the parameter update waits for it, see
    ``before_write``), and the state the reverse pass needs next is prefetched into a device
    staging buffer while the current reverse step runs. Host buffers are one flat pinned tensor
    per dtype and state, taken from (and given back to) a process-wide pool.
    """

    def __init__(self, kind: str, device: torch.device, folder: Path | None) -> None:
        self.kind = kind
        self.device = device
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
        if kind == "disk":
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)

    def _host_buffers(self, tensors: list[Tensor]) -> list[Tensor]:
        """Pinned host views shaped like ``tensors``, backed by one flat buffer per dtype."""
        sizes: dict[torch.dtype, int] = {}
        layout = []
        for t in tensors:
            layout.append((t.dtype, sizes.get(t.dtype, 0), t.numel(), t.shape))
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
        pool = _PINNED_POOL.setdefault(_pool_key(sizes), [])
        if pool:
            flats = pool.pop()
        else:
            t0 = time.perf_counter()
            flats = {d: torch.empty(n, dtype=d, pin_memory=True) for d, n in sizes.items()}
            self.pin_s += time.perf_counter() - t0
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

    def put(self, tensors: list[Tensor]) -> int:
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
                str(self.folder / f"state_{k}.safetensors"),
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
        with torch.no_grad():
            self.before_write()
            if self.kind == "disk":
                dev = str(self.device) if self.device.type != "cuda" else self.device.index or 0
                with safe_open(str(self.folder / f"state_{k}.safetensors"), "pt", device=dev) as f:
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
        self.n_live -= 1
        if self.staged is not None and self.staged[0] == k:
            self.staged = None
        if self.kind == "disk":
            (self.folder / f"state_{k}.safetensors").unlink(missing_ok=True)
            return
        bufs = self.mem.pop(k)
        if self.async_cpu:
            self.free.append(bufs)


class _Trajectory:
    """Live training state plus the REPLAY machinery that serves states s_t in reverse order."""

    def __init__(
        self,
        model: nn.Module,
        params: list[Tensor],
        opt: FunctionalOptimizer,
        batches: Batches,
        cfg: TrajectoryConfig,
        store: _Store,
    ) -> None:
        self.model, self.params, self.opt, self.batches, self.cfg = model, params, opt, batches, cfg
        self.bufs = opt.init_buffers(params)
        self.live = params + [b for bl in self.bufs for b in bl]
        self.store = store
        self.T = cfg.steps
        self.fingerprint = Fingerprint(params, seed=cfg.seed)
        self.fps: list[Tensor] = []  # fingerprint of theta_t, t = 0..T
        self.denoms: Tensor | None = None  # (T+1,) drift units, see _drift
        self.losses: list[Tensor] = []
        self.top: list[tuple[int, int]] = []  # (position, store key) of forward checkpoints
        self.replayed = 0
        self.max_drift = 0.0
        self.grads = StepGrads(model, params, cfg)  # owns the graph cache of both step kinds
        self.reverse_fns: dict[int, _ReverseFn] = {}
        self.gbar: dict[str, list[Tensor]] = {}  # adjoints of g_t, reused every step

    def _top_positions(self) -> list[int]:
        mode, T, k = self.cfg.checkpointing, self.T, self.cfg.segment_k
        if mode == "every":
            return list(range(T))
        if mode == "sqrt":
            return list(range(0, T, k))
        return list(range(0, T, math.ceil(T / k)))

    def _seg_len(self, a: int, b: int) -> int:
        if self.cfg.checkpointing == "kary":
            return math.ceil((b - a) / self.cfg.segment_k)
        return 1

    def forward(self, progress: bool) -> None:
        """The recorded trajectory: run all T steps, keep fingerprints and top checkpoints."""
        top = set(self._top_positions())
        self.fps = [self.fingerprint(self.params)]
        it: Iterator[tuple[int, Tensor]] = iter_steps(
            self.model,
            self.params,
            self.bufs,
            self.opt,
            self.batches,
            self.cfg,
            0,
            self.T,
            before_update=self.store.before_write,
            grad_fn=self.grads,
        )
        if 0 in top:
            self.top.append((0, self.store.put(self.live)))
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=self.T, desc="magic forward", leave=False)
        for t, loss in it:
            self.losses.append(loss)
            self.fps.append(self.fingerprint(self.params))
            if t + 1 in top:
                self.top.append((t + 1, self.store.put(self.live)))

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
        for t, _ in iter_steps(
            self.model,
            self.params,
            self.bufs,
            self.opt,
            self.batches,
            self.cfg,
            a,
            b,
            before_update=self.store.before_write,
            grad_fn=self.grads,
        ):
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
            if b > a:
                yield from self._rev(a, b, key, owned=False, next_key=nxt)

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


class _ReverseFn:
    """The fused double backward of one micro-batch for Q queries, accumulating in place.

    Called as ``fn(ids, lm, n_t, idx, [am], *gbar, *adj, *scores)`` with, per query, the adjoint
    of g_t (one tensor per parameter), the adjoint of theta_t (updated in place with the HVP)
    and the (N, L) score table (rows ``idx`` get d/dw_i <g, gbar> = <gbar, grad l_i> / n_t).
    In-place updates of persistent tensors let one CUDA graph hold the whole step.
    """

    def __init__(
        self, model: nn.Module, params: list[Tensor], cfg: TrajectoryConfig, nq: int, masked: bool
    ) -> None:
        self.model, self.params, self.cfg, self.nq, self.masked = model, params, cfg, nq, masked

    def __call__(
        self, ids: Tensor, lm: Tensor, n_t: Tensor, idx: Tensor, *rest: Tensor
    ) -> list[Tensor]:
        am = rest[0] if self.masked else None
        rest = rest[1:] if self.masked else rest
        n_p, nq = len(self.params), self.nq
        gbars, adjs, tables = rest[: nq * n_p], rest[nq * n_p : 2 * nq * n_p], rest[2 * nq * n_p :]
        w = torch.ones_like(lm).requires_grad_()  # (b, L) token weights at w = 1
        with compiled_double_backward(self.cfg.compile_attention):
            g, _ = weighted_grads(
                self.model, self.params, ids, am, lm, n_t, w, self.cfg, create_graph=True
            )
        live = [i for i, gi in enumerate(g) if gi.requires_grad]
        for q in range(nq):
            gbar = gbars[q * n_p : (q + 1) * n_p]
            # VJP of g in direction gbar = d/d(theta, w) <g, gbar>: HVP and per-token scores
            res = torch.autograd.grad(
                [g[i] for i in live],
                [*self.params, w],
                grad_outputs=[gbar[i].to(g[i].dtype) for i in live],
                retain_graph=q < nq - 1,
                allow_unused=True,
            )
            with torch.no_grad():
                pairs = [(adjs[q * n_p + i], h) for i, h in enumerate(res[:-1]) if h is not None]
                if pairs:
                    torch._foreach_add_([a for a, _ in pairs], [h.to(a.dtype) for a, h in pairs])
                if res[-1] is not None:
                    tables[q].index_add_(0, idx, (res[-1] * lm).to(tables[q].dtype))
            del res
        return []


def _reverse_step(
    traj: _Trajectory,
    t: int,
    adj_p: dict[str, list[Tensor]],
    adj_b: dict[str, list[list[Tensor]]],
    scores: dict[str, Tensor],
) -> None:
    """One fused reverse step at t (live state = s_t): optimiser VJP, HVP and per-token scores.

    The batch may be split into ``cfg.reverse_microbatch`` rows: the HVP and the token
    derivatives are sums over rows, so only the activations of one micro-batch are alive.
    On a GPU each micro-batch shape is one CUDA graph (``cfg.cuda_graphs``).
    """
    cfg, params, opt = traj.cfg, traj.params, traj.opt
    idx, ids, am, lm, n_t = traj.batches[t]
    bsz = ids.shape[0]
    mb = min(cfg.reverse_microbatch or bsz, bsz)
    spans = [(s, min(s + mb, bsz)) for s in range(0, bsz, mb)]
    queries = list(adj_p)
    g_full = None
    if opt.kind == "adamw":  # its VJP needs g_t before any HVP
        g_full = [torch.zeros_like(p) for p in params]
        for s, e in spans:
            gs, _ = traj.grads(ids[s:e], None if am is None else am[s:e], lm[s:e], n_t)
            torch._foreach_add_(g_full, gs)
    if not traj.gbar:
        traj.gbar = {q: [torch.empty_like(a) for a in adj_p[q]] for q in queries}
    for q in queries:
        opt.vjp(params, traj.bufs, g_full, t, adj_p[q], adj_b[q], out=traj.gbar[q])
    del g_full
    fn = traj.reverse_fns.get(len(queries))
    if fn is None:
        fn = traj.reverse_fns[len(queries)] = _ReverseFn(
            traj.model, params, cfg, len(queries), masked=am is not None
        )
    persistent = [
        *(x for q in queries for x in traj.gbar[q]),
        *(x for q in queries for x in adj_p[q]),
        *(scores[q] for q in queries),
    ]
    dev_idx = traj.batches.device_index(t)
    for s, e in spans:
        inputs = [ids[s:e], lm[s:e], n_t.reshape(()), dev_idx[s:e]]
        inputs += [am[s:e]] if am is not None else []
        traj.grads.graphs.run("reverse", fn, inputs, persistent, in_place=True)


def _measure_grad(
    model: nn.Module, params: list[Tensor], fn: Measurement
) -> tuple[float, list[Tensor]]:
    val = fn(model)
    if val.dim() != 0:
        raise ValueError(f"a measurement must return a scalar tensor, got shape {tuple(val.shape)}")
    if not val.requires_grad:
        raise ValueError(
            "a measurement returned a tensor without grad: compute it from the "
            "model's parameters, outside torch.no_grad()"
        )
    grads = torch.autograd.grad(val, params, allow_unused=True)
    return float(val.detach()), [
        torch.zeros_like(p, dtype=adjoint_dtype(p))
        if g is None
        else g.detach().to(adjoint_dtype(p), copy=True)
        for p, g in zip(params, grads, strict=True)
    ]


def _query_info(name: str, fn: Measurement, given: dict[str, Any] | None) -> dict[str, Any]:
    """{task, fmt, n_questions, hash} from ``given`` or the measurement (EVAL's Measurement)."""
    if given and name in given:
        return dict(given[name])
    info: dict[str, Any] = {}
    for key in ("task", "fmt", "n_questions", "hash"):
        v = getattr(fn, key, None)
        if v is not None and isinstance(v, (str, int, float)):
            info[key] = v
    batch = getattr(fn, "batch", None)
    if batch is not None and hasattr(batch, "input_ids"):
        info.setdefault("task", getattr(fn, "name", name))
        info.setdefault("fmt", getattr(batch, "fmt", None))
        info.setdefault("n_questions", int(batch.input_ids.shape[0]))
        blob = batch.input_ids.cpu().numpy().tobytes()
        if hasattr(batch, "target_ids"):
            blob += batch.target_ids.cpu().numpy().tobytes()
        info.setdefault("hash", bytes_hash(blob))
    return info


def _resume_key(
    cfg: TrajectoryConfig, corpus_hash: str, mhash: str, queries: list[str], per: str
) -> str:
    return bytes_hash(
        f"{config_hash(cfg, exclude=_NON_SEMANTIC)}|{corpus_hash}|{mhash}|"
        f"{','.join(queries)}|{per}".encode()
    )


def attribute(
    model: nn.Module,
    corpus: TokenizedCorpus,
    measurements: dict[str, Measurement],
    cfg: TrajectoryConfig,
    per: str = "token",
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    tokenizer: Any | None = None,
    query_info: dict[str, dict[str, Any]] | None = None,
    inplace: bool = False,
    overwrite: bool = False,
    _interrupt_after: int | None = None,
) -> ScoreArtifact:
    """MAGIC scores of every training token for each measurement, through the whole run.

    Args:
        model: causal LM at theta_0 (its device is used; copied unless ``inplace``).
        corpus: training rows; the trajectory is ``train_trajectory(model, corpus, cfg)``.
        measurements: name -> f(model) returning a scalar eval loss (differentiable).
        cfg: trajectory and checkpointing config.
        per: "token" ((N, L) scores) or "example" ((N,) scores, sums over the document).
        out: artifact folder to write (atomically); resume state lives in a sibling
            ``.<name>.magic-work`` folder until the run completes.
        resume: continue from the saved reverse-pass state in the work folder if it matches.
        progress: tqdm bars.
        tokenizer: recorded in the metadata (name, vocab hash) when given.
        query_info: name -> {task, fmt, n_questions, hash}; defaults to the measurement's
            attributes of those names when present.
        inplace: use ``model`` itself (saves memory; it ends at theta_0 with a LoRA wrapper).
        overwrite: replace an existing ``out``.

    Returns:
        The score artifact (saved to ``out`` when given). Scores follow
        ``magic_unlearn.SIGN_CONVENTION`` (positive = detractor).
    """
    if per not in ("token", "example"):
        raise ValueError(f"per={per!r} is invalid; use 'token' or 'example'")
    if not measurements:
        raise ValueError("attribute needs at least one measurement")
    check_corpus(corpus, cfg)
    out_p = Path(out) if out is not None else None
    if out_p is not None and out_p.exists() and not overwrite:
        raise FileExistsError(f"{out_p} already exists; pass overwrite=True (CLI: --overwrite)")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    model, params = prepare_model(model, cfg, inplace=inplace)
    device, dtype = params[0].device, params[0].dtype
    sdtype = torch.float64 if dtype == torch.float64 else torch.float32
    queries = list(measurements)
    t0 = time.perf_counter()
    mhash_result = model_hash_async(model)  # hashed on a worker thread during the forward pass
    chash = corpus.content_hash()
    timings["hash_s"] = time.perf_counter() - t0

    work: Path | None = None
    tmp_ctx: tempfile.TemporaryDirectory[str] | None = None
    if out_p is not None:
        work = out_p.parent / f".{out_p.name}.magic-work"
        work.mkdir(parents=True, exist_ok=True)
    if cfg.storage == "disk":
        if work is not None:
            ckpt_dir = work / "checkpoints"
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        else:
            tmp_ctx = tempfile.TemporaryDirectory(prefix="magic-ckpt-")
            ckpt_dir = Path(tmp_ctx.name)
    else:
        ckpt_dir = None

    store: _Store | None = None
    try:
        opt = FunctionalOptimizer(cfg)
        batches = Batches(corpus, cfg, device, dtype)
        store = _Store(cfg.storage, device, ckpt_dir)
        traj = _Trajectory(model, params, opt, batches, cfg, store)

        before = {}
        with torch.no_grad():
            for q, fn in measurements.items():
                before[q] = float(fn(model))

        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        traj.forward(progress)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings["forward_s"] = time.perf_counter() - t0
        train_losses = [float(x) for x in traj.losses]
        t0 = time.perf_counter()
        mhash = mhash_result()
        timings["hash_wait_s"] = time.perf_counter() - t0
        key = _resume_key(cfg, chash, mhash, queries, per)

        # adjoints at theta_T
        after: dict[str, float] = {}
        adj_p: dict[str, list[Tensor]] = {}
        adj_b: dict[str, list[list[Tensor]]] = {}
        scores: dict[str, Tensor] = {}
        for q, fn in measurements.items():
            after[q], adj_p[q] = _measure_grad(model, params, fn)
            adj_b[q] = opt.init_adjoint_buffers(params)
            scores[q] = torch.zeros(corpus.input_ids.shape, dtype=sdtype, device=device)

        t_next = cfg.steps - 1
        fps = torch.stack(traj.fps).cpu()
        state_file = work / "reverse_state.safetensors" if work is not None else None
        if resume and state_file is not None and state_file.exists():
            info = read_json(work / "reverse_state.json")
            if info.get("key") == key:
                _load_resume(state_file, fps, adj_p, adj_b, scores, cfg)
                t_next = int(info["t_next"])
            else:
                warnings.warn(
                    f"{work}: saved reverse state belongs to another run (config, "
                    f"corpus, model or queries differ); starting over",
                    stacklevel=2,
                )
        elif state_file is not None:
            state_file.unlink(missing_ok=True)

        t0 = time.perf_counter()
        it: Iterator[int] = traj.reverse_states(t_next)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=t_next + 1, desc="magic reverse", leave=False)
        done = 0
        for t in it:
            _reverse_step(traj, t, adj_p, adj_b, scores)
            done += 1
            if bar is not None:
                bar.update(1)
            if state_file is not None and (done % cfg.resume_every == 0) and t > 0:
                _save_resume(work, key, t - 1, fps, adj_p, adj_b, scores)
            if _interrupt_after is not None and done >= _interrupt_after:
                raise _Interrupted(f"interrupted after {done} reverse steps (test hook)")
        if bar is not None:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings["reverse_s"] = time.perf_counter() - t0
        timings["replayed_steps"] = traj.replayed
        timings["max_replay_drift"] = traj.max_drift
        timings["max_stored_states"] = store.peak
        timings["pin_s"] = store.pin_s
        timings["total_s"] = time.perf_counter() - t_start
        if device.type == "cuda":
            timings["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30

        final = {
            q: (s * corpus.loss_mask.to(device, s.dtype)).float().cpu() for q, s in scores.items()
        }
        if per == "example":
            final = {q: s.sum(dim=1) for q, s in final.items()}
        meta = {
            "queries": {q: _query_info(q, measurements[q], query_info) for q in queries},
            "model_hash": mhash,
            "trajectory": to_dict(cfg),
            "eval_losses": {"before": before, "after": after},
            "train_losses": train_losses,
            "timings": timings,
            "n_params_trained": sum(p.numel() for p in params),
        }
        art = ScoreArtifact.from_corpus(
            corpus, final, method="magic", per=per, meta=meta, tokenizer=tokenizer
        )
        if out_p is not None:
            art.save(out_p, overwrite=overwrite)
            shutil.rmtree(work, ignore_errors=True)
        return art
    finally:
        if store is not None:
            store.close()
        if tmp_ctx is not None:
            tmp_ctx.cleanup()


def _save_resume(
    work: Path,
    key: str,
    t_next: int,
    fps: Tensor,
    adj_p: dict[str, list[Tensor]],
    adj_b: dict[str, list[list[Tensor]]],
    scores: dict[str, Tensor],
) -> None:
    """Atomically save the reverse state: adjoints of s_{t_next+1} and scores of steps > t_next."""
    tensors: dict[str, Tensor] = {"fingerprints": fps}
    for q in adj_p:
        for i, a in enumerate(adj_p[q]):
            tensors[f"adj_p.{q}.{i}"] = a.detach().cpu().contiguous()
        for j, bl in enumerate(adj_b[q]):
            for i, a in enumerate(bl):
                tensors[f"adj_b.{q}.{j}.{i}"] = a.detach().cpu().contiguous()
        tensors[f"scores.{q}"] = scores[q].detach().cpu().contiguous()
    atomic_write_bytes(work / "reverse_state.safetensors", st_save(tensors))
    atomic_write_json(work / "reverse_state.json", {"key": key, "t_next": t_next})


def _load_resume(
    path: Path,
    fps: Tensor,
    adj_p: dict[str, list[Tensor]],
    adj_b: dict[str, list[list[Tensor]]],
    scores: dict[str, Tensor],
    cfg: TrajectoryConfig,
) -> None:
    saved = st_load(path.read_bytes())
    old = saved["fingerprints"]
    scale = max(float(old.diff(dim=0).norm(dim=1).mean()), 1e-30) if len(old) > 1 else 1.0
    rel = float((old - fps).norm(dim=1).max()) / scale if old.shape == fps.shape else float("inf")
    if not rel <= cfg.drift_limit:
        raise TrajectoryDriftError(
            f"{path}: the re-run forward trajectory differs from the one the saved reverse state "
            f"belongs to (difference {rel:.3g} of a training update); delete {path.parent} "
            f"to start over, or make training deterministic"
        )
    with torch.no_grad():
        for q in adj_p:
            for i, a in enumerate(adj_p[q]):
                a.copy_(saved[f"adj_p.{q}.{i}"])
            for j, bl in enumerate(adj_b[q]):
                for i, a in enumerate(bl):
                    a.copy_(saved[f"adj_b.{q}.{j}.{i}"])
            scores[q].copy_(saved[f"scores.{q}"])


__all__ = ["Fingerprint", "TrajectoryDriftError", "attribute", "release_pinned_memory"]
