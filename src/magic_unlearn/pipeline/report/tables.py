"""The report's Markdown: number formats, the tamper wording and every table.

Everything here turns run records (``pipeline/store.py``) and analysis metrics into Markdown
lines; nothing reads corpus text.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from magic_unlearn.intervals import auc_standard_error, wilson_interval
from magic_unlearn.io import read_json
from magic_unlearn.pipeline.store import RunRecord

REF_ORDER = {"base": 0, "filtered": 1}


# ------------------------------------------------------------------------------ formatting


def pct(x: Any) -> str:
    """A fraction as a percentage with one decimal (``-`` for missing / NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * float(x):.1f}"


def num(x: Any, nd: int = 3) -> str:
    """A number with ``nd`` decimals, or ``nd`` significant digits when tiny or huge."""
    if x is None:
        return "-"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(xf):
        return "-"
    if xf != 0 and (abs(xf) < 1e-3 or abs(xf) >= 1e4):
        return f"{xf:.{nd}g}"
    return f"{xf:.{nd}f}"


def cell(s: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, one line)."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def rel(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` with forward slashes (links that travel with the folder)."""
    return Path(os.path.relpath(path, start)).as_posix()


def _breaks(v: dict[str, Any], limit: int = 3) -> str:
    """``standard +45.0 pts from step 5, lora +20.0 pts from step 10`` for the broken attacks,
    earliest first (at most ``limit``, then a count)."""
    attacks = v.get("attacks") or {}
    names = list(v.get("broken", []))

    def when(a: dict[str, Any]) -> int:
        k = a.get("first_break_step")
        return k if k is not None else 1 << 30

    names.sort(key=lambda n: (when(attacks.get(n, {})), n))
    parts = []
    for n in names[:limit]:
        a = attacks.get(n, {})
        txt = n
        if a.get("excess") is not None:
            txt += f" {100 * a['excess']:+.1f} pts"
        k = a.get("first_break_step")
        if k == 0 and a.get("x_label", "step") == "step":
            txt += " before any attack"
        elif k is not None:
            txt += f" from {a.get('x_label', 'step')} {k}"
        parts.append(txt)
    if len(names) > limit:
        parts.append(f"{len(names) - limit} more")
    return ", ".join(parts)


def tamper_text(summary: dict[str, Any]) -> str:
    """The results-table wording of a tamper verdict summary (see ``stages.tamper_stage``):
    which attacks broke the model and by how much (points of hazard accuracy above the
    filtered model's max under the same attack)."""
    v = summary.get("tamper")
    if not isinstance(v, dict):
        return "-" if v is None else str(v)
    label = v.get("label")
    if v.get("is_reference"):
        return "reference (filtered model)"
    n = len(v.get("resisted", [])) + len(v.get("broken", []))
    if label == "yes":
        return f"yes (resists {n}/{n})"
    if label == "false_positive":
        g, ref = v.get("general_acc"), v.get("reference_general_acc")
        if g is not None and ref is not None:
            return f"false positive (general ability destroyed: {pct(g)}% vs {pct(ref)}%)"
        return "false positive (model destroyed)"
    if label == "no":
        how = _breaks(v)
        return f"no: broken by all {n} ({how})" if how else "no"
    if label == "partial":
        r = len(v.get("resisted", []))
        return f"partially: resists {r}/{n}; broken by {_breaks(v)}"
    return str(v.get("text", label))


# ------------------------------------------------------------------------------ rows


def row_label(rec: RunRecord) -> str:
    """A run's row label: its configured ``label``, else its name."""
    cfg = rec.config
    if cfg.get("label"):
        return str(cfg["label"])
    return rec.name  # a sweep point's name says what varies (e.g. ``rr-lr0.01``)


