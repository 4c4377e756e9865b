"""Artifacts: atomic writes, hashing, and self-describing stage folders.

Every stage writes into a folder holding ``config.yaml`` (resolved config), ``manifest.json``
(stage name, version, input hashes, timestamps, status) and ``metrics.json``. A folder is built
under a temporary sibling name and renamed into place when complete, so a crash never leaves a
half-written artifact that looks finished. Temporary files and folders are created owner-only by
``tempfile``; :func:`make_temp_dir` and :func:`make_temp_file` give them the permissions the
user's umask gives any new file, so the renamed artifacts are readable like everything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import magic_unlearn

logger = logging.getLogger(__name__)


def umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | Path, prefix: str = "", suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` in ``parent`` with the mode a new folder gets under the umask
    (mkdtemp makes it 0700, which the renamed artifact would keep)."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def make_temp_file(parent: str | Path, prefix: str = "", suffix: str = "") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``parent`` with the mode a new file gets under the umask
    (mkstemp makes it 0600); returns ``(fd, path)``."""
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=suffix)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def file_hash(path: str | Path, n: int = 16) -> str:
    """sha256 of a file (or of all files under a folder, by relative path), truncated to n."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:n]


def bytes_hash(data: bytes, n: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:n]


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temp name and rename it to ``out`` on success.

    On an exception the temp folder is removed and ``out`` is untouched.

    Yields:
        The temporary folder to write into.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.", suffix=".partial")
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def discard_unless_resumable(
    folder: str | Path, markers: tuple[str, ...] = ("state.json",), what: str = "run"
) -> bool:
    """After a failed run: delete its work folder unless it holds resume state.

    A folder with any file named in ``markers`` (a checkpoint's ``state.json``, a finished
    pipeline stage's ``stage.json``) is kept, with a warning that says how to resume or clean
    it; one without (the run failed before saving anything) is removed.

    Returns:
        True if the folder was kept.
    """
    folder = Path(folder)
    if not folder.exists():
        return False
    if any(p.name in markers for p in folder.rglob("*")):
        logger.warning(
            "the failed %s kept its resume state in %s: rerun the same command to continue "
            "from it, or delete that folder to start over",
            what,
            folder,
        )
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def write_manifest(
    folder: str | Path,
    stage: str,
    inputs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``manifest.json`` describing a finished stage artifact."""
    man = {
        "stage": stage,
        "magic_unlearn_version": magic_unlearn.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": inputs or {},
        "status": "complete",
        **(extra or {}),
    }
    atomic_write_json(Path(folder) / "manifest.json", man)
    return man


def read_manifest(folder: str | Path, stage: str | None = None) -> dict[str, Any]:
    """Read a stage manifest, checking the stage name if given."""
    path = Path(folder) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{folder} is not a magic-unlearn artifact (no manifest.json); "
            f"create it with the matching `magic-unlearn` stage command"
        )
    man = read_json(path)
    if stage is not None and man.get("stage") != stage:
        raise ValueError(f"{folder} holds a '{man.get('stage')}' artifact, expected '{stage}'")
    return man
