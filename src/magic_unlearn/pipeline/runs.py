"""Run folders: one deterministic folder per run config, built stage by stage, renamed when done.

Layout under a results directory ``ROOT``::

    ROOT/results.sqlite                       the store (store.py)
    ROOT/runs/<kind>/<name>-<hash>/           a complete run (only ever appears whole)
        config.yaml                           resolved RunConfig
        manifest.json                         run id, kind, hash, stages, artifacts, status
        metrics.json                          {"summary": {...}, "stages": {...}, "seconds": {...}}
        <stage>/stage.json                    that stage's metrics + artifacts (relative paths)
        <stage>/...                           that stage's own outputs (model folder, curves, ...)
    ROOT/runs/<kind>/.<name>-<hash>.work/     a run in progress; finished stages survive a crash

``<hash>`` is ``config_hash`` of the resolved config without its ``name``, so the same point of a
grid always maps to the same folder (skip if complete, resume if not). Each stage is built with
``atomic_dir`` inside the work folder, so a killed run resumes at its first unfinished stage; the
work folder is renamed to the final name only after the run-level files are written.

A stage is a function ``(ctx: RunContext, out: Path) -> StageResult`` registered by name in a
stage registry (``pipeline.stages.STAGES`` for the real ones; tests inject fakes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic_unlearn.config import ConfigError, config_hash, from_dict, save_config, to_dict
from magic_unlearn.io import (
    atomic_dir,
    atomic_write_json,
    discard_unless_resumable,
    read_json,
    write_manifest,
)
from magic_unlearn.pipeline.store import ResultsStore

logger = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """One pipeline run: starting model -> stages (default unlearn, eval, tamper).

    Stage sections are plain mappings handed to the stage, which builds its own typed config
    from them (so every stage field can be swept with a dotted key, e.g. ``unlearn.lr``).

    Attributes:
        name: human-readable name; the folder is ``<name>-<hash>`` (name not hashed).
        kind: folder group and report section, e.g. ``unlearn`` or ``reference``.
        stages: stage names, run in order.
        world: world folder (question sets, corpora, tokenizer).
        model: starting model folder (the base model for unlearning runs).
        reference: the filtered model: tamper verdicts compare against its attack curves.
        base: the base model, drawn next to the curves.
        label: table row label (defaults to the method name).
        data: what the method was trained on, for the results table (defaults from the
            unlearn section).
        device: torch device for every stage.
        seed: seed handed to every stage.
        unlearn: fields of the unlearn stage config.
        eval: fields of the eval stage (tasks, fmt, limit).
        tamper: fields of the tamper stage (suite and attack overrides).
        params: fields of the other stages (``world``, ``pretrain``, ``attribute``,
            ``analyze``), keyed by stage name.
    """

    name: str = "run"
    kind: str = "unlearn"
    stages: list[str] = field(default_factory=lambda: ["unlearn", "eval", "tamper"])
    world: str = ""
    model: str = ""
    reference: str = ""
    base: str = ""
    label: str = ""
    data: str = ""
    device: str = "cpu"
    seed: int = 0
    unlearn: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    tamper: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    """What a stage hands back: flat metrics, artifact paths relative to its output folder, and
    ``summary`` entries promoted to the run's results-table summary (e.g. ``hazard_acc``)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


StageFn = Callable[["RunContext", Path], StageResult]


@dataclass
class Stage:
    """A registered stage: ``run(ctx, out)``; ``validate(section)`` checks its config section
    early (at sweep expansion, before any job starts) and raises ConfigError on bad fields."""

    name: str
    run: StageFn
    validate: Callable[[dict[str, Any]], None] | None = None


StageRegistry = Mapping[str, Stage]


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("._") or "run"
    return name[:80]


@dataclass
class RunSpec:
    """A resolved run: where it lives and what it computes."""

    config: RunConfig

    @property
    def kind(self) -> str:
        return _safe_name(self.config.kind)

    @property
    def name(self) -> str:
        return _safe_name(self.config.name)

    @property
    def hash(self) -> str:
        return config_hash(self.config, exclude=("name",))

    @property
    def run_id(self) -> str:
        return f"{self.kind}/{self.name}-{self.hash}"

    def folder(self, root: str | Path) -> Path:
        return Path(root) / "runs" / self.kind / f"{self.name}-{self.hash}"

    def work_folder(self, root: str | Path) -> Path:
        return Path(root) / "runs" / self.kind / f".{self.name}-{self.hash}.work"

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)


