"""Glue for ``magic-unlearn validate lds``: load model, artifacts, measurements, run :func:`lds`.

The retraining corpus is the scored corpus stored in the artifacts (so subsets drop exactly the
scored units) and the trajectory defaults to the one recorded in the MAGIC artifact's metadata.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from magic_unlearn.analysis.lds import lds, lds_markdown
from magic_unlearn.analysis.scores import as_score_sets, check_same_units
from magic_unlearn.attribution.artifact import ScoreArtifact
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.measurements import build_measurements
from magic_unlearn.attribution.run import resolve_tokenizer
from magic_unlearn.config import from_dict, load_config, save_config
from magic_unlearn.data import load_corpus, tokenize_corpus, world_of
from magic_unlearn.io import atomic_write_text
from magic_unlearn.models import load_model, resolve_device

logger = logging.getLogger(__name__)


def run_lds_cli(
    model: str,
    corpus: str | None,
    queries: list[str],
    config: Path | None,
    scores: list[str],
    out: Path,
    subsets: int = 32,
    alpha: float = 0.1,
    unit: str = "doc",
    seed: int = 0,
    bootstrap: int = 1000,
    world: Path | None = None,
    device: str = "auto",
    overrides: list[str] | None = None,
    tokenizer: str | None = None,
) -> str:
    """Run LDS for the score artifacts in ``scores``; write ``out/lds.json`` and ``out/lds.md``.

    The measurements are rebuilt as the artifacts recorded them (``build_measurements`` with
    ``recorded=``: same task, format and number of questions).
    """
    if world is None and world_of(corpus) is not None:  # --corpus WORLD:forget names it
        world = Path(str(world_of(corpus)))
    arts = [ScoreArtifact.load(s) for s in scores]
    sets = as_score_sets(arts)
    for s in sets[1:]:
        check_same_units(sets[0], s)
    dev = resolve_device(device)
    base = load_model(model, dtype=None, device=dev)
    tok = resolve_tokenizer(model, tokenizer, Path(world) if world else None)

    if config is not None or overrides:
        cfg = load_config(TrajectoryConfig, config, overrides)
    else:
        recorded = next(
            (
                a.meta.get("trajectory")
                for a in arts
                if a.method == "magic" and a.meta.get("trajectory")
            ),
            None,
        )
        if recorded is None:
            raise ValueError(
                "no --config given and no MAGIC artifact records its trajectory; "
                "pass --config traj.yaml (the one used by `magic-unlearn attribute`)"
            )
        cfg = from_dict(TrajectoryConfig, recorded, source=f"{scores[0]}/meta.json:trajectory")

    corp = arts[0].corpus
    for a in arts:
        a.check_compatible(corpus=corp)
    if corpus is not None:
        docs = load_corpus(corpus)
        arts[0].check_compatible(corpus=tokenize_corpus(docs, tok, max_length=cfg.max_length))

    qinfo: dict[str, Any] = {}
    for a in arts:
        for q, info in (a.meta.get("queries") or {}).items():
            qinfo.setdefault(q, info or {})
    meas = build_measurements(tok, queries, world=world, model=base, device=dev, recorded=qinfo)
    by_name = {s.name: s for s in sets if s.query in meas}
    if not by_name:
        raise ValueError(
            f"no scored query matches --query {queries}; the artifacts hold "
            f"{sorted({s.query for s in sets})}"
        )
    logger.info(
        "LDS of %s: %d subsets dropping %g of the %ss", sorted(by_name), subsets, alpha, unit
    )
    res = lds(
        base,
        corp,
        meas,
        cfg,
        by_name,
        alpha=alpha,
        n_subsets=subsets,
        unit=unit,
        seed=seed,
        bootstrap=bootstrap,
        out=out,
        score_measurement={n: s.query for n, s in by_name.items()},
    )
    md = lds_markdown(res)
    atomic_write_text(Path(out) / "lds.md", md)
    save_config(cfg, Path(out) / "config.yaml")
    return md
