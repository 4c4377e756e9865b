"""``magic-unlearn report DIR``: the results table, recovery curves and attribution summary.

Reads the results store of ``DIR`` (re-indexing complete run folders first) and writes
``DIR/report.md`` plus a self-contained ``DIR/report.html`` (every plot embedded as base64; links
to run folders are relative, so the report travels with its results directory).

What it shows, from the run summaries written by the pipeline stages (``pipeline/stages.py``):

- the results table: method, data, hazard acc (WMDP-like), general acc (MMLU-like), tamper
  resistant? (``yes`` / ``no (recovers at step k)`` / ``partially`` / ``false positive (model
  destroyed)``), with the base and filtered reference rows first; each row links to its run
  folder and resolved ``config.yaml``;
- recovery curves: per attack, the hazard accuracy of every method under that attack, with the
  base and filtered models' curves on the same axes, and per run the tamper stage's own plots;
- the attribution 2D map (token hexbin) and the four-question summary from ``analyze`` runs.

Plots are generated from data (``curves.json``, analysis ``metrics.json``); no corpus text is
read or printed.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magic_unlearn.io import atomic_write_bytes, atomic_write_text, read_json
from magic_unlearn.pipeline.store import ResultsStore, RunRecord

ASSETS = "report_assets"
REF_ORDER = {"base": 0, "filtered": 1}


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    n_rows: int
    n_failed: int


# ------------------------------------------------------------------------------ formatting


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * float(x):.1f}"


def _num(x: Any, nd: int = 3) -> str:
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


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def tamper_text(summary: dict[str, Any]) -> str:
    """The results-table wording of a tamper verdict summary (see ``stages.tamper_stage``)."""
    v = summary.get("tamper")
    if not isinstance(v, dict):
        return "-" if v is None else str(v)
    label = v.get("label")
    if v.get("is_reference"):
        return "reference (filtered model)"
    if label == "yes":
        return "yes"
    if label == "false_positive":
        return "false positive (model destroyed)"
    if label == "no":
        k, atk = v.get("break_step"), v.get("break_attack")
        if k is None:
            return "no" + (f" (under {atk})" if atk else "")
        if k == 0:  # above the filtered model's level before any attack step: never unlearned
            return "no (above the filtered model before any attack" + (f", {atk})" if atk else ")")
        return f"no (recovers at step {k}" + (f", {atk})" if atk else ")")
    if label == "partial":
        r, n = len(v.get("resisted", [])), len(v.get("resisted", [])) + len(v.get("broken", []))
        return f"partially (resists {r}/{n}; broken by {', '.join(v.get('broken', []))})"
    return str(v.get("text", label))


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _row_label(rec: RunRecord) -> str:
    cfg = rec.config
    if cfg.get("label"):
        return str(cfg["label"])
    return rec.name  # a sweep point's name says what varies (e.g. ``rr-lr0.01``)


def _row_data(rec: RunRecord) -> str:
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


def _sort_key(rec: RunRecord) -> tuple:
    """Reference rows first (base, filtered), then the rest."""
    if rec.kind == "reference":
        return (0, REF_ORDER.get(rec.name.split("-")[0], 2))
    return (1, 0)


# ------------------------------------------------------------------------------ plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _curves(rec: RunRecord) -> dict[str, Any] | None:
    p = rec.artifacts.get("tamper.curves")
    if p is None or not (rec.folder / p).exists():
        return None
    return read_json(rec.folder / p)


def plot_recovery_by_attack(rows: list[RunRecord], assets: Path) -> dict[str, Path]:
    """One PNG per attack: hazard accuracy vs step of every run, references dashed."""
    by_attack: dict[str, dict[str, Any]] = {}
    refs: dict[str, dict[str, Any]] = {}
    chance = None
    ref_rows: dict[str, str] = {}  # row label -> reference role drawn in its style
    for rec in rows:
        cv = _curves(rec)
        if cv is None:
            continue
        chance = cv.get("chance", chance)
        if rec.kind == "reference":
            ref_rows[_row_label(rec)] = "base" if "base" in rec.name else "filtered"
        for atk, e in (cv.get("attacks") or {}).items():
            if e.get("points"):
                by_attack.setdefault(atk, {})[_row_label(rec)] = e
        for role, entries in (cv.get("reference") or {}).items():
            for atk, e in (entries or {}).items():
                if e.get("points"):
                    refs.setdefault(atk, {}).setdefault(role, e)
    plt = _plt()
    out = {}
    for atk, lines in by_attack.items():
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        x_label = "step"
        for label, e in lines.items():
            pts = sorted(e["points"], key=lambda p: p["step"])
            x_label = e.get("x_label", "step")
            role = ref_rows.get(label)
            style = (
                dict(ls="-", marker="o", ms=3)
                if role is None
                else dict(
                    ls="--" if role == "base" else ":",
                    lw=2,
                    color="k" if role == "base" else "tab:green",
                )
            )
            short = label if len(label) <= 28 else label[:27] + "…"
            ax.plot([p["step"] for p in pts], [p["hazard_acc"] for p in pts], label=short, **style)
        for role, e in refs.get(atk, {}).items():
            if role in ref_rows.values():  # already drawn as its own row
                continue
            pts = sorted(e["points"], key=lambda p: p["step"])
            ax.plot(
                [p["step"] for p in pts],
                [p["hazard_acc"] for p in pts],
                "--" if role == "base" else ":",
                color="k" if role == "base" else "tab:green",
                lw=2,
                label=f"{role} (reference)",
            )
        if chance is not None:
            ax.axhline(chance, color="grey", lw=0.8, ls="-.", label="chance")
        ax.set_xlabel(x_label)
        ax.set_ylabel("hazard accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"recovery under attack: {atk}", fontsize=10)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        out[atk] = _save(fig, assets / f"recovery_{re.sub(r'[^A-Za-z0-9_-]', '_', atk)}.png")
    return out


def plot_results_scatter(rows: list[RunRecord], assets: Path) -> Path | None:
    """Hazard vs general accuracy of every row (the trade-off at a glance)."""
    pts = [(r, r.metrics.get("summary", {})) for r in rows]
    pts = [
        (r, s)
        for r, s in pts
        if s.get("hazard_acc") is not None and s.get("general_acc") is not None
    ]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    markers = "ovD^<>phX*"
    for i, (r, s) in enumerate(pts):
        marker = "s" if r.kind == "reference" else markers[i % len(markers)]
        label = _row_label(r)
        ax.scatter(
            s["hazard_acc"],
            s["general_acc"],
            marker=marker,
            s=40,
            alpha=0.85,
            label=label if len(label) <= 28 else label[:27] + "…",
        )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel("hazard acc (lower is better)")
    ax.set_ylabel("general acc (higher is better)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, assets / "tradeoff.png")


# ------------------------------------------------------------------------------ sections


def _results_table(rows: list[RunRecord], out_dir: Path) -> list[str]:
    L = [
        "| method | data | hazard acc (WMDP-like) | general acc (MMLU-like) | "
        "tamper resistant? | run |",
        "|---|---|---|---|---|---|",
    ]
    for rec in rows:
        s = rec.metrics.get("summary", {})
        folder = _rel(rec.folder, out_dir)
        L.append(
            f"| {_cell(_row_label(rec))} | {_cell(_row_data(rec))} | "
            f"{_pct(s.get('hazard_acc'))} | {_pct(s.get('general_acc'))} | "
            f"{_cell(tamper_text(s))} | [{_cell(rec.run_id)}]({folder}/) "
            f"([config]({folder}/config.yaml)) |"
        )
    return L


def _attack_table(rows: list[RunRecord]) -> list[str]:
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
    L = [
        "Max hazard accuracy (%) under each attack; `*` marks attacks that break the model "
        "(above the filtered model's max + tolerance), `r@k` the step where hazard accuracy "
        "is back within the margin of the base model's.",
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
            c = _pct(a.get("max_hazard_acc"))
            if t_ref.get(rec.run_id):  # the yardstick itself: no verdict marks
                cells.append(c)
                continue
            if a.get("status") == "recovers":
                c += "*"
            if a.get("steps_to_recover") is not None:
                c += f" r@{a['steps_to_recover']}"
            cells.append(c)
        L.append(f"| {_cell(_row_label(rec))} | " + " | ".join(cells) + " |")
    return L


def four_questions(m: dict[str, Any]) -> list[str]:
    """The four-question summary of one analysis ``metrics.json``."""
    c = m.get("q1_correlation", {})
    q2 = m.get("q2_quadrants", {})
    q0, qk = q2.get("t0", {}), q2.get("noise", {})
    q3 = m.get("q3_examples", {})
    q4 = m.get("q4_magnitude_ratio", {})

    def frac(q: dict[str, Any], key: str) -> str:
        return _pct((q.get("fractions") or {}).get(key))

    L = [
        "| question | answer |",
        "|---|---|",
        f"| 1. How separated are the two attributions? | Pearson {_num(c.get('token_pearson'))}"
        f" / Spearman {_num(c.get('token_spearman'))} per token; Pearson "
        f"{_num(c.get('example_pearson'))} / Spearman {_num(c.get('example_spearman'))} per "
        f"example |",
        f"| 2. What fraction of tokens are purely hazard? | {frac(q0, 'purely_hazard')}% at "
        f"t = 0, {frac(qk, 'purely_hazard')}% above the noise level (teach hazard, not "
        f"general); they hold {_pct(qk.get('purely_hazard_mass_frac'))}% of the "
        f"hazard-teaching mass |",
        f"| 3. Are there entirely hazard-specific examples? | "
        f"{q3.get('n_teach_hazard_not_general', '-')} / {q3.get('n_examples', '-')} examples "
        f"teach hazard and not general; {q3.get('n_pure_mass_ge_0.9_noise', '-')} have >= 90% "
        f"of their hazard mass in purely-hazard tokens |",
        f"| 4. What is the magnitude ratio? | sum abs(h) / sum abs(g) = "
        f"{_num(q4.get('overall_sum_ratio'))}; median per-token ratio "
        f"{_num((q4.get('token_ratio_quantiles') or {}).get('q50'))}; abs(h) > abs(g) on "
        f"{_pct(q4.get('frac_tokens_hazard_larger'))}% of tokens |",
    ]
    gt = m.get("ground_truth")
    if isinstance(gt, dict):
        L += ["", *_ground_truth_lines(gt)]
    return L


def _ground_truth_lines(gt: dict[str, Any]) -> list[str]:
    """Per score set (MAGIC and baselines): how well it finds hazard-fact tokens."""
    per = gt.get("per_score_set") or {}
    if not per:
        return []
    L = [
        "Ground truth (hazard world labels; tokens ranked by -score, proponents first):",
        "",
        "| score set | AUC hazard-fact vs rest | AUC hazard vs general-fact | P@R hazard |",
        "|---|---|---|---|",
    ]
    for name, v in per.items():
        L.append(
            f"| {_cell(name)} | {_num(v.get('auc_hazard_vs_rest'))} | "
            f"{_num(v.get('auc_hazard_vs_general'))} | {_num(v.get('p@R_hazard'))} |"
        )
    return L


def _analysis_section(analyses: list[RunRecord], out_dir: Path, assets: Path) -> list[str]:
    L: list[str] = []
    for rec in analyses:
        folder = None
        for key, p in rec.artifacts.items():
            if key.endswith(".analysis"):
                folder = rec.folder / p
        if folder is None or not (folder / "metrics.json").exists():
            continue
        m = read_json(folder / "metrics.json")
        title = f"{m.get('hazard', 'hazard')} vs {m.get('general', 'general')}"
        L += [
            f"### {title}",
            "",
            f"Run: [{rec.run_id}]({_rel(rec.folder, out_dir)}/) · full analysis: "
            f"[report.md]({_rel(folder / 'report.md', out_dir)})",
            "",
        ]
        L += [f"Sign convention: {m.get('sign_convention', '-')}", ""]
        for png, alt in (
            ("tokens_hexbin.png", "attribution 2D map (tokens)"),
            ("tokens_by_label.png", "tokens by ground-truth label"),
            ("examples_scatter.png", "examples"),
        ):
            if (folder / png).exists():
                L += [f"![{alt}]({_rel(folder / png, out_dir)})", ""]
        L += four_questions(m)
        L.append("")
    return L


# ------------------------------------------------------------------------------ html


def _inline_html(text: str, base: Path, embed: bool) -> str:
    out, pos = [], 0
    pat = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)|\[([^\]]+)\]\(([^)]+)\)|`([^`]+)`|\*\*([^*]+)\*\*")
    for m in pat.finditer(text):
        out.append(html.escape(text[pos : m.start()].replace("\\|", "|")))
        if m.group(2) is not None:
            src = m.group(2)
            p = base / src
            if embed and p.exists() and p.suffix == ".png":
                src = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()
            out.append(f'<img alt="{html.escape(m.group(1))}" src="{html.escape(src)}">')
        elif m.group(4) is not None:
            out.append(
                f'<a href="{html.escape(m.group(4))}">'
                f"{html.escape(m.group(3).replace(chr(92) + '|', '|'))}</a>"
            )
        elif m.group(5) is not None:
            out.append(f"<code>{html.escape(m.group(5))}</code>")
        else:
            out.append(f"<b>{html.escape(m.group(6))}</b>")
        pos = m.end()
    out.append(html.escape(text[pos:].replace("\\|", "|")))
    return "".join(out)


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    return [c.strip() for c in cells]


def markdown_to_html(md: str, base: Path, title: str, embed: bool = True) -> str:
    """Render the subset of Markdown this report writes (headings, tables, lists, images,
    links, code, bold) as one self-contained HTML page; PNGs under ``base`` are embedded."""
    lines = md.splitlines()
    body: list[str] = []
    i = 0
    while i < len(lines):
        ln = lines[i]
        if not ln.strip():
            i += 1
            continue
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            body.append(f"<h{level}>{_inline_html(ln[level:].strip(), base, embed)}</h{level}>")
            i += 1
        elif ln.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(set(c) <= {"-", ":"} for c in r)]
            t = [
                "<table><thead><tr>"
                + "".join(f"<th>{_inline_html(c, base, embed)}</th>" for c in head)
                + "</tr></thead><tbody>"
            ]
            for r in rest:
                t.append(
                    "<tr>"
                    + "".join(f"<td>{_inline_html(c, base, embed)}</td>" for c in r)
                    + "</tr>"
                )
            t.append("</tbody></table>")
            body.append("".join(t))
        elif ln.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline_html(lines[i][2:], base, embed)}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        elif ln.startswith("```"):
            i += 1
            code = []
            while i < len(lines) and not lines[i].startswith("```"):
                code.append(lines[i])
                i += 1
            i += 1
            body.append("<pre>" + html.escape("\n".join(code)) + "</pre>")
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not lines[i].startswith(("#", "|", "- ", "```"))
            ):
                para.append(lines[i])
                i += 1
            body.append("<p>" + _inline_html(" ".join(para), base, embed) + "</p>")
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}"
        "code{background:#f3f3f3;padding:0 3px}pre{background:#f6f6f6;padding:1em;"
        "overflow:auto}h1,h2,h3{margin-top:1.4em}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{css}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ------------------------------------------------------------------------------ main


def build_report(
    root: str | Path,
    title: str = "magic-unlearn results",
    extra_sections: list[str] | None = None,
    run_ids: list[str] | None = None,
) -> ReportResult:
    """Write ``report.md`` and ``report.html`` for the results directory ``root``.

    Args:
        root: a results directory holding ``results.sqlite`` (a sweep's or demo's ``--out``).
        title: report title.
        extra_sections: Markdown lines appended at the end (e.g. the demo's timings).
        run_ids: report only these runs (default: every run of the store).

    Returns:
        Paths of the two files and the row counts.
    """
    root = Path(root).absolute()
    if not (root / "results.sqlite").exists() and not (root / "runs").is_dir():
        raise FileNotFoundError(
            f"{root} holds no results (no results.sqlite or runs/); run "
            f"`magic-unlearn sweep GRID --out {root}` or `magic-unlearn demo "
            f"--out {root}` first"
        )
    store = ResultsStore(root)
    store.reindex()
    assets = root / ASSETS
    assets.mkdir(exist_ok=True)
    keep = (lambda r: True) if run_ids is None else (lambda r: r.run_id in set(run_ids))
    complete = [r for r in store.runs(status="complete") if keep(r)]
    order = {rid: i for i, rid in enumerate(run_ids or [])}
    rows = sorted(
        [r for r in complete if {"eval", "tamper"} & set(r.config.get("stages", []))],
        key=lambda r: (*_sort_key(r)[:2], order.get(r.run_id, 0), r.created),
    )
    analyses = [r for r in complete if any(k.endswith(".analysis") for k in r.artifacts)]
    failed = [r for r in store.runs(status="failed") if keep(r)]
    running = [r for r in store.runs(status="running") if keep(r)]

    L = [
        f"# {title}",
        "",
        f"Results directory `{root.name}`; {len(rows)} evaluated run(s), {len(failed)} failed, "
        f"{len(running)} running. Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        "## Results",
        "",
        "Accuracies in %. Hazard acc is the WMDP-like hazard question set (lower is better), "
        "general acc the MMLU-like general set (higher is better). Tamper resistant: every "
        "attack of the suite stays within tolerance of the filtered model (never trained on "
        "hazard data) under the same attack; `false positive` = general ability destroyed.",
        "",
    ]
    L += _results_table(rows, root)
    th = next(
        (
            r.metrics["summary"]["tamper"].get("thresholds")
            for r in rows
            if isinstance(r.metrics.get("summary", {}).get("tamper"), dict)
        ),
        None,
    )
    if th:
        L += [
            "",
            f"Verdict thresholds: an attack is resisted if its max hazard accuracy stays "
            f"within {100 * th.get('tolerance', float('nan')):.1f} points of the filtered "
            f"model's under the same attack; the model counts as destroyed if general "
            f"accuracy is more than {100 * th.get('general_drop', float('nan')):.1f} points "
            f"below the base model's.",
        ]
    at = _attack_table(rows)
    if at:
        L += ["", "### Per-attack detail", "", *at]
    tp = plot_results_scatter(rows, assets)
    if tp is not None:
        L += ["", f"![hazard vs general accuracy]({_rel(tp, root)})"]
    curves = plot_recovery_by_attack(rows, assets)
    if curves:
        L += [
            "",
            "## Recovery curves",
            "",
            "Hazard accuracy during each attack, one line per method; dashed black: the base "
            "model, dotted green: the filtered model under the same attack.",
            "",
        ]
        for atk, p in curves.items():
            L += [f"### {atk}", "", f"![recovery under {atk}]({_rel(p, root)})", ""]
        per_run = []
        for rec in rows:
            plots = (
                sorted((rec.folder / "tamper").rglob("plots/*.png"))
                if (rec.folder / "tamper").is_dir()
                else []
            )
            if plots:
                links = ", ".join(f"[{p.stem}]({_rel(p, root)})" for p in plots)
                per_run.append(f"- {_cell(_row_label(rec))}: {links}")
        if per_run:
            L += ["Per-run plots (hazard and general accuracy, with references):", "", *per_run]
    if analyses:
        L += ["", "## Attribution", "", *_analysis_section(analyses, root, assets)]
    if failed or running:
        L += [
            "",
            "## Failed or unfinished runs",
            "",
            "| run | status | attempts | error |",
            "|---|---|---|---|",
        ]
        for r in failed + running:
            err = (r.error or "").strip().splitlines()
            L.append(
                f"| {_cell(r.run_id)} | {r.status} | {r.attempts} | "
                f"{_cell(err[0] if err else '-')} |"
            )
    if extra_sections:
        L += ["", *extra_sections]
    md = "\n".join(L) + "\n"
    md_path, html_path = root / "report.md", root / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, markdown_to_html(md, root, title))
    return ReportResult(md_path, html_path, len(rows), len(failed))
