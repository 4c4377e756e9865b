"""Sweeps: a YAML grid over any run-config field, one deterministic run folder per point.

Grid file::

    name: "{unlearn.method}-lr{unlearn.lr}"   # optional; {dotted.key} placeholders
    base:                                     # a RunConfig (pipeline/runs.py)
      world: runs/demo/world
      model: runs/demo/models/base
      reference: runs/demo/models/filtered
      unlearn: {method: ga, steps: 20}
      tamper: {suite: quick}
    grid:                                     # dotted keys; each list is an axis (product)
      unlearn.method: [ga, rmu]
      unlearn.lr: [1.0e-4, 3.0e-4]
    points:                                   # optional explicit points, crossed with the grid
      - {unlearn.method: rr, name: rr-default}
    slurm: {partition: gpu, timeout_min: 120, gpus_per_node: 1}   # submitit parameters
    vars: runs/demo/vars.yaml                 # optional: {name} placeholders for strings
                                              # (a mapping, or a YAML file such as the one
                                              # `magic-unlearn demo` writes: world, base,
                                              # filtered, scores.magic, base_curves, ...)

To sweep a field whose value is itself a list, give a list of lists. Relative ``world`` /
``model`` / ``reference`` / ``base`` paths are resolved against the current directory.

Executors: ``local`` (one process per run, ``workers`` at a time; a worker that dies is recorded
failed and retried ``retries`` times), ``inline`` (this process, serially), ``slurm`` and
``submitit-local`` (submitit; the driver alone writes the store, since SQLite's WAL mode is unsafe
on the network file systems clusters share). A rerun of the same grid skips complete points and
resumes unfinished ones at their first unfinished stage.
"""

from __future__ import annotations

import copy
import itertools
import logging
import multiprocessing as mp
import re
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

import yaml

from magic_unlearn.config import ConfigError
from magic_unlearn.io import atomic_write_json, atomic_write_text, bytes_hash
from magic_unlearn.pipeline.runs import (
    RunSpec,
    StageRegistry,
    execute_run,
    is_complete,
    make_spec,
    validate_spec,
)
from magic_unlearn.pipeline.store import ResultsStore

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "inline", "slurm", "submitit-local")
_PATH_FIELDS = ("world", "model", "reference", "base")
_GRID_KEYS = {"name", "base", "grid", "points", "slurm", "kind", "vars"}


@dataclass
class Grid:
    """A parsed grid file."""

    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    name: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    source: str = "<grid>"


def set_dotted(d: dict[str, Any], key: str, value: Any, source: str = "<grid>") -> None:
    """``d['a']['b'] = value`` for ``key='a.b'``, creating sections."""
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: key {key!r}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def get_dotted(d: Mapping[str, Any], key: str) -> Any:
    node: Any = d
    for p in key.split("."):
        if not isinstance(node, Mapping) or p not in node:
            raise KeyError(key)
        node = node[p]
    return node


