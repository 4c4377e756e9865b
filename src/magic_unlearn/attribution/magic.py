"""MAGIC: exact per-token metagradients through a whole fine-tuning run.

Ilyas & Engstrom 2025, "MAGIC: Near-Optimal Data Attribution for Deep Learning"; reverse pass and
REPLAY checkpointing from Engstrom et al. 2025, "Optimizing ML Training with Metagradient Descent".

Forward: s_{t+1} = U_t(s_t, g_t), s_t = (theta_t, optimiser buffers_t),
g_t = d/dtheta sum_i w_i l_i(theta_t) / n_t. Reverse, per step t, one fused double backward
(``reverse.py``), starting from adj theta_T = grad f(theta_T), adj buffers_T = 0. Several
measurements share the forward trajectory, the replays and the first backward.

:func:`attribute` reads as its five phases: prepare (model, optimiser, batches, checkpoint
store), forward (train the trajectory, record checkpoints: ``replay.py``), seed the adjoints
(gradients of the measurements at theta_T), reverse (``reverse.py``, resumable: ``resume.py``),
package (the score artifact).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from magic_unlearn.attribution.artifact import PERS, ScoreArtifact, model_hash_async
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.measurements import MeasureFn, queries_info
from magic_unlearn.attribution.optim import TrajectoryOptimizer, adjoint_dtype, make_optimizer
from magic_unlearn.attribution.prefix import (
    PrefixRecorder,
    float64_prefix,
    prefix_steps,
    replaces_scores,
    sample_steps,
)
from magic_unlearn.attribution.replay import Replay
from magic_unlearn.attribution.resume import ReverseCheckpoint, resume_key, work_folder
from magic_unlearn.attribution.reverse import ReverseState, ReverseStep
from magic_unlearn.attribution.semantics import score_semantics
from magic_unlearn.attribution.store import StateStore
from magic_unlearn.attribution.trajectory import (
    Batches,
    check_corpus,
    prepare_model,
    trajectory_matmuls,
)
from magic_unlearn.attribution.trust import enforce, run_checks
from magic_unlearn.config import to_dict
from magic_unlearn.data import TokenizedCorpus

logger = logging.getLogger(__name__)


class _Timings(dict):
    """Wall-clock seconds of the phases (device-synchronised on a GPU) plus run statistics."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def span(self, key: str, sync: bool = False) -> Iterator[None]:
        if sync:
            self.sync()
        t0 = time.perf_counter()
        yield
        if sync:
            self.sync()
        self[key] = time.perf_counter() - t0


def _check_args(
    corpus: TokenizedCorpus,
    measurements: dict[str, MeasureFn],
    cfg: TrajectoryConfig,
    per: str,
    out: Path | None,
    overwrite: bool,
) -> None:
    if per not in PERS:
        raise ValueError(f"per={per!r} is invalid; use 'token' or 'example'")
    if not measurements:
        raise ValueError("attribute needs at least one measurement")
    check_corpus(corpus, cfg)
    if out is not None and out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite)")


def _measure_grad(
    model: nn.Module, params: list[Tensor], fn: MeasureFn
) -> tuple[float, list[Tensor]]:
    """(f(model), grad f) with the gradient in the adjoint dtype (zeros where f is unused)."""
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


def _seed_adjoints(
    model: nn.Module,
    params: list[Tensor],
    measurements: dict[str, MeasureFn],
    opt: TrajectoryOptimizer,
    shape: torch.Size,
) -> tuple[dict[str, float], ReverseState]:
    """Eval losses at theta_T and the reverse state there: adj theta_T = grad f, adj bufs = 0."""
    sdtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
    after: dict[str, float] = {}
    state = ReverseState({}, {}, {})
    for q, fn in measurements.items():
        after[q], state.adj_params[q] = _measure_grad(model, params, fn)
        state.adj_buffers[q] = opt.init_adjoint_buffers(params)
        state.scores[q] = torch.zeros(shape, dtype=sdtype, device=params[0].device)
    return after, state


