"""Linear datamodeling score (LDS): do the scores predict what retraining on subsets does?

Protocol (Park et al. 2023, "TRAK"; Ilyas & Engstrom 2025, "MAGIC"): draw M random subsets, each
dropping a fraction ``alpha`` of the training units (documents or tokens); rerun the *same*
trajectory with those units' loss weights set to 0; measure the eval loss f. The scores are
derivatives s_i = d f / d w_i at w = 1, so the first-order (linear datamodel) prediction is

    f(w) - f(1) ~= sum_i s_i (w_i - 1) = sum over dropped units i of (-s_i)

(for a dropped document, s_i is the sum of its token scores). LDS is the Spearman correlation
over the M subsets between predicted and actual changes f(w_m) - f(1), with a bootstrap
interval over subsets. Retrained losses are cached per subset under ``out/cache`` so an
interrupted run resumes where it stopped.

LDS measures linearity as much as score quality: a non-smooth trajectory (e.g. AdamW at full
learning rate from step 0, where Adam is sign descent and d f / d w changes sign within
|dw| ~ 1e-3) has exact derivatives that do not predict 10% drops. Retrains that diverge (NaN)
are left out and counted in ``n_diverged``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from magic_unlearn.analysis.stats import bootstrap_ci, pearson, spearman
from magic_unlearn.attribution.config import REVERSE_ONLY
from magic_unlearn.attribution.measurements import MeasureFn
from magic_unlearn.attribution.trajectory import train_trajectory
from magic_unlearn.config import config_hash
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.io import atomic_write_json, bytes_hash, read_json

UNITS = ("doc", "token")
PREDICTION = "predicted change = sum over dropped units of (-score) (first-order, w: 1 -> 0)"


def _measure(meas: Any, model: nn.Module) -> float:
    """Evaluate a measurement (a callable ``model -> scalar loss``) without gradients."""
    fn = meas if callable(meas) else getattr(meas, "loss", None)
    if fn is None:
        raise TypeError(f"measurement {meas!r} is not callable (expected model -> scalar loss)")
    with torch.no_grad():
        v = fn(model)
    return float(v.detach().double().item() if isinstance(v, torch.Tensor) else v)


def draw_subset(n_units: int, alpha: float, seed: int, m: int) -> np.ndarray:
    """Indices of the units dropped in subset ``m`` (deterministic in (seed, m))."""
    k = max(1, int(round(alpha * n_units)))
    if not 0 < alpha < 1 or k >= n_units:
        raise ValueError(
            f"alpha={alpha} drops {k} of {n_units} units; use 0 < alpha < 1 with "
            f"enough units (more documents, or --unit token)"
        )
    rng = np.random.default_rng([int(seed), int(m)])
    return np.sort(rng.choice(n_units, size=k, replace=False))


def _units(corpus: TokenizedCorpus, unit: str) -> np.ndarray:
    """Unit index -> (row) for docs or (row, col) pairs of scored tokens."""
    if unit == "doc":
        return np.arange(len(corpus))
    if unit == "token":
        return np.argwhere(corpus.loss_mask.numpy() > 0)  # (n_units, 2)
    raise ValueError(f"unit={unit!r}; choose from {UNITS}")


def _weights(
    corpus: TokenizedCorpus,
    units: np.ndarray,
    dropped: np.ndarray,
    unit: str,
) -> torch.Tensor:
    w = torch.ones(corpus.input_ids.shape, dtype=torch.float64)
    if unit == "doc":
        w[torch.as_tensor(units[dropped])] = 0.0
    else:
        rc = torch.as_tensor(units[dropped])
        w[rc[:, 0], rc[:, 1]] = 0.0
    return w


def _unit_scores(s: Any, corpus: TokenizedCorpus, units: np.ndarray, unit: str) -> np.ndarray:
    """Per-unit scores: per-document sums over scored tokens, or per-token scores."""
    if hasattr(s, "scores") and hasattr(s, "mask"):  # a ScoreSet
        s = s.scores
    a = s.detach().cpu().double().numpy() if isinstance(s, torch.Tensor) else np.asarray(s, float)
    if a.shape != tuple(corpus.input_ids.shape):
        raise ValueError(
            f"scores shape {a.shape} does not match the corpus {tuple(corpus.input_ids.shape)}"
        )
    a = np.where(corpus.loss_mask.numpy() > 0, a, 0.0)
    return a.sum(1) if unit == "doc" else a[units[:, 0], units[:, 1]]


def _model_for_run(model_factory: Callable[[], nn.Module] | nn.Module) -> nn.Module:
    return model_factory() if not isinstance(model_factory, nn.Module) else model_factory


def lds(
    model_factory: Callable[[], nn.Module] | nn.Module,
    corpus: TokenizedCorpus,
    measurements: MeasureFn | Mapping[str, MeasureFn],
    traj_cfg: Any,
    scores: Mapping[str, Any],
    alpha: float = 0.1,
    n_subsets: int = 32,
    unit: str = "doc",
    seed: int = 0,
    bootstrap: int = 1000,
    out: str | Path | None = None,
    score_measurement: Mapping[str, str] | None = None,
    train_fn: Callable[..., nn.Module] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Linear datamodeling score of several score sets over the same retrained subsets.

    Args:
        model_factory: the model at the start of the trajectory, or a zero-argument function
            returning it (the training function must not modify it in place).
        corpus: the trajectory's training rows (the scored corpus).
        measurements: a measurement ``model -> eval loss`` (evaluated without gradients; a
            tensor or a number), or ``{name: measurement}``.
        traj_cfg: the trajectory config the scores were computed for.
        scores: ``{name: (N, L) tensor | ScoreSet}``. With several measurements, each name is
            matched to one by ``score_measurement[name]`` or by its ``method:query`` suffix.
        alpha: fraction of units dropped per subset (MAGIC default 0.1).
        n_subsets: M, the number of retrained subsets.
        unit: ``"doc"`` (drop whole documents) or ``"token"`` (drop single target tokens).
        seed: subset seed; subset m drops ``draw_subset(n_units, alpha, seed, m)``.
        bootstrap: bootstrap resamples for the Spearman interval (0: none).
        out: folder for ``cache/`` (per-subset losses, resumable) and ``lds.json``.
        score_measurement: explicit score-name -> measurement-name map.
        train_fn: ``train_fn(model, corpus, cfg, token_weights=w) -> trained model``; default
            ``magic_unlearn.attribution.trajectory.train_trajectory``.
        progress: tqdm bar over subsets.

    Returns:
        ``{"results": {name: {"measurement", "spearman", "ci", "pearson", "predicted"}},
        "actual": {measurement: [change per subset]}, "base_losses", ...}``.
    """
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r}; choose from {UNITS}")
    if train_fn is None:
        train_fn = train_trajectory
    meas = dict(measurements) if isinstance(measurements, Mapping) else {"loss": measurements}
    if not scores:
        raise ValueError("no score sets given")
    smap: dict[str, str] = {}
    for name in scores:
        if score_measurement and name in score_measurement:
            smap[name] = score_measurement[name]
        elif len(meas) == 1:
            smap[name] = next(iter(meas))
        else:
            smap[name] = name.rsplit(":", 1)[-1]
        if smap[name] not in meas:
            raise ValueError(
                f"score set {name!r} maps to measurement {smap[name]!r}, which is "
                f"not among {sorted(meas)}; pass score_measurement={{name: query}}"
            )

    units = _units(corpus, unit)
    n_units = len(units)
    unit_scores = {name: _unit_scores(s, corpus, units, unit) for name, s in scores.items()}
    subsets = [draw_subset(n_units, alpha, seed, m) for m in range(n_subsets)]

    cache = Path(out) / "cache" if out is not None else None
    key = {
        "corpus_hash": corpus.content_hash(),
        # fields that change only the reverse pass do not change a retrain
        "traj": config_hash(traj_cfg, exclude=REVERSE_ONLY),
        "unit": unit,
        "alpha": alpha,
        "seed": seed,
        "measurements": sorted(meas),
    }
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        kp = cache / "key.json"
        if kp.exists() and read_json(kp) != key:
            raise ValueError(
                f"{kp}: this LDS cache was made for other inputs ({read_json(kp)}); "
                f"use a new --out folder or delete {cache}"
            )
        atomic_write_json(kp, key)

    def run(tag: str, w: torch.Tensor | None, drop_hash: str) -> dict[str, float]:
        path = cache / f"{tag}.json" if cache is not None else None
        if path is not None and path.exists():
            rec = read_json(path)
            if rec.get("dropped_hash") == drop_hash and set(rec["losses"]) >= set(meas):
                return rec["losses"]
        t0 = time.time()
        model = _model_for_run(model_factory)
        if w is not None:
            p0 = next(model.parameters())
            w = w.to(p0.device)
        trained = train_fn(model, corpus, traj_cfg, token_weights=w)
        losses = {k: _measure(f, trained) for k, f in meas.items()}
        del trained
        if path is not None:
            atomic_write_json(
                path, {"dropped_hash": drop_hash, "losses": losses, "wall_s": time.time() - t0}
            )
        return losses

    it: Any = range(n_subsets)
    base = run("base", None, "none")
    if progress:
        it = tqdm(it, desc=f"LDS retrain ({unit}, alpha={alpha})")
    actual: dict[str, list[float]] = {k: [] for k in meas}
    t0 = time.time()
    for m in it:
        d = subsets[m]
        losses = run(f"subset_{m:04d}", _weights(corpus, units, d, unit), bytes_hash(d.tobytes()))
        for k in meas:
            actual[k].append(losses[k] - base[k])
    # a diverged retrain (NaN/inf loss) says nothing about the scores: drop it, report the count
    bad = {k: [m for m, v in enumerate(vals) if not np.isfinite(v)] for k, vals in actual.items()}
    for k, ms in bad.items():
        if ms:
            warnings.warn(
                f"LDS: {len(ms)} of {n_subsets} retrains gave a non-finite {k} loss "
                f"(diverged trajectory?); they are left out",
                stacklevel=2,
            )
    if not all(np.isfinite(v) for v in base.values()):
        raise ValueError(
            f"LDS: the full-data trajectory gives non-finite losses {base}; "
            f"the trajectory diverges (lower the learning rate)"
        )
    results: dict[str, Any] = {}
    for name, us in unit_scores.items():
        ok = [m for m in range(n_subsets) if m not in set(bad[smap[name]])]
        pred = np.array([-us[subsets[m]].sum() for m in ok])  # linear datamodel prediction
        act = np.array([actual[smap[name]][m] for m in ok])
        lo, hi = bootstrap_ci(pred, act, spearman, n_boot=bootstrap, seed=seed)
        results[name] = {
            "measurement": smap[name],
            "spearman": spearman(pred, act),
            "ci": [lo, hi],
            "pearson": pearson(pred, act),
            "n_used": len(ok),
            "predicted": pred.tolist(),
        }
    res = {
        "unit": unit,
        "alpha": alpha,
        "n_subsets": n_subsets,
        "n_units": n_units,
        "units_dropped": len(subsets[0]),
        "seed": seed,
        "bootstrap": bootstrap,
        "prediction": PREDICTION,
        "base_losses": base,
        "n_diverged": {k: len(v) for k, v in bad.items()},
        "actual": actual,
        "results": results,
        "wall_s": time.time() - t0,
    }
    if out is not None:
        atomic_write_json(Path(out) / "lds.json", res)
    return res


def lds_markdown(res: dict[str, Any]) -> str:
    """A markdown table of :func:`lds` results, one row per score set."""
    lines = [
        f"LDS: unit={res['unit']}, alpha={res['alpha']}, {res['n_subsets']} subsets "
        f"(dropping {res['units_dropped']} of {res['n_units']} units each); "
        f"{res['prediction']}.",
        "",
        "| score set | measurement | LDS (Spearman) | 95% CI | Pearson | subsets used |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["results"].items():
        lines.append(
            f"| {name} | {r['measurement']} | {r['spearman']:.3f} | "
            f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['pearson']:.3f} | "
            f"{r.get('n_used', res['n_subsets'])} |"
        )
    return "\n".join(lines) + "\n"
