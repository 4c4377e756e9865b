"""CLI commands for the attribute stage: ``magic-unlearn attribute``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _load_tokenizer(model: str, tokenizer: str | None, world: Path | None):
    from magic_unlearn.models import load_tokenizer

    candidates = [tokenizer] if tokenizer else [model]
    if world is not None and not tokenizer:
        candidates.append(str(world / "tokenizer"))
    errors = []
    for c in candidates:
        try:
            return load_tokenizer(c)
        except Exception as e:  # noqa: BLE001 - try the next candidate, report all below
            errors.append(f"{c}: {e}")
    raise FileNotFoundError(
        "could not load a tokenizer (pass --tokenizer or --world): " + "; ".join(errors)
    )


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
        config: Optional[Path] = typer.Option(None, "--config", help="Trajectory YAML."),
        world: Optional[Path] = typer.Option(None, "--world", help="World folder."),
        method: str = typer.Option("magic", "--method", help="magic | grad_sim | random."),
        set_: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE."),
        per: str = typer.Option("token", "--per", help="token | example."),
        fmt: Optional[str] = typer.Option(None, "--format", "-f", help="letter | cloze."),
        limit: Optional[int] = typer.Option(None, "--limit", help="First N questions per task."),
        source: Optional[str] = typer.Option(None, "--source", help="Question source."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer"),
        device: str = typer.Option("auto", "--device"),
        out: Path = typer.Option(..., "--out", "-o", help="Score artifact folder."),
        overwrite: bool = typer.Option(False, "--overwrite"),
        resume: bool = typer.Option(True, "--resume/--no-resume"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Per-token attribution scores of a training corpus for eval losses (MAGIC)."""
        try:
            art = run_attribute(
                model=model,
                corpus=corpus,
                queries=query,
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
        typer.echo(f"wrote {out}")


def run_attribute(
    model: str,
    corpus: str,
    queries: list[str],
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
):
    """The ``attribute`` command as a function (returns the ScoreArtifact)."""
    from magic_unlearn.attribution import (
        TrajectoryConfig,
        attribute,
        grad_similarity,
        random_scores,
    )
    from magic_unlearn.config import load_config
    from magic_unlearn.data import load_corpus, tokenize_corpus
    from magic_unlearn.models import load_model, resolve_device

    if method not in ("magic", "grad_sim", "random"):
        raise ValueError(f"--method {method!r}: use magic, grad_sim or random")
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite")
    cfg = load_config(TrajectoryConfig, config, overrides)
    tok = _load_tokenizer(model, tokenizer, world)
    src = corpus
    if world is not None and ":" not in corpus and not Path(corpus).exists():
        src = f"{world}:{corpus}"
    docs = load_corpus(src)
    corp = tokenize_corpus(docs, tok, max_length=cfg.max_length)
    if method == "random":
        return random_scores(
            corp, list(queries), seed=cfg.seed, per=per, out=out, tokenizer=tok, overwrite=overwrite
        )

    from magic_unlearn.evaluation import Measurement, load_task

    dev = resolve_device(device)
    m = load_model(model, dtype=cfg.dtype, device=dev, attn_implementation="eager")
    max_len = int(getattr(m.config, "max_position_embeddings", 2048) or 2048)
    measurements = {}
    for q in queries:
        task = load_task(q, source=source, limit=limit, world=str(world) if world else None)
        measurements[q] = Measurement.from_task(tok, task, fmt=fmt, name=q, max_length=max_len).to(
            dev
        )
    if method == "grad_sim":
        return grad_similarity(
            m,
            corp,
            measurements,
            cfg,
            per=per,
            out=out,
            tokenizer=tok,
            progress=progress,
            overwrite=overwrite,
        )
    return attribute(
        m,
        corp,
        measurements,
        cfg,
        per=per,
        out=out,
        resume=resume,
        progress=progress,
        tokenizer=tok,
        inplace=True,
        overwrite=overwrite,
    )
