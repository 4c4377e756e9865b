"""CLI commands for the analyze stage: ``analyze`` and ``validate lds``.

Stage APIs are imported inside the commands (see ``magic_unlearn.cli``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

logger = logging.getLogger(__name__)

validate_app = typer.Typer(
    help="Validate attribution scores (linear datamodeling score).", no_args_is_help=True
)


def analyze_cmd(
    scores: list[Path] = typer.Option(
        ...,
        "--scores",
        help="Score artifact folder (repeat: "
        "hazard then general, or one with two queries; extra "
        "artifacts such as baselines join the ground-truth table).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (report.md, PNGs, metrics.json)."),
    alpha: float = typer.Option(1.0, help="General weight in rank = alpha*G - H."),
    k_noise: float = typer.Option(3.0, "--k-noise", help="Noise threshold k * median|score|."),
    tokenizer: Optional[Path] = typer.Option(
        None, help="Tokenizer folder (decoded tokens are shown only for the hazard world)."
    ),
    world: Optional[Path] = typer.Option(
        None, help="World folder: marks the data as the synthetic world and uses its tokenizer/."
    ),
    hazard_query: Optional[str] = typer.Option(None, help="Query name of the hazard scores."),
    general_query: Optional[str] = typer.Option(None, help="Query name of the general scores."),
    method: Optional[str] = typer.Option(None, help="Method to analyse (default: the first)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Answer the four questions about a hazard and a general score set; write a report."""
    from magic_unlearn.analysis import analyze
    from magic_unlearn.models import load_tokenizer

    tok = None
    tok_path = tokenizer if tokenizer is not None else (world / "tokenizer" if world else None)
    if tok_path is not None:
        if not tok_path.exists():
            raise typer.BadParameter(f"tokenizer folder {tok_path} does not exist")
        tok = load_tokenizer(tok_path)
    m = analyze(
        [str(s) for s in scores],
        out,
        tokenizer=tok,
        is_world=world is not None,
        alpha=alpha,
        k_noise=k_noise,
        hazard_query=hazard_query,
        general_query=general_query,
        method=method,
        overwrite=overwrite,
    )
    c, q = m["q1_correlation"], m["q2_quadrants"]
    typer.echo(
        f"{m['hazard']} vs {m['general']}: token spearman {c['token_spearman']:.3f}, "
        f"example spearman {c['example_spearman']:.3f}; purely hazard "
        f"{100 * q['t0']['fractions']['purely_hazard']:.1f}% (t=0), "
        f"{100 * q['noise']['fractions']['purely_hazard']:.1f}% (noise)"
    )
    if m["ground_truth"]:
        for name, g in m["ground_truth"]["per_score_set"].items():
            typer.echo(f"  {name}: AUC hazard-fact {g['auc_hazard_vs_rest']:.3f}")
    for names, t in (m.get("trust") or {}).items():
        typer.echo(f"  {names}: {t.get('summary', t.get('verdict'))}")
        if t.get("verdict") in ("doubtful", "unreliable"):
            logger.warning("the scores of %s are %s (see report.md)", names, t["verdict"])
    logger.info("wrote %s/report.md", out)


@validate_app.command("lds")
def lds_cmd(
    model: str = typer.Option(..., help="Model at the start of the trajectory (folder or hub id)."),
    corpus: Optional[str] = typer.Option(
        None,
        help="Training corpus (file or WORLD:name); "
        "checked against the artifacts' corpus, whose rows "
        "are used for retraining.",
    ),
    query: list[str] = typer.Option(
        ...,
        "--query",
        help="Measurement(s): question set name or "
        "file (repeatable), as for `magic-unlearn attribute`.",
    ),
    config: Optional[Path] = typer.Option(None, help="Trajectory config YAML (TrajectoryConfig)."),
    scores: list[Path] = typer.Option(
        ..., "--scores", help="Score artifact folder (repeat for MAGIC and baselines)."
    ),
    out: Path = typer.Option(..., help="Output folder (lds.json, lds.md, cache/ for resuming)."),
    subsets: int = typer.Option(32, help="Number of retrained subsets M."),
    alpha: float = typer.Option(0.1, help="Fraction of units dropped per subset."),
    unit: str = typer.Option("doc", help="doc | token."),
    seed: int = typer.Option(0, help="Subset seed."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the CI."),
    world: Optional[Path] = typer.Option(None, help="World folder for world question sets."),
    tokenizer: Optional[str] = typer.Option(
        None, help="Tokenizer (default: the model folder, else WORLD/tokenizer)."
    ),
    device: str = typer.Option("auto", help="cpu | cuda | auto."),
    override: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE."),
) -> None:
    """Linear datamodeling score: retrain on random subsets, correlate with predicted changes."""
    from magic_unlearn.analysis.lds_cli import run_lds_cli

    res_md = run_lds_cli(
        model=model,
        corpus=corpus,
        queries=query,
        config=config,
        scores=[str(s) for s in scores],
        out=out,
        subsets=subsets,
        alpha=alpha,
        unit=unit,
        seed=seed,
        bootstrap=bootstrap,
        world=world,
        device=device,
        overrides=override,
        tokenizer=tokenizer,
    )
    typer.echo(res_md)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""
    app.command("analyze")(analyze_cmd)
    app.add_typer(validate_app, name="validate")
