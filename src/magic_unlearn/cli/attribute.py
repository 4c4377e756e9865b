"""CLI commands for the attribute stage: ``magic-unlearn attribute``.

The command only parses its flags into an :class:`~magic_unlearn.attribution.AttributionJob`
and calls :func:`~magic_unlearn.attribution.run_attribution`, as the pipeline's stage does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from magic_unlearn.config import load_config


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""

    @app.command("attribute")
    def attribute_cmd(
        model: str = typer.Option(..., "--model", "-m", help="HF model folder (theta_0)."),
        corpus: str = typer.Option(
            ...,
            "--corpus",
            "-c",
            help="Training corpus: a JSONL/JSON/Parquet file, WORLD_DIR:name, or a corpus name "
            "of --world.",
        ),
        query: list[str] = typer.Option(
            ...,
            "--query",
            "-q",
            help="Measurement task (hazard_qa, general_qa, wmdp_bio, mmlu, ... or a question "
            "file); repeat for several.",
        ),
        mix: list[str] = typer.Option(
            [],
            "--mix",
            help="A further corpus trained on (and scored) in the same run, shuffled with "
            "--corpus; repeat for several (e.g. --mix pretrain: the acquire regime).",
        ),
        config: Optional[Path] = typer.Option(None, "--config", help="Trajectory YAML."),
        world: Optional[Path] = typer.Option(None, "--world", help="World folder."),
        method: str = typer.Option(
            "magic",
            "--method",
            help="magic | grad_sim | random | keyword (the world's hazard keywords).",
        ),
        set_: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE."),
        per: str = typer.Option("token", "--per", help="token | example."),
        fmt: Optional[str] = typer.Option(
            None, "--format", "-f", help="letter | cloze (default: the task's)."
        ),
        limit: Optional[int] = typer.Option(None, "--limit", help="First N questions per task."),
        source: Optional[str] = typer.Option(
            None,
            "--source",
            help="Benchmark questions: a benchmarks root, a task's folder or file, or 'hf' "
            "(as for `magic-unlearn eval`).",
        ),
        tokenizer: Optional[str] = typer.Option(
            None,
            "--tokenizer",
            help="Tokenizer folder or hub id (default: the model's, else WORLD/tokenizer).",
        ),
        device: str = typer.Option(
            "auto", "--device", help="cpu, cuda, cuda:N, or auto (cuda if available)."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Score artifact folder."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
        resume: bool = typer.Option(
            True,
            "--resume/--no-resume",
            help="Continue an interrupted run from its saved reverse-pass state "
            "(.<out>.magic-work next to --out).",
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
        strict: bool = typer.Option(
            False,
            "--strict",
            help="Refuse (write nothing, exit 3) unless the trust verdict of the MAGIC scores "
            "is 'reliable' (sets trust.strict).",
        ),
    ) -> None:
        """Per-token attribution scores of a training corpus for eval losses (MAGIC)."""
        from magic_unlearn.attribution.trust import UntrustworthyScoresError

        if strict:
            set_ = [*set_, "trust.strict=true"]
        try:
            art = run_attribute(
                model=model,
                corpus=corpus,
                queries=query,
                mix=mix,
                config=config,
                world=world,
                method=method,
                overrides=set_,
                per=per,
                fmt=fmt,
                limit=limit,
                source=source,
                tokenizer=tokenizer,
                device=device,
                out=out,
                overwrite=overwrite,
                resume=resume,
                progress=progress,
            )
        except UntrustworthyScoresError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(3) from None
        except (ValueError, FileNotFoundError, FileExistsError, ImportError, KeyError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        ev = art.meta.get("eval_losses", {})
        for q in art.queries:
            s = art.example_scores(q)
            typer.echo(
                f"{q}: loss before {ev.get('before', {}).get(q, float('nan')):.4f} "
                f"after {ev.get('after', {}).get(q, float('nan')):.4f}; "
                f"doc scores mean {float(s.mean()):+.3e} min {float(s.min()):+.3e} "
                f"max {float(s.max()):+.3e}"
            )
        trust = art.meta.get("trust")
        if isinstance(trust, dict):
            typer.echo(trust.get("summary", f"trust: {trust.get('verdict')}"))
        typer.echo(f"wrote {out}")


def run_attribute(
    model: str,
    corpus: str,
    queries: list[str],
    mix: list[str] | None = None,
    config: Path | None = None,
    world: Path | None = None,
    method: str = "magic",
    overrides: list[str] | None = None,
    per: str = "token",
    fmt: str | None = None,
    limit: int | None = None,
    source: str | None = None,
    tokenizer: str | None = None,
    device: str = "auto",
    out: Path | None = None,
    overwrite: bool = False,
    resume: bool = True,
    progress: bool = True,
) -> Any:
    """The ``attribute`` command as a function: flags -> ``AttributionJob`` -> ScoreArtifact."""
    # deferred: the attribution engine imports torch, which `magic-unlearn --help` must not pay
    from magic_unlearn.attribution import AttributionJob, TrajectoryConfig, run_attribution

    job = AttributionJob(
        model=model,
        corpus=corpus,
        queries=list(queries),
        mix=list(mix or []),
        out=out,
        method=method,
        trajectory=load_config(TrajectoryConfig, config, overrides),
        per=per,
        fmt=fmt,
        limit=limit,
        source=source,
        world=world,
        tokenizer=tokenizer,
        device=device,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
    )
    return run_attribution(job)
