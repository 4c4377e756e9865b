"""Sharded MAGIC: the engine of ``magic.py`` over W processes (``torchrun``, ``accelerate launch``).

Same phases and the same scores as :func:`magic_unlearn.attribution.attribute` in one process
(``tests/test_attribution_sharded.py``: 2 gloo processes equal one process to 1e-10 in float64),
with the memory of one process spread over W (``memory.py`` predicts it):

- parameters, optimiser buffers, their adjoints and the adjoints of g_t are flat shards
  (``shard.py``), 1/W per rank; the model reads full weights through differentiable
  all-gathers, and every gradient is reduce-scattered, also inside the reverse step's double
  backward;
- the rows of every batch are split over the ranks (data parallel; the loss keeps the whole
  batch's n_t, so the reduce-scattered gradient is the batch gradient);
- checkpoints are per rank, in each rank's GPU, pinned CPU memory or disk folder
  (``checkpoints/rank<r>``), and so is the resumable reverse state (``rank<r>/reverse_state``);
- the measurements run whole on every rank (their gradient is the reduce-scatter sum / W);
- fingerprints are summed over ranks, so every rank takes the same replay-drift decision;
- the per-token scores of each rank's rows are summed over ranks at the end; rank 0 writes the
  artifact.

:func:`magic_unlearn.attribution.attribute` dispatches here when a process group of more than one
process is initialised; call :func:`attribute_sharded` directly to run the sharded code path in one
process (world size 1, what the GPU test compares with the plain engine). On several GPUs the
training and reverse steps run eagerly (no CUDA graphs: the collectives are not captured).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from magic_unlearn.attribution import magic as _magic
from magic_unlearn.attribution.artifact import ScoreArtifact, model_hash_async
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.measurements import MeasureFn, queries_info
from magic_unlearn.attribution.optim import TrajectoryOptimizer, make_optimizer
from magic_unlearn.attribution.replay import Replay
from magic_unlearn.attribution.resume import ReverseCheckpoint, resume_key, work_folder
from magic_unlearn.attribution.reverse import ReverseState
from magic_unlearn.attribution.semantics import score_semantics
from magic_unlearn.attribution.shard import (
    ShardedBatches,
    ShardedFingerprint,
    ShardGroup,
    shard_parameters,
)
from magic_unlearn.attribution.store import StateStore
from magic_unlearn.attribution.trajectory import Batches, prepare_model, trajectory_matmuls
from magic_unlearn.attribution.trust import trust_report
from magic_unlearn.config import to_dict
from magic_unlearn.data import TokenizedCorpus

logger = logging.getLogger(__name__)


class ShardedReplay(Replay):
    """:class:`Replay` of a sharded state: fingerprints summed over the ranks."""

    def __init__(
        self,
        model: nn.Module,
        params: list[torch.Tensor],
        opt: TrajectoryOptimizer,
        batches: Batches,
        cfg: TrajectoryConfig,
        store: StateStore,
        sg: ShardGroup,
    ) -> None:
        self.sg = sg  # read by make_fingerprint, which the base class calls
        super().__init__(model, params, opt, batches, cfg, store)

    def make_fingerprint(self, params: list[torch.Tensor]) -> ShardedFingerprint:
        return ShardedFingerprint(params, self.cfg.seed, self.sg)

    def agree_states_fit(self, n_fit: int) -> int:
        """The minimum over the ranks: every rank must replay the same steps (collectives in
        the forward), though each plans from its own free GPU memory."""
        dev = self.params[0].device
        t = torch.tensor([n_fit], dtype=torch.int64, device=dev if dev.type == "cuda" else None)
        return int(_all_reduce_(t, self.sg, dist.ReduceOp.MIN).item())


def _broadcast_str(value: str | None, sg: ShardGroup, device: torch.device) -> str:
    """Rank 0's string on every rank."""
    if sg.world_size == 1:
        assert value is not None
        return value
    obj = [value]
    dist.broadcast_object_list(
        obj,
        src=dist.get_global_rank(sg.group, 0) if sg.group is not None else 0,
        group=sg.group,
        device=device if device.type == "cuda" else None,
    )
    return str(obj[0])


