"""The attribution analysis: the four questions, ground truth, ``report.md`` + PNGs + metrics.

Sign convention (``magic_unlearn.SIGN_CONVENTION``): a score is d(eval loss)/d(token weight), so
NEGATIVE scores are proponents (the token *teaches* the query) and positive ones detractors.
Throughout, "teaches hazard" means ``h < -t_h`` and "teaches general" means ``g < -t_g`` with
thresholds ``t = 0`` or ``t = k * median|score|`` (robust noise level).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import magic_unlearn
from magic_unlearn.analysis import plots
from magic_unlearn.analysis.scores import ScoreSet, as_score_sets, check_same_units, pick_pair
from magic_unlearn.analysis.stats import (
    mass_concentration,
    pearson,
    precision_at_k,
    robust_scale,
    roc_auc,
    spearman,
)
from magic_unlearn.attribution.trust import trust_markdown
from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD
from magic_unlearn.io import atomic_dir, atomic_write_json, atomic_write_text

QUADRANT_FORMULA = (
    "teaches hazard: h < -t_h; teaches general: g < -t_g; harms general: g > t_g. "
    "purely hazard = teaches hazard AND NOT teaches general (g >= -t_g); "
    "t = 0 or t = k * median|score| over scored tokens"
)
RANK_FORMULA = (
    "rank_i = (-H_i) - alpha * (-G_i) = alpha * G_i - H_i, with H_i, G_i the sums of the hazard / "
    "general token scores of example i (its example-weight derivatives); high = teaches hazard "
    "and does not teach general"
)
COMBO_FORMULA = (
    "combined_raw = -h + alpha * g; combined_scaled = -h / median|h| + alpha * g / median|g| "
    "(high = teaches hazard, not general)"
)


# ----------------------------------------------------------------------------- the questions
def correlations(hz: ScoreSet, gn: ScoreSet) -> dict[str, float]:
    """Q1: Pearson and Spearman correlation of hazard vs general scores, per token and example."""
    h, g = hz.flat(), gn.flat()
    H, G = hz.per_example(), gn.per_example()
    return {
        "token_pearson": pearson(h, g),
        "token_spearman": spearman(h, g),
        "example_pearson": pearson(H, G),
        "example_spearman": spearman(H, G),
        "n_tokens": int(h.size),
        "n_examples": int(H.size),
    }


def quadrants(h: np.ndarray, g: np.ndarray, t_h: float = 0.0, t_g: float = 0.0) -> dict[str, Any]:
    """Q2: 3x3 table of (hazard: teaches/neutral/harms) x (general: teaches/neutral/harms).

    Returns counts, fractions and named cells: ``purely_hazard`` (teaches hazard, does not teach
    general), of which ``hazard_harms_general`` (teaches hazard, harms general); ``both``;
    ``general_only``; and the share of the total hazard-teaching mass sum(-h | h < -t_h) held by
    purely-hazard tokens (``purely_hazard_mass_frac``).
    """
    n = h.size
    th, tg = h < -t_h, g < -t_g
    hh, hg = h > t_h, g > t_g
    h_state = np.where(th, 0, np.where(hh, 2, 1))  # 0 teaches, 1 neutral, 2 harms
    g_state = np.where(tg, 0, np.where(hg, 2, 1))
    table = np.zeros((3, 3), dtype=np.int64)
    np.add.at(table, (h_state, g_state), 1)
    pure = th & ~tg
    teach_mass = float(-h[th].sum())
    cells = {
        "purely_hazard": int(pure.sum()),
        "hazard_harms_general": int((th & hg).sum()),
        "both": int((th & tg).sum()),
        "general_only": int((tg & ~th).sum()),
        "neither": int((~th & ~tg).sum()),
        "teaches_hazard": int(th.sum()),
        "teaches_general": int(tg.sum()),
    }
    return {
        "t_h": float(t_h),
        "t_g": float(t_g),
        "n": int(n),
        "table_rows_hazard_cols_general": table.tolist(),
        "counts": cells,
        "fractions": {k: (v / n if n else float("nan")) for k, v in cells.items()},
        "purely_hazard_mass_frac": float(-h[pure].sum() / teach_mass)
        if teach_mass > 0
        else float("nan"),
    }


def example_aggregates(
    hz: ScoreSet,
    gn: ScoreSet,
    alpha: float = 1.0,
    top_k: int = 5,
    t_h: float = 0.0,
    t_g: float = 0.0,
) -> dict[str, Any]:
    """Q3: per-example sums, means, top-k mass, and the hazard-specific ranking (:data:`RANK_FORMULA`).

    ``topk_frac_*`` = share of an example's total |score| held by its ``top_k`` largest-|score|
    tokens; ``pure_mass_frac`` = share of an example's hazard-teaching mass (sum of -h over
    tokens with h < -t_h) held by tokens that do not teach general (g >= -t_g).
    """
    m = hz.mask
    n_tok = m.sum(axis=1)
    h = np.where(m, hz.scores, 0.0)
    g = np.where(m, gn.scores, 0.0)
    H, G = h.sum(1), g.sum(1)
    denom = np.maximum(n_tok, 1)
    k = max(1, int(top_k))

    def topk_frac(s: np.ndarray) -> np.ndarray:
        a = np.sort(np.abs(s), axis=1)[:, ::-1]
        tot = a.sum(1)
        return np.where(tot > 0, a[:, :k].sum(1) / np.where(tot > 0, tot, 1), np.nan)

    teach = m & (hz.scores < -t_h)
    pure = teach & ~(gn.scores < -t_g)
    teach_mass = np.where(teach, -hz.scores, 0).sum(1)
    pure_mass = np.where(pure, -hz.scores, 0).sum(1)
    rank = alpha * G - H
    order = np.argsort(-rank, kind="mergesort")
    return {
        "H_sum": H,
        "G_sum": G,
        "H_mean": H / denom,
        "G_mean": G / denom,
        "H_topk_frac": topk_frac(h),
        "G_topk_frac": topk_frac(g),
        "pure_mass_frac": np.where(
            teach_mass > 0, pure_mass / np.where(teach_mass > 0, teach_mass, 1), np.nan
        ),
        "n_tokens": n_tok,
        "rank": rank,
        "order": order,
        "top_k": k,
        "alpha": alpha,
    }


def magnitude_ratio(h: np.ndarray, g: np.ndarray) -> dict[str, Any]:
    """Q4: distribution of |h| / |g| per token (on tokens where both are nonzero) and overall."""
    nz = (h != 0) & (g != 0)
    lr = np.log10(np.abs(h[nz]) / np.abs(g[nz]))
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    qs = np.quantile(lr, q) if lr.size else [float("nan")] * len(q)
    sg = float(np.abs(g).sum())
    return {
        "overall_sum_ratio": float(np.abs(h).sum() / sg) if sg > 0 else float("inf"),
        "median_abs_ratio": (robust_scale(h) / robust_scale(g))
        if robust_scale(g) > 0
        else float("inf"),
        "token_ratio_quantiles": {
            f"q{int(p * 100):02d}": float(10**v) for p, v in zip(q, qs, strict=True)
        },
        "frac_tokens_hazard_larger": float((lr > 0).mean()) if lr.size else float("nan"),
        "n_tokens_used": int(nz.sum()),
        "n_tokens_zero": int((~nz).sum()),
        "log10_ratio": lr,
    }


def concentration(s: ScoreSet) -> dict[str, float]:
    """Number / fraction of tokens holding 50% and 90% of the total |score|; same for examples."""
    tok = mass_concentration(s.flat())
    ex = mass_concentration(s.per_example())
    return {
        **{f"token_{k}": v for k, v in tok.items()},
        **{f"example_{k}": v for k, v in ex.items()},
        "n_tokens": float(s.flat().size),
    }


def per_position(s: ScoreSet) -> dict[str, list[float]]:
    """Mean score, mean |score| and count per position j over scored tokens."""
    m = s.mask
    cnt = m.sum(0)
    keep = np.flatnonzero(cnt > 0)
    sc = np.where(m, s.scores, 0.0)
    mean = sc.sum(0)[keep] / cnt[keep]
    mean_abs = np.abs(sc).sum(0)[keep] / cnt[keep]
    return {
        "position": keep.tolist(),
        "count": cnt[keep].tolist(),
        "mean": mean.tolist(),
        "mean_abs": mean_abs.tolist(),
    }


def per_token_id(hz: ScoreSet, gn: ScoreSet, alpha: float = 1.0, top: int = 15) -> dict[str, Any]:
    """Per-token-id totals; the ids that teach hazard most and that are most hazard-specific."""
    ids = hz.input_ids[hz.mask]
    h, g = hz.flat(), gn.flat()
    uniq, inv = np.unique(ids, return_inverse=True)
    cnt = np.bincount(inv)
    Hs = np.bincount(inv, weights=h)
    Gs = np.bincount(inv, weights=g)

    def rows(order: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "token_id": int(uniq[i]),
                "count": int(cnt[i]),
                "hazard_sum": float(Hs[i]),
                "general_sum": float(Gs[i]),
                "hazard_mean": float(Hs[i] / cnt[i]),
                "general_mean": float(Gs[i] / cnt[i]),
            }
            for i in order[:top]
        ]

    return {
        "n_token_ids": int(uniq.size),
        "top_hazard_teaching": rows(np.argsort(Hs, kind="mergesort")),
        "top_hazard_specific": rows(np.argsort(-(alpha * Gs - Hs), kind="mergesort")),
    }


# ----------------------------------------------------------------------------- ground truth
def ground_truth_one(s: ScoreSet, ks: Sequence[int] = (100,)) -> dict[str, float]:
    """AUC / precision@k of ``-score`` (proponents first) for finding labelled fact tokens."""
    if s.labels is None:
        raise ValueError(f"{s.name}: no ground-truth labels (only world corpora have them)")
    m = s.mask & (s.labels >= 0)
    lab, teach = s.labels[m], -s.scores[m]
    hz_pos, gn_pos = lab == LABEL_HAZARD, lab == LABEL_GENERAL
    facts = hz_pos | gn_pos
    out = {
        "auc_hazard_vs_rest": roc_auc(teach, hz_pos),
        "auc_hazard_vs_general": roc_auc(teach[facts], hz_pos[facts]),
        "auc_general_vs_rest": roc_auc(teach, gn_pos),
        "n_hazard_fact": int(hz_pos.sum()),
        "n_general_fact": int(gn_pos.sum()),
        "n_tokens": int(lab.size),
        "p@R_hazard": precision_at_k(teach, hz_pos, int(hz_pos.sum())),
        "p@R_general": precision_at_k(teach, gn_pos, int(gn_pos.sum())),
        "base_rate_hazard": float(hz_pos.mean()) if lab.size else float("nan"),
    }
    for k in ks:
        out[f"p@{k}_hazard"] = precision_at_k(teach, hz_pos, int(k))
    # documents: a hazard document holds any hazard-fact token; ranked by total teaching value
    # (-sum of its token scores = -d f / d w_doc). NaN when every row is one kind (a forget-only
    # artifact); a run on forget + pretraining data has both (attribution ``mix``)
    row_lab = np.where(s.mask, s.labels, -1)
    doc_h = (row_lab == LABEL_HAZARD).any(1)
    out["auc_hazard_doc_vs_rest"] = roc_auc(-np.where(s.mask, s.scores, 0.0).sum(1), doc_h)
    out["n_hazard_docs"], out["n_docs"] = int(doc_h.sum()), int(doc_h.size)
    if s.fact_ids is not None and (s.fact_ids >= 0).any():
        # first token of each fact span: the one that carries the fact (later ones are cheap
        # continuations); AUC of those hazard tokens against all non-fact tokens
        f = s.fact_ids
        first = (f >= 0) & np.concatenate(
            [np.ones((f.shape[0], 1), bool), f[:, 1:] != f[:, :-1]], 1
        )
        first_m = first[m]
        keep = first_m | (lab == 0)
        out["auc_hazard_first_token_vs_other"] = roc_auc(teach[keep], (hz_pos & first_m)[keep])
    return out


def ground_truth_combo(
    hz: ScoreSet, gn: ScoreSet, alpha: float = 1.0, ks: Sequence[int] = (100,)
) -> dict[str, float]:
    """How well the hazard/general combination (:data:`COMBO_FORMULA`) separates hazard-fact
    from general-fact tokens (AUC), and finds hazard-fact tokens among all (AUC, precision@k)."""
    if hz.labels is None:
        raise ValueError(f"{hz.name}: no ground-truth labels")
    m = hz.mask & (hz.labels >= 0)
    lab, h, g = hz.labels[m], hz.scores[m], gn.scores[m]
    hz_pos = lab == LABEL_HAZARD
    facts = (lab == LABEL_HAZARD) | (lab == LABEL_GENERAL)
    sh, sg = robust_scale(h), robust_scale(g)
    out: dict[str, float] = {}
    for tag, c in (("raw", -h + alpha * g), ("scaled", -h / (sh or 1.0) + alpha * g / (sg or 1.0))):
        out[f"{tag}_auc_hazard_vs_general"] = roc_auc(c[facts], hz_pos[facts])
        out[f"{tag}_auc_hazard_vs_rest"] = roc_auc(c, hz_pos)
        out[f"{tag}_p@R_hazard"] = precision_at_k(c, hz_pos, int(hz_pos.sum()))
        for k in ks:
            out[f"{tag}_p@{k}_hazard"] = precision_at_k(c, hz_pos, int(k))
    # quadrant purity: share of hazard-fact tokens in the purely-hazard cell at t = 0
    pure = (h < 0) & (g >= 0)
    out["frac_hazard_fact_purely_hazard"] = (
        float(pure[hz_pos].mean()) if hz_pos.any() else float("nan")
    )
    gpos = lab == LABEL_GENERAL
    out["frac_general_fact_purely_hazard"] = (
        float(pure[gpos].mean()) if gpos.any() else float("nan")
    )
    return out


def ground_truth(
    artifacts: Any,
    alpha: float = 1.0,
    ks: Sequence[int] = (100,),
    hazard_query: str | None = None,
    general_query: str | None = None,
) -> dict[str, Any]:
    """Ground-truth metrics for several score artifacts (e.g. MAGIC, grad_sim, random) side by side.

    Args:
        artifacts: artifact folders / loaded artifacts / ScoreSets (or a list of them).
        alpha: weight of the general score in the combination.
        ks: extra cut-offs for precision@k.

    Returns:
        ``{"per_score_set": {name: metrics}, "combination": {method: metrics}}``.
    """
    sets = as_score_sets(artifacts)
    labelled = [s for s in sets if s.labels is not None]
    if not labelled:
        raise ValueError("no score set has ground-truth labels: ground truth needs a world corpus")
    per = {s.name: ground_truth_one(s, ks) for s in labelled}
    combo: dict[str, Any] = {}
    for method in dict.fromkeys(s.method for s in labelled):
        try:
            hz, gn = pick_pair(labelled, hazard_query, general_query, method=method)
        except ValueError:
            continue
        combo[method] = {
            "hazard": hz.name,
            "general": gn.name,
            **ground_truth_combo(hz, gn, alpha, ks),
        }
    return {
        "per_score_set": per,
        "combination": combo,
        "alpha": alpha,
        "combo_formula": COMBO_FORMULA,
    }


def ground_truth_markdown(gt: dict[str, Any]) -> str:
    """Markdown tables of :func:`ground_truth` output."""
    lines = [
        "| score set | AUC hazard-fact vs rest | AUC hazard vs general-fact | P@R hazard | "
        "AUC general-fact vs rest | AUC hazard doc vs rest |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in gt["per_score_set"].items():
        lines.append(
            f"| {name} | {_f(m['auc_hazard_vs_rest'])} | {_f(m['auc_hazard_vs_general'])} "
            f"| {_f(m['p@R_hazard'])} | {_f(m['auc_general_vs_rest'])} "
            f"| {_f(m.get('auc_hazard_doc_vs_rest'))} |"
        )
    if gt["combination"]:
        lines += [
            "",
            f"Combination (alpha = {gt['alpha']}; {gt['combo_formula']}):",
            "",
            "| method | raw AUC hazard vs general-fact | scaled AUC hazard vs general-fact | "
            "scaled P@R hazard | hazard-fact tokens purely hazard (t=0) | general-fact "
            "tokens purely hazard |",
            "|---|---|---|---|---|---|",
        ]
        for meth, m in gt["combination"].items():
            lines.append(
                f"| {meth} | {_f(m['raw_auc_hazard_vs_general'])} | "
                f"{_f(m['scaled_auc_hazard_vs_general'])} | {_f(m['scaled_p@R_hazard'])} | "
                f"{_f(m['frac_hazard_fact_purely_hazard'])} | "
                f"{_f(m['frac_general_fact_purely_hazard'])} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report
def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return "nan"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{nd}e}"
    return f"{x:.{nd}f}"


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items() if not isinstance(v, np.ndarray)}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else str(v)
    if isinstance(o, np.integer):
        return int(o)
    return o


def trust_reports(sets: Sequence[ScoreSet]) -> dict[str, Any]:
    """The trust reports of the score artifacts behind ``sets`` (``attribution/trust.py``),
    keyed by the score set names they cover (one report per artifact)."""
    groups: dict[int, tuple[list[str], dict[str, Any]]] = {}
    for s in sets:
        t = s.meta.get("trust")
        if isinstance(t, dict):
            groups.setdefault(id(t), ([], t))[0].append(s.name)
    return {", ".join(names): t for names, t in groups.values()}


def _decode(tokenizer: Any, tid: int) -> str:
    s = tokenizer.decode([int(tid)])
    return s.replace("|", "\\|").replace("\n", "\\n").replace("`", "'")


def analyze(
    artifacts: Any,
    out: str | Path,
    tokenizer: Any = None,
    is_world: bool = False,
    alpha: float = 1.0,
    k_noise: float = 3.0,
    hazard_query: str | None = None,
    general_query: str | None = None,
    method: str | None = None,
    top_k: int = 5,
    n_top: int = 20,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Analyse a hazard and a general score set; write ``report.md``, PNGs and ``metrics.json``.

    Args:
        artifacts: two artifacts (hazard, general) or one artifact with two queries; folder paths,
            loaded ``ScoreArtifact`` objects or :class:`ScoreSet` (a list of any of those). Extra
            artifacts (e.g. baselines of other methods) enter the ground-truth comparison.
        out: output folder, written atomically.
        tokenizer: used only to decode token ids on the hazard world (``is_world`` or labels
            present); real-data reports show token ids only, never text.
        is_world: the corpus is the synthetic world (allows decoded tokens).
        alpha: general weight in the example ranking (:data:`RANK_FORMULA`) and combination.
        k_noise: robust noise threshold multiplier, t = k_noise * median|score|.
        hazard_query, general_query, method: pick the pair explicitly (see ``pick_pair``).
        top_k: tokens per example in the top-k mass.
        n_top: rows in the report's ranked tables.
        overwrite: replace an existing ``out``.

    Returns:
        The metrics dict (also written to ``metrics.json``).
    """
    sets = as_score_sets(artifacts)
    hz, gn = pick_pair(sets, hazard_query, general_query, method)
    for s in sets:
        check_same_units(hz, s)
    names = (hz.name, gn.name)
    h, g = hz.flat(), gn.flat()
    sh, sg = robust_scale(h), robust_scale(g)
    world = bool(is_world or hz.labels is not None)
    decode = tokenizer is not None and world

    corr = correlations(hz, gn)
    quad0 = quadrants(h, g, 0.0, 0.0)
    quadk = quadrants(h, g, k_noise * sh, k_noise * sg)
    ex = example_aggregates(hz, gn, alpha, top_k)
    exk = example_aggregates(hz, gn, alpha, top_k, k_noise * sh, k_noise * sg)
    H, G = ex["H_sum"], ex["G_sum"]
    ex_specific = (H < 0) & (G >= 0)
    ex_pure90 = exk["pure_mass_frac"] >= 0.9
    ratio = magnitude_ratio(h, g)
    conc = {hz.name: concentration(hz), gn.name: concentration(gn)}
    pos = {hz.name: per_position(hz), gn.name: per_position(gn)}
    tok = per_token_id(hz, gn, alpha, n_top)
    gt = None
    if any(s.labels is not None for s in sets):
        gt = ground_truth(sets, alpha=alpha, hazard_query=hazard_query, general_query=general_query)

    order = ex["order"]
    ranked = [
        {
            "doc_id": hz.doc_ids[i],
            "rank_score": float(ex["rank"][i]),
            "H_sum": float(H[i]),
            "G_sum": float(G[i]),
            "n_tokens": int(ex["n_tokens"][i]),
            "H_topk_frac": float(ex["H_topk_frac"][i]),
            "pure_mass_frac_noise": float(exk["pure_mass_frac"][i]),
        }
        for i in order[:1000]
    ]
    metrics: dict[str, Any] = {
        "sign_convention": magic_unlearn.SIGN_CONVENTION,
        "hazard": hz.name,
        "general": gn.name,
        "alpha": alpha,
        "k_noise": k_noise,
        "noise_threshold": {
            "hazard": k_noise * sh,
            "general": k_noise * sg,
            "median_abs_hazard": sh,
            "median_abs_general": sg,
        },
        "q1_correlation": corr,
        "q2_quadrants": {"formula": QUADRANT_FORMULA, "t0": quad0, "noise": quadk},
        "q3_examples": {
            "formula": RANK_FORMULA,
            "top_k": top_k,
            "n_examples": int(H.size),
            "n_teach_hazard_not_general": int(ex_specific.sum()),
            "frac_teach_hazard_not_general": float(ex_specific.mean()) if H.size else float("nan"),
            "n_pure_mass_ge_0.9_noise": int(ex_pure90.sum()),
            "median_H_topk_frac": float(np.nanmedian(ex["H_topk_frac"]))
            if H.size
            else float("nan"),
            "ranked_doc_ids": [hz.doc_ids[i] for i in order],
            "ranked": ranked,  # details of the first 1000
        },
        "q4_magnitude_ratio": {k: v for k, v in ratio.items() if k != "log10_ratio"},
        "concentration": conc,
        "per_position": pos,
        "per_token_id": tok,
        "ground_truth": gt,
        "trust": trust_reports([hz, gn]),
        "n_tokens": int(h.size),
    }

    md = _markdown(metrics, hz, gn, tokenizer if decode else None, n_top, world)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        plots.hexbin_tokens(h, g, sh, sg, names, tmp / "tokens_hexbin.png")
        plots.scatter_examples(H, G, ex["rank"], names, tmp / "examples_scatter.png")
        plots.ratio_hist(
            ratio["log10_ratio"], tmp / "ratio_hist.png", f"|{names[0]}| / |{names[1]}|"
        )
        plots.concentration({hz.name: h, gn.name: g}, tmp / "concentration.png")
        plots.per_position(pos, tmp / "per_position.png")
        if hz.labels is not None:
            lab = hz.labels[hz.mask]
            keep = lab >= 0
            plots.tokens_by_label(
                h[keep], g[keep], lab[keep], sh, sg, names, tmp / "tokens_by_label.png"
            )
        atomic_write_text(tmp / "report.md", md)
        atomic_write_json(tmp / "metrics.json", _jsonable(metrics))
    return metrics


