"""The CLI's logging switch: status messages on stderr at INFO, -v adds DEBUG, -q keeps WARNING."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from magic_unlearn.cli import app
from magic_unlearn.pipeline import ResultsStore, Stage, StageResult, execute_run, make_spec


@pytest.fixture(autouse=True)
def _restore_package_logger() -> Iterator[None]:
    log = logging.getLogger("magic_unlearn")
    level, handlers = log.level, list(log.handlers)
    yield
    log.setLevel(level)
    log.handlers[:] = handlers


def _eval(ctx, out: Path) -> StageResult:
    return StageResult(summary={"hazard_acc": 0.3, "general_acc": 0.8})


@pytest.fixture
def results(tmp_path: Path) -> Path:
    spec = make_spec({"name": "ga", "label": "GA", "stages": ["eval"]})
    execute_run(spec, tmp_path, {"eval": Stage("eval", _eval)}, store=ResultsStore(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("flags", "info", "debug"),
    [([], True, False), (["-v"], True, True), (["--verbose"], True, True), (["-q"], False, False)],
)
def test_log_level_switch(results: Path, flags: list[str], info: bool, debug: bool) -> None:
    r = CliRunner().invoke(app, [*flags, "report", str(results)])
    assert r.exit_code == 0, r.output
    # the result stays on stdout whatever the level; status lines go to stderr only
    assert r.stdout.strip() == "1 run(s), 0 failed"
    assert ("I magic_unlearn.cli.pipeline: wrote" in r.stderr) == info
    assert (" D magic_unlearn." in r.stderr) == debug
    level = {(): logging.INFO, ("-v",): logging.DEBUG, ("--verbose",): logging.DEBUG}
    assert logging.getLogger("magic_unlearn").level == level.get(tuple(flags), logging.WARNING)
