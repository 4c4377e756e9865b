"""CLI commands for the unlearn stage.

magic-unlearn unlearn --method NAME --model M --forget C [--retain C] [--token-weights DIR ...]
                      [--recipe NAME] [--config x.yaml] [--set k=v ...] --out DIR
magic-unlearn unlearn methods

The stage's imports are deferred into the commands: they pull in torch and transformers
(seconds), and every ``magic-unlearn`` invocation registers every stage's commands.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    sub = typer.Typer(
        help="Unlearn hazardous knowledge from a model (see `unlearn methods`).",
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @sub.callback()
    def unlearn_cmd(
        ctx: typer.Context,
        method: str = typer.Option(None, "--method", "-m", help="registered method, or 'none'"),
        model: str = typer.Option(None, "--model", help="HF model folder or hub id"),
        forget: str = typer.Option(None, "--forget", help="WORLD_DIR:forget, JSONL/Parquet, hf:id"),
        retain: str = typer.Option(None, "--retain", help="retain corpus (same forms)"),
        token_weights: list[str] = typer.Option(
            None, "--token-weights", help="score artifact folder (hazard, then general)"
        ),
        recipe: str = typer.Option(None, "--recipe", help="named preset (see `unlearn methods`)"),
        config: Path = typer.Option(None, "--config", "-c", help="YAML UnlearnConfig"),
        set_: list[str] = typer.Option(None, "--set", help="override, e.g. loop.steps=200"),
        out: Path = typer.Option(None, "--out", "-o", help="output folder"),
        overwrite: bool = typer.Option(False, "--overwrite"),
        no_progress: bool = typer.Option(False, "--no-progress"),
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

        typer.echo("methods:")
        for name, doc in describe_methods():
            typer.echo(f"  {name:<12} {doc}")
        typer.echo("recipes (--recipe NAME):")
        for name, r in RECIPES.items():
            typer.echo(f"  {name:<18} method={r.get('method', '(yours)')}")

    app.add_typer(sub, name="unlearn")
