"""Mid-run checkpoints of long training loops (pretraining, unlearning, attacks): one format.

A checkpoint is a folder: ``tensors.safetensors`` (weights), ``optimizer.pt`` (optimizer state and
RNG state; read back with ``torch.load(weights_only=True)``) and ``state.json`` (step, history,
the *fingerprint* of the resolved config that wrote it, and the content hash of each of the two
files). It is replaced atomically: written under a temp name (files synced to disk), the old one
moved aside, the new one renamed in, the old one removed; a kill at any point leaves one complete
checkpoint (the new, or the old under ``<name>.old``), so a step is never paired with another
step's tensors. On load the hashes are checked: a folder whose files are not the ones its
``state.json`` names (a file replaced, truncated, or lost in a crash) is skipped with a warning,
and the ``.old`` twin or a fresh start is used instead.

Resuming with other settings than the ones that wrote a checkpoint would mix two runs, so
:func:`load_checkpoint` compares fingerprints and refuses a mismatch with a message that names the
folder and the fix.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from magic_unlearn.io import atomic_write_json, file_hash, make_temp_dir, read_json

logger = logging.getLogger(__name__)

TENSORS, EXTRA, STATE = "tensors.safetensors", "optimizer.pt", "state.json"


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a run with other settings."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors`` (CPU), ``extra`` (optimizer / RNG state), ``state``."""

    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def save_checkpoint(
    folder: str | Path,
    tensors: dict[str, torch.Tensor],
    extra: dict[str, Any],
    state: dict[str, Any],
    fingerprint: str | None = None,
) -> None:
    """Write a checkpoint folder atomically (see the module docstring).

    Args:
        folder: the checkpoint folder (replaced if it exists).
        tensors: name -> tensor (saved as contiguous CPU copies).
        extra: torch-serialisable state loadable with ``weights_only=True`` (optimizer, RNG).
        state: JSON-serialisable; must hold ``step``.
        fingerprint: hash of the resolved config of the run (checked on load).
    """
    folder = Path(folder)
    if "step" not in state:
        raise ValueError("save_checkpoint: state must hold 'step'")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(folder.parent, prefix=f".{folder.name}.", suffix=".partial")
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS)
        )
        torch.save(extra, tmp / EXTRA)
        for name in (TENSORS, EXTRA):  # on disk before the rename that publishes them
            _fsync(tmp / name)
        files = {name: file_hash(tmp / name) for name in (TENSORS, EXTRA)}
        atomic_write_json(tmp / STATE, {**state, "fingerprint": fingerprint, "files": files})
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _intact(folder: Path, state: dict[str, Any]) -> bool:
    """Whether the folder's files are the ones its state.json recorded (checkpoints written
    before the hashes were recorded pass)."""
    files = state.get("files")
    if files is None:
        return True
    return all((folder / n).is_file() and file_hash(folder / n) == h for n, h in files.items())


def load_checkpoint(
    folder: str | Path, fingerprint: str | None = None, device: str | torch.device = "cpu"
) -> Checkpoint | None:
    """The checkpoint in ``folder`` (or its ``.old`` twin after a kill mid-replace), or None.

    A candidate whose files fail their recorded hashes is skipped (with a warning).

    Args:
        folder: the checkpoint folder.
        fingerprint: the current run's config hash; a checkpoint written under another one is
            refused. None skips the check.
        device: where the tensors are loaded.

    Raises:
        CheckpointMismatchError: the checkpoint belongs to a run with other settings.
    """
    folder = Path(folder)
    for cand in (folder, folder.with_name(folder.name + ".old")):
        if not ((cand / STATE).exists() and (cand / TENSORS).exists()):
            continue
        try:
            state = read_json(cand / STATE)
        except ValueError:
            state = None
        if state is None or not _intact(cand, state):
            logger.warning(
                "%s: checkpoint files do not match their recorded hashes (replaced, truncated "
                "or lost in a crash); ignoring it",
                cand,
            )
            continue
        break
    else:
        return None
    saved = state.get("fingerprint")
    if fingerprint is not None and saved != fingerprint:
        raise CheckpointMismatchError(
            f"{cand}: this checkpoint was written by a run with other settings (config hash "
            f"{saved}, this run {fingerprint}); resuming would mix two runs. Rerun with the "
            f"original settings, or delete {cand} (or pass --overwrite) to start over"
        )
    tensors = load_file(str(cand / TENSORS), device=str(device))
    extra = torch.load(cand / EXTRA, map_location=device, weights_only=True)
    return Checkpoint(tensors, extra, state)


def stale_checkpoints(folder: str | Path, fingerprint: str) -> list[Path]:
    """Checkpoint folders under ``folder`` (any depth) written under another fingerprint."""
    out = []
    for st in sorted(Path(folder).rglob("state.json")) if Path(folder).exists() else []:
        try:
            saved = read_json(st).get("fingerprint")
        except ValueError:
            saved = None
        if saved != fingerprint:
            out.append(st.parent)
    return out


def remove_checkpoint(folder: str | Path) -> None:
    """Delete a checkpoint folder and its ``.old`` twin (after the run finished)."""
    folder = Path(folder)
    for cand in (folder, folder.with_name(folder.name + ".old")):
        shutil.rmtree(cand, ignore_errors=True)


__all__ = [
    "Checkpoint",
    "CheckpointMismatchError",
    "load_checkpoint",
    "remove_checkpoint",
    "save_checkpoint",
    "stale_checkpoints",
]
