"""checkpoint.py: one atomic folder per checkpoint, fingerprints, content hashes; io permissions."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from magic_unlearn import checkpoint as ck_mod
from magic_unlearn.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    save_checkpoint,
)
from magic_unlearn.io import atomic_dir, atomic_write_text


def _save(folder: Path, step: int, fingerprint: str = "fp") -> None:
    """A checkpoint whose every tensor holds its step: a pairing of step and tensors from two
    different saves is visible."""
    save_checkpoint(
        folder,
        {"adj": torch.full((4, 3), float(step)), "scores": torch.full((5,), float(step))},
        {"opt": torch.tensor([step])},
        {"step": step},
        fingerprint=fingerprint,
    )


def _consistent(folder: Path) -> int:
    ck = load_checkpoint(folder, "fp")
    assert ck is not None
    for t in (*ck.tensors.values(), ck.extra["opt"]):
        assert torch.all(t == ck.step), (ck.step, t)
    return ck.step


def test_roundtrip_and_fingerprint(tmp_path: Path) -> None:
    _save(tmp_path / "ck", 3)
    assert _consistent(tmp_path / "ck") == 3
    with pytest.raises(CheckpointMismatchError, match="other settings"):
        load_checkpoint(tmp_path / "ck", "another")
    assert load_checkpoint(tmp_path / "none", "fp") is None


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even cleanup of temp folders)."""


@pytest.mark.parametrize(("kill_at", "survivor"), [(1, 1), (2, 1), (3, 2)])
def test_kill_between_renames_never_pairs_two_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: int, survivor: int
) -> None:
    """A kill after any rename of a save (1: state.json inside the temp folder, 2: the old
    checkpoint moved aside, 3: the new one renamed in, the old not yet removed) leaves one
    complete checkpoint: step 1 with step-1 tensors, or step 2 with step-2 ones."""
    folder = tmp_path / "reverse_state"
    _save(folder, 1)
    calls = {"n": 0}
    real = os.replace

    def replace(a, b):  # noqa: ANN001, ANN202
        calls["n"] += 1
        real(a, b)
        if calls["n"] == kill_at:
            raise _Killed

    monkeypatch.setattr(ck_mod.os, "replace", replace)
    monkeypatch.setattr(ck_mod.shutil, "rmtree", lambda *a, **k: None)  # killed: no cleanup
    with pytest.raises(_Killed):
        _save(folder, 2)
    monkeypatch.undo()
    assert _consistent(folder) == survivor
    _save(folder, 3)  # the next save recovers from either state
    assert _consistent(folder) == 3 and not folder.with_name("reverse_state.old").exists()


def test_mismatched_files_are_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """New tensors beside an old state.json (or a truncated file) fail the content hash: the
    intact .old twin is used, or none at all."""
    a, b = tmp_path / "a", tmp_path / "b"
    _save(a, 1)
    _save(b, 2)
    shutil.copy(b / "tensors.safetensors", a / "tensors.safetensors")  # step 2's tensors
    assert load_checkpoint(a, "fp") is None
    assert "do not match their recorded hashes" in caplog.text
    # a crash mid-replace left the previous checkpoint as .old: that one is used
    _save(a, 1)
    old = tmp_path / "a.old"
    shutil.copytree(a, old)
    (a / "optimizer.pt").write_bytes(b"")  # truncated
    assert _consistent(a) == 1
    ck = load_checkpoint(a, "fp")
    assert ck is not None and ck.step == 1


def test_temp_folders_and_files_follow_the_umask(tmp_path: Path) -> None:
    """Artifacts built under a temp name get the umask's modes, not mkdtemp's 0700 / 0600."""
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "art") as tmp:
            atomic_write_text(tmp / "x.txt", "x")
        _save(tmp_path / "ck", 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "art" / "x.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ck").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "ck" / "state.json").stat().st_mode) == 0o644
