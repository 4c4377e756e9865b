"""CLI commands for the pipeline stage: ``demo``, ``sweep`` and ``report``.

Stage APIs are imported inside the commands (see ``magic_unlearn.cli``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from magic_unlearn.pipeline.report import build_report
from magic_unlearn.pipeline.runs import is_complete
from magic_unlearn.pipeline.sweep import expand, load_grid, run_sweep

logger = logging.getLogger(__name__)


def demo_cmd(
    preset: str = typer.Option("tiny", help="Demo preset: tiny (CPU, minutes) or small (GPU)."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto (default: the preset's)."),
    out: Path = typer.Option(
        Path("runs/demo"), help="Results directory (cached: a rerun skips finished steps)."
    ),
    config: Optional[Path] = typer.Option(
        None,
        help="Demo config YAML replacing the preset's "
        "(see src/magic_unlearn/configs/demo_tiny.yaml).",
    ),
    override: Optional[list[str]] = typer.Option(
        None, "--set", help="Config override KEY=VALUE, e.g. attribution.trajectory.steps=20."
    ),
    progress: bool = typer.Option(True, help="Progress bars."),
    threads: Optional[int] = typer.Option(
        None,
        help="CPU threads for torch, as `magic-unlearn --threads N` (default 1: the tiny "
        "world's models run fastest on one thread and never oversubscribe a shared machine).",
    ),
) -> None:
    """Run the whole study on the synthetic hazard world and write report.md / report.html."""
    from magic_unlearn.cli import set_threads
    from magic_unlearn.pipeline.demo import run_demo

    if threads is not None:
        set_threads(threads)

    md = run_demo(
        preset=preset, device=device, out=out, config=config, overrides=override, progress=progress
    )
    logger.info("wrote %s and %s", md, md.with_suffix(".html"))


def sweep_cmd(
    grid: Path = typer.Argument(
        ...,
        help="Grid YAML: base: (a run config), grid: (dotted keys "
        "-> lists of values), optional points:, name:, slurm:.",
    ),
    out: Path = typer.Option(..., help="Results directory (store + run folders)."),
    workers: int = typer.Option(1, help="Parallel worker processes (local executor)."),
    executor: str = typer.Option("local", help="local | inline | slurm | submitit-local."),
    retries: int = typer.Option(0, help="Retry a failed point this many times in this call."),
    reclaim: bool = typer.Option(
        False,
        help="Take over points marked running by a worker "
        "that still looks alive (e.g. after a killed Slurm driver).",
    ),
    report: bool = typer.Option(True, help="Write report.md / report.html when done."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the points and their folders without running anything."
    ),
) -> None:
    """Run every point of a grid (skipping complete ones, resuming interrupted ones)."""
    from magic_unlearn.pipeline.stages import STAGES

    g = load_grid(grid)
    if dry_run:
        for s in expand(g, STAGES):
            state = "complete" if is_complete(s.folder(out.absolute())) else "pending"
            typer.echo(f"{state:9s} {s.folder(out)}")
        return
    res = run_sweep(g, out, workers=workers, executor=executor, retries=retries, reclaim=reclaim)
    if report:
        r = build_report(out, title=f"sweep {grid.name}")
        logger.info("wrote %s and %s", r.markdown, r.html)
    if not res.ok:
        for rid, err in res.failed.items():
            typer.echo(f"FAILED {rid}: {err}", err=True)
        raise typer.Exit(1)


def report_cmd(
    results: Path = typer.Argument(..., help="Results directory (a demo's or sweep's --out)."),
    title: str = typer.Option("magic-unlearn results", help="Report title."),
) -> None:
    """Write report.md and a self-contained report.html for a results directory."""
    r = build_report(results, title=title)
    typer.echo(f"{r.n_rows} run(s), {r.n_failed} failed")
    logger.info("wrote %s and %s", r.markdown, r.html)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.command("demo")(demo_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("report")(report_cmd)
