"""Can these scores be trusted? The trust report that ``attribute`` adds to every MAGIC artifact.

MAGIC scores are exact derivatives d f / d w_i at w = 1, but a derivative is only useful as far
as f is linear in w, and only as exact as the arithmetic that computed it. Three cheap checks
(``TrajectoryConfig.trust``; the thresholds are the constants below, docs/benchmarks.md shows
the measurements they come from):

(a) **smoothness** (metasmoothness; Engstrom et al. 2025, "Optimizing ML Training with
    Metagradient Descent", Def. 2, here measured on the eval loss): along a few random
    drop-directions v (-1 on a random 10% of the documents), the trajectory is retrained at
    weights w = 1 + h v for step sizes h (h = 1 drops those documents) and the change of each
    eval loss is compared with the first-order prediction h <s, v>. Per step size the report
    gives the relative error |actual - predicted| / |predicted| (worst direction; the
    denominator floored at a tenth of the RMS prediction over the directions) and the ratio actual /
    predicted. The linear regime's extent is the largest h up to which the error is <= 0.5.
    With the final parameters of those runs it also gives the movement-weighted sign agreement
    of consecutive parameter differences (Def. 2 of the paper), a high-dimensional smoothness
    number. The status comes from the smallest h and the first agreement.
(b) **precision**: the first reverse steps are recomputed in float64 (``prefix.py``), and a few
    later ones (``TrustConfig.precision_samples``, from the run's own states and from the
    float64 trajectory's, which also sees the error of the run's rounded states); the run
    precision's largest relative error on the last two prefix steps (never step 0, AdamW's
    worst; the prefix steps are replaced) and on the sampled later steps estimates its error
    on the steps that keep the run's precision.
(c) **replay drift**: the largest difference between a replayed state and the recorded one,
    in units of a training update (``replay.py``).

Verdict: the worst of the three statuses, ``reliable`` < ``doubtful`` < ``unreliable``. A check
that did not run (disabled, a float64 run, no replays) does not count; none ran: ``unchecked``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from magic_unlearn.attribution.config import TrustConfig
from magic_unlearn.attribution.measurements import MeasureFn
from magic_unlearn.attribution.replay import Replay
from magic_unlearn.attribution.trajectory import iter_steps
from magic_unlearn.data import TokenizedCorpus

logger = logging.getLogger(__name__)

VERDICTS = ("reliable", "doubtful", "unreliable")
UNCHECKED = "unchecked"  # no check ran (trust off, float64 run without replays)
# (a) smoothness, two numbers (docs/benchmarks.md, "Issue 14", has the measurements):
# - the worst relative error of the first-order prediction over directions and queries at the
#   smallest step size (default h = 0.01: a 1% down-weighting of 10% of the documents). Even a
#   smooth AdamW run is not linear below it (eps-sized gradient coordinates saturate): on the
#   tiny world AdamW 1e-4 with warmup reads 0.01-0.3 there (float64 alike), SGD lr 0.3 reads 0.2-3
#   with wrong-sign predictions;
# - the parameter sign agreement of the first two step sizes (Engstrom et al. 2025, Def. 2,
#   :func:`sign_agreement`), high-dimensional and so far less noisy: AdamW 1e-4 with warmup
#   0.996, SGD lr 0.3 0.70.
# Larger steps give the linear regime's extent; they are reported, not judged: dropping 10% of
# the documents (h = 1) is off by up to ~10x even on the smoothest trajectory measured.
LINEAR_TOL = 0.5  # first-order error within which the prediction counts as holding
FLOOR = 0.1  # error denominators >= FLOOR * RMS prediction over the directions
SMOOTH_RELIABLE = 0.5  # reliable: error <= this at the smallest step size ...
PARAM_RELIABLE = 0.9  # ... and parameter sign agreement >= this
SMOOTH_DOUBTFUL = 1.0  # unreliable: error > this at the smallest step size ...
PARAM_DOUBTFUL = 0.8  # ... or parameter sign agreement < this; doubtful in between
# (b) precision: run precision's relative error on a recomputed reverse step (after step 0)
PRECISION_RELIABLE = 0.02
PRECISION_DOUBTFUL = 0.2
# (c) replay drift in units of a training update (fp32 nondeterminism reads ~1e-7)
DRIFT_RELIABLE = 0.01

THRESHOLDS = {
    "linear_tol": LINEAR_TOL,
    "smoothness": {
        "reliable": f"error <= {SMOOTH_RELIABLE} at the smallest step size and parameter sign "
        f"agreement >= {PARAM_RELIABLE}",
        "doubtful": f"error <= {SMOOTH_DOUBTFUL} and agreement >= {PARAM_DOUBTFUL}",
    },
    "precision": {
        "reliable": f"per-step error <= {PRECISION_RELIABLE}",
        "doubtful": f"per-step error <= {PRECISION_DOUBTFUL}",
    },
    "drift": {"reliable": f"drift <= {DRIFT_RELIABLE}", "doubtful": "drift <= drift_tol"},
}


class UntrustworthyScoresError(ValueError):
    """``trust.strict`` is on and the trust verdict of the scores is not ``reliable``."""


def worst(statuses: list[str]) -> str:
    """The worst of some verdicts (``reliable`` when there are none)."""
    return max(statuses, key=VERDICTS.index, default="reliable")


# ------------------------------------------------------------------------------ (a) smoothness
def drop_directions(corpus: TokenizedCorpus, cfg: TrustConfig) -> list[Tensor]:
    """``cfg.directions`` (N, L) float64 directions: -1 on a random ``cfg.fraction`` of the units.

    A unit is a document (every scored token of a row) or a single scored token.
    """
    mask = corpus.loss_mask > 0
    n, length = mask.shape
    out = []
    for d in range(cfg.directions):
        g = torch.Generator().manual_seed(int(cfg.seed) * 7919 + d)
        v = torch.zeros(n, length, dtype=torch.float64)
        if cfg.unit == "doc":
            k = max(1, round(cfg.fraction * n))
            v[torch.randperm(n, generator=g)[:k]] = -1.0
        else:
            idx = mask.nonzero()  # (n_tokens, 2)
            k = max(1, round(cfg.fraction * len(idx)))
            pick = idx[torch.randperm(len(idx), generator=g)[:k]]
            v[pick[:, 0], pick[:, 1]] = -1.0
        out.append(v * mask)
    return out


def rel_error(actual: float, predicted: float, floor: float = 0.0) -> float:
    """|actual - predicted| / max(|predicted|, floor) (inf for a zero denominator)."""
    den = max(abs(predicted), floor)
    if den == 0:
        return 0.0 if actual == predicted else math.inf
    return abs(actual - predicted) / den


def sign_agreement(theta0: list[Tensor], theta1: list[Tensor], theta2: list[Tensor]) -> float:
    """Movement-weighted sign agreement of consecutive finite differences of the parameters.

    ``sum_j |theta2 - theta0|_j sign(theta1 - theta0)_j sign(theta2 - theta1)_j / sum_j
    |theta2 - theta0|_j`` for the final parameters of three runs at weights 1 + h0 v, 1 + h1 v,
    1 + h2 v with h0 < h1 < h2 (Engstrom et al. 2025, Def. 2, there with h2 = 2 h1): 1 when
    the parameters respond linearly to the weights along v, ~0 when the response is rough.
    """
    num = den = 0.0
    for a, b, c in zip(theta0, theta1, theta2, strict=True):
        a, b, c = a.double(), b.double(), c.double()
        d = (c - a).abs()
        num += float((d * torch.sign(b - a) * torch.sign(c - b)).sum())
        den += float(d.sum())
    return num / den if den > 0 else 1.0


def smoothness(
    retrain: Callable[[Tensor], Mapping[str, float] | tuple[Mapping[str, float], list[Tensor]]],
    base: Mapping[str, float],
    scores: Mapping[str, Tensor],
    directions: list[Tensor],
    step_sizes: list[float],
    theta_end: list[Tensor] | None = None,
) -> dict[str, Any]:
    """First-order predictions vs retraining along ``directions`` at each step size.

    Args:
        retrain: token weights (N, L) -> eval losses after the trajectory with those weights,
            or (eval losses, final trained tensors) for the parameter check.
        base: eval losses of the trajectory at w = 1.
        scores: per query (N, L) token scores d f / d w.
        directions: (N, L) weight directions v.
        step_sizes: h; the trajectory is retrained at w = 1 + h v.
        theta_end: the final trained tensors at w = 1; with it (and tensors from ``retrain``),
            :func:`sign_agreement` of each consecutive triple of step sizes (from h = 0).

    Returns:
        ``{"points": [{direction, h, query, predicted, actual, rel_err}], "per_query":
        {q: {"rel_err": [worst per h], "ratio": [median actual / predicted per h],
        "sign_agree": [share of points per h with the predicted sign], "linear_extent"}},
        "param_agreement": [per step pair (0, h1, h2), (h1, h2, h3), ...: the worst direction's
        sign agreement] or None}``.
    """
    hs = sorted(step_sizes)
    points = []
    agree: list[list[float]] = []
    for d, v in enumerate(directions):
        thetas = [theta_end]
        for h in hs:
            res = retrain(1.0 + h * v)
            f, theta = res if isinstance(res, tuple) else (res, None)
            thetas.append(theta)
            for q, s in scores.items():
                pred = h * float((s.detach().double().cpu() * v).sum())
                act = float(f[q]) - float(base[q])
                points.append(
                    {"direction": d, "h": h, "query": q, "predicted": pred, "actual": act}
                )
        if all(t is not None for t in thetas) and len(thetas) >= 3:
            agree.append([sign_agreement(*thetas[i : i + 3]) for i in range(len(thetas) - 2)])
    # error relative to the prediction, floored at a tenth of the RMS prediction over the
    # directions: a direction nearly orthogonal to the scores predicts ~0 and would read as an
    # unbounded error (a higher floor hid wrong-sign predictions of SGD lr 0.3, measured)
    for q in scores:
        for h in hs:
            pts = [p for p in points if p["query"] == q and p["h"] == h]
            rms = math.sqrt(sum(p["predicted"] ** 2 for p in pts) / len(pts))
            for p in pts:
                p["rel_err"] = rel_error(p["actual"], p["predicted"], FLOOR * rms)
    per_query: dict[str, Any] = {}
    for q in scores:
        errs, ratios, signs = [], [], []
        for h in hs:
            pts = [p for p in points if p["query"] == q and p["h"] == h]
            errs.append(max(p["rel_err"] for p in pts))
            rs = sorted(p["actual"] / p["predicted"] for p in pts if p["predicted"] != 0)
            ratios.append(rs[len(rs) // 2] if rs else math.nan)
            signs.append(sum(p["actual"] * p["predicted"] > 0 for p in pts) / len(pts))
        extent = 0.0
        for h, e in zip(hs, errs, strict=True):
            if e > LINEAR_TOL:
                break
            extent = h
        per_query[q] = {
            "rel_err": errs,
            "ratio": ratios,
            "sign_agree": signs,
            "linear_extent": extent,
        }
    param = [min(a[i] for a in agree) for i in range(len(agree[0]))] if agree else None
    return {"step_sizes": hs, "points": points, "per_query": per_query, "param_agreement": param}


def smoothness_status(sm: dict[str, Any]) -> str:
    """reliable / doubtful / unreliable from :func:`smoothness` (worst query, worst direction)."""
    err = max(r["rel_err"][0] for r in sm["per_query"].values())  # the smallest step size
    agree = (sm.get("param_agreement") or [None])[0]
    if err > SMOOTH_DOUBTFUL or (agree is not None and agree < PARAM_DOUBTFUL):
        return "unreliable"
    if err <= SMOOTH_RELIABLE and (agree is None or agree >= PARAM_RELIABLE):
        return "reliable"
    return "doubtful"


# ------------------------------------------------------------------------------ (b), (c)
def precision_status(prec: dict[str, Any] | None) -> tuple[str | None, float | None]:
    """(status, estimated per-step error) from the float64 prefix report (None: not checked).

    The estimate is the largest error of the last two recomputed steps (never step 0): the
    steps nearest those that keep the run's precision, where AdamW is best conditioned
    within the prefix (its errors fall as the second moment grows; the earlier steps are
    replaced), and the sampled later steps (``prec["samples"]``: a run can be worse after the
    prefix than at its end), from the run's own states and from the float64 trajectory's. With one recomputed step and no samples the precision is not
    checked.
    """
    if prec is None:
        return None, None
    k = prec.get("steps", 0)
    errs = (
        [e for r in prec["queries"].values() for e in r["step_rel_err"][max(1, k - 2) :]]
        if k >= 2
        else []
    )
    errs += [
        e
        for r in (prec.get("samples") or {}).get("queries", {}).values()
        for e in r["step_rel_err"] + r.get("trajectory_rel_err", [])
        if not math.isnan(e)
    ]
    if not errs:
        return None, None
    est = max(errs)
    if not math.isfinite(est) or est > PRECISION_DOUBTFUL:
        return "unreliable", est
    return ("reliable" if est <= PRECISION_RELIABLE else "doubtful"), est


def drift_status(max_drift: float, replayed: int, drift_limit: float) -> str | None:
    """reliable / doubtful from the largest replay drift (None when nothing was replayed)."""
    if replayed == 0:
        return None
    return "reliable" if max_drift <= DRIFT_RELIABLE else "doubtful"


# ------------------------------------------------------------------------------ the report
def trust_report(
    smooth: dict[str, Any] | None,
    precision: dict[str, Any] | None,
    max_drift: float,
    replayed: int,
    drift_limit: float,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The trust report (JSON-safe): each check with its status, the verdict, the thresholds."""
    checks: dict[str, Any] = {}
    if smooth is not None:
        checks["smoothness"] = {"status": smoothness_status(smooth), **smooth}
    else:
        checks["smoothness"] = {"status": None}
    p_status, est = precision_status(precision)
    checks["precision"] = {"status": p_status, "per_step_error": est, **(precision or {})}
    checks["drift"] = {
        "status": drift_status(max_drift, replayed, drift_limit),
        "max_drift": max_drift,
        "replayed_steps": replayed,
        "drift_tol": drift_limit,
    }
    ran = [c["status"] for c in checks.values() if c["status"] is not None]
    verdict = worst(ran) if ran else UNCHECKED
    return {
        "verdict": verdict,
        "checks": checks,
        "thresholds": THRESHOLDS,
        "notes": list(notes or []),
        "summary": summary_line({"verdict": verdict, "checks": checks}),
    }


