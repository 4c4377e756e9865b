"""Pipeline: run folders, the SQLite results store, sweeps, the report and the demo.

Importing this package is cheap (no torch); the real stages load lazily when a run starts.
"""

from magic_unlearn.pipeline.demo import DemoConfig, load_demo_config, run_demo
from magic_unlearn.pipeline.report import build_report
from magic_unlearn.pipeline.runs import (
    RunConfig,
    RunContext,
    RunSpec,
    Stage,
    StageResult,
    execute_run,
    is_complete,
    make_spec,
)
from magic_unlearn.pipeline.store import ResultsStore, RunRecord
from magic_unlearn.pipeline.sweep import Grid, SweepResult, expand, load_grid, parse_grid, run_sweep

__all__ = [
    "DemoConfig",
    "build_report",
    "load_demo_config",
    "run_demo",
    "Grid",
    "ResultsStore",
    "RunConfig",
    "RunContext",
    "RunRecord",
    "RunSpec",
    "Stage",
    "StageResult",
    "SweepResult",
    "execute_run",
    "expand",
    "is_complete",
    "load_grid",
    "make_spec",
    "parse_grid",
    "run_sweep",
]