def _all_reduce_(t: torch.Tensor, sg: ShardGroup, op: Any = None) -> torch.Tensor:
    if sg.world_size > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=sg.group)
    return t


def _seed(
    model: nn.Module,
    params: list[torch.Tensor],
    measurements: dict[str, MeasureFn],
    opt: TrajectoryOptimizer,
    shape: torch.Size,
    sg: ShardGroup,
) -> tuple[dict[str, float], ReverseState]:
    """``magic._seed_adjoints`` on shards: every rank computes grad f whole, so the
    reduce-scattered gradient is W times grad f."""
    after, state = _magic._seed_adjoints(model, params, measurements, opt, shape)
    if sg.world_size > 1:
        for adj in state.adj_params.values():
            torch._foreach_mul_(adj, 1.0 / sg.world_size)
    return after, state


def _resume_point(
    work: Path | None,
    key: str,
    replay: Replay,
    state: ReverseState,
    resume: bool,
    sg: ShardGroup,
    reseed: Any,
) -> tuple[ReverseCheckpoint | None, int, ReverseState]:
    """Each rank's saved reverse state, used only if every rank saved the same step."""
    t_last = replay.cfg.steps - 1
    if work is None:
        return None, t_last, state
    ckpt = ReverseCheckpoint(
        work / f"rank{sg.rank}", key, torch.stack(replay.fps).cpu(), replay.cfg
    )
    restored = ckpt.restore(state) if resume else None
    s = -1 if restored is None else restored
    # [max, -min] of the ranks' saved steps (-1: none)
    step = torch.tensor([s, -s], dtype=torch.long, device=replay.params[0].device)
    _all_reduce_(step, sg, dist.ReduceOp.MAX)
    hi, lo = int(step[0]), -int(step[1])
    if hi == lo and restored is not None:
        return ckpt, restored, state
    if hi != lo:
        warnings.warn(
            f"{work}: the ranks saved reverse states of different steps ({lo}..{hi}; a run "
            f"killed while saving); starting the reverse pass over",
            stacklevel=3,
        )
        state = reseed()  # a restore overwrote the seeded adjoints (on every rank: collectives)
    ckpt.discard()
    return ckpt, t_last, state