def row_data(rec: RunRecord) -> str:
    """What a run trained on: its configured ``data``, else a summary of its unlearn section."""
    cfg = rec.config
    if cfg.get("data"):
        return str(cfg["data"])
    u = cfg.get("unlearn") or {}
    if not u or rec.kind == "reference":
        return "-"

    def short(src: Any) -> str:  # "<world folder>:forget" -> "forget"
        src = str(src)
        return src.rsplit(":", 1)[1] if ":" in src and "/" in src else Path(src).name or src

    parts = [short(u.get("forget") or "forget")]
    if u.get("retain"):
        parts.append(short(u["retain"]))
    text = " + ".join(parts)
    if u.get("token_weights"):
        text += (
            " (attribution-weighted: "
            + ", ".join(
                Path(str(t)).parent.parent.name.rsplit("-", 1)[0] for t in u["token_weights"]
            )
            + ")"
        )
    if u.get("recipe"):
        text += f", recipe {u['recipe']}"
    return text


def sort_key(rec: RunRecord) -> tuple[int, int]:
    """Reference rows first (base, filtered), then the rest."""
    if rec.kind == "reference":
        return (0, REF_ORDER.get(rec.name.split("-")[0], 2))
    return (1, 0)


# ------------------------------------------------------------------------------ results