def make_spec(cfg: RunConfig | Mapping[str, Any], source: str = "<run config>") -> RunSpec:
    """Build a :class:`RunSpec`, validating fields (unknown keys raise ConfigError)."""
    if not isinstance(cfg, RunConfig):
        cfg = from_dict(RunConfig, dict(cfg), source=source)
    if not isinstance(cfg.stages, list) or not all(isinstance(s, str) for s in cfg.stages):
        raise ConfigError(f"{source}: field 'stages' must be a list of stage names")
    for sec in ("unlearn", "eval", "tamper", "params"):
        if not isinstance(getattr(cfg, sec), dict):
            raise ConfigError(f"{source}: field '{sec}' must be a mapping of field: value")
    return RunSpec(cfg)


def validate_spec(spec: RunSpec, stages: StageRegistry, source: str = "<run config>") -> None:
    """Check the stage names and let each stage validate its section."""
    for s in spec.config.stages:
        if s not in stages:
            raise ConfigError(
                f"{source}: unknown stage {s!r} in 'stages'; available: {sorted(stages)}"
            )
        st = stages[s]
        if st.validate is not None:
            section = (
                getattr(spec.config, s, None)
                if s in ("unlearn", "eval", "tamper")
                else spec.config.params.get(s, {})
            )
            try:
                st.validate(section if isinstance(section, dict) else {})
            except ConfigError as e:
                raise ConfigError(f"{source}: section '{s}': {e}") from e


def is_complete(folder: Path) -> bool:
    """True if ``folder`` is a finished run folder."""
    man = folder / "manifest.json"
    if not man.exists():
        return False
    try:
        return read_json(man).get("status") == "complete"
    except ValueError:
        return False


@dataclass
class RunContext:
    """What a stage sees: the run config, its folders, the results of earlier stages, and
    whether to draw progress bars."""

    spec: RunSpec
    root: Path
    work: Path
    results: dict[str, StageResult] = field(default_factory=dict)
    progress: bool = True

    @property
    def config(self) -> RunConfig:
        return self.spec.config

    def section(self, stage: str) -> dict[str, Any]:
        """The config section of ``stage`` (``unlearn``/``eval``/``tamper`` fields, else
        ``params[stage]``)."""
        if stage in ("unlearn", "eval", "tamper"):
            return dict(getattr(self.config, stage))
        return dict(self.config.params.get(stage) or {})

    def artifact(self, stage: str, key: str) -> Path:
        """Absolute path (in the work folder) of an earlier stage's artifact."""
        if stage not in self.results:
            raise KeyError(
                f"stage {stage!r} has not run before this one in run "
                f"{self.spec.run_id} (stages: {self.config.stages})"
            )
        arts = self.results[stage].artifacts
        if key not in arts:
            raise KeyError(f"stage {stage!r} has no artifact {key!r}; it has {sorted(arts)}")
        return self.work / stage / arts[key]

    def scratch(self, name: str) -> Path:
        """A folder that survives a crash of this run (for a stage's own checkpoints and resume
        state) and is deleted when the run completes."""
        p = self.work / ".scratch" / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def current_model(self) -> str:
        """The model the next stage should use: the last stage output ``model``, else the
        starting model."""
        for s in reversed(list(self.results)):
            if "model" in self.results[s].artifacts:
                return str(self.artifact(s, "model"))
        return self.config.model