@trajectory_matmuls
def attribute_sharded(
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
    group: Any = None,
) -> ScoreArtifact:
    """MAGIC scores with parameters, optimiser state and adjoints sharded over ``group``.

    Arguments as :func:`magic_unlearn.attribution.attribute` (every rank passes the same ones,
    ``model`` at theta_0 in full on its own device); ``group``: the process group (None: the
    default one, or a single process when none is initialised).

    Returns:
        The score artifact, on every rank; rank 0 saves it to ``out``, and no rank returns before
        it is saved. The work folder holds ``checkpoints/rank<r>`` (disk storage) and
        ``rank<r>/reverse_state`` (resume) until then.
    """
    sg = ShardGroup.current(group)
    out_p = Path(out) if out is not None else None
    _magic._check_args(corpus, measurements, cfg, per, out_p, overwrite)
    t_start = time.perf_counter()
    main = sg.rank == 0
    progress = progress and main

    # prepare: theta_0 hashed in full (rank 0), then sharded; the rows of this rank
    model, params = prepare_model(model, cfg, inplace=inplace)
    device = params[0].device
    timings = _magic._Timings(device)
    queries = list(measurements)
    with timings.span("hash_s"):
        mhash_result = model_hash_async(model) if main else None
        chash = corpus.content_hash()
    with timings.span("shard_s", sync=True):
        shards = [f.param for f in shard_parameters(model, params, sg)]
        n_trained = sum(p.numel() for p in params)
        del params
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if sg.world_size > 1 and cfg.cuda_graphs:
        # the collectives run on NCCL's own streams, outside a captured graph
        cfg = dataclasses.replace(cfg, cuda_graphs=False)
    work = work_folder(out_p) if out_p is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    opt = make_optimizer(cfg)
    batches = ShardedBatches(corpus, cfg, device, shards[0].dtype, sg)
    disk = work / "checkpoints" / f"rank{sg.rank}" if work is not None else None
    with StateStore(cfg.storage, device, disk) as store:
        replay = ShardedReplay(model, shards, opt, batches, cfg, store, sg)
        with torch.no_grad():
            before = {q: float(fn(model)) for q, fn in measurements.items()}

        # forward: train the trajectory, recording per-rank checkpoints and global fingerprints
        with timings.span("forward_s", sync=True):
            replay.forward(progress)
        with timings.span("hash_wait_s"):
            mhash = _broadcast_str(mhash_result() if mhash_result else None, sg, device)
        logger.info(
            "sharded MAGIC forward (%d ranks): %d steps in %.1f s",
            sg.world_size,
            cfg.steps,
            timings["forward_s"],
        )

        # seed the adjoints at theta_T (the same on every rank, sharded)
        shape = corpus.input_ids.shape

        def reseed() -> ReverseState:
            return _seed(model, shards, measurements, opt, shape, sg)[1]

        after, state = _seed(model, shards, measurements, opt, shape, sg)

        # reverse: every rank from the same saved step
        key = resume_key(cfg, chash, mhash, queries, per)
        ckpt, t_next, state = _resume_point(work, key, replay, state, resume, sg, reseed)
        with timings.span("reverse_s", sync=True):
            _magic._reverse(replay, state, t_next, ckpt, progress)
        for s in state.scores.values():  # each rank scored its own rows
            _all_reduce_(s, sg)
        losses = _all_reduce_(torch.stack(replay.losses).double(), sg)  # per-rank partial sums
        peak = torch.zeros(1, dtype=torch.float64, device=device)
        if device.type == "cuda":
            peak[0] = torch.cuda.max_memory_allocated(device) / 2**30
        _all_reduce_(peak, sg, dist.ReduceOp.MAX)
        timings.update(
            replayed_steps=replay.replayed,
            max_replay_drift=replay.max_drift,
            max_stored_states=store.peak,
            pin_s=store.pin_s,
            total_s=time.perf_counter() - t_start,
            world_size=sg.world_size,
        )
        if device.type == "cuda":
            timings["peak_gpu_mem_gb"] = float(peak[0])  # the largest over the ranks
        logger.info(
            "sharded MAGIC reverse: %d steps in %.1f s (%d replayed, max drift %.3g)",
            t_next + 1,
            timings["reverse_s"],
            replay.replayed,
            replay.max_drift,
        )
        meta = {
            "queries": queries_info(measurements, query_info),
            "model_hash": mhash,
            "trajectory": to_dict(cfg),
            "eval_losses": {"before": before, "after": after},
            "train_losses": [float(x) for x in losses],
            "timings": dict(timings),
            "n_params_trained": n_trained,
            "semantics": score_semantics(cfg),
            # the smoothness and precision checks (retrains, a float64 copy) are not run
            # sharded; the replay drift is
            "trust": trust_report(
                None,
                None,
                replay.max_drift,
                replay.replayed,
                cfg.drift_limit,
                notes=["sharded run: smoothness and precision checks not run"],
            ),
        }
        art = _magic._package(
            corpus, dict(state.scores), per, meta, tokenizer, shards[0].dtype == torch.float64
        )
    if sg.world_size > 1:
        dist.barrier(group=sg.group)  # every rank is done with its work files
    if out_p is not None and main:
        art.save(out_p, overwrite=overwrite)
        shutil.rmtree(work, ignore_errors=True)
    if sg.world_size > 1:
        dist.barrier(group=sg.group)  # the artifact exists when any rank returns
    return art


__all__ = ["ShardedReplay", "attribute_sharded"]
