"""Resuming an interrupted MAGIC run: the reverse-pass state, saved every few reverse steps.

A run with an output folder ``out`` keeps its work in the sibling ``.<name>.magic-work`` folder
until the artifact is written: disk checkpoints (``checkpoints/``) and the reverse state
(``reverse_state/``, a :mod:`magic_unlearn.checkpoint` folder: adjoints of s_{t+1}, the scores
of the steps > t done so far, and the fingerprints of the recorded trajectory). A rerun redoes
the forward pass (cheap next to the reverse pass), checks that it reproduces the recorded
fingerprints, and continues the reverse pass at step t.

The state is keyed by everything that changes the scores (the trajectory config except its
performance knobs, the corpus, theta_0, the queries and ``per``); a state of another run is
ignored with a warning.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor

from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.replay import TrajectoryDriftError
from magic_unlearn.attribution.reverse import ReverseState
from magic_unlearn.checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint
from magic_unlearn.config import config_hash
from magic_unlearn.io import bytes_hash

logger = logging.getLogger(__name__)

# config fields that do not change the scores (a run may resume with other values)
NON_SEMANTIC = (
    "checkpointing",
    "checkpoint_k",
    "storage",
    "resume_every",
    "drift_tol",
    "max_length",
    "reverse_microbatch",
    "cuda_graphs",
    "compile_attention",
    "trust",
)


def work_folder(out: Path) -> Path:
    """The work folder of the run writing ``out`` (removed once the artifact is complete)."""
    return out.parent / f".{out.name}.magic-work"


def resume_key(
    cfg: TrajectoryConfig, corpus_hash: str, model_hash: str, queries: list[str], per: str
) -> str:
    """Hash of everything that determines the scores of a run."""
    return bytes_hash(
        f"{config_hash(cfg, exclude=NON_SEMANTIC)}|{corpus_hash}|{model_hash}|"
        f"{','.join(queries)}|{per}".encode()
    )


class ReverseCheckpoint:
    """The saved reverse-pass state of one run.

    Args:
        work: the run's work folder (the state lives in ``work/reverse_state``).
        key: :func:`resume_key` of the run.
        fingerprints: (T+1, P) fingerprints of the recorded trajectory (``Replay.fps``).
        cfg: the trajectory config (``resume_every``, ``drift_limit``).
    """

    def __init__(self, work: Path, key: str, fingerprints: Tensor, cfg: TrajectoryConfig) -> None:
        self.work = work
        self.folder = work / "reverse_state"
        self.key = key
        self.fps = fingerprints
        self.cfg = cfg

    def restore(self, state: ReverseState) -> int | None:
        """Load the saved state into ``state``; returns the next step to run, None if none.

        Raises:
            TrajectoryDriftError: the re-run forward trajectory is not the one the saved state
                belongs to.
        """
        ck = load_checkpoint(self.folder)
        if ck is None:
            return None
        if ck.state.get("fingerprint") != self.key:
            warnings.warn(
                f"{self.work}: saved reverse state belongs to another run (config, "
                f"corpus, model or queries differ); starting over",
                stacklevel=3,
            )
            return None
        old = ck.tensors["fingerprints"]
        fps = self.fps
        scale = max(float(old.diff(dim=0).norm(dim=1).mean()), 1e-30) if len(old) > 1 else 1.0
        rel = (
            float((old - fps).norm(dim=1).max()) / scale if old.shape == fps.shape else float("inf")
        )
        if not rel <= self.cfg.drift_limit:
            raise TrajectoryDriftError(
                f"{self.folder}: the re-run forward trajectory differs from the one the saved "
                f"reverse state belongs to (difference {rel:.3g} of a training update); delete "
                f"{self.work} to start over, or make training deterministic"
            )
        with torch.no_grad():
            for name, t in state.named_tensors().items():
                t.copy_(ck.tensors[name])
        logger.info("resuming the reverse pass at step %d from %s", ck.step, self.folder)
        return ck.step

    def save(self, t_next: int, state: ReverseState) -> None:
        """Atomically save the adjoints of s_{t_next+1} and the scores of steps > t_next."""
        tensors = {"fingerprints": self.fps, **state.named_tensors()}
        save_checkpoint(self.folder, tensors, {}, {"step": t_next}, fingerprint=self.key)

    def discard(self) -> None:
        """Delete a saved state (a run that does not resume starts clean)."""
        remove_checkpoint(self.folder)


__all__ = ["NON_SEMANTIC", "ReverseCheckpoint", "resume_key", "work_folder"]