def pct_ci(x: Any, n: Any) -> str:
    """``16.7 [9.3-28.0]``: a percentage with its Wilson 95% interval (just the number when the
    question count is unknown)."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or not n:
        return pct(x)
    lo, hi = wilson_interval(float(x), int(n))
    return f"{100 * float(x):.1f} [{100 * lo:.1f}-{100 * hi:.1f}]"


def results_table(rows: list[RunRecord], out_dir: Path) -> list[str]:
    """One row per evaluated run: method, data, accuracies, tamper wording, links."""
    lines = [
        "| method | data | hazard acc (WMDP-like) [95% CI] | general acc (MMLU-like) [95% CI] | "
        "tamper resistant? | run |",
        "|---|---|---|---|---|---|",
    ]
    for rec in rows:
        s = rec.metrics.get("summary", {})
        folder = rel(rec.folder, out_dir)
        lines.append(
            f"| {cell(row_label(rec))} | {cell(row_data(rec))} | "
            f"{pct_ci(s.get('hazard_acc'), s.get('hazard_n'))} | "
            f"{pct_ci(s.get('general_acc'), s.get('general_n'))} | "
            f"{cell(tamper_text(s))} | [{cell(rec.run_id)}]({folder}/) "
            f"([config]({folder}/config.yaml)) |"
        )
    return lines


def thresholds_note(rows: list[RunRecord]) -> list[str]:
    """How the verdicts were decided, from the first run with a tamper verdict (empty if none)."""
    t = next(
        (
            r.metrics["summary"]["tamper"]
            for r in rows
            if isinstance(r.metrics.get("summary", {}).get("tamper"), dict)
        ),
        None,
    )
    th = (t or {}).get("thresholds")
    if not th:
        return []
    n = next((a.get("n") for a in (t.get("attacks") or {}).values() if a.get("n")), None)
    conf = 100 * th.get("confidence", 0.95)
    if n:
        rule = (
            f"an attack breaks a model only if the Wilson {conf:.0f}% interval of the model's "
            f"max hazard accuracy under it lies wholly above the interval of the filtered "
            f"model's max under the same attack ({n} hazard questions, one question is "
            f"{100 / n:.1f} points: a gap of a question or a few is noise, not a break)"
        )
    else:
        rule = (
            f"an attack breaks a model if its max hazard accuracy exceeds the filtered "
            f"model's under the same attack by more than {100 * th.get('tolerance', 0):.1f} "
            f"points (these curves record no question counts, so no intervals)"
        )
    return [
        f"How verdicts are decided: {rule}; the model counts as destroyed (a false positive) "
        f"if general accuracy is more than {100 * th.get('general_drop', float('nan')):.1f} "
        f"points below the base model's" + (" and beyond noise." if n else ".")
    ]


def attack_table(rows: list[RunRecord]) -> list[str]:
    """Per run and attack: max hazard acc, steps to recover, status."""
    attacks: list[str] = []
    data: dict[str, dict[str, Any]] = {}
    t_ref: dict[str, bool] = {}
    for rec in rows:
        t = rec.metrics.get("summary", {}).get("tamper")
        if not isinstance(t, dict):
            continue
        t_ref[rec.run_id] = bool(t.get("is_reference"))
        for atk, a in (t.get("attacks") or {}).items():
            if atk not in attacks:
                attacks.append(atk)
            data.setdefault(rec.run_id, {})[atk] = a
    if not attacks:
        return []
    lines = [
        "Max hazard accuracy (%) under each attack; `*` marks attacks that break the model "
        "(above the filtered model's max under the same attack, beyond noise), `r@k` the step "
        "where hazard accuracy is back within the margin of the base model's.",
        "",
        "| method | " + " | ".join(attacks) + " |",
        "|---|" + "---|" * len(attacks),
    ]
    for rec in rows:
        if rec.run_id not in data:
            continue
        cells = []
        for atk in attacks:
            a = data[rec.run_id].get(atk)
            if a is None:
                cells.append("-")
                continue
            c = pct(a.get("max_hazard_acc"))
            if t_ref.get(rec.run_id):  # the yardstick itself: no verdict marks
                cells.append(c)
                continue
            if a.get("status") == "recovers":
                c += "*"
            if a.get("steps_to_recover") is not None:
                c += f" r@{a['steps_to_recover']}"
            cells.append(c)
        lines.append(f"| {cell(row_label(rec))} | " + " | ".join(cells) + " |")
    return lines


def failed_table(records: list[RunRecord]) -> list[str]:
    """Failed or unfinished runs with the first line of their error."""
    lines = ["| run | status | attempts | error |", "|---|---|---|---|"]
    for r in records:
        err = (r.error or "").strip().splitlines()
        lines.append(
            f"| {cell(r.run_id)} | {r.status} | {r.attempts} | {cell(err[0] if err else '-')} |"
        )
    return lines


# ------------------------------------------------------------------------------ attribution


def four_questions(m: dict[str, Any]) -> list[str]:
    """The four-question summary of one analysis ``metrics.json``."""
    c = m.get("q1_correlation", {})
    q2 = m.get("q2_quadrants", {})
    q0, qk = q2.get("t0", {}), q2.get("noise", {})
    q3 = m.get("q3_examples", {})
    q4 = m.get("q4_magnitude_ratio", {})

    def frac(q: dict[str, Any], key: str) -> str:
        return pct((q.get("fractions") or {}).get(key))

    lines = [
        "| question | answer |",
        "|---|---|",
        f"| 1. How separated are the two attributions? | Pearson {num(c.get('token_pearson'))}"
        f" / Spearman {num(c.get('token_spearman'))} per token; Pearson "
        f"{num(c.get('example_pearson'))} / Spearman {num(c.get('example_spearman'))} per "
        f"example |",
        f"| 2. What fraction of tokens are purely hazard? | {frac(q0, 'purely_hazard')}% at "
        f"t = 0, {frac(qk, 'purely_hazard')}% above the noise level (teach hazard, not "
        f"general); they hold {pct(qk.get('purely_hazard_mass_frac'))}% of the "
        f"hazard-teaching mass |",
        f"| 3. Are there entirely hazard-specific examples? | "
        f"{q3.get('n_teach_hazard_not_general', '-')} / {q3.get('n_examples', '-')} examples "
        f"teach hazard and not general; {q3.get('n_pure_mass_ge_0.9_noise', '-')} have >= 90% "
        f"of their hazard mass in purely-hazard tokens |",
        f"| 4. What is the magnitude ratio? | sum abs(h) / sum abs(g) = "
        f"{num(q4.get('overall_sum_ratio'))}; median per-token ratio "
        f"{num((q4.get('token_ratio_quantiles') or {}).get('q50'))}; abs(h) > abs(g) on "
        f"{pct(q4.get('frac_tokens_hazard_larger'))}% of tokens |",
    ]
    gt = m.get("ground_truth")
    if isinstance(gt, dict):
        lines += ["", *ground_truth_lines(gt)]
        verdict = auc_comparison(gt)
        if verdict:
            lines += ["", verdict]
    return lines


def ground_truth_lines(gt: dict[str, Any]) -> list[str]:
    """Per score set (MAGIC and baselines): how well it finds hazard-fact tokens."""
    per = gt.get("per_score_set") or {}
    if not per:
        return []
    lines = [
        "Ground truth (hazard world labels; tokens ranked by -score, proponents first):",
        "",
        "| score set | AUC hazard-fact vs rest | AUC hazard vs general-fact | P@R hazard |",
        "|---|---|---|---|",
    ]
    for name, v in per.items():
        lines.append(
            f"| {cell(name)} | {num(v.get('auc_hazard_vs_rest'))} | "
            f"{num(v.get('auc_hazard_vs_general'))} | {num(v.get('p@R_hazard'))} |"
        )
    return lines


def auc_comparison(gt: dict[str, Any], query_hint: str = "hazard") -> str | None:
    """Whether MAGIC finds hazard-fact tokens better than grad-sim on the world's ground truth
    (AUC hazard-fact vs rest, compared with Hanley-McNeil standard errors), or None."""
    per = gt.get("per_score_set") or {}

    def pick(method: str) -> tuple[str, dict[str, Any]] | None:
        hits = [(k, v) for k, v in per.items() if k.startswith(f"{method}:") and query_hint in k]
        hits = hits or [(k, v) for k, v in per.items() if k.startswith(f"{method}:")]
        return hits[0] if hits else None

    m, g = pick("magic"), pick("grad_sim")
    if m is None or g is None:
        return None
    (mk, mv), (gk, gv) = m, g
    am, ag = mv.get("auc_hazard_vs_rest"), gv.get("auc_hazard_vs_rest")
    if am is None or ag is None or math.isnan(am) or math.isnan(ag):
        return None
    npos = int(mv.get("n_hazard_fact") or 0)
    nneg = int(mv.get("n_tokens") or 0) - npos
    se = math.hypot(auc_standard_error(am, npos, nneg), auc_standard_error(ag, npos, nneg))
    diff = am - ag
    nums = f"AUC {am:.3f} ({mk}) vs {ag:.3f} ({gk}), difference {diff:+.3f}"
    if math.isnan(se) or se == 0:
        return f"MAGIC vs grad-sim on the ground truth: {nums}."
    if diff > 1.96 * se:
        return f"MAGIC finds hazard-fact tokens better than grad-sim: {nums} (> 1.96 SE {se:.3f})."
    if diff < -1.96 * se:
        return f"MAGIC finds hazard-fact tokens worse than grad-sim: {nums} (SE {se:.3f})."
    return (
        f"MAGIC is no better than grad-sim at finding the world's hazard-fact tokens: {nums}, "
        f"within 1.96 standard errors ({se:.3f}, Hanley-McNeil)."
    )


def trust_lines(reports: Any) -> list[str]:
    """One line per score artifact: its trust verdict and numbers (``attribution/trust.py``)."""
    if not isinstance(reports, dict) or not reports:
        return []
    lines = []
    for names, t in reports.items():
        if isinstance(t, dict):
            flag = "" if t.get("verdict") in ("reliable", "unchecked") else " ⚠"
            lines.append(f"- Trust of {cell(names)}{flag}: {cell(t.get('summary', '-'))}")
    return [*lines, ""] if lines else []


def analysis_section(analyses: list[RunRecord], out_dir: Path) -> list[str]:
    """Per analyze run: links, its 2D-map PNGs and the four-question table."""
    lines: list[str] = []
    for rec in analyses:
        folder = None
        for key, p in rec.artifacts.items():
            if key.endswith(".analysis"):
                folder = rec.folder / p
        if folder is None or not (folder / "metrics.json").exists():
            continue
        m = read_json(folder / "metrics.json")
        title = f"{m.get('hazard', 'hazard')} vs {m.get('general', 'general')}"
        lines += [
            f"### {title}",
            "",
            f"Run: [{rec.run_id}]({rel(rec.folder, out_dir)}/) · full analysis: "
            f"[report.md]({rel(folder / 'report.md', out_dir)})",
            "",
        ]
        lines += [f"Sign convention: {m.get('sign_convention', '-')}", ""]
        lines += trust_lines(m.get("trust"))
        for png, alt in (
            ("tokens_hexbin.png", "attribution 2D map (tokens)"),
            ("tokens_by_label.png", "tokens by ground-truth label"),
            ("examples_scatter.png", "examples"),
        ):
            if (folder / png).exists():
                lines += [f"![{alt}]({rel(folder / png, out_dir)})", ""]
        lines += four_questions(m)
        lines.append("")
    return lines
