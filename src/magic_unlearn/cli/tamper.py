"""CLI commands for the tamper stage.

The stage's imports are deferred into the commands: they pull in torch and transformers
(seconds), and every ``magic-unlearn`` invocation registers every stage's commands.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""

    @app.command("tamper")
    def tamper_cmd(
        model: str = typer.Option(..., "--model", help="model folder or hub id to attack"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        attack: str = typer.Option(
            "world",
            "--attack",
            help="suite: 'world', 'real', a subset like 'world:transfer,relearn', or a YAML file",
        ),
        world: Optional[Path] = typer.Option(None, "--world", help="world folder (world models)"),
        base: Optional[str] = typer.Option(
            None, "--base", help="base (pre-unlearning) model, or a tamper output folder of it"
        ),
        filtered: Optional[str] = typer.Option(
            None, "--filtered", help="filtered model (never saw hazard data), or its tamper output"
        ),
        config: Optional[Path] = typer.Option(None, "--config", help="suite YAML merged on top"),
        set_: Optional[list[str]] = typer.Option(
            None, "--set", help="override, e.g. attacks.standard.lr=1e-4 or verdict.tolerance=0.05"
        ),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
        cache_dir: Optional[Path] = typer.Option(
            None, "--cache-dir", help="reference-curve cache (default: <out parent>/.tamper_cache)"
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    ) -> None:
        """Attack a model with a tamper suite; write curves, plots and the verdict."""
        from magic_unlearn.config import ConfigError
        from magic_unlearn.tamper import tamper

        reference = {k: v for k, v in (("base", base), ("filtered", filtered)) if v is not None}
        try:
            res = tamper(
                model,
                attack,
                out=out,
                reference=reference,
                world=world,
                device=device,
                cache_dir=cache_dir,
                config=config,
                overrides=list(set_ or []),
                overwrite=overwrite,
                progress=progress,
            )
        except (ConfigError, FileExistsError, FileNotFoundError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {res.out} (verdict: {res.verdict.text})")

    @app.command("tamper-attacks")
    def attacks_cmd() -> None:
        """List the registered attack kinds (the `kind:` of a suite's attacks)."""
        from magic_unlearn.tamper import ATTACKS, describe_attacks

        for name, doc in describe_attacks():
            cls = ATTACKS[name]
            traits = [f"x: {cls.x_label}"]
            traits += [
                t
                for t, on in (("trains", cls.trains), ("needs original", cls.needs_original))
                if on
            ]
            width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
            text = f"{doc} [{', '.join(traits)}]"
            typer.echo(
                textwrap.fill(
                    text, width, initial_indent=f"  {name:<12} ", subsequent_indent=" " * 15
                )
            )

    @app.command("tamper-suites")
    def suites_cmd(
        attack: str = typer.Argument("world", help="suite name or YAML"),
        config: Optional[Path] = typer.Option(None, "--config", help="Suite YAML merged on top."),
        set_: Optional[list[str]] = typer.Option(
            None, "--set", help="Override, e.g. attacks.standard.lr=1e-4."
        ),
    ) -> None:
        """Print a suite's resolved attacks as YAML (what `tamper --attack` would run)."""
        import yaml

        from magic_unlearn.config import ConfigError, to_dict
        from magic_unlearn.tamper.config import load_suite

        try:
            s = load_suite(attack, config, list(set_ or []))
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(yaml.safe_dump(to_dict(s), sort_keys=False))
