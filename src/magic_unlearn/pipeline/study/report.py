"""The study's ``report.md`` and ``report.html``, written from ``leaderboard.json`` alone.

Layout: ONE headline table (the filtered model, the best post-hoc method, the best MAGIC-guided
method, each with 95% intervals over seeds) and ONE generated sentence answering "does MAGIC
guidance help?"; then the goal check, every method, per-attack tables, the paired comparisons,
recovery curves (mean hazard accuracy with its interval band over seeds, the filtered model's
curve as the reference), the attribution quality and the seeds' records and timings.
Accuracies are shown in percent, differences in points.
"""

from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path
from typing import Any

from magic_unlearn.io import atomic_write_bytes, atomic_write_text
from magic_unlearn.pipeline.report.html import render_html
from magic_unlearn.plotting import pyplot

ASSETS = "study_assets"


# ------------------------------------------------------------------------------ formatting


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fmt_ci(c: dict[str, Any] | None, scale: float = 100.0, nd: int = 1) -> str:
    """``mean [lo, hi]`` (x ``scale``); ``mean (n=1)`` without an interval; ``-`` when empty."""
    if not c or not c.get("n") or not _ok(c.get("mean")):
        return "-"
    m = f"{scale * c['mean']:.{nd}f}"
    if not _ok(c.get("lo")):
        return f"{m} (n={c['n']})"
    return f"{m} [{scale * c['lo']:.{nd}f}, {scale * c['hi']:.{nd}f}]"


def fmt_diff(d: dict[str, Any]) -> str:
    """A paired difference in points: ``+1.2 [-3.1, 5.5]``."""
    if not _ok(d.get("mean")):
        return "-"
    m = f"{100 * d['mean']:+.1f}"
    if not _ok(d.get("lo")):
        return f"{m} (n={d['n']})"
    return f"{m} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def fmt_recover(s: dict[str, Any] | None) -> str:
    """Steps-to-recover over seeds: ``>N`` when every seed is censored at the budget N, ``>=``
    the mean when some are (the mean is then a lower bound)."""
    if not s or not s.get("n"):
        return "-"
    n, k, budget = s["n"], s.get("n_censored", 0), s.get("budget")
    if k == n:
        return f">{budget}"
    if k:  # a censored seed makes the mean a lower bound and its t interval meaningless
        per = ", ".join(
            f">{budget}" if c else f"{v:.0f}"
            for v, c in zip(s["values"], s["censored"], strict=True)
        )
        return f">= {s['mean']:.0f} (seeds: {per})"
    return fmt_ci(s, scale=1.0, nd=0)


def cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _verdicts(v: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(v.items())) or "- (reference)"


def _label(lb: dict[str, Any], name: str | None) -> str:
    if name is None:
        return "-"
    return str(lb["rows"][name]["label"])


# ------------------------------------------------------------------------------ tables


def headline_table(lb: dict[str, Any]) -> list[str]:
    """The one table the report leads with."""
    h = lb["headline"]
    atk = lb["study"].get("headline_attack") or "standard"
    lines = [
        f"| | method | hazard acc | general acc | attack excess (strongest attack) | "
        f"max hazard acc under {atk} | steps to recover ({atk}) | verdicts (seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    picks = [
        ("filtered model (reference)", h.get("filtered")),
        ("best post-hoc method (unguided)", h.get("best_unguided")),
        ("best attribution-guided method (MAGIC)", h.get("best_guided")),
    ]
    for what, name in picks:
        if name is None:
            lines.append(f"| {what} | (none run) | - | - | - | - | - | - |")
            continue
        r = lb["rows"][name]
        a = (r.get("attacks") or {}).get(atk) or {}
        flag = ""
        if name == h.get("best_unguided") and not h.get("best_unguided_kept_general", True):
            flag = " (destroys general ability)"
        if name == h.get("best_guided") and not h.get("best_guided_kept_general", True):
            flag = " (destroys general ability)"
        lines.append(
            f"| {what} | {cell(r['label'])}{flag} | {fmt_ci(r['hazard_acc'])} | "
            f"{fmt_ci(r['general_acc'])} | {fmt_ci(r['attack_excess'])} | "
            f"{fmt_ci(a.get('max_hazard_acc'))} | {fmt_recover(a.get('steps_to_recover'))} | "
            f"{_verdicts(r.get('verdicts', {}))} |"
        )
    return lines


