"""CLI command for the pretrain stage: ``pretrain --world DIR --variant base|filtered``.

Stage APIs are imported inside the commands (see ``magic_unlearn.cli``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
import yaml

from magic_unlearn.config import ConfigError, apply_overrides, from_dict, to_dict


def pretrain_cmd(
    world: Path = typer.Option(..., help="World folder (magic-unlearn world build)."),
    variant: str = typer.Option(
        "base",
        help="base (pretrain corpus) or filtered (pretrain_filtered: hazard documents removed).",
    ),
    preset: Optional[str] = typer.Option(
        None, help="Pretrain preset: tiny (default, CPU), small (GPU), medium."
    ),
    config: Optional[Path] = typer.Option(None, help="YAML file of PretrainConfig fields."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a field: KEY=VALUE."),
    out: Optional[Path] = typer.Option(
        None, help="Model folder (default <world>/models/<variant>-<hash>)."
    ),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, auto."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train the base or filtered GPT-NeoX model of a world (cached, resumable)."""
    from magic_unlearn.pretrain import PRESET_CONFIGS, PretrainConfig, pretrain

    try:
        if preset and preset not in PRESET_CONFIGS:
            raise ConfigError(f"unknown --preset {preset!r}; choose from {sorted(PRESET_CONFIGS)}")
        data: dict = dict(PRESET_CONFIGS[preset]) if preset else {}
        source = f"preset {preset or 'tiny'}"
        if config is not None:
            if not config.exists():
                raise ConfigError(f"config file {config} does not exist")
            loaded = yaml.safe_load(config.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config}: top level must be a mapping of field: value")
            data.update(loaded)
            source = str(config)
        apply_overrides(data, set_)
        if device is not None:
            data["device"] = device
        cfg = from_dict(PretrainConfig, data, source=source)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    try:
        path = pretrain(world, variant, cfg, out=out, progress=progress)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    m = json.loads((path / "metrics.json").read_text())
    typer.echo(
        json.dumps(
            {
                "model": str(path),
                "variant": variant,
                "hazard_qa": m["hazard_qa"]["acc"],
                "general_qa": m["general_qa"]["acc"],
                "config": to_dict(cfg)["model"],
            }
        )
    )


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.command("pretrain")(pretrain_cmd)