def parse_grid(data: Mapping[str, Any], source: str = "<grid>") -> Grid:
    """Validate a grid mapping (see module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: top level must be a mapping with 'base:' and 'grid:'")
    unknown = sorted(set(data) - _GRID_KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {unknown}; valid keys are "
            f"{sorted(_GRID_KEYS)} (put run fields under 'base:', axes under "
            f"'grid:')"
        )
    base = dict(data.get("base") or {})
    if "kind" in data:
        base.setdefault("kind", data["kind"])
    axes = data.get("grid") or {}
    if not isinstance(axes, Mapping):
        raise ConfigError(f"{source}: 'grid' must map dotted keys to lists of values")
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(
                f"{source}: grid axis {k!r} must be a non-empty list, got {v!r} "
                f"(a single value belongs under 'base:')"
            )
    points = data.get("points") or []
    if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
        raise ConfigError(f"{source}: 'points' must be a list of mappings of dotted keys")
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, Mapping):
        raise ConfigError(f"{source}: 'slurm' must be a mapping of submitit parameters")
    name = data.get("name")
    variables = _load_vars(data.get("vars"), source)
    if variables:
        base = fill_vars(base, variables, source)
        axes = fill_vars(dict(axes), variables, source)
        points = fill_vars(points, variables, source)
    return Grid(
        base=base,
        axes={str(k): list(v) for k, v in axes.items()},
        points=[dict(p) for p in points],
        name=name,
        slurm=dict(slurm),
        source=source,
    )


def _load_vars(spec: Any, source: str) -> dict[str, str]:
    if spec is None:
        return {}
    if isinstance(spec, str):
        p = Path(spec)
        if not p.exists():
            raise ConfigError(
                f"{source}: vars file {p} does not exist (run `magic-unlearn "
                f"demo` first, or give vars as a mapping)"
            )
        spec = yaml.safe_load(p.read_text()) or {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{source}: 'vars' must be a mapping or the path of a YAML mapping")
    return {str(k): str(v) for k, v in spec.items()}


def fill_vars(obj: Any, variables: Mapping[str, str], source: str = "<grid>") -> Any:
    """Replace ``{name}`` in every string of a nested structure by ``variables[name]``
    (names may contain dots, e.g. ``{scores.magic}``); unknown names raise ConfigError."""
    if isinstance(obj, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in variables:
                raise ConfigError(
                    f"{source}: unknown placeholder {{{m.group(1)}}}; known: {sorted(variables)}"
                )
            return variables[m.group(1)]

        return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}", sub, obj)
    if isinstance(obj, list):
        return [fill_vars(v, variables, source) for v in obj]
    if isinstance(obj, Mapping):
        return {k: fill_vars(v, variables, source) for k, v in obj.items()}
    return obj


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"grid file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_grid(data or {}, source=str(path))


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt_value(x) for x in v)
    return str(v)


def _render_name(template: str, cfg: Mapping[str, Any], source: str) -> str:
    def sub(m: re.Match[str]) -> str:
        try:
            return _fmt_value(get_dotted(cfg, m.group(1)))
        except KeyError:
            raise ConfigError(
                f"{source}: name template {template!r} uses {{{m.group(1)}}}, "
                f"which this point does not set"
            ) from None

    return re.sub(r"\{([A-Za-z0-9_.]+)\}", sub, template)


def expand(grid: Grid, stages: StageRegistry | None = None) -> list[RunSpec]:
    """All points of the grid as run specs (deduplicated, in grid order), validated."""
    keys = list(grid.axes)
    specs: dict[str, RunSpec] = {}
    for pi, point in enumerate(grid.points or [{}]):
        for combo in itertools.product(*(grid.axes[k] for k in keys)):
            cfg = copy.deepcopy(grid.base)
            chosen: dict[str, Any] = {}
            for k, v in point.items():
                set_dotted(cfg, k, v, grid.source)
                if k != "name":
                    chosen[k] = v
            for k, v in zip(keys, combo, strict=True):
                set_dotted(cfg, k, v, grid.source)
                chosen[k] = v
            where = f"{grid.source}: point {len(specs) + 1}" + (
                f" (points[{pi}])" if grid.points else ""
            )
            if "name" not in point:
                if grid.name:
                    cfg["name"] = _render_name(grid.name, cfg, grid.source)
                elif chosen:
                    cfg["name"] = "_".join(
                        f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in chosen.items()
                    )
            for pf in _PATH_FIELDS:
                if cfg.get(pf):
                    cfg[pf] = str(Path(cfg[pf]).expanduser().absolute())
            spec = make_spec(cfg, source=where)
            if stages is not None:
                validate_spec(spec, stages, source=where)
            specs.setdefault(spec.run_id, spec)
    return list(specs.values())


@dataclass
class SweepResult:
    """Outcome of :func:`run_sweep`: run ids by final status."""

    out: Path
    complete: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def _worker(
    spec: RunSpec, root: str, stages: StageRegistry, reclaim: bool, threads: int | None = None
) -> None:
    """Entry point of a local worker process: run one point, exit non-zero on failure."""
    if threads is not None:
        # a spawned interpreter starts with torch's default thread count (every core); workers
        # sharing a few cores run best on one thread each
        import torch

        torch.set_num_threads(threads)
    store = ResultsStore(root)
    try:
        status = execute_run(spec, root, stages, store=store, reclaim=reclaim)
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None
    raise SystemExit(0 if status in ("complete", "skipped") else 3)


def _submitit_job(spec: RunSpec, root: str, stages: StageRegistry) -> str:
    """Entry point of a submitit job: build the folder only; the driver records it."""
    return execute_run(spec, root, stages, store=None)


def _run_local(
    pending: list[RunSpec],
    root: Path,
    stages: StageRegistry,
    store: ResultsStore,
    workers: int,
    retries: int,
    reclaim: bool,
    res: SweepResult,
    log: Callable[[str], None],
    start_method: str,
    threads: int | None = None,
) -> None:
    ctx = mp.get_context(start_method)
    queue = [(s, 0) for s in pending]
    active: dict[int, tuple[Any, RunSpec, int]] = {}
    try:
        while queue or active:
            while queue and len(active) < max(1, workers):
                spec, attempt = queue.pop(0)
                p = ctx.Process(
                    target=_worker,
                    args=(spec, str(root), stages, reclaim, threads),
                    name=f"sweep-{spec.name}",
                )
                p.start()
                active[p.sentinel] = (p, spec, attempt)
                log(f"started {spec.run_id} (pid {p.pid}, attempt {attempt + 1})")
            for sentinel in mp_wait(list(active), timeout=1.0):
                p, spec, attempt = active.pop(sentinel)  # type: ignore[index]
                p.join()
                rec = store.get(spec.run_id)
                if is_complete(spec.folder(root)):
                    if rec is None or rec.status != "complete":  # died after the rename
                        store.record_folder(spec.folder(root))
                    res.complete.append(spec.run_id)
                    log(f"complete {spec.run_id}")
                    continue
                if rec is not None and rec.status == "running" and rec.pid == p.pid:
                    store.fail(
                        spec.run_id,
                        f"worker process {p.pid} died (exit code {p.exitcode})",
                        only_pid=p.pid,
                    )
                    rec = store.get(spec.run_id)
                if p.exitcode == 3 or (rec is not None and rec.status == "running"):
                    res.failed[spec.run_id] = "owned by another live worker"
                    log(f"busy {spec.run_id}: another worker owns it")
                    continue
                err = (
                    (rec.error if rec is not None and rec.error else f"exit code {p.exitcode}")
                    .strip()
                    .splitlines()[0]
                )
                if attempt < retries:
                    log(f"failed {spec.run_id} ({err}); retrying")
                    queue.append((spec, attempt + 1))
                else:
                    res.failed[spec.run_id] = err
                    log(f"failed {spec.run_id}: {err}")
    except BaseException:
        for p, spec, _ in active.values():
            p.terminate()
            p.join(5)
            store.fail(spec.run_id, "sweep interrupted", only_pid=p.pid)
        raise


def _run_submitit(
    pending: list[RunSpec],
    root: Path,
    stages: StageRegistry,
    store: ResultsStore,
    executor: str,
    slurm: dict[str, Any],
    res: SweepResult,
    log: Callable[[str], None],
) -> None:
    try:  # optional (the `slurm` extra); only these executors need it
        import submitit
    except ImportError as e:
        raise ImportError(
            "the slurm executor needs submitit: pip install 'magic-unlearn[slurm]'"
        ) from e
    folder = root / "submitit" / "%j"
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    else:
        ex = submitit.LocalExecutor(folder=folder)
    params = dict(slurm)
    params.setdefault("timeout_min", 60 * 24)
    ex.update_parameters(**params)
    jobs = []
    for spec in pending:
        job = ex.submit(_submitit_job, spec, str(root), stages)
        store.claim(
            spec.run_id,
            spec.kind,
            spec.name,
            spec.hash,
            spec.folder(root),
            spec.config_dict(),
            pid=0,
            host=f"submitit:{job.job_id}",
            reclaim=True,
        )
        jobs.append((job, spec))
        log(f"submitted {spec.run_id} as job {job.job_id}")
    # the driver keeps the rows of pending jobs alive (workers do not write the store here)
    waiting = list(jobs)
    last_beat = time.time()
    while any(not j.done() for j, _ in waiting):
        time.sleep(0.5)
        if time.time() - last_beat > 30:
            for j, spec in waiting:
                if not j.done():
                    store.heartbeat(spec.run_id)
            last_beat = time.time()
    for job, spec in jobs:
        try:
            job.result()
        except Exception as e:  # the job's exception, re-raised by submitit
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            errs = [ln for ln in lines if re.match(r"^[A-Za-z_.]+(Error|Exception|Exit)\b", ln)]
            err = (errs or lines or [type(e).__name__])[-1]
            store.fail(spec.run_id, f"job {job.job_id} failed: {e}")
            res.failed[spec.run_id] = err
            log(f"failed {spec.run_id}: {err}")
            continue
        store.record_folder(spec.folder(root))
        res.complete.append(spec.run_id)
        log(f"complete {spec.run_id}")


def run_sweep(
    grid: Grid | str | Path,
    out: str | Path,
    stages: StageRegistry | None = None,
    workers: int = 1,
    executor: str = "local",
    retries: int = 0,
    reclaim: bool = False,
    log: Callable[[str], None] | None = None,
    start_method: str = "spawn",
) -> SweepResult:
    """Run every point of a grid that is not complete yet.

    Args:
        grid: a :class:`Grid` or a grid YAML path.
        out: results directory (store + ``runs/``).
        stages: stage registry (default: the real stages, ``pipeline.stages.STAGES``).
        workers: parallel worker processes (``local`` executor).
        executor: one of ``local``, ``inline``, ``slurm``, ``submitit-local``.
        retries: how many times a failed point is retried within this call.
        reclaim: take over points marked running by a worker that looks alive.
        log: progress callback (``None``: the module's logger, at INFO).
        start_method: multiprocessing start method of local workers (``spawn`` is safe with
            torch threads in the driver).

    Returns:
        The run ids by outcome; ``result.ok`` is False if any point failed.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
    stages = _default_stages(stages)
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    root = Path(out).absolute()
    specs = expand(grid, stages)
    atomic_write_json(
        root / "sweeps" / f"{_grid_id(specs)}.json",
        {
            "source": grid.source,
            "runs": [s.run_id for s in specs],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    atomic_write_text(
        root / "sweeps" / f"{_grid_id(specs)}.yaml",
        yaml.safe_dump(
            {
                "name": grid.name,
                "base": grid.base,
                "grid": grid.axes,
                "points": grid.points,
                "slurm": grid.slurm,
            },
            sort_keys=False,
        ),
    )
    return run_specs(
        specs,
        root,
        stages,
        workers=workers,
        executor=executor,
        retries=retries,
        reclaim=reclaim,
        log=log,
        start_method=start_method,
        slurm=grid.slurm,
        source=grid.source,
    )


def _default_stages(stages: StageRegistry | None) -> StageRegistry:
    if stages is not None:
        return stages
    # imported here, not at the top: the real stages import torch and every stage package,
    # which sweep workers running their own stage registry (tests, user stages) never need
    from magic_unlearn.pipeline.stages import STAGES

    return STAGES


def run_specs(
    specs: list[RunSpec],
    out: str | Path,
    stages: StageRegistry | None = None,
    *,
    workers: int = 1,
    executor: str = "local",
    retries: int = 0,
    reclaim: bool = False,
    log: Callable[[str], None] | None = None,
    start_method: str = "spawn",
    slurm: dict[str, Any] | None = None,
    threads: int | None = None,
    source: str = "run specs",
) -> SweepResult:
    """Run every spec that is not complete yet (the engine of :func:`run_sweep`, for callers
    that build their specs themselves, such as the study).

    Args:
        specs: the runs (independent of each other: they may run in any order, in parallel).
        out: results directory.
        stages, workers, executor, retries, reclaim, log, start_method: as in
            :func:`run_sweep`.
        slurm: submitit parameters (``slurm`` / ``submitit-local`` executors).
        threads: torch threads of each ``local`` worker process (None: torch's default).
        source: what the specs came from, for the log.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
    stages = _default_stages(stages)
    say = log if log is not None else logger.info
    root = Path(out).absolute()
    store = ResultsStore(root)
    n = store.reindex()
    if n:
        say(f"recovered {n} complete run folder(s) into the store")
    res = SweepResult(out=root)
    pending = []
    for s in specs:
        if is_complete(s.folder(root)):
            res.skipped.append(s.run_id)
        else:
            pending.append(s)
    say(
        f"sweep {source}: {len(specs)} point(s), {len(res.skipped)} already complete, "
        f"{len(pending)} to run ({executor}, {workers} worker(s))"
    )
    if executor == "inline":
        for spec in pending:
            for attempt in range(retries + 1):
                try:
                    status = execute_run(spec, root, stages, store=store, reclaim=reclaim, log=say)
                except Exception as e:
                    if attempt < retries:
                        say(f"failed {spec.run_id} ({e}); retrying")
                        continue
                    res.failed[spec.run_id] = f"{type(e).__name__}: {e}"
                    say(f"failed {spec.run_id}: {e}")
                    break
                if status == "busy":
                    res.failed[spec.run_id] = "owned by another live worker"
                else:
                    res.complete.append(spec.run_id)
                break
    elif executor == "local":
        _run_local(
            pending, root, stages, store, workers, retries, reclaim, res, say, start_method, threads
        )
    else:
        _run_submitit(pending, root, stages, store, executor, slurm or {}, res, say)
    say(
        f"sweep done: {len(res.complete)} ran, {len(res.skipped)} skipped, {len(res.failed)} failed"
    )
    return res


def _grid_id(specs: list[RunSpec]) -> str:
    return bytes_hash("\n".join(s.run_id for s in specs).encode(), 12)
