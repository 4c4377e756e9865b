"""Removal curves: do the scores predict what dropping the top-scored units does, at O(1) changes?

Unlearning does not nudge token weights by 1e-4: it drops or down-weights whole tokens and
documents. A removal curve takes the k units (documents or tokens) with the most negative score
(the strongest proponents of the query; or the most positive, ``side="detractors"``), drops them
(weight 0), reruns the *same* trajectory and compares the actual change of the eval loss with
the first-order prediction ``sum over dropped units of (-score)``, for k from 1% to 20% of the
corpus. A random drop of the same size is the reference: scores that find influential units
change f more than it does.

Reported per k: predicted and actual change, their ratio, and the random reference; per curve,
the Spearman correlation of predicted and actual over k, the share of k where the sign is right,
and the median ratio. Retrained losses are cached under ``out/cache`` (an interrupted run
resumes), as in :func:`magic_unlearn.analysis.lds.lds`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from magic_unlearn.analysis.lds import (
    UNITS,
    _measure,
    _model_for_run,
    _unit_scores,
    _units,
    _weights,
)
from magic_unlearn.analysis.stats import spearman
from magic_unlearn.attribution.config import REVERSE_ONLY
from magic_unlearn.attribution.measurements import MeasureFn
from magic_unlearn.attribution.trajectory import train_trajectory
from magic_unlearn.config import config_hash
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.io import atomic_write_json, bytes_hash, read_json

SIDES = ("proponents", "detractors")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2)


def top_units(unit_scores: np.ndarray, k: int, side: str) -> np.ndarray:
    """Indices of the k most negative (proponents) or most positive (detractors) units."""
    if side not in SIDES:
        raise ValueError(f"side={side!r}; choose from {SIDES}")
    order = np.argsort(unit_scores if side == "proponents" else -unit_scores, kind="mergesort")
    return np.sort(order[:k])


def removal_curves(
    model_factory: Callable[[], nn.Module] | nn.Module,
    corpus: TokenizedCorpus,
    measurements: Mapping[str, MeasureFn],
    traj_cfg: Any,
    scores: Mapping[str, Any],
    score_measurement: Mapping[str, str],
    fractions: Sequence[float] = FRACTIONS,
    unit: str = "doc",
    side: str = "proponents",
    random_reference: bool = True,
    seed: int = 0,
    out: str | Path | None = None,
    train_fn: Callable[..., nn.Module] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Removal curves of several score sets over the same trajectory.

    Args:
        model_factory: the model at the start of the trajectory, or a function returning it.
        corpus: the scored training rows.
        measurements: ``{name: model -> eval loss}``.
        traj_cfg: the trajectory config the scores were computed for.
        scores: ``{name: (N, L) tensor | ScoreSet}``.
        score_measurement: score-set name -> measurement name.
        fractions: sizes k as fractions of the units (at least 1 unit each).
        unit: ``"doc"`` or ``"token"``.
        side: drop the ``proponents`` (most negative scores) or the ``detractors``.
        random_reference: also drop k random units (one draw per k, seeded).
        seed: seed of the random reference.
        out: folder for ``cache/`` and ``removal_<unit>_<side>.json``.
        train_fn: ``train_fn(model, corpus, cfg, token_weights=w)``; default ``train_trajectory``.
        progress: tqdm bar.

    Returns:
        ``{"curves": {name: {"measurement", "k", "predicted", "actual", "ratio", "spearman",
        "sign_agree", "median_ratio"}}, "random": {measurement: [actual per k]}, ...}``.
    """
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}; choose from {UNITS}")
    train_fn = train_fn or train_trajectory
    for name in scores:
        if score_measurement.get(name) not in measurements:
            raise ValueError(
                f"score set {name!r} maps to measurement {score_measurement.get(name)!r}, not "
                f"among {sorted(measurements)}"
            )
    units = _units(corpus, unit)
    n_units = len(units)
    ks = sorted({max(1, int(round(f * n_units))) for f in fractions})
    if ks[-1] >= n_units:
        raise ValueError(f"fractions {list(fractions)} drop all {n_units} {unit} units")
    unit_scores = {name: _unit_scores(s, corpus, units, unit) for name, s in scores.items()}

    cache = Path(out) / "cache" if out is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        key = {
            "corpus_hash": corpus.content_hash(),
            "traj": config_hash(traj_cfg, exclude=REVERSE_ONLY),
            "unit": unit,
            "measurements": sorted(measurements),
        }
        kp = cache / "key.json"
        if kp.exists() and read_json(kp) != key:
            raise ValueError(f"{kp}: this cache was made for other inputs; use a new out folder")
        atomic_write_json(kp, key)

    def run(dropped: np.ndarray | None) -> dict[str, float]:
        tag = "base" if dropped is None else bytes_hash(np.asarray(dropped).tobytes())
        path = cache / f"{tag}.json" if cache is not None else None
        if path is not None and path.exists():
            rec = read_json(path)
            if set(rec["losses"]) >= set(measurements):
                return rec["losses"]
        t0 = time.time()
        w = None if dropped is None else _weights(corpus, units, dropped, unit)
        model = _model_for_run(model_factory)
        if w is not None:
            w = w.to(next(model.parameters()).device)
        trained = train_fn(model, corpus, traj_cfg, token_weights=w)
        losses = {k: _measure(f, trained) for k, f in measurements.items()}
        del trained
        if path is not None:
            atomic_write_json(path, {"losses": losses, "wall_s": time.time() - t0})
        return losses

    jobs: list[tuple[str, int, np.ndarray]] = []
    for name, us in unit_scores.items():
        for k in ks:
            jobs.append((name, k, top_units(us, k, side)))
    rng = np.random.default_rng([int(seed), 14])
    rand_sets = {k: np.sort(rng.choice(n_units, size=k, replace=False)) for k in ks}
    base = run(None)
    it: Any = jobs + (
        [("__random__", k, d) for k, d in rand_sets.items()] if random_reference else []
    )
    if progress:
        it = tqdm(it, desc=f"removal curves ({unit}, {side})")
    t0 = time.time()
    results: dict[tuple[str, int], dict[str, float]] = {}
    for name, k, dropped in it:
        losses = run(dropped)
        results[(name, k)] = {q: losses[q] - base[q] for q in measurements}

    curves: dict[str, Any] = {}
    for name, us in unit_scores.items():
        q = score_measurement[name]
        pred = [float(-us[top_units(us, k, side)].sum()) for k in ks]
        act = [results[(name, k)][q] for k in ks]
        ratio = [a / p if p != 0 else math.nan for a, p in zip(act, pred, strict=True)]
        finite = [r for r in ratio if math.isfinite(r)]
        curves[name] = {
            "measurement": q,
            "k": ks,
            "predicted": pred,
            "actual": act,
            "ratio": ratio,
            "spearman": spearman(pred, act) if len(ks) > 1 else math.nan,
            "sign_agree": float(np.mean([a * p > 0 for a, p in zip(act, pred, strict=True)])),
            "median_ratio": float(np.median(finite)) if finite else math.nan,
            "random_actual": (
                [results[("__random__", k)][q] for k in ks] if random_reference else None
            ),
        }
    res = {
        "unit": unit,
        "side": side,
        "n_units": n_units,
        "k": ks,
        "fractions": [k / n_units for k in ks],
        "base_losses": base,
        "prediction": "predicted change = sum over dropped units of (-score)",
        "curves": curves,
        "wall_s": time.time() - t0,
    }
    if out is not None:
        atomic_write_json(Path(out) / f"removal_{unit}_{side}.json", res)
    return res


