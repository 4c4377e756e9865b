"""Shared setup of the issue-14 benchmarks (bench_precision, bench_trust, bench_removal).

World, pretrained start models (cached under ``--work``), the forget corpus and the two world
measurements, and the trajectory config of the LDS benchmark (``bench_lds.py``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Setup:
    world: Path
    models: dict[str, Path]
    tokenizer: Any
    corpus: Any
    measurements: dict[str, Any]
    device: torch.device
    pretrain_s: float


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--work", default="runs/bench_trust", help="cache folder (world, models)")
    ap.add_argument("--preset", default="tiny", help="world / pretrain preset")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")


def setup(args: argparse.Namespace, variants: tuple[str, ...] = ("filtered",)) -> Setup:
    from magic_unlearn.data import load_corpus, tokenize_corpus
    from magic_unlearn.evaluation.measure import Measurement
    from magic_unlearn.evaluation.tasks import load_task
    from magic_unlearn.pretrain import pretrain
    from magic_unlearn.world import World, build_world

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    wdir = work / f"world-{args.preset}"
    if not (wdir / "world.json").exists():
        build_world(args.preset, wdir)
    t0 = time.time()
    models = {v: Path(pretrain(wdir, v, cfg=args.preset, progress=False)) for v in variants}
    pre_s = time.time() - t0
    tok = World.load(wdir).tokenizer
    dev = torch.device(args.device)
    corpus = tokenize_corpus(load_corpus(f"{wdir}:forget"), tok, max_length=args.max_length)
    meas = {
        q: Measurement.from_task(tok, load_task(q, world=wdir), name=q).to(dev)
        for q in ("hazard_qa", "general_qa")
    }
    return Setup(wdir, models, tok, corpus, meas, dev, pre_s)


def trajectory(**kw: Any) -> Any:
    """The LDS benchmark's trajectory (24 steps of batch 8), fields overridden by ``kw``."""
    from magic_unlearn.attribution import TrajectoryConfig

    base = dict(
        optimizer="adamw",
        lr=1e-4,
        steps=24,
        batch_size=8,
        max_length=64,
        dtype="float32",
        schedule="warmup",
        warmup_steps=8,
        checkpointing="sqrt",
        storage="cpu",
        seed=0,
    )
    base.update(kw)
    if base.get("warmup_steps", 0) == 0 and base.get("schedule") == "warmup":
        base["schedule"] = "constant"
    return TrajectoryConfig(**base)


def corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Pearson, Spearman and relative L2 error of a against b over the scored tokens."""
    from magic_unlearn.analysis.stats import pearson, spearman

    x = a.double()[mask].cpu().numpy()
    y = b.double()[mask].cpu().numpy()
    den = float(((y**2).sum()) ** 0.5)
    return {
        "pearson": pearson(x, y),
        "spearman": spearman(x, y),
        "rel_l2": float((((x - y) ** 2).sum()) ** 0.5) / den if den else float("nan"),
    }
