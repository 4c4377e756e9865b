"""Pipeline: run folders, the SQLite results store, sweeps, the report and the demo.

Importing this package is cheap (no torch): the infrastructure (``runs``, ``store``, ``sweep``,
``report``) runs any stage registry, and sweep workers with their own stages (tests, user
stages) never load the real ones. The real stages (``pipeline.stages``, which import every stage
package) load when a run needs them; the demo names below load them on first access.
"""

from typing import Any

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
from magic_unlearn.pipeline.sweep import (
    Grid,
    SweepResult,
    expand,
    load_grid,
    parse_grid,
    run_specs,
    run_sweep,
)

_DEMO_NAMES = ("DemoConfig", "load_demo_config", "run_demo")


def __getattr__(name: str) -> Any:
    # the demo module imports the real stages (torch, transformers): load it on first use only
    if name in _DEMO_NAMES:
        from magic_unlearn.pipeline import demo

        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "run_specs",
    "run_sweep",
]