def _g(x: Any) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.2g}"


def summary_line(report: dict[str, Any]) -> str:
    """One line: the verdict and the key numbers of each check."""
    c = report["checks"]
    parts = [f"trust: {report['verdict']}"]
    sm = c.get("smoothness") or {}
    if sm.get("status") is not None:
        hs = sm["step_sizes"]
        errs = [max(r["rel_err"][i] for r in sm["per_query"].values()) for i in range(len(hs))]
        extent = min(r["linear_extent"] for r in sm["per_query"].values())
        agree = sm.get("param_agreement")
        parts.append(
            "smoothness "
            + sm["status"]
            + " (first-order error "
            + ", ".join(f"{_g(e)} at h={h:g}" for h, e in zip(hs, errs, strict=True))
            + (f"; holds up to h={extent:g}" if extent else "; holds at no tested h")
            + (f"; parameter sign agreement {agree[0]:.3f}" if agree else "")
            + ")"
        )
    pr = c.get("precision") or {}
    if pr.get("status") is not None:
        parts.append(
            f"precision {pr['status']} (per-step error {_g(pr['per_step_error'])} vs float64)"
        )
    dr = c.get("drift") or {}
    if dr.get("status") is not None:
        parts.append(f"replay drift {dr['status']} ({_g(dr['max_drift'])} of an update)")
    return "; ".join(parts)


