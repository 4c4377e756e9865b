"""CLI command ``study``: the demo's study over several seeds, with a leaderboard.

Stage APIs are imported inside the command (see ``magic_unlearn.cli``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

logger = logging.getLogger(__name__)


def _csv(text: str | None, what: str, cast: type = str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise typer.BadParameter(f"{what} must be a comma-separated list, got {text!r}") from None


def study_cmd(
    preset: str = typer.Option("tiny", help="Study preset: tiny (CPU) or small (GPU)."),
    seeds: Optional[str] = typer.Option(
        None, help="Comma-separated world seeds to run, e.g. 0,1,2 (default: the config's)."
    ),
    methods: Optional[str] = typer.Option(
        None,
        help="Comma-separated method names to run (default: every method of the config); a "
        "guided method brings its twins.",
    ),
    twins: Optional[str] = typer.Option(
        None,
        help="Twin kinds that come with a guided method: any of unguided, grad_sim, random, "
        "keyword (default: all).",
    ),
    out: Path = typer.Option(
        Path("runs/study"),
        help="Results directory (cached runs, seeds/*.json records, leaderboard.json, report).",
    ),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto (default: the preset's)."),
    config: Optional[Path] = typer.Option(
        None, help="Study config YAML (see src/magic_unlearn/configs/study_tiny.yaml)."
    ),
    override: Optional[list[str]] = typer.Option(
        None, "--set", help="Config override KEY=VALUE, e.g. tamper.attacks.standard.lrs=[1e-3]."
    ),
    workers: Optional[int] = typer.Option(
        None, help="Parallel run processes (default: the config's; 1 runs everything here)."
    ),
    threads: Optional[int] = typer.Option(
        None,
        help="CPU threads for torch per process (default: 1 on the CPU, where the tiny "
        "world's models run fastest on one thread).",
    ),
    report_only: bool = typer.Option(
        False,
        "--report-only",
        help="Run nothing: rebuild leaderboard.json and the report from the seed records in "
        "--out (e.g. after copying in records of seeds run elsewhere).",
    ),
    list_methods: bool = typer.Option(
        False, "--list-methods", help="List the config's methods and their twins, then exit."
    ),
) -> None:
    """Run the study on several seeds; write leaderboard.json and report.md / report.html."""
    import torch

    from magic_unlearn.config import ConfigError
    from magic_unlearn.pipeline.study import expand_methods, load_study_config, run_study

    try:
        if list_methods:
            cfg = load_study_config(preset, config, override, device)
            for m in expand_methods(cfg):
                twins_s = ", ".join(f"{k}: {v}" for k, v in m.twins.items())
                tag = f"twin of {m.twin_of}" if m.twin_of else f"guidance {m.guidance}"
                typer.echo(
                    f"{m.name:28s} {m.label} ({tag}){'; twins ' + twins_s if twins_s else ''}"
                )
            return
        cfg_device = device or load_study_config(preset, config, override).device
        if threads is None and cfg_device == "cpu":
            threads = 1
        if threads is not None:
            torch.set_num_threads(threads)
        res = run_study(
            preset,
            out,
            config=config,
            overrides=override,
            device=device,
            seeds=_csv(seeds, "--seeds", int),
            methods=_csv(methods, "--methods"),
            twin_kinds=_csv(twins, "--twins"),
            workers=workers,
            threads=threads,
            report_only=report_only,
        )
    except (ConfigError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for rid, err in res.failed.items():
        typer.echo(f"FAILED {rid}: {err}", err=True)
    typer.echo(f"seeds {res.seeds}: {res.leaderboard}, {res.report}, {res.html}")
    if res.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.command("study")(study_cmd)
