"""CLI commands for the unlearn stage.

magic-unlearn unlearn --method NAME --model M --forget C [--retain C] [--token-weights DIR ...]
                      [--recipe NAME] [--config x.yaml] [--set k=v ...] --out DIR
magic-unlearn unlearn methods

The stage's imports are deferred into the commands: they pull in torch and transformers
(seconds), and every ``magic-unlearn`` invocation registers every stage's commands.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import typer
import typer.core


def defaults_epilog() -> str:
    """The UnlearnConfig defaults a run starts from (shown under ``unlearn --help``)."""
    from magic_unlearn.unlearn.api import UnlearnConfig  # deferred: imports torch
    from magic_unlearn.unlearn.loop import LoopConfig

    cfg, loop = UnlearnConfig(), LoopConfig()
    length = cfg.max_length or "the score artifact's row length (else 128)"
    return (
        f"Defaults: method: none (required); max_length: {length}; loop.steps {loop.steps}, "
        f"loop.lr {loop.lr:g}, loop.optimizer {loop.optimizer}, loop.batch_size "
        f"{loop.batch_size}, loop.schedule {loop.schedule}, loop.device {loop.device}; "
        f"weights: the method's default transform; no retain corpus; no evaluation "
        f"(eval_tasks: []). --set takes any UnlearnConfig field (src/magic_unlearn/unlearn/api.py)."
    )


class _HelpWithDefaults(typer.core.TyperGroup):
    """The unlearn group: its ``--help`` ends with the config defaults, computed only when
    help is shown (they live in modules that import torch, which other commands need not pay)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.epilog = defaults_epilog()
        super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    sub = typer.Typer(
        help="Unlearn hazardous knowledge from a model (see `unlearn methods`).\n\n"
        "Settings not given as flags come from --recipe, then --config, then --set (later "
        "wins); everything else keeps the UnlearnConfig defaults listed below.",
        invoke_without_command=True,
        no_args_is_help=False,
        cls=_HelpWithDefaults,
    )

    @sub.callback()
    def unlearn_cmd(
        ctx: typer.Context,
        method: str = typer.Option(
            None,
            "--method",
            "-m",
            help="Registered method (`unlearn methods`), or 'none' (no training). Required: "
            "there is no default (a --recipe or --config may set it).",
        ),
        model: str = typer.Option(None, "--model", help="HF model folder or hub id."),
        forget: str = typer.Option(
            None, "--forget", help="Forget corpus: WORLD_DIR:forget, a JSONL/Parquet file, hf:id."
        ),
        retain: str = typer.Option(
            None, "--retain", help="Retain corpus (same forms); none by default."
        ),
        token_weights: list[str] = typer.Option(
            None,
            "--token-weights",
            help="Score artifact folder(s) (hazard, then general). Without a weights: "
            "setting, the method's default transform applies (hazard_teach: weight hazard "
            "proponents by how much they teach hazard; sft needs --recipe or --set weights.*).",
        ),
        recipe: str = typer.Option(
            None, "--recipe", help="Named preset of settings (see `unlearn methods`)."
        ),
        config: Path = typer.Option(None, "--config", "-c", help="YAML file of UnlearnConfig."),
        set_: list[str] = typer.Option(
            None, "--set", help="Override a field, e.g. loop.steps=200 (repeatable)."
        ),
        out: Path = typer.Option(None, "--out", "-o", help="Output model folder (required)."),
        overwrite: bool = typer.Option(
            False,
            "--overwrite",
            help="Replace an existing --out, and discard a checkpoint of an interrupted run "
            "with other settings instead of refusing it.",
        ),
        no_progress: bool = typer.Option(False, "--no-progress", help="Hide progress bars."),
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        from magic_unlearn.config import ConfigError
        from magic_unlearn.unlearn.api import load_unlearn_config, unlearn

        if out is None:
            raise typer.BadParameter("--out is required", param_hint="--out")
        try:
            cfg = load_unlearn_config(
                config,
                set_ or [],
                recipe=recipe,
                method=method,
                model=model,
                forget=forget,
                retain=retain,
                token_weights=list(token_weights) if token_weights else None,
            )
            path = unlearn(cfg, out, overwrite=overwrite, progress=not no_progress)
        except (
            ConfigError,
            FileExistsError,
            FileNotFoundError,
            ValueError,
            KeyError,
            FloatingPointError,
        ) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        typer.echo(f"wrote {path}")

    @sub.command("methods")
    def methods_cmd() -> None:
        """List registered methods and named recipes."""
        from magic_unlearn.unlearn.api import RECIPES
        from magic_unlearn.unlearn.methods import describe_methods

        width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
        typer.echo("methods:")
        for name, doc in describe_methods():
            typer.echo(
                textwrap.fill(
                    doc, width, initial_indent=f"  {name:<12} ", subsequent_indent=" " * 15
                )
            )
        typer.echo("recipes (--recipe NAME):")
        for name, r in RECIPES.items():
            typer.echo(f"  {name:<18} method={r.get('method', '(yours)')}")

    app.add_typer(sub, name="unlearn")
