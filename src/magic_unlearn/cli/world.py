"""CLI commands for the world stage: ``world build`` and ``world show``.

Stage APIs are imported inside the commands (see ``magic_unlearn.cli``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
import yaml

from magic_unlearn.config import ConfigError, apply_overrides

world_app = typer.Typer(help="Build and inspect synthetic hazard worlds.", no_args_is_help=True)


def _parse_sets(sets: list[str] | None) -> dict:
    return apply_overrides({}, sets)


@world_app.command("build")
def build(
    preset: str = typer.Option("tiny", help="World preset: tiny (CPU), small (GPU), medium."),
    out: Path = typer.Option(..., help="World folder to create."),
    seed: Optional[int] = typer.Option(None, help="Seed (overrides the preset's)."),
    config: Optional[Path] = typer.Option(None, help="YAML file of WorldConfig fields."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: KEY=VALUE."),
    overwrite: bool = typer.Option(False, help="Replace an existing folder."),
) -> None:
    """Generate a seeded hazard world (tokenizer, corpora, question sets, world.json)."""
    from magic_unlearn.world import World, build_world

    ov: dict = {}
    if config is not None:
        if not config.exists():
            raise typer.BadParameter(f"config file {config} does not exist", param_hint="--config")
        ov.update(yaml.safe_load(config.read_text()) or {})
    ov.update(_parse_sets(set_))
    if seed is not None:
        ov["seed"] = seed
    try:
        path = build_world(preset, out, overwrite=overwrite, overrides=ov)
    except (ConfigError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    w = World.load(path)
    c = w.manifest["counts"]
    typer.echo(
        f"world {path} hash={w.hash} facts={c['facts']} "
        f"(hazard {c['hazard_facts']}, general {c['general_facts']}) vocab={c['vocab_size']}"
    )


@world_app.command("show")
def show(
    world_dir: Path = typer.Argument(..., help="World folder."),
    samples: int = typer.Option(2, help="Sample documents per corpus."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Counts, config and sample documents of a world (synthetic text only)."""
    from magic_unlearn.world import CORPORA, World

    try:
        w = World.load(world_dir)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    c = w.manifest["counts"]
    if as_json:
        typer.echo(
            json.dumps({"hash": w.hash, "counts": c, "config": w.manifest["config"]}, indent=2)
        )
        return
    typer.echo(f"world {w.dir}  hash {w.hash}  vocab {c['vocab_size']}")
    typer.echo(
        f"facts {c['facts']}: hazard {c['hazard_facts']} (evaluated "
        f"{c['evaluated_hazard_facts']}, transfer-only {c['transfer_hazard_facts']}), "
        f"general {c['general_facts']} (entangled {c['entangled_general_facts']})"
    )
    typer.echo(f"{'corpus':18s} {'docs':>6s} {'tokens':>8s}")
    for name in CORPORA:
        s = c["corpora"][name]
        typer.echo(f"{name:18s} {s['docs']:6d} {s['tokens']:8d}")
    for name, n in c["questions"].items():
        typer.echo(f"questions {name}: {n}")
    for name in CORPORA:
        docs = w.corpus(name)[:samples]
        for d in docs:
            typer.echo(f"\n[{name} {d['id']}] {d['text']}")
    q = w.questions("hazard_qa")[:1] + w.questions("general_qa")[:1]
    for x in q:
        typer.echo(
            f"\n[{x['subject']}] {x['question']} choices={x['choices']} answer={x['answer']}"
        )


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.add_typer(world_app, name="world")
