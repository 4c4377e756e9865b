"""Results store: an SQLite index of every run folder under a results directory.

The run *folder* is the source of truth; the database is an index over folders that ``sweep``,
``demo`` and ``report`` query. A run is recorded ``complete`` only after its folder has been
renamed into place (``magic_unlearn.io`` style atomic rename), so a worker that dies at any moment
leaves either no folder (row ``running`` with a dead owner, later reclaimed, or ``failed``) or a
complete folder that :meth:`ResultsStore.reindex` records on the next start. Nothing is ever
half-recorded.

Concurrency: every operation opens its own connection (safe across ``fork``/``spawn`` and
Slurm jobs), the database runs in WAL mode with a busy timeout, and a claim is a single
``BEGIN IMMEDIATE`` transaction, so several worker processes can start, finish and fail runs at
the same time without losing rows. WAL needs a local file system: on NFS (typical for Slurm) the
sweep driver alone writes the store (see ``sweep.py``).

Schema (table ``runs``, one row per run id ``<kind>/<name>-<hash>``): kind, name, config_hash,
folder (relative to the store's directory), status (running|complete|failed), config / metrics /
artifacts (JSON), error, host, pid, attempts, created / started / finished / heartbeat (unix time).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic_unlearn.io import read_json

SCHEMA_VERSION = 1
STATUSES = ("running", "complete", "failed")
DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    folder      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    config      TEXT NOT NULL DEFAULT '{}',
    metrics     TEXT NOT NULL DEFAULT '{}',
    artifacts   TEXT NOT NULL DEFAULT '{}',
    error       TEXT,
    host        TEXT,
    pid         INTEGER,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created     REAL NOT NULL,
    started     REAL,
    finished    REAL,
    heartbeat   REAL
);
CREATE INDEX IF NOT EXISTS runs_kind_status ON runs (kind, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class RunRecord:
    """One row of the store; ``folder`` is absolute (resolved against the store's directory)."""

    run_id: str
    kind: str
    name: str
    config_hash: str
    folder: Path
    status: str
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    host: str | None = None
    pid: int | None = None
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None

    def artifact(self, key: str) -> Path:
        """Absolute path of an artifact recorded relative to the run folder."""
        if key not in self.artifacts:
            raise KeyError(
                f"run {self.run_id} has no artifact {key!r}; it has {sorted(self.artifacts)}"
            )
        return self.folder / self.artifacts[key]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class ResultsStore:
    """SQLite index of run folders (see module docstring for the guarantees).

    Args:
        path: the database file, or a results directory (then ``<dir>/results.sqlite``).
        lease_s: a ``running`` row owned by another host counts as abandoned when its heartbeat
            is older than this; on this host the owner's pid is checked instead.
        timeout_s: how long a writer waits for the database lock.
    """

    def __init__(self, path: str | Path, lease_s: float = 900.0, timeout_s: float = 120.0):
        path = Path(path)
        if path.suffix != ".sqlite" and (path.is_dir() or not path.suffix):
            path = path / DB_NAME
        self.path = path
        self.root = path.parent
        self.lease_s = lease_s
        self.timeout_s = timeout_s
        self.root.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            con.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
        finally:
            con.close()
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: store schema version {row[0]}, this version of "
                    f"magic-unlearn reads {SCHEMA_VERSION}; use a new --out folder"
                )

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        except sqlite3.Error as e:
            raise RuntimeError(f"cannot open results store {self.path}: {e}") from e
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with BEGIN IMMEDIATE so a read-then-write is atomic."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _rel(self, folder: str | Path) -> str:
        folder = Path(folder).absolute()
        try:
            return str(folder.relative_to(self.root.absolute()))
        except ValueError:
            return str(folder)

    def _record(self, row: sqlite3.Row) -> RunRecord:
        d = dict(row)
        for k in ("config", "metrics", "artifacts"):
            d[k] = json.loads(d[k] or "{}")
        folder = Path(d.pop("folder"))
        d["folder"] = folder if folder.is_absolute() else self.root / folder
        return RunRecord(**d)

    # -- writes -------------------------------------------------------------------------------
    def _owner_alive(self, row: sqlite3.Row, now: float) -> bool:
        if row["host"] == socket.gethostname() and row["pid"]:
            return row["pid"] != os.getpid() and _pid_alive(int(row["pid"]))
        return (now - (row["heartbeat"] or row["started"] or 0.0)) < self.lease_s

    def claim(
        self,
        run_id: str,
        kind: str,
        name: str,
        config_hash: str,
        folder: str | Path,
        config: dict[str, Any],
        pid: int | None = None,
        host: str | None = None,
        reclaim: bool = False,
    ) -> bool:
        """Mark a run ``running`` for this worker unless it is complete or owned by a live worker.

        Returns:
            True if the caller now owns the run and should execute it.
        """
        now = time.time()
        with self._tx() as con:
            row = con.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is not None:
                if row["status"] == "complete" and (Path(folder) / "manifest.json").exists():
                    return False
                if row["status"] == "running" and not reclaim and self._owner_alive(row, now):
                    return False
            con.execute(
                """INSERT INTO runs (run_id, kind, name, config_hash, folder, status, config,
                       host, pid, attempts, created, started, heartbeat)
                   VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, 1, ?, ?, ?)
                   ON CONFLICT(run_id) DO UPDATE SET status='running', config=excluded.config,
                       folder=excluded.folder, host=excluded.host, pid=excluded.pid,
                       attempts=runs.attempts + 1, started=excluded.started,
                       heartbeat=excluded.heartbeat, error=NULL, finished=NULL""",
                (
                    run_id,
                    kind,
                    name,
                    config_hash,
                    self._rel(folder),
                    json.dumps(config, default=str),
                    host or socket.gethostname(),
                    pid if pid is not None else os.getpid(),
                    now,
                    now,
                    now,
                ),
            )
        return True

    def heartbeat(self, run_id: str) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE runs SET heartbeat=? WHERE run_id=? AND status='running'",
                (time.time(), run_id),
            )

    def complete(
        self,
        run_id: str,
        kind: str,
        name: str,
        config_hash: str,
        folder: str | Path,
        config: dict[str, Any],
        metrics: dict[str, Any],
        artifacts: dict[str, str] | None = None,
        started: float | None = None,
    ) -> None:
        """Record a finished run. Call only once its folder is in place (renamed atomically)."""
        now = time.time()
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"refusing to record {run_id} complete: {folder} is missing")
        with self._tx() as con:
            con.execute(
                """INSERT INTO runs (run_id, kind, name, config_hash, folder, status, config,
                       metrics, artifacts, host, pid, attempts, created, started, finished)
                   VALUES (?, ?, ?, ?, ?, 'complete', ?, ?, ?, ?, ?, 1, ?, ?, ?)
                   ON CONFLICT(run_id) DO UPDATE SET status='complete', folder=excluded.folder,
                       config=excluded.config, metrics=excluded.metrics,
                       artifacts=excluded.artifacts, finished=excluded.finished, error=NULL,
                       started=COALESCE(runs.started, excluded.started)""",
                (
                    run_id,
                    kind,
                    name,
                    config_hash,
                    self._rel(folder),
                    json.dumps(config, default=str),
                    json.dumps(metrics, default=str),
                    json.dumps(artifacts or {}, default=str),
                    socket.gethostname(),
                    os.getpid(),
                    now,
                    started or now,
                    now,
                ),
            )

    def fail(self, run_id: str, error: str, only_pid: int | None = None) -> bool:
        """Mark a run failed (unless it completed meanwhile).

        Args:
            only_pid: only if the row is still ``running`` and owned by this pid (used by the
                sweep driver after a worker process died).

        Returns:
            True if a row changed.
        """
        with self._tx() as con:
            if only_pid is not None:
                cur = con.execute(
                    """UPDATE runs SET status='failed', error=?, finished=?
                       WHERE run_id=? AND status='running' AND pid=?""",
                    (error, time.time(), run_id, only_pid),
                )
            else:
                cur = con.execute(
                    """UPDATE runs SET status='failed', error=?, finished=?
                       WHERE run_id=? AND status!='complete'""",
                    (error, time.time(), run_id),
                )
            return cur.rowcount > 0

    def delete(self, run_id: str) -> None:
        with self._tx() as con:
            con.execute("DELETE FROM runs WHERE run_id=?", (run_id,))

    # -- reads --------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord | None:
        con = self._connect()
        try:
            row = con.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        finally:
            con.close()
        return self._record(row) if row is not None else None

    def runs(self, kind: str | None = None, status: str | None = None) -> list[RunRecord]:
        """All records, optionally filtered, ordered by creation time."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if kind is not None:
            q += " AND kind=?"
            args.append(kind)
        if status is not None:
            q += " AND status=?"
            args.append(status)
        con = self._connect()
        try:
            rows = con.execute(q + " ORDER BY created, run_id", args).fetchall()
        finally:
            con.close()
        return [self._record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        con = self._connect()
        try:
            rows = con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        finally:
            con.close()
        return {s: 0 for s in STATUSES} | {r[0]: r[1] for r in rows}

    # -- recovery -----------------------------------------------------------------------------
    def record_folder(self, folder: str | Path) -> RunRecord | None:
        """Index a complete run folder (manifest status complete); returns its record."""
        folder = Path(folder)
        man_path = folder / "manifest.json"
        if not man_path.exists():
            return None
        man = read_json(man_path)
        if man.get("status") != "complete" or "run_id" not in man:
            return None
        metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
        cur = self.get(man["run_id"])
        if (
            cur is not None
            and cur.status == "complete"
            and cur.folder.resolve() == folder.resolve()
        ):
            return cur
        self.complete(
            man["run_id"],
            man.get("kind", "run"),
            man.get("name", folder.name),
            man.get("config_hash", ""),
            folder,
            man.get("config", {}),
            metrics,
            man.get("artifacts", {}),
            started=man.get("started"),
        )
        return self.get(man["run_id"])

    def reindex(self, runs_dir: str | Path | None = None) -> int:
        """Record every complete run folder under ``runs_dir`` (default ``<root>/runs``).

        Recovers runs whose worker died after the folder rename but before the database commit,
        and drops complete rows whose folder no longer exists.

        Returns:
            How many folders were (re)recorded.
        """
        runs_dir = Path(runs_dir) if runs_dir is not None else self.root / "runs"
        n = 0
        known = {}
        for r in self.runs(status="complete"):
            if (r.folder / "manifest.json").exists():
                known[r.run_id] = r
            else:  # the folder was deleted: the index follows the folders
                self.delete(r.run_id)
        if not runs_dir.is_dir():
            return 0
        for man in sorted(runs_dir.glob("*/*/manifest.json")):
            if man.parent.name.startswith("."):
                continue
            try:
                run_id = read_json(man).get("run_id")
            except ValueError:
                continue
            if run_id in known and known[run_id].folder.resolve() == man.parent.resolve():
                continue
            if self.record_folder(man.parent) is not None:
                n += 1
        return n