def trust_markdown(report: dict[str, Any] | None, name: str = "scores") -> list[str]:
    """Markdown lines of a trust report (for ``analyze`` and the pipeline report)."""
    if not report:
        return [f"{name}: no trust report (not a MAGIC artifact, or trust.enabled was off)."]
    lines = [f"**{name}: {report['verdict']}**. {report.get('summary', '')}", ""]
    sm = report["checks"].get("smoothness") or {}
    if sm.get("status") is not None:
        hs = sm["step_sizes"]
        lines += [
            "| query | " + " | ".join(f"error at h={h:g}" for h in hs) + " | actual / predicted "
            f"(median, largest h) | error <= {LINEAR_TOL} up to h |",
            "|---|" + "---|" * (len(hs) + 2),
        ]
        for q, r in sm["per_query"].items():
            lines.append(
                f"| {q} | "
                + " | ".join(_g(e) for e in r["rel_err"])
                + f" | {_g(r['ratio'][-1])} | {_g(r['linear_extent'])} |"
            )
        lines.append("")
        if sm.get("param_agreement"):
            lines += [
                "Parameter sign agreement of consecutive step sizes (1 = linear response, "
                "worst direction): "
                + ", ".join(
                    f"{a:.3f} for h = {h0:g} / {h1:g} / {h2:g}"
                    for a, h0, h1, h2 in zip(
                        sm["param_agreement"], [0.0, *hs], hs, hs[1:], strict=False
                    )
                ),
                "",
            ]
    pr = report["checks"].get("precision") or {}
    if pr.get("queries"):
        lines.append(
            f"Float64 prefix ({pr['steps']} steps): "
            + "; ".join(
                f"{q}: step errors {', '.join(_g(e) for e in r['step_rel_err'])}, scores changed "
                f"by {_g(r['total_rel_change'])} (Pearson {_g(r['total_pearson'])})"
                for q, r in pr["queries"].items()
            )
        )
        smp = pr.get("samples")
        if smp:
            lines.append(
                f"Later steps {', '.join(str(t) for t in smp['steps'])} recomputed in float64: "
                + "; ".join(
                    f"{q}: step errors {', '.join(_g(e) for e in r['step_rel_err'])} from the "
                    "run's states"
                    + (
                        f", {', '.join(_g(e) for e in r['trajectory_rel_err'])} from the float64 "
                        "trajectory's"
                        if r.get("trajectory_rel_err")
                        else ""
                    )
                    for q, r in smp["queries"].items()
                )
            )
        lines.append("")
    for n in report.get("notes") or []:
        lines.append(f"- {n}")
    return lines