def _resume_point(
    work: Path | None, key: str, replay: Replay, state: ReverseState, resume: bool
) -> tuple[ReverseCheckpoint | None, int]:
    """The run's saved reverse state (None without a work folder) and the step to start at.

    With ``resume``, a matching saved state is loaded into ``state``; any other is discarded.
    """
    t_last = replay.cfg.steps - 1
    if work is None:
        return None, t_last
    ckpt = ReverseCheckpoint(work, key, torch.stack(replay.fps).cpu(), replay.cfg)
    restored = ckpt.restore(state) if resume else None
    if restored is None:
        ckpt.discard()
        return ckpt, t_last
    return ckpt, restored


def _reverse(
    replay: Replay,
    state: ReverseState,
    t_next: int,
    ckpt: ReverseCheckpoint | None,
    progress: bool,
    before_step: Callable[[int, ReverseState], None] | None = None,
) -> None:
    """Reverse steps t_next, ..., 0; the state is saved every ``resume_every`` steps."""
    step = ReverseStep(replay)
    bar = tqdm(total=t_next + 1, desc="magic reverse", leave=False) if progress else None
    done = 0
    for t in replay.reverse_states(t_next):
        if before_step is not None:
            before_step(t, state)
        step(t, state)
        done += 1
        if bar is not None:
            bar.update(1)
        if ckpt is not None and done % replay.cfg.resume_every == 0 and t > 0:
            ckpt.save(t - 1, state)
    if bar is not None:
        bar.close()


def _package(
    corpus: TokenizedCorpus,
    scores: dict[str, Tensor],
    per: str,
    meta: dict[str, Any],
    tokenizer: Any | None,
    keep_float64: bool,
) -> ScoreArtifact:
    """The score artifact: masked per-token scores (or their per-document sums); float64 for
    float64 runs, else float32."""
    dt = torch.float64 if keep_float64 else torch.float32
    final = {
        q: (s * corpus.loss_mask.to(s.device, s.dtype)).to(dt).cpu() for q, s in scores.items()
    }
    if per == "example":
        final = {q: s.sum(dim=1) for q, s in final.items()}
    return ScoreArtifact.from_corpus(
        corpus, final, method="magic", per=per, meta=meta, tokenizer=tokenizer
    )


