"""Mid-run checkpoints of long training loops (pretraining, unlearning, attacks): one format.

A checkpoint is a folder: ``tensors.safetensors`` (weights), ``optimizer.pt`` (optimizer state and
RNG state; read back with ``torch.load(weights_only=True)``) and ``state.json`` (step, history,
and the *fingerprint* of the resolved config that wrote it). It is replaced atomically: written
under a temp name, the old one moved aside, the new one renamed in, the old one removed; a kill
at any point leaves one complete checkpoint (the new, or the old under ``<name>.old``).

Resuming with other settings than the ones that wrote a checkpoint would mix two runs, so
:func:`load_checkpoint` compares fingerprints and refuses a mismatch with a message that names the
folder and the fix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from magic_unlearn.io import atomic_write_json, read_json


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
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp / "tensors.safetensors"),
        )
        torch.save(extra, tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {**state, "fingerprint": fingerprint})
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(
    folder: str | Path, fingerprint: str | None = None, device: str | torch.device = "cpu"
) -> Checkpoint | None:
    """The checkpoint in ``folder`` (or its ``.old`` twin after a kill mid-replace), or None.

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
        if (cand / "state.json").exists() and (cand / "tensors.safetensors").exists():
            break
    else:
        return None
    state = read_json(cand / "state.json")
    saved = state.get("fingerprint")
    if fingerprint is not None and saved != fingerprint:
        raise CheckpointMismatchError(
            f"{cand}: this checkpoint was written by a run with other settings (config hash "
            f"{saved}, this run {fingerprint}); resuming would mix two runs. Rerun with the "
            f"original settings, or delete {cand} (or pass --overwrite) to start over"
        )
    tensors = load_file(str(cand / "tensors.safetensors"), device=str(device))
    extra = torch.load(cand / "optimizer.pt", map_location=device, weights_only=True)
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