def live_retrain(
    replay: Replay, measurements: Mapping[str, MeasureFn]
) -> Callable[[Tensor], tuple[dict[str, float], list[Tensor]]]:
    """Retrain the run's trajectory in place with other token weights; returns the eval losses
    and the final trained tensors (copied to the CPU).

    Uses the replay's live state, data order and (CUDA-graphed) training step, starting from
    the stored s_0; call ``replay.store.load_into(replay.top[0][1], replay.live)`` afterwards
    to leave the model at theta_0.
    """
    key0 = replay.top[0][1]  # every checkpointing mode stores s_0 first

    def run(w: Tensor) -> tuple[dict[str, float], list[Tensor]]:
        replay.store.load_into(key0, replay.live)
        steps = iter_steps(
            replay.model,
            replay.params,
            replay.bufs,
            replay.opt,
            replay.batches,
            replay.cfg,
            0,
            replay.T,
            token_weights=w,
            grad_fn=replay.grads,
        )
        for _ in steps:
            pass
        with torch.no_grad():
            losses = {q: float(fn(replay.model)) for q, fn in measurements.items()}
        return losses, [p.detach().to("cpu", copy=True) for p in replay.params]

    return run


def run_checks(
    replay: Replay,
    measurements: Mapping[str, MeasureFn],
    scores: Mapping[str, Tensor],
    after: Mapping[str, float],
    precision: dict[str, Any] | None,
    notes: list[str] | None = None,
    theta_end: list[Tensor] | None = None,
) -> dict[str, Any]:
    """The trust report of a finished MAGIC run (its live state at s_0; left there).

    Args:
        replay: the run's replay (store still open).
        measurements: the eval losses f.
        scores: per query (N, L) final token scores.
        after: f at the end of the recorded trajectory (w = 1).
        precision: the float64 prefix report, or None.
        notes: extra lines for the report.
        theta_end: the final trained tensors of the recorded run (for the parameter check).
    """
    cfg = replay.cfg.trust
    smooth = None
    if cfg.enabled:
        dirs = drop_directions(replay.batches.corpus, cfg)
        try:
            smooth = smoothness(
                live_retrain(replay, measurements), after, scores, dirs, cfg.step_sizes, theta_end
            )
        finally:
            replay.store.load_into(replay.top[0][1], replay.live)
    return trust_report(
        smooth, precision, replay.max_drift, replay.replayed, replay.cfg.drift_limit, notes
    )