def _trust_section(reports: dict[str, Any]) -> list[str]:
    if not reports:
        return []
    lines = [
        "## Can these scores be trusted?",
        "",
        "Trust report of the attribution run (first-order predictions against retraining along "
        "random drop-directions, a float64 recomputation of the first reverse steps, replay "
        "drift; thresholds in `attribution/trust.py`):",
        "",
    ]
    for names, t in reports.items():
        lines += trust_markdown(t, names)
        lines.append("")
    return lines


def _markdown(
    m: dict[str, Any], hz: ScoreSet, gn: ScoreSet, tokenizer: Any, n_top: int, world: bool
) -> str:
    c, q0, qk = m["q1_correlation"], m["q2_quadrants"]["t0"], m["q2_quadrants"]["noise"]
    q3, q4 = m["q3_examples"], m["q4_magnitude_ratio"]
    nt = m["noise_threshold"]
    L: list[str] = [
        f"# Attribution analysis: {hz.name} vs {gn.name}",
        "",
        f"Sign convention: {m['sign_convention']}.",
        "",
        f"{m['n_tokens']} scored tokens in {q3['n_examples']} examples. "
        f"Noise thresholds (k = {m['k_noise']} x median|score|): hazard {_f(nt['hazard'])}, "
        f"general {_f(nt['general'])}.",
        "",
        *_trust_section(m.get("trust") or {}),
        "## 1. How separated are the two attributions?",
        "",
        "| level | Pearson | Spearman |",
        "|---|---|---|",
        f"| token | {_f(c['token_pearson'])} | {_f(c['token_spearman'])} |",
        f"| example (sum) | {_f(c['example_pearson'])} | {_f(c['example_spearman'])} |",
        "",
        "Plots: `tokens_hexbin.png` (token density), `examples_scatter.png` (examples)"
        + (
            ", `tokens_by_label.png` (tokens coloured by ground truth)"
            if hz.labels is not None
            else ""
        )
        + ".",
        "",
        "## 2. What fraction of tokens are purely hazard?",
        "",
        f"Definition: {QUADRANT_FORMULA}.",
        "",
        "| cell | t = 0 | t = noise |",
        "|---|---|---|",
    ]
    for key, label in (
        ("purely_hazard", "purely hazard (teaches hazard, not general)"),
        ("hazard_harms_general", "... of which harms general"),
        ("both", "teaches both"),
        ("general_only", "teaches general only"),
        ("neither", "teaches neither"),
    ):
        L.append(
            f"| {label} | {q0['counts'][key]} ({_f(100 * q0['fractions'][key], 1)}%) | "
            f"{qk['counts'][key]} ({_f(100 * qk['fractions'][key], 1)}%) |"
        )
    L.append(
        f"| share of hazard-teaching mass in purely-hazard tokens | "
        f"{_f(q0['purely_hazard_mass_frac'])} | {_f(qk['purely_hazard_mass_frac'])} |"
    )
    L += [
        "",
        "3x3 table at the noise threshold (rows hazard: teaches / neutral / harms; columns "
        "general: teaches / neutral / harms):",
        "",
        "| | g teaches | g neutral | g harms |",
        "|---|---|---|---|",
    ]
    for name, row in zip(
        ("h teaches", "h neutral", "h harms"), qk["table_rows_hazard_cols_general"], strict=True
    ):
        L.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    L += [
        "",
        "## 3. Are there entirely hazard-specific examples?",
        "",
        f"Ranking: {RANK_FORMULA} (alpha = {m['alpha']}).",
        "",
        f"- examples teaching hazard and not general (H < 0 <= G): "
        f"{q3['n_teach_hazard_not_general']} / {q3['n_examples']} "
        f"({_f(100 * q3['frac_teach_hazard_not_general'], 1)}%)",
        f"- examples with >= 90% of their hazard-teaching mass in purely-hazard tokens (noise "
        f"threshold): {q3['n_pure_mass_ge_0.9_noise']}",
        f"- median share of an example's |hazard| mass in its top-{q3['top_k']} tokens: "
        f"{_f(q3['median_H_topk_frac'])}",
        "",
        "| rank | doc id | rank score | H sum | G sum | tokens | top-k frac | pure mass frac |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(q3["ranked"][:n_top]):
        L.append(
            f"| {i + 1} | {r['doc_id']} | {_f(r['rank_score'])} | {_f(r['H_sum'])} | "
            f"{_f(r['G_sum'])} | {r['n_tokens']} | {_f(r['H_topk_frac'])} | "
            f"{_f(r['pure_mass_frac_noise'])} |"
        )
    qs = q4["token_ratio_quantiles"]
    L += [
        "",
        "## 4. Magnitude ratio |hazard| / |general|",
        "",
        f"- overall sum|h| / sum|g|: {_f(q4['overall_sum_ratio'])}; ratio of median |score|: "
        f"{_f(q4['median_abs_ratio'])}",
        "- per-token quantiles (5/25/50/75/95%): "
        + ", ".join(_f(qs[k]) for k in ("q05", "q25", "q50", "q75", "q95")),
        f"- tokens with |h| > |g|: {_f(100 * q4['frac_tokens_hazard_larger'], 1)}% "
        f"({q4['n_tokens_used']} tokens with both nonzero). Plot: `ratio_hist.png`.",
        "",
        "## Mass concentration",
        "",
        "| score set | tokens for 50% | tokens for 90% | examples for 50% | examples for 90% |",
        "|---|---|---|---|---|",
    ]
    for name, cc in m["concentration"].items():
        L.append(
            f"| {name} | {int(cc['token_n50'])} ({_f(100 * cc['token_frac50'], 2)}%) | "
            f"{int(cc['token_n90'])} ({_f(100 * cc['token_frac90'], 2)}%) | "
            f"{int(cc['example_n50'])} | {int(cc['example_n90'])} |"
        )
    L += [
        "",
        "Plots: `concentration.png`, `per_position.png`.",
        "",
        "## Per-token-id summary",
        "",
        "Token ids that teach hazard most (sum of hazard scores over occurrences):",
        "",
    ]
    hdr = (
        "| token id | token | count | hazard sum | general sum |"
        if tokenizer
        else "| token id | count | hazard sum | general sum |"
    )
    L += [hdr, "|---|---|---|---|---|" if tokenizer else "|---|---|---|---|"]
    for r in m["per_token_id"]["top_hazard_teaching"]:
        tokcell = f" `{_decode(tokenizer, r['token_id'])}` |" if tokenizer else ""
        L.append(
            f"| {r['token_id']} |{tokcell} {r['count']} | {_f(r['hazard_sum'])} | "
            f"{_f(r['general_sum'])} |"
        )
    if tokenizer is not None:
        L += [
            "",
            "## Top hazard-teaching tokens (hazard world, decoded)",
            "",
            "| doc id | pos | token | label | h | g |",
            "|---|---|---|---|---|---|",
        ]
        rows, cols = np.nonzero(hz.mask)
        h = hz.scores[rows, cols]
        for i in np.argsort(h, kind="mergesort")[:n_top]:
            r, j = rows[i], cols[i]
            lab = int(hz.labels[r, j]) if hz.labels is not None else -1
            L.append(
                f"| {hz.doc_ids[r]} | {j} | `{_decode(tokenizer, hz.input_ids[r, j])}` | "
                f"{plots.LABEL_TEXT.get(lab, '-')} | {_f(h[i])} | {_f(gn.scores[r, j])} |"
            )
    elif not world:
        L += ["", "_Real data: token text is not shown; token ids, positions and scores only._"]
    if m["ground_truth"] is not None:
        L += [
            "",
            "## Ground truth (hazard world labels)",
            "",
            "Token scores are ranked by -score (proponents first).",
            "",
            ground_truth_markdown(m["ground_truth"]),
        ]
    return "\n".join(L) + "\n"
