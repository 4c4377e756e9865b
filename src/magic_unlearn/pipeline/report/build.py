"""Build ``report.md`` and ``report.html`` of a results directory from its store."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from magic_unlearn.io import atomic_write_text, read_json
from magic_unlearn.pipeline.report.html import render_html
from magic_unlearn.pipeline.report.plots import plot_recovery_by_attack, plot_results_scatter
from magic_unlearn.pipeline.report.summary import answer_lines
from magic_unlearn.pipeline.report.tables import (
    analysis_section,
    attack_table,
    cell,
    failed_table,
    rel,
    results_table,
    row_label,
    sort_key,
    thresholds_note,
)
from magic_unlearn.pipeline.store import ResultsStore, RunRecord

ASSETS = "report_assets"

logger = logging.getLogger(__name__)


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the two files and the row counts."""

    markdown: Path
    html: Path
    n_rows: int
    n_failed: int


@dataclass
class ReportRuns:
    """The runs of a results directory, grouped for the report."""

    rows: list[RunRecord]  # evaluated runs (eval or tamper stage), reference rows first
    analyses: list[RunRecord]  # runs with an analysis artifact
    failed: list[RunRecord]
    running: list[RunRecord]


def select_runs(store: ResultsStore, run_ids: list[str] | None = None) -> ReportRuns:
    """The store's runs (only ``run_ids`` if given) in report order."""
    wanted = None if run_ids is None else set(run_ids)

    def keep(r: RunRecord) -> bool:
        return wanted is None or r.run_id in wanted

    complete = [r for r in store.runs(status="complete") if keep(r)]
    order = {rid: i for i, rid in enumerate(run_ids or [])}
    rows = sorted(
        [r for r in complete if {"eval", "tamper"} & set(r.config.get("stages", []))],
        key=lambda r: (*sort_key(r), order.get(r.run_id, 0), r.created),
    )
    return ReportRuns(
        rows=rows,
        analyses=[r for r in complete if any(k.endswith(".analysis") for k in r.artifacts)],
        failed=[r for r in store.runs(status="failed") if keep(r)],
        running=[r for r in store.runs(status="running") if keep(r)],
    )


def _per_run_plots(rows: list[RunRecord], root: Path) -> list[str]:
    lines = []
    for rec in rows:
        tdir = rec.folder / "tamper"
        plots = sorted(tdir.rglob("plots/*.png")) if tdir.is_dir() else []
        if plots:
            links = ", ".join(f"[{p.stem}]({rel(p, root)})" for p in plots)
            lines.append(f"- {cell(row_label(rec))}: {links}")
    return lines


def _ground_truth(analyses: list[RunRecord]) -> dict | None:
    """The ground-truth metrics of the first analysis run that has them (world data)."""
    for rec in analyses:
        for key, p in rec.artifacts.items():
            f = rec.folder / p / "metrics.json"
            if key.endswith(".analysis") and f.exists():
                gt = read_json(f).get("ground_truth")
                if isinstance(gt, dict):
                    return gt
    return None


def report_markdown(
    runs: ReportRuns, root: Path, title: str, extra_sections: list[str] | None = None
) -> str:
    """The report's Markdown (draws its figures into ``root/report_assets``)."""
    assets = root / ASSETS
    assets.mkdir(exist_ok=True)
    rows = runs.rows
    lines = [
        f"# {title}",
        "",
        f"Results directory `{root.name}`; {len(rows)} evaluated run(s), {len(runs.failed)} "
        f"failed, {len(runs.running)} running. Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
    ]
    answer = answer_lines(rows, _ground_truth(runs.analyses))
    if answer:
        lines += ["## Answer", "", *answer, ""]
    lines += [
        "## Results",
        "",
        "Accuracies in %, with Wilson 95% intervals from the number of questions. Hazard acc "
        "is the WMDP-like hazard question set (lower is better), general acc the MMLU-like "
        "general set (higher is better). Tamper resistant: no attack of the suite lifts the "
        "model's hazard accuracy above the filtered model's (never trained on hazard data) "
        "under the same attack, beyond noise; `false positive` = general ability destroyed.",
        "",
    ]
    lines += results_table(rows, root)
    note = thresholds_note(rows)
    if note:
        lines += ["", *note]
    at = attack_table(rows)
    if at:
        lines += ["", "### Per-attack detail", "", *at]
    tp = plot_results_scatter(rows, assets)
    if tp is not None:
        lines += ["", f"![hazard vs general accuracy]({rel(tp, root)})"]
    curves = plot_recovery_by_attack(rows, assets)
    if curves:
        lines += [
            "",
            "## Recovery curves",
            "",
            "Hazard accuracy (%) during each attack, one line per method (the same colour in "
            "every figure); dashed black: the base model, dotted green: the filtered model "
            "under the same attack, dash-dotted grey: chance.",
            "",
        ]
        for atk, p in curves.items():
            lines += [f"### {atk}", "", f"![recovery under {atk}]({rel(p, root)})", ""]
        per_run = _per_run_plots(rows, root)
        if per_run:
            lines += [
                "Per-run plots (hazard and general accuracy, with references):",
                "",
                *per_run,
            ]
    if runs.analyses:
        lines += ["", "## Attribution", "", *analysis_section(runs.analyses, root)]
    if runs.failed or runs.running:
        lines += ["", "## Failed or unfinished runs", "", *failed_table(runs.failed + runs.running)]
    if extra_sections:
        lines += ["", *extra_sections]
    return "\n".join(lines) + "\n"


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
    n_new = store.reindex()
    runs = select_runs(store, run_ids)
    logger.debug(
        "report of %s: %d row(s), %d analysis run(s), %d failed, %d running (%d re-indexed)",
        root,
        len(runs.rows),
        len(runs.analyses),
        len(runs.failed),
        len(runs.running),
        n_new,
    )
    md = report_markdown(runs, root, title, extra_sections)
    md_path, html_path = root / "report.md", root / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, render_html(md, root, title))
    return ReportResult(md_path, html_path, len(runs.rows), len(runs.failed))