def enforce(report: dict[str, Any], cfg: TrustConfig) -> None:
    """Warn when the verdict is not ``reliable``; raise under ``cfg.strict``."""
    if report["verdict"] in ("reliable", UNCHECKED):
        logger.info("%s", report["summary"])
        return
    hints = {
        "smoothness": f"a first-order error above {LINEAR_TOL} means the scores do not predict "
        "what retraining does at that weight change; smoother trajectories (lower lr, warmup) "
        "give more linear runs",
        "precision": "the run precision's reverse steps disagree with float64; bf16 and tf32 "
        "errors are in every step: run the trajectory in fp32 (its float64 prefix covers "
        "AdamW's warmup; lengthen it with float64_prefix where the steps after it are still "
        "ill-conditioned, or condition AdamW with eps 1e-6) or float64",
        "drift": "replays drift from the recorded run (nondeterministic kernels); use "
        "checkpointing=every or deterministic attention",
    }
    bad = [
        hints[k] for k, c in report["checks"].items() if c.get("status") not in (None, "reliable")
    ]
    msg = (
        f"MAGIC scores are {report['verdict'].upper()}: {report['summary']}. "
        + "; ".join(bad)
        + " (README: 'Trusting the scores')"
    )
    if cfg.strict:
        raise UntrustworthyScoresError(msg + "; refused (trust.strict)")
    logger.warning("%s", msg)


__all__ = [
    "THRESHOLDS",
    "UNCHECKED",
    "VERDICTS",
    "UntrustworthyScoresError",
    "drop_directions",
    "enforce",
    "live_retrain",
    "rel_error",
    "run_checks",
    "sign_agreement",
    "smoothness",
    "summary_line",
    "trust_markdown",
    "trust_report",
    "worst",
]
