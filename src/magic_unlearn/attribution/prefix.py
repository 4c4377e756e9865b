"""The first reverse steps recomputed in float64: AdamW's ill-conditioned start, fixed where it is.

Why. AdamW's first update is g / (|g| + eps) per coordinate (m = v = 0 before it), whose
derivative eps / (|g| + eps)^2 reaches 1 / (4 eps) = 2.5e7 where |g_0| ~ eps = 1e-8. The few
coordinates with |g_0| ~ eps dominate the score of step 0, and there the exact metagradient depends
on g_0 to ~1e-10 absolute: fp32 (and bf16) recompute g_0 with more error than that. Computing the
optimiser VJP itself in float64, or in a cancellation-free (eps-aware) form, changes nothing
measurable (docs/benchmarks.md): the error is in g_0, i.e. in the model's forward and backward.
So the reverse steps of the first k training steps are recomputed in float64, from float64
copies of the model and the data, and replace the run-precision ones.

How many. Not only step 0: while AdamW's second moment is still small the later steps are
ill-conditioned too (a start that has never seen some tokens, e.g. the filtered model, keeps
|g| ~ eps on their rows). On the small world's filtered start (AdamW 1e-4, warmup 8, eps 1e-8,
H200) fp32 agrees with float64 at Pearson 0.92-0.95 with k = 2, 0.99 with 4 and 1.0000 with 8;
float64 runs with fp32-sized rounding noise added to the weights after every step agree to
1.0000, so the error is the fp32 arithmetic of those steps, not the weights' storage. Hence the
default k (``TrajectoryConfig.prefix_len``): AdamW's warmup, at least 8 and at most 16 steps
(without warmup too: the tiny world at AdamW 1e-3 goes from 1.1e-2 to 1.2e-3 with 8 steps).

How. The run-precision reverse pass records (:class:`PrefixRecorder`) the adjoint state when it
reaches theta_k and the score table before each of the steps k-1..0. Once it ends, the live model
is at theta_0: it is copied in float64, the first k training steps are rerun in float64 and
reversed in float64 from the recorded adjoints (upcast). The scores of steps >= k are the run's;
those of steps < k are float64. Each recomputed step also measures the run precision's error on
that step, the precision check of the trust report (``trust.py``).

Later steps, sampled. The prefix only sees the first k steps, and a run can be worse later: on
the small world's AdamW 1e-3 trajectory without warmup (H200, 48 steps) the per-step error is
9e-4 at step 7 but 0.075 around steps 16-31, and fp32 scores are 45% off float64 in magnitude
with prefix 8 or 16 (8% with 32, 0.08% with 48; Pearson 1.0000 throughout: a scale error that
rankings do not see). So ``TrustConfig.precision_samples`` reverse steps spread over the
steps >= k are also recomputed in float64, two ways, and their errors join the precision
estimate (they measure only: the run's scores of those steps are kept):

- from the run's own state s_t and adjoint at t+1 (upcast), while the reverse pass is there
  (:func:`sample_step`): the error of one step's arithmetic;
- from the float64 trajectory's state at t (the float64 forward of the prefix, continued to
  the last sample) and the same adjoint: that error plus what the run's own states, rounded
  for t steps, change in the step. On the AdamW 1e-3 run the first reads 1e-5 and the second
  0.075 (docs/benchmarks.md): the rounded trajectory, not the arithmetic, is where the error
  comes from, so only the second can see it. It costs the float64 forward up to the last
  sample, and the adjoints at the sampled steps are kept in host memory until then.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from torch import Tensor

from magic_unlearn.attribution.config import TrajectoryConfig, TrustConfig
from magic_unlearn.attribution.optim import make_optimizer
from magic_unlearn.attribution.replay import Replay
from magic_unlearn.attribution.reverse import ReverseState, ReverseStep
from magic_unlearn.attribution.store import StateStore
from magic_unlearn.attribution.trajectory import Batches

logger = logging.getLogger(__name__)


def prefix_steps(cfg: TrajectoryConfig, dtype: torch.dtype) -> int:
    """How many first steps get a float64 reverse step: 0 for float64 runs."""
    if dtype == torch.float64:
        return 0
    return cfg.prefix_len


def sample_steps(T: int, k: int, n: int) -> list[int]:
    """``n`` reverse steps in [k, T), evenly spread (the precision check's later samples)."""
    if n <= 0 or T <= k:
        return []
    return sorted({k + (T - k) * (2 * i + 1) // (2 * n) for i in range(n)})


def replaces_scores(cfg: TrajectoryConfig) -> bool:
    """Whether the float64 prefix replaces the run's first reverse steps (fp32 runs) or only
    measures their precision for the trust report (bf16 and tf32 runs: there the replacement
    made the scores much worse, small world on an H200: bf16 Pearson against float64 0.07 with
    it, 0.90 without; TF32 hazard 0.87 without, 0.73 with it; docs/benchmarks.md, issue 14; a
    low-precision run's later steps carry errors of their own that exact first steps do not
    fix)."""
    return cfg.precision == "fp32"


class PrefixRecorder:
    """Copies what the float64 prefix needs out of the run-precision reverse pass, and
    recomputes the sampled later steps in float64 as the pass reaches them.

    Pass :meth:`before_step` to the reverse loop; it runs before reverse step t.

    Attributes:
        k: number of first training steps to recompute.
        adj_params, adj_buffers: per query, the adjoints of theta_k and of the buffers at k.
        before: t -> per query, the (N, L) score table before reverse step t (t < k).
        samples: later steps (>= k) recomputed in float64 by :func:`sample_step`.
        sample_err: t -> per query, the run's (relative L2 error, Pearson) on sampled step t.
    """

    def __init__(self, k: int, replay: Replay | None = None, samples: list[int] = ()) -> None:
        self.k = k
        self.replay = replay
        self.samples = sorted(t for t in samples if t >= k) if replay is not None else []
        self.adj_params: dict[str, list[Tensor]] | None = None
        self.adj_buffers: dict[str, list[list[Tensor]]] | None = None
        self.before: dict[int, dict[str, Tensor]] = {}
        # (t, the run's scores before step t, float64 increments of step t) until t is done
        self._pending: tuple[int, dict[str, Tensor], dict[str, Tensor]] | None = None
        self.sample_err: dict[int, dict[str, tuple[float, float]]] = {}
        # t -> the adjoints at t+1 (host copies) and the run's score increment of step t, for
        # the same step recomputed from the float64 trajectory after the reverse pass
        self.sample_adj: dict[int, tuple[dict[str, list[Tensor]], dict[str, list[list[Tensor]]]]]
        self.sample_adj = {}
        self.sample_inc: dict[int, dict[str, Tensor]] = {}

    def before_step(self, t: int, state: ReverseState) -> None:
        if self._pending is not None and self._pending[0] == t + 1:  # step t+1 is done
            t1, prev, inc64 = self._pending
            mask = self.replay.batches.corpus.loss_mask.to(prev[state.queries[0]].device) > 0
            run_inc = {q: state.scores[q].double() - prev[q].double() for q in state.queries}
            self.sample_err[t1] = {
                q: _masked_stats(run_inc[q], inc64[q], mask) for q in state.queries
            }
            self.sample_inc[t1] = {q: v.cpu() for q, v in run_inc.items()}
            self._pending = None
        if t in self.samples:
            self.sample_adj[t] = (
                {q: [a.to("cpu", copy=True) for a in v] for q, v in state.adj_params.items()},
                {
                    q: [[a.to("cpu", copy=True) for a in bl] for bl in v]
                    for q, v in state.adj_buffers.items()
                },
            )
            inc64 = sample_step(self.replay, t, state)
            self._pending = (t, {q: s.clone() for q, s in state.scores.items()}, inc64)
        if t >= self.k:
            return
        if t == self.k - 1:
            self.adj_params = {q: [a.clone() for a in v] for q, v in state.adj_params.items()}
            self.adj_buffers = {
                q: [[a.clone() for a in bl] for bl in v] for q, v in state.adj_buffers.items()
            }
        self.before[t] = {q: s.clone() for q, s in state.scores.items()}

    @property
    def complete(self) -> bool:
        """False when the run resumed past theta_k (the adjoints there were not seen)."""
        return self.adj_params is not None and len(self.before) == self.k


def _masked_stats(a: Tensor, b: Tensor, mask: Tensor) -> tuple[float, float]:
    """(relative L2 error of a against b, Pearson of a and b) over the scored tokens."""
    a, b = a[mask].double(), b[mask].double()
    nb = float(b.norm())
    rel = float((a - b).norm()) / nb if nb > 0 else (0.0 if float(a.norm()) == 0 else float("inf"))
    if a.numel() < 2 or float(a.std()) == 0 or float(b.std()) == 0:
        return rel, float("nan")
    return rel, float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@torch.no_grad()
def _float64_copy(replay: Replay) -> tuple[torch.nn.Module, list[Tensor]]:
    """The live model (at theta_0 once the reverse pass is done) and its trained tensors, float64."""
    names = {id(p): n for n, p in replay.model.named_parameters()}
    missing = [i for i, p in enumerate(replay.params) if id(p) not in names]
    if missing:
        raise RuntimeError(f"float64 prefix: trained tensors {missing} are not model parameters")
    m64 = copy.deepcopy(replay.model).to(torch.float64)
    by_name = dict(m64.named_parameters())
    return m64, [by_name[names[id(p)]] for p in replay.params]


def _replay64(replay: Replay, store: StateStore) -> Replay:
    """A float64 replay of the run's trajectory from the live model (plain ops, every state
    kept in ``store``); its optimiser state starts empty."""
    cfg64 = dataclasses.replace(
        replay.cfg,
        dtype="float64",
        precision="fp32",
        checkpointing="every",
        storage="gpu",
        cuda_graphs=False,
        compile_attention=False,
        float64_prefix=0,
        trust=TrustConfig(enabled=False),
    )
    m64, p64 = _float64_copy(replay)
    device = replay.params[0].device
    batches = Batches(replay.batches.corpus, cfg64, device, torch.float64)
    return Replay(m64, p64, make_optimizer(cfg64), batches, cfg64, store)


def sample_step(replay: Replay, t: int, state: ReverseState) -> dict[str, Tensor]:
    """Reverse step t in float64 from the live run state s_t and the adjoints at t+1 (upcast).

    Called before the run's own reverse step t (the live state is s_t then); changes nothing
    of the run. Returns per query the (N, L) float64 score increment of step t.
    """
    with StateStore("gpu", replay.params[0].device, None) as store:
        rp = _replay64(replay, store)
        with torch.no_grad():  # the optimiser state at t, upcast
            for bl64, bl in zip(rp.bufs, replay.bufs, strict=True):
                for b64, b in zip(bl64, bl, strict=True):
                    b64.copy_(b)
        queries = state.queries
        s64 = ReverseState(
            {q: [a.to(torch.float64, copy=True) for a in state.adj_params[q]] for q in queries},
            {
                q: [[a.to(torch.float64, copy=True) for a in bl] for bl in state.adj_buffers[q]]
                for q in queries
            },
            {q: torch.zeros_like(state.scores[q], dtype=torch.float64) for q in queries},
        )
        ReverseStep(rp)(t, s64)
    return s64.scores


def float64_prefix(
    replay: Replay, rec: PrefixRecorder, state: ReverseState
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The first ``rec.k`` reverse steps in float64, after the run-precision reverse pass.

    Args:
        replay: the run's replay, its live state at s_0 (the reverse pass is done).
        rec: what the reverse pass recorded.
        state: the finished run-precision reverse state (its scores hold every step).

    Returns:
        ``(scores, report)``: per query the (N, L) float64 scores with steps < k from float64,
        and the precision report: per query and recomputed step, the run precision's relative
        L2 error and Pearson correlation against float64 (``step_rel_err``,
        ``step_pearson``), and how much the replacement changed the total scores
        (``total_rel_change``, ``total_pearson``).
    """
    k = rec.k
    if not rec.complete or rec.adj_params is None or rec.adj_buffers is None:
        raise RuntimeError("float64 prefix: the reverse pass did not record the prefix state")
    device = replay.params[0].device
    mask = replay.batches.corpus.loss_mask.to(device) > 0
    queries = state.queries
    traj_err: dict[int, dict[str, tuple[float, float]]] = {}
    with StateStore("gpu", device, None) as store:
        rp = _replay64(replay, store)
        rp.forward(progress=False, stop=k)  # the live state is s_k now, s_0..s_k stored
        step = ReverseStep(rp)
        todo = sorted(t for t in rec.sample_inc if t in rec.sample_adj)
        if todo:  # the float64 trajectory continued to the samples (not stored: the prefix's
            # reverse below reloads its own states)

            def at_sample(t: int, step: ReverseStep = step) -> None:
                adj_p, adj_b = rec.sample_adj[t]
                st = ReverseState(
                    {q: [a.to(device, torch.float64) for a in adj_p[q]] for q in queries},
                    {
                        q: [[a.to(device, torch.float64) for a in bl] for bl in adj_b[q]]
                        for q in queries
                    },
                    {q: torch.zeros_like(state.scores[q], dtype=torch.float64) for q in queries},
                )
                step(t, st)
                traj_err[t] = {
                    q: _masked_stats(rec.sample_inc[t][q].to(device), st.scores[q], mask)
                    for q in queries
                }

            if todo[0] == k:
                at_sample(k)
            for t, _ in rp._steps(k, todo[-1]):
                if t + 1 in rec.sample_inc:
                    at_sample(t + 1)
        s64 = ReverseState(
            {q: [a.to(torch.float64) for a in rec.adj_params[q]] for q in queries},
            {q: [[a.to(torch.float64) for a in bl] for bl in rec.adj_buffers[q]] for q in queries},
            {q: torch.zeros_like(state.scores[q], dtype=torch.float64) for q in queries},
        )
        before64: dict[int, dict[str, Tensor]] = {}
        for t in rp.reverse_states(k - 1):
            before64[t] = {q: s.clone() for q, s in s64.scores.items()}
            step(t, s64)
    del rp, step

    def inc(before: dict[int, dict[str, Tensor]], final: dict[str, Tensor], t: int, q: str):
        after = before[t - 1][q] if t > 0 else final[q]
        return after.double() - before[t][q].double()

    scores: dict[str, Tensor] = {}
    report: dict[str, Any] = {"steps": k, "queries": {}}
    for q in queries:
        run_total = state.scores[q].double()
        fixed = rec.before[k - 1][q].double() + s64.scores[q]
        scores[q] = fixed
        rels, pears = [], []
        for t in range(k):
            r, p = _masked_stats(
                inc(rec.before, state.scores, t, q), inc(before64, s64.scores, t, q), mask
            )
            rels.append(r)
            pears.append(p)
        tr, tp = _masked_stats(run_total, fixed, mask)
        report["queries"][q] = {
            "step_rel_err": rels,
            "step_pearson": pears,
            "total_rel_change": tr,
            "total_pearson": tp,
        }
        logger.debug("float64 prefix %s: step errors %s, total change %.3g", q, rels, tr)
    if rec.sample_err:  # the later steps recomputed during the reverse pass (measured only)
        ts = sorted(rec.sample_err)
        report["samples"] = {
            "steps": ts,
            "queries": {
                q: {
                    "step_rel_err": [rec.sample_err[t][q][0] for t in ts],
                    "step_pearson": [rec.sample_err[t][q][1] for t in ts],
                    # from the float64 trajectory's states (nan: not recomputed)
                    "trajectory_rel_err": [
                        traj_err[t][q][0] if t in traj_err else float("nan") for t in ts
                    ],
                    "trajectory_pearson": [
                        traj_err[t][q][1] if t in traj_err else float("nan") for t in ts
                    ],
                }
                for q in queries
            },
        }
    return scores, report


__all__ = [
    "PrefixRecorder",
    "float64_prefix",
    "prefix_steps",
    "replaces_scores",
    "sample_step",
    "sample_steps",
]