class _Heartbeat:
    """Background thread refreshing a running row so other hosts do not reclaim it."""

    def __init__(self, store: ResultsStore, run_id: str, every_s: float = 30.0):
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, args=(store, run_id, every_s), daemon=True)

    def _loop(self, store: ResultsStore, run_id: str, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                store.heartbeat(run_id)
            except Exception:  # a busy or vanished store must not kill the run
                pass

    def __enter__(self) -> _Heartbeat:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


def _summary(results: Mapping[str, StageResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results.values():
        out.update(r.summary)
    return out


def run_metrics(results: Mapping[str, StageResult], seconds: Mapping[str, float]) -> dict[str, Any]:
    return {
        "summary": _summary(results),
        "stages": {k: r.metrics for k, r in results.items()},
        "seconds": dict(seconds),
    }


def run_artifacts(results: Mapping[str, StageResult]) -> dict[str, str]:
    return {f"{s}.{k}": f"{s}/{v}" for s, r in results.items() for k, v in r.artifacts.items()}


def execute_run(
    spec: RunSpec,
    root: str | Path,
    stages: StageRegistry,
    store: ResultsStore | None = None,
    reclaim: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> str:
    """Run one point: claim it, run its stages into the work folder, rename, record.

    Args:
        spec: the run.
        root: results directory.
        stages: stage registry.
        store: the results store to record into; ``None`` when the caller records (Slurm).
        reclaim: take the run over even if a live-looking worker holds it.
        log: progress callback (default: the module's logger, at DEBUG).
        progress: let the stages draw progress bars.

    Returns:
        ``"complete"`` (ran now), ``"skipped"`` (already complete), ``"busy"`` (another live
        worker owns it). A failing stage records ``failed`` and re-raises.
    """
    say = log if log is not None else logger.debug
    root = Path(root)
    final, work = spec.folder(root), spec.work_folder(root)
    cfg = spec.config_dict()
    if is_complete(final):
        if store is not None:
            store.record_folder(final)
        return "skipped"
    if store is not None and not store.claim(
        spec.run_id, spec.kind, spec.name, spec.hash, final, cfg, reclaim=reclaim
    ):
        rec = store.get(spec.run_id)
        return "skipped" if rec is not None and rec.status == "complete" else "busy"
    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    for junk in work.glob(".*.partial"):  # temp folders of a stage killed mid-write
        shutil.rmtree(junk, ignore_errors=True)
    ctx = RunContext(spec=spec, root=root, work=work, progress=progress)
    seconds: dict[str, float] = {}
    hb = _Heartbeat(store, spec.run_id) if store is not None else None
    try:
        if hb is not None:
            hb.__enter__()
        for name in spec.config.stages:
            sdir = work / name
            if (sdir / "stage.json").exists():  # finished before an interruption
                d = read_json(sdir / "stage.json")
                ctx.results[name] = StageResult(
                    d.get("metrics", {}), d.get("artifacts", {}), d.get("summary", {})
                )
                seconds[name] = float(d.get("seconds", 0.0))
                say(f"{spec.run_id}: stage {name} already done")
                continue
            if name not in stages:
                raise ConfigError(
                    f"run {spec.run_id}: unknown stage {name!r}; available: {sorted(stages)}"
                )
            say(f"{spec.run_id}: stage {name}")
            t0 = time.time()
            with atomic_dir(sdir, overwrite=True) as tmp:
                res = stages[name].run(ctx, tmp)
                if not isinstance(res, StageResult):
                    raise TypeError(
                        f"stage {name!r} returned {type(res).__name__}, expected StageResult"
                    )
                seconds[name] = time.time() - t0
                atomic_write_json(
                    tmp / "stage.json", {**dataclasses.asdict(res), "seconds": seconds[name]}
                )
            ctx.results[name] = res
        metrics = run_metrics(ctx.results, seconds)
        artifacts = run_artifacts(ctx.results)
        save_config(spec.config, work / "config.yaml")
        atomic_write_json(work / "metrics.json", metrics)
        write_manifest(
            work,
            "run",
            inputs={"model": spec.config.model, "world": spec.config.world},
            extra={
                "run_id": spec.run_id,
                "kind": spec.kind,
                "name": spec.name,
                "config_hash": spec.hash,
                "config": cfg,
                "stages": spec.config.stages,
                "artifacts": artifacts,
                "started": started,
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
        )
        shutil.rmtree(work / ".scratch", ignore_errors=True)
        if final.exists():  # an incomplete leftover under the final name (never ours)
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException as e:
        # kept when a stage finished or left a checkpoint (a rerun resumes there), else removed
        discard_unless_resumable(work, ("stage.json", "state.json"), what=f"run {spec.run_id}")
        if store is not None:
            store.fail(
                spec.run_id,
                "".join(traceback.format_exception_only(type(e), e)).strip()
                + "\n"
                + traceback.format_exc(limit=8),
            )
        raise
    finally:
        if hb is not None:
            hb.__exit__()
    if store is not None:
        store.complete(
            spec.run_id,
            spec.kind,
            spec.name,
            spec.hash,
            final,
            cfg,
            metrics,
            artifacts,
            started=started,
        )
    return "complete"