def removal_markdown(res: dict[str, Any]) -> str:
    """Markdown tables of :func:`removal_curves` output, one per score set."""
    lines = [
        f"Removal curves: drop the top-k {res['side']} ({res['unit']}s, of {res['n_units']}), "
        f"retrain, compare with {res['prediction']}.",
        "",
    ]
    for name, c in res["curves"].items():
        lines += [
            f"**{name}** ({c['measurement']}): Spearman(predicted, actual) over k "
            f"{c['spearman']:.3f}, sign right {100 * c['sign_agree']:.0f}%, median actual / "
            f"predicted {c['median_ratio']:.3g}",
            "",
            "| k | % of units | predicted | actual | actual / predicted | random drop |",
            "|---|---|---|---|---|---|",
        ]
        ra = c.get("random_actual") or [math.nan] * len(c["k"])
        for i, k in enumerate(c["k"]):
            lines.append(
                f"| {k} | {100 * k / res['n_units']:.1f} | {c['predicted'][i]:+.3e} | "
                f"{c['actual'][i]:+.3e} | {c['ratio'][i]:.3g} | {ra[i]:+.3e} |"
            )
        lines.append("")
    return "\n".join(lines)


__all__ = ["FRACTIONS", "SIDES", "removal_curves", "removal_markdown", "top_units"]
