"""Pipeline infrastructure with fake stages: store, run folders, sweeps, resume after a kill.

The fake stages are module-level functions so spawned worker processes can import them.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from magic_unlearn.config import ConfigError
from magic_unlearn.pipeline import (
    ResultsStore,
    RunContext,
    Stage,
    StageResult,
    execute_run,
    expand,
    is_complete,
    make_spec,
    parse_grid,
    run_sweep,
)

_UNLEARN_FIELDS = {"method", "lr", "steps", "crash_once", "fail"}


def _validate_unlearn(section: dict) -> None:
    bad = sorted(set(section) - _UNLEARN_FIELDS)
    if bad:
        raise ConfigError(f"unknown field(s) {bad}")


def fake_unlearn(ctx: RunContext, out: Path) -> StageResult:
    u = ctx.config.unlearn
    (out / "model").mkdir()
    (out / "model" / "weights.json").write_text(json.dumps({"lr": u.get("lr", 0.0)}))
    if u.get("crash_once"):
        marker = ctx.root / "crash_markers" / ctx.spec.name
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("crashed once")
            os._exit(17)  # a worker killed mid-stage: no exception handler runs
    if u.get("fail"):
        raise RuntimeError("fake unlearning diverged")
    return StageResult(
        metrics={"forget_loss": 1.0 + u.get("lr", 0.0)},
        artifacts={"model": "model"},
        summary={"method": u.get("method", "?")},
    )


def fake_eval(ctx: RunContext, out: Path) -> StageResult:
    lr = json.loads((Path(ctx.current_model()) / "weights.json").read_text())["lr"]
    hz, gen = max(0.25, 0.95 - lr), 0.9 - lr / 10
    (out / "predictions.json").write_text("[]")
    return StageResult(
        metrics={"hazard_qa": {"acc": hz}, "general_qa": {"acc": gen}},
        artifacts={"predictions": "predictions.json"},
        summary={"hazard_acc": hz, "general_acc": gen},
    )


def fake_tamper(ctx: RunContext, out: Path) -> StageResult:
    hz = ctx.results["eval"].summary["hazard_acc"]
    curve = [{"step": s, "hazard_acc": min(0.95, hz + 0.1 * s)} for s in range(4)]
    (out / "curves.json").write_text(json.dumps({"standard": curve}))
    return StageResult(
        metrics={"max_hazard": curve[-1]["hazard_acc"]},
        artifacts={"curves": "curves.json"},
        summary={"tamper_verdict": "no" if hz < 0.5 else "yes"},
    )


FAKE_STAGES = {
    "unlearn": Stage("unlearn", fake_unlearn, _validate_unlearn),
    "eval": Stage("eval", fake_eval),
    "tamper": Stage("tamper", fake_tamper),
}


def _grid(**unlearn_extra) -> dict:
    return {
        "name": "{unlearn.method}-lr{unlearn.lr}",
        "base": {"model": "", "unlearn": {"steps": 3, **unlearn_extra}},
        "grid": {"unlearn.method": ["ga", "rmu"], "unlearn.lr": [0.1, 0.5]},
    }


def test_grid_expansion_is_deterministic_and_validated() -> None:
    g = parse_grid(_grid())
    specs = expand(g, FAKE_STAGES)
    assert [s.name for s in specs] == ["ga-lr0.1", "ga-lr0.5", "rmu-lr0.1", "rmu-lr0.5"]
    assert [s.run_id for s in expand(parse_grid(_grid()), FAKE_STAGES)] == [s.run_id for s in specs]
    assert len({s.hash for s in specs}) == 4
    # explicit points cross the grid; duplicates collapse to one folder
    g2 = parse_grid({**_grid(), "points": [{"unlearn.steps": 3}, {"unlearn.steps": 3}]})
    assert [s.run_id for s in expand(g2, FAKE_STAGES)] == [s.run_id for s in specs]
    with pytest.raises(ConfigError, match="unknown field.*'lrr'"):
        expand(parse_grid({"base": {"unlearn": {"lrr": 1}}}), FAKE_STAGES)
    with pytest.raises(ConfigError, match="unknown field"):
        expand(parse_grid({"base": {"modle": "x"}}), FAKE_STAGES)
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_grid({"grid": {"unlearn.lr": 0.1}})
    with pytest.raises(ConfigError, match="unknown stage 'evl'"):
        expand(parse_grid({"base": {"stages": ["unlearn", "evl"]}}), FAKE_STAGES)
    with pytest.raises(ConfigError, match="unknown top-level"):
        parse_grid({"bse": {}})


def test_run_folder_atomic_and_resumes_at_failed_stage(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    spec = make_spec({"name": "ga", "unlearn": {"lr": 0.2, "fail": True}})
    with pytest.raises(RuntimeError, match="diverged"):
        execute_run(spec, tmp_path, FAKE_STAGES, store=store)
    assert not spec.folder(tmp_path).exists()  # never half-written under the final name
    rec = store.get(spec.run_id)
    assert rec.status == "failed" and "diverged" in rec.error

    # a later stage failing keeps the finished stages for the resume
    calls: list[str] = []

    def counting_unlearn(ctx, out):
        calls.append("unlearn")
        return fake_unlearn(ctx, out)

    def broken_tamper(ctx, out):
        raise ValueError("attack exploded")

    spec2 = make_spec({"name": "rr", "unlearn": {"lr": 0.3}})
    stages = {
        **FAKE_STAGES,
        "unlearn": Stage("unlearn", counting_unlearn),
        "tamper": Stage("tamper", broken_tamper),
    }
    with pytest.raises(ValueError):
        execute_run(spec2, tmp_path, stages, store=store)
    assert calls == ["unlearn"] and (spec2.work_folder(tmp_path) / "eval" / "stage.json").exists()
    stages["tamper"] = FAKE_STAGES["tamper"]
    assert execute_run(spec2, tmp_path, stages, store=store) == "complete"
    assert calls == ["unlearn"]  # unlearn and eval were not redone
    folder = spec2.folder(tmp_path)
    assert is_complete(folder) and not spec2.work_folder(tmp_path).exists()
    m = json.loads((folder / "metrics.json").read_text())
    assert m["summary"]["hazard_acc"] == pytest.approx(0.65)
    rec = store.get(spec2.run_id)
    assert rec.status == "complete" and rec.attempts == 2
    assert rec.artifact("tamper.curves").exists() and rec.metrics["summary"]["method"] == "?"
    assert (folder / "config.yaml").exists()
    assert execute_run(spec2, tmp_path, stages, store=store) == "skipped"


def test_store_recovers_folder_renamed_before_commit(tmp_path: Path) -> None:
    spec = make_spec({"name": "ga", "unlearn": {"lr": 0.2}})
    execute_run(spec, tmp_path, FAKE_STAGES, store=None)  # a worker that died before recording
    store = ResultsStore(tmp_path)
    assert store.get(spec.run_id) is None
    assert store.reindex() == 1
    rec = store.get(spec.run_id)
    assert rec.status == "complete" and rec.metrics["summary"]["general_acc"] == pytest.approx(0.88)
    assert store.reindex() == 0
    # a deleted folder leaves the index and its point runs again
    import shutil

    shutil.rmtree(spec.folder(tmp_path))
    assert store.reindex() == 0 and store.get(spec.run_id) is None
    assert execute_run(spec, tmp_path, FAKE_STAGES, store=store) == "complete"
    assert store.get(spec.run_id).status == "complete"


@pytest.mark.parametrize("retries", [0, 1])
def test_sweep_killed_worker_resumes_and_completes(tmp_path: Path, retries: int) -> None:
    grid = parse_grid(_grid())
    # the crash_once points kill their worker (os._exit) mid-stage on their first attempt
    grid.points = [{}, {"unlearn.crash_once": True}]
    msgs: list[str] = []
    res = run_sweep(grid, tmp_path, stages=FAKE_STAGES, workers=2, retries=retries, log=msgs.append)
    store = ResultsStore(tmp_path)
    n = len(expand(grid, FAKE_STAGES))
    assert n == 8
    if retries == 0:
        assert len(res.failed) == 4 and all("died" in e for e in res.failed.values())
        assert store.counts() == {"running": 0, "complete": 4, "failed": 4}
        res2 = run_sweep(grid, tmp_path, stages=FAKE_STAGES, workers=2, log=msgs.append)
        assert res2.ok and len(res2.skipped) == 4 and len(res2.complete) == 4
    else:
        assert res.ok and len(res.complete) == 8
    assert store.counts() == {"running": 0, "complete": 8, "failed": 0}
    for rec in store.runs():
        assert is_complete(rec.folder) and rec.artifact("unlearn.model").is_dir()
    crashed = [r for r in store.runs() if r.config["unlearn"].get("crash_once")]
    assert len(crashed) == 4 and all(r.attempts == 2 for r in crashed)
    assert not list((tmp_path / "runs" / "unlearn").glob(".*"))  # no work folders left
    res3 = run_sweep(grid, tmp_path, stages=FAKE_STAGES, workers=2, log=msgs.append)
    assert res3.ok and len(res3.skipped) == 8 and not res3.complete


def test_sweep_inline_and_from_yaml(tmp_path: Path) -> None:
    import yaml

    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(_grid()))
    res = run_sweep(p, tmp_path / "out", stages=FAKE_STAGES, executor="inline", log=None)
    assert res.ok and len(res.complete) == 4
    assert len(ResultsStore(tmp_path / "out").runs(status="complete")) == 4


def test_sweep_submitit_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    # submitit jobs unpickle the stage functions in a fresh interpreter: make this module
    # importable there, as a user's own stage module would be
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    grid = parse_grid(
        {
            **_grid(),
            "grid": {"unlearn.method": ["ga"], "unlearn.lr": [0.1, 0.2]},
            "slurm": {"timeout_min": 5},
        }
    )
    res = run_sweep(grid, tmp_path, stages=FAKE_STAGES, executor="submitit-local", log=None)
    assert res.ok and len(res.complete) == 2
    assert ResultsStore(tmp_path).counts()["complete"] == 2


def _store_worker(root: str, wid: int, n: int, contested: str, owner: int) -> None:
    store = ResultsStore(root, timeout_s=60)
    won = 0
    for i in range(n):
        rid = f"unlearn/w{wid}-{i}"
        folder = Path(root) / "runs" / rid
        assert store.claim(rid, "unlearn", f"w{wid}-{i}", "h", folder, {"i": i})
        folder.mkdir(parents=True)
        store.complete(rid, "unlearn", f"w{wid}-{i}", "h", folder, {"i": i}, {"acc": i / n})
    # owner: the (live) test process, so a claim by an exited sibling still blocks the rest
    if store.claim(contested, "unlearn", "c", "h", Path(root) / "runs" / contested, {}, pid=owner):
        won = 1
    (Path(root) / f"won-{wid}").write_text(str(won))


def test_store_concurrent_writers(tmp_path: Path) -> None:
    procs = [
        mp.get_context("spawn").Process(
            target=_store_worker, args=(str(tmp_path), w, 25, "unlearn/contested", os.getpid())
        )
        for w in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ResultsStore(tmp_path)
    assert store.counts()["complete"] == 100
    assert sum(int((tmp_path / f"won-{w}").read_text()) for w in range(4)) == 1
    rec = store.get("unlearn/w3-24")
    assert rec.metrics == {"acc": 0.96} and rec.folder == tmp_path / "runs" / "unlearn/w3-24"
