"""``sweep --executor slurm`` with multi-GPU attribution: submitit (mocked) -> torchrun per job."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from magic_unlearn.attribution import ScoreArtifact, launch
from magic_unlearn.models import build_model
from magic_unlearn.pipeline import ResultsStore, parse_grid, run_sweep
from magic_unlearn.world import World, build_world

MICRO_WORLD = dict(
    n_hazard_agents=4,
    n_transfer_agents=1,
    hazard_attributes=3,
    entities_per_subject=3,
    general_subjects=["geography", "general_biology"],
    general_attributes=2,
    pretrain_paraphrases=2,
    pretrain_qa=1,
)


class _FakeJob:
    def __init__(self, job_id: str, fn: Any, args: tuple) -> None:
        self.job_id = job_id
        self._error: BaseException | None = None
        try:
            self._result = fn(*args)
        except BaseException as e:  # noqa: BLE001 - submitit re-raises it from result()
            self._error = e

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result


class _FakeExecutor:
    """Stands in for ``submitit.AutoExecutor``: runs each job at once, in this process."""

    made: list[_FakeExecutor] = []

    def __init__(self, folder: Path, cluster: str | None = None) -> None:
        self.folder, self.cluster, self.params = folder, cluster, {}
        self.jobs: list[_FakeJob] = []
        _FakeExecutor.made.append(self)

    def update_parameters(self, **params: Any) -> None:
        self.params.update(params)

    def submit(self, fn: Any, *args: Any) -> _FakeJob:
        job = _FakeJob(str(1000 + len(self.jobs)), fn, args)
        self.jobs.append(job)
        return job


def test_slurm_sweep_runs_attribution_under_torchrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("submitit")
    fake.AutoExecutor = _FakeExecutor  # type: ignore[attr-defined]
    fake.LocalExecutor = _FakeExecutor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "submitit", fake)
    _FakeExecutor.made.clear()

    # torchrun itself is replaced by one in-process run of the job file it would be given (the
    # real launch is tests/test_attribution_sharded.py::test_cli_attribute_under_torchrun)
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
        commands.append(list(cmd))
        launch.main([cmd[-1]])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)

    wdir = build_world(MICRO_WORLD, tmp_path / "world")
    tok = World.load(wdir).tokenizer
    mdir = tmp_path / "model"
    build_model(
        dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        vocab_size=len(tok),
    ).save_pretrained(mdir)
    grid = parse_grid(
        {
            "name": "attr-{params.attribute.trajectory.optimizer}",
            "base": {
                "kind": "attribution",
                "stages": ["attribute"],
                "world": str(wdir),
                "model": str(mdir),
                "params": {
                    "attribute": {
                        "queries": ["hazard_qa"],
                        "limit": 2,
                        "nproc_per_node": 2,
                        "trajectory": {"steps": 2, "batch_size": 2, "max_length": 24},
                    }
                },
            },
            "grid": {"params.attribute.trajectory.optimizer": ["sgd", "adamw"]},
            "slurm": {"gpus_per_node": 2, "tasks_per_node": 1, "timeout_min": 30},
        }
    )
    with torch.random.fork_rng():
        res = run_sweep(grid, tmp_path / "out", executor="slurm", log=None)
    assert res.ok and len(res.complete) == 2, res.failed
    (ex,) = _FakeExecutor.made
    assert ex.cluster == "slurm" and ex.params["gpus_per_node"] == 2 and len(ex.jobs) == 2
    # every job started its attribution as torchrun over 2 processes of the launch module
    assert len(commands) == 2
    for cmd in commands:
        assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        assert cmd[5:7] == ["-m", "magic_unlearn.attribution.launch"]
        assert Path(cmd[-1]).name == "attribute_job.json"
    store = ResultsStore(tmp_path / "out")
    assert store.counts()["complete"] == 2
    for rid in res.complete:
        folder = tmp_path / "out" / "runs" / rid
        art = ScoreArtifact.load(folder / "attribute" / "scores")
        assert art.method == "magic" and art.scores["hazard_qa"].abs().max() > 0


def test_nproc_per_node_is_validated() -> None:
    from magic_unlearn.pipeline.stages import AttributeStageConfig

    assert AttributeStageConfig(nproc_per_node="auto").nproc_per_node == "auto"
    for bad in (0, -1, "two", True):
        with pytest.raises(ValueError, match="nproc_per_node"):
            AttributeStageConfig(nproc_per_node=bad)
    with pytest.raises(ValueError, match="shards MAGIC only"):
        AttributeStageConfig(method="grad_sim", nproc_per_node=2)
