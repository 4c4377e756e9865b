"""CLI commands for the evaluate stage: ``magic-unlearn eval``.

Stage APIs are imported inside the commands (see ``magic_unlearn.cli``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""

    @app.command("eval")
    def eval_cmd(
        model: str = typer.Option(..., "--model", "-m", help="HF model folder or hub id."),
        task: str = typer.Option(
            "hazard_qa",
            "--task",
            "-t",
            help="hazard_qa, general_qa, wmdp_bio, wmdp_bio_robust, mmlu, mmlu_<subject>, "
            "or a question file; comma separated for several.",
        ),
        world: Optional[Path] = typer.Option(None, "--world", help="World folder (world tasks)."),
        source: Optional[str] = typer.Option(
            None,
            "--source",
            help="Where benchmark questions come from: a benchmarks root (the layout of "
            "../shared/benchmarks: mmlu/, wmdp/, wmdp_bio_robust/), one task's folder or file, "
            "or 'hf' for the hub. Default: $MAGIC_UNLEARN_BENCHMARKS, else "
            "../shared/benchmarks if present, else the hub.",
        ),
        fmt: Optional[str] = typer.Option(
            None, "--format", "-f", help="letter or cloze (default: the task's)."
        ),
        limit: Optional[int] = typer.Option(
            None, "--limit", help="First N questions (per subject for mmlu/wmdp_bio_robust)."
        ),
        num_fewshot: int = typer.Option(0, "--num-fewshot", "-k", help="k-shot (MMLU dev)."),
        batch_size: int = typer.Option(
            32, "--batch-size", "-b", help="Prompts per forward pass (speed only)."
        ),
        device: str = typer.Option(
            "auto", "--device", help="cpu, cuda, cuda:N, or auto (cuda if available)."
        ),
        dtype: str = typer.Option(
            "float32", "--dtype", help="Model weights dtype: float32, bfloat16, float16, float64."
        ),
        tokenizer: Optional[str] = typer.Option(
            None, "--tokenizer", help="Tokenizer folder or hub id (default: the model's)."
        ),
        split: str = typer.Option("test", "--split", help="MMLU split."),
        out: Optional[Path] = typer.Option(
            None, "--out", "-o", help="Write metrics.json + predictions.jsonl here."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
        per_subject: bool = typer.Option(False, "--per-subject", help="Print subject rows."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    ) -> None:
        """Multiple-choice accuracy (lm-evaluation-harness compatible) of a causal LM."""
        from magic_unlearn.evaluation.run import EvalConfig, format_table, run_eval

        cfg = EvalConfig(
            model=model,
            tasks=task,
            world=str(world) if world else None,
            source=source,
            format=fmt,
            limit=limit,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            tokenizer=tokenizer,
            split=split,
        )
        try:
            results = run_eval(cfg, out=out, overwrite=overwrite, progress=progress)
        except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(format_table(results, per_subject=per_subject))
        if out is not None:
            logger.info("wrote %s/metrics.json and %s/predictions.jsonl", out, out)