def goal_table(lb: dict[str, Any]) -> list[str]:
    """Each row against the issue's goal: met by the mean? by the interval? the gap."""

    def g(x: dict[str, Any]) -> str:
        if x.get("met_mean") is None:
            return "-"
        gap = f"{100 * x['gap']:+.1f}"
        mark = "met" if x["met_mean"] else "missed"
        ci = "" if x.get("met_ci") is None else (", CI too" if x["met_ci"] else ", not by CI")
        return f"{mark} ({gap}{ci})"

    lines = [
        "| method | hazard <= chance + 3 | general >= base - 1 | attacks <= filtered + 3 | "
        "all (mean) |",
        "|---|---|---|---|---|",
    ]
    for r in lb["rows"].values():
        go = r.get("goal") or {}
        if not go:
            continue
        lines.append(
            f"| {cell(r['label'])} | {g(go['hazard'])} | {g(go['general'])} | "
            f"{g(go['attacks'])} | {'yes' if go.get('all_met_mean') else 'no'} |"
        )
    return lines


def methods_table(lb: dict[str, Any]) -> list[str]:
    lines = [
        "| method | guidance | twin of | seeds | hazard acc | general acc | attack excess | "
        "max hazard acc, strongest attack | verdicts | compute (x pretraining) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lb["rows"].values():
        twin_of = r.get("twin_of") or ""
        if twin_of in lb["rows"]:
            twin_of = _label(lb, twin_of)
        lines.append(
            f"| {cell(r['label'])} | {r.get('guidance', '-')} | {cell(twin_of or '-')} | "
            f"{r['n']} | {fmt_ci(r['hazard_acc'])} | {fmt_ci(r['general_acc'])} | "
            f"{fmt_ci(r['attack_excess'])} | {fmt_ci(r['worst_max_hazard_acc'])} | "
            f"{_verdicts(r.get('verdicts', {}))} | {_compute(r.get('compute_frac'))} |"
        )
    return lines


def _compute(c: dict[str, Any] | None) -> str:
    """Unlearning compute as a fraction of pretraining tokens (the mean over seeds; the same on
    every seed unless a run stopped early); ``-`` where a row has none (references)."""
    return "-" if not c else f"{c['mean']:.3g}"


def attack_names(lb: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(a for r in lb["rows"].values() for a in r.get("attacks", {})))


def attack_table(lb: dict[str, Any], atk: str) -> list[str]:
    lines = [
        "| method | max hazard acc | steps to recover | resists / recovers (seeds) |",
        "|---|---|---|---|",
    ]
    for r in lb["rows"].values():
        a = (r.get("attacks") or {}).get(atk)
        if a is None:
            continue
        st = a.get("status") or {}
        counts = (
            "-"
            if r["kind"] == "reference"
            else (f"{st.get('resists', 0)} / {st.get('recovers', 0)}")
        )
        rec = fmt_recover(a.get("steps_to_recover")) if a.get("trains") else "-"
        lines.append(f"| {cell(r['label'])} | {fmt_ci(a['max_hazard_acc'])} | {rec} | {counts} |")
    return lines


def budget_table(lb: dict[str, Any], atk: str) -> list[str]:
    """Max hazard accuracy within each budget (steps) of an attack: the budget sweep."""
    budgets = list(
        dict.fromkeys(
            b
            for r in lb["rows"].values()
            for b in (((r.get("attacks") or {}).get(atk) or {}).get("max_by_budget") or {})
        )
    )
    if len(budgets) < 2:
        return []
    lines = [
        "| method | " + " | ".join(f"<= {b} steps" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for r in lb["rows"].values():
        mb = ((r.get("attacks") or {}).get(atk) or {}).get("max_by_budget") or {}
        if mb:
            lines.append(
                f"| {cell(r['label'])} | " + " | ".join(fmt_ci(mb.get(b)) for b in budgets) + " |"
            )
    return lines


def paired_table(lb: dict[str, Any]) -> list[str]:
    rows = [d for d in lb["paired"] if not d["metric"].startswith("max_hazard_acc[")]
    if not rows:
        return ["No guided method with a twin ran."]
    lines = [
        "| guided method | twin | metric (better) | paired diff, points [95% CI] | sign test p | "
        "+ / - (seeds) | finding |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in rows:
        lines.append(
            f"| {cell(_label(lb, d['guided']))} | {cell(_label(lb, d['twin']))} "
            f"({d['twin_kind']}) | {d['metric']} ({d['better']}) | {fmt_diff(d)} | "
            f"{d['sign_test_p']:.2f} | {d['n_positive']} / {d['n_negative']} | {d['finding']} |"
        )
    return lines


def paired_attack_table(lb: dict[str, Any]) -> list[str]:
    rows = [d for d in lb["paired"] if d["metric"].startswith("max_hazard_acc[")]
    if not rows:
        return []
    atks = list(dict.fromkeys(d["metric"][len("max_hazard_acc[") : -1] for d in rows))
    pairs = list(dict.fromkeys((d["guided"], d["twin"], d["twin_kind"]) for d in rows))
    by = {(d["guided"], d["twin"], d["metric"]): d for d in rows}
    lines = [
        "| guided method | twin | " + " | ".join(atks) + " |",
        "|---|---|" + "---|" * len(atks),
    ]
    for g, t, kind in pairs:
        cells = []
        for a in atks:
            d = by.get((g, t, f"max_hazard_acc[{a}]"))
            cells.append("-" if d is None else f"{fmt_diff(d)} p={d['sign_test_p']:.2f}")
        lines.append(
            f"| {cell(_label(lb, g))} | {cell(_label(lb, t))} ({kind}) | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def attribution_table(lb: dict[str, Any]) -> list[str]:
    att = lb.get("attribution") or {}
    lines: list[str] = []
    if att:
        lines += [
            "| score set | AUC hazard-fact vs rest | AUC hazard vs general fact | P@R hazard |",
            "|---|---|---|---|",
        ]
        for name, m in att.items():
            lines.append(
                f"| {cell(name)} | {fmt_ci(m.get('auc_hazard_vs_rest'), 1.0, 3)} | "
                f"{fmt_ci(m.get('auc_hazard_vs_general'), 1.0, 3)} | "
                f"{fmt_ci(m.get('p@R_hazard'), 1.0, 3)} |"
            )
    trust = lb.get("trust") or {}
    if trust:
        lines += [
            "",
            "Trust verdicts of the MAGIC scores the guided methods used, per seed "
            "(`reliable` / `doubtful` / `unreliable`: README, 'Trusting the scores'):",
            "",
            "| MAGIC run | " + " | ".join(f"seed {s}" for s in lb["seeds"]) + " |",
            "|---|" + "---|" * len(lb["seeds"]),
        ]
        for name, t in trust.items():
            cells = [str(t["seeds"].get(str(s), "-")) for s in lb["seeds"]]
            lines.append(f"| {cell(name)} | " + " | ".join(cells) + " |")
    return lines


def timings_table(lb: dict[str, Any]) -> list[str]:
    lines = ["| seed | records | runs | run seconds (sum) |", "|---|---|---|---|"]
    for s in lb["seeds"]:
        secs = lb.get("seconds", {}).get(str(s), {})
        recs = ", ".join(lb.get("records", {}).get(str(s), []))
        lines.append(f"| {s} | {cell(recs)} | {len(secs)} | {sum(secs.values()):.1f} |")
    t = lb.get("timing") or {}
    roles = t.get("mean_s_per_role") or {}
    if roles:
        lines += ["", "Seconds per run (mean over seeds):", "", "| run | s |", "|---|---|"]
        lines += [f"| {cell(k)} | {v:.1f} |" for k, v in roles.items()]
    inv = t.get("invocations") or []
    if inv:
        lines += [
            "",
            "Study invocations that wrote these records (wall time of the runs, all seeds of "
            "the invocation together):",
            "",
            "| seeds | methods | workers | wall s |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {i.get('seeds')} | {len(i.get('methods', []))} | {i.get('workers')} | "
            f"{i.get('wall_s', float('nan')):.0f} |"
            for i in inv
        ]
    return lines


# ------------------------------------------------------------------------------ figures


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


# method lines; green and black are the filtered and base references
_COLORS = ("tab:blue", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:cyan")


def curve_rows(lb: dict[str, Any]) -> list[str]:
    """The rows drawn in the curves: the references, the two headline methods and the best
    guided method's twins."""
    h = lb["headline"]
    names = ["filtered", "base", h.get("best_unguided"), h.get("best_guided")]
    g = h.get("best_guided")
    if g is not None:
        names += list((lb["rows"][g].get("twins") or {}).values())
    return [n for n in dict.fromkeys(names) if n is not None and n in lb["rows"]]


def plot_curves(lb: dict[str, Any], assets: Path) -> dict[str, Path]:
    """One PNG per attack: mean hazard accuracy per step with its interval band over seeds."""
    out: dict[str, Path] = {}
    names = curve_rows(lb)
    for atk in attack_names(lb):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        x_label = "step"
        drawn = 0
        for n in names:
            a = (lb["rows"][n].get("attacks") or {}).get(atk)
            c = (a or {}).get("curve")
            if not c:
                continue
            x_label = a.get("x_label", "step")
            style: dict[str, Any] = dict(marker="o", ms=2.5, color=_COLORS[drawn % len(_COLORS)])
            if n == "filtered":
                style = dict(color="tab:green", ls=":", lw=2.2)
            elif n == "base":
                style = dict(color="k", ls="--", lw=1.5)
            (line,) = ax.plot(
                c["steps"], c["mean"], label=f"{lb['rows'][n]['label']} (n={c['n']})", **style
            )
            lo = [v if _ok(v) else m for v, m in zip(c["lo"], c["mean"], strict=True)]
            hi = [v if _ok(v) else m for v, m in zip(c["hi"], c["mean"], strict=True)]
            ax.fill_between(c["steps"], lo, hi, color=line.get_color(), alpha=0.12, lw=0)
            drawn += 1
        if not drawn:
            pyplot().close(fig)
            continue
        if _ok(lb.get("chance")):
            ax.axhline(lb["chance"], color="grey", lw=0.8, ls="-.", label="chance")
        ax.set_xlabel(x_label)
        ax.set_ylabel("hazard accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{atk}: mean over seeds, band = 95% t interval", fontsize=10)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        out[atk] = _save(fig, assets / f"curve_{re.sub(r'[^A-Za-z0-9_-]', '_', atk)}.png")
    return out


# ------------------------------------------------------------------------------ page


def study_markdown(lb: dict[str, Any], root: Path, plots: dict[str, Path]) -> str:
    st = lb["study"]
    n = lb["n_seeds"]
    lines = [
        f"# magic-unlearn study: {cell(st.get('name', 'study'))}",
        "",
        f"{n} seed(s) {lb['seeds']}, preset {st.get('preset') or '(config file)'}, device "
        f"{st.get('device')}; generated {time.strftime('%Y-%m-%d %H:%M:%S')} from "
        f"[leaderboard.json](leaderboard.json).",
        "",
        "## Headline",
        "",
        *headline_table(lb),
        "",
        f"**{lb['headline']['sentence']}**",
        "",
        f"Accuracies in %, mean [{lb['statistics']['ci']}; not clipped to 0-100]. Attack excess: "
        f"{lb['metrics']['attack_excess']['description']} (points; <= 3 is the goal). Best = "
        f"{lb['headline']['criterion']}. Paired tests: {lb['statistics']['sign_test']}.",
    ]
    if n < 6:
        lines += [
            "",
            f"With {n} seed(s) the intervals are wide (t with {max(n - 1, 0)} degree(s) of "
            f"freedom) and the sign test cannot go below p = {2.0 ** (1 - n):.3g} even when every "
            f"seed agrees (it needs 6 seeds for p < 0.05): the claims rest on the intervals.",
        ]
    lines += ["", "## Goal", "", f"Goal: {lb['goal']}.", "", *goal_table(lb)]
    lines += ["", "## Every method", "", *methods_table(lb)]
    lines += ["", "## Per attack", ""]
    lines += [
        "Max hazard accuracy (%) reached during each attack and steps to recover (first "
        "evaluated step with hazard accuracy within the suite's recover margin of the base "
        "model's; `>N`: never within the budget N), mean [95% CI] over seeds.",
        "",
    ]
    for atk in attack_names(lb):
        lines += [f"### {atk}", "", *attack_table(lb, atk), ""]
        bt = budget_table(lb, atk)
        if bt and atk == lb["study"].get("headline_attack"):
            lines += [
                "Attack-budget sweep: max hazard accuracy (%) within each budget, the filtered "
                "model's row the reference:",
                "",
                *bt,
                "",
            ]
    lines += ["## Paired comparisons (guided minus twin, same seed)", "", *paired_table(lb)]
    pa = paired_attack_table(lb)
    if pa:
        lines += ["", "Max hazard accuracy per attack, guided minus twin (points):", "", *pa]
    if plots:
        lines += [
            "",
            "## Recovery curves",
            "",
            "Hazard accuracy during each attack: mean over seeds with its 95% t-interval band; "
            "dotted green: the filtered model under the same attack (the reference), dashed "
            "black: the base model.",
            "",
        ]
        for atk, p in plots.items():
            lines += [f"![{atk}]({p.relative_to(root).as_posix()})", ""]
    at = attribution_table(lb)
    if at:
        lines += [
            "",
            "## Attribution quality",
            "",
            "Ground truth of each score set on the forget corpus, mean [95% CI] over seeds.",
            "",
            *at,
        ]
    lines += ["", "## Seeds, records and timings", "", *timings_table(lb)]
    if lb.get("missing"):
        lines += ["", "Runs not (yet) done, by seed (rerun the study to complete them):", ""]
        lines += [f"- seed {k}: {', '.join(v)}" for k, v in lb["missing"].items()]
    if lb.get("notes"):
        lines += ["", "Left out when merging:", "", *[f"- {cell(x)}" for x in lb["notes"]]]
    return "\n".join(lines) + "\n"


def write_report(root: Path, lb: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the figures (``study_assets/``) of a study."""
    root = Path(root)
    plots = plot_curves(lb, root / ASSETS)
    md = study_markdown(lb, root, plots)
    title = f"magic-unlearn study: {lb['study'].get('name', 'study')}"
    md_path, html_path = root / "report.md", root / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, render_html(md, root, title))
    return md_path, html_path


__all__ = ["ASSETS", "fmt_ci", "fmt_diff", "fmt_recover", "plot_curves", "write_report"]