@trajectory_matmuls
def attribute(
    model: nn.Module,
    corpus: TokenizedCorpus,
    measurements: dict[str, MeasureFn],
    cfg: TrajectoryConfig,
    per: str = "token",
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    tokenizer: Any | None = None,
    query_info: dict[str, dict[str, Any]] | None = None,
    inplace: bool = False,
    overwrite: bool = False,
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
            attributes of those names when present (``measurements.query_info``).
        inplace: use ``model`` itself (saves memory; it ends at theta_0 with a LoRA wrapper).
        overwrite: replace an existing ``out``.

    Returns:
        The score artifact (saved to ``out`` when given). Scores follow
        ``magic_unlearn.SIGN_CONVENTION`` (positive = detractor).

    Under ``torchrun`` / ``accelerate launch`` (an initialised process group of several
    processes) the run is sharded over the processes: ``sharded.attribute_sharded``, same scores.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            from magic_unlearn.attribution.sharded import attribute_sharded  # imports this module

            return attribute_sharded(
                model,
                corpus,
                measurements,
                cfg,
                per=per,
                out=out,
                resume=resume,
                progress=progress,
                tokenizer=tokenizer,
                query_info=query_info,
                inplace=inplace,
                overwrite=overwrite,
            )
    out_p = Path(out) if out is not None else None
    _check_args(corpus, measurements, cfg, per, out_p, overwrite)
    t_start = time.perf_counter()

    # prepare: the trained copy, its optimiser, the data order and the checkpoint store
    model, params = prepare_model(model, cfg, inplace=inplace)
    device = params[0].device
    timings = _Timings(device)
    queries = list(measurements)
    with timings.span("hash_s"):
        mhash_result = model_hash_async(model)  # hashed on a worker thread during the forward
        chash = corpus.content_hash()
    work = work_folder(out_p) if out_p is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    opt = make_optimizer(cfg)
    batches = Batches(corpus, cfg, device, params[0].dtype)
    disk = work / "checkpoints" if work is not None else None
    with StateStore(cfg.storage, device, disk) as store:
        replay = Replay(model, params, opt, batches, cfg, store)
        with torch.no_grad():
            before = {q: float(fn(model)) for q, fn in measurements.items()}

        # forward: train the trajectory, recording checkpoints and fingerprints; the adjoints
        # of the reverse pass (per query: theta, g_t and the optimiser buffers) stay out of the
        # checkpoints' GPU budget
        adj_bytes = sum(p.numel() * adjoint_dtype(p).itemsize for p in params)
        n_adj = len(measurements) * (2 + len(opt.buffer_names)) + int(opt.vjp_needs_grad)
        with timings.span("forward_s", sync=True):
            replay.forward(progress, reserve_bytes=n_adj * adj_bytes)
        # theta_T for the trust report's parameter check (a host copy)
        theta_end = [p.detach().to("cpu", copy=True) for p in params] if cfg.trust.enabled else None
        with timings.span("hash_wait_s"):
            mhash = mhash_result()
        logger.info("MAGIC forward: %d steps in %.1f s", cfg.steps, timings["forward_s"])

        # seed the adjoints at theta_T
        after, state = _seed_adjoints(model, params, measurements, opt, corpus.input_ids.shape)

        # reverse: from the saved state when resuming
        key = resume_key(cfg, chash, mhash, queries, per)
        ckpt, t_next = _resume_point(work, key, replay, state, resume)
        k = prefix_steps(cfg, params[0].dtype)
        prefix_note = None
        if k and device.type == "cuda":
            # the float64 copy holds the model, its trained state and adjoints: skip (with a
            # note in the trust report) where that cannot fit beside this run (large models)
            need = 8 * 4 * sum(p.numel() for p in model.parameters())
            if need > torch.cuda.mem_get_info(device)[0]:
                k, prefix_note = 0, f"float64 prefix skipped: needs ~{need / 2**30:.0f} GiB"
                logger.warning("%s of free GPU memory", prefix_note)
        # the float64 prefix, and a few later reverse steps recomputed in float64 (measured)
        # (the samples are part of the trust report: off with it)
        n_samples = cfg.trust.precision_samples if cfg.trust.enabled else 0
        samples = sample_steps(cfg.steps, k, n_samples)
        rec = PrefixRecorder(k, replay, samples) if k else None
        with timings.span("reverse_s", sync=True):
            _reverse(replay, state, t_next, ckpt, progress, rec.before_step if rec else None)
        timings.update(
            replayed_steps=replay.replayed,
            max_replay_drift=replay.max_drift,
            max_stored_states=store.peak,
            gpu_states=store.peak_gpu_states,
            host_states=store.host_states,
            pin_s=store.pin_s,
            **replay.plan,
            total_s=time.perf_counter() - t_start,
        )
        if device.type == "cuda":
            timings["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        logger.info(
            "MAGIC reverse: %d steps in %.1f s (%d replayed, max drift %.3g)",
            t_next + 1,
            timings["reverse_s"],
            replay.replayed,
            replay.max_drift,
        )

        # the first steps in float64 (AdamW's ill-conditioned start), then the trust report
        scores, precision = dict(state.scores), None
        notes = [prefix_note] if prefix_note else []
        if rec is not None and rec.complete:
            with timings.span("float64_prefix_s", sync=True):
                s64, precision = float64_prefix(replay, rec, state)
            if replaces_scores(cfg):
                scores = s64
            else:
                notes.append(
                    f"{cfg.precision} run: the float64 prefix measured precision, scores kept"
                )
        elif rec is not None:
            notes.append("float64 prefix skipped: the run resumed after its first steps")
        with timings.span("trust_s", sync=True):
            trust = run_checks(replay, measurements, scores, after, precision, notes, theta_end)
        timings["total_s"] = time.perf_counter() - t_start

        # package: the score artifact
        meta = {
            "queries": queries_info(measurements, query_info),
            "model_hash": mhash,
            "trajectory": to_dict(cfg),
            "eval_losses": {"before": before, "after": after},
            "train_losses": [float(x) for x in replay.losses],
            "timings": dict(timings),
            "n_params_trained": sum(p.numel() for p in params),
            "semantics": score_semantics(cfg),
            "trust": trust,
        }
        art = _package(corpus, scores, per, meta, tokenizer, params[0].dtype == torch.float64)
    try:
        enforce(trust, cfg.trust)
    except ValueError:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if out_p is not None:
        art.save(out_p, overwrite=overwrite)
        shutil.rmtree(work, ignore_errors=True)
    return art


__all__ = ["attribute"]
