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

Modules: ``build.py`` (store queries, page layout, :func:`build_report`), ``tables.py``
(Markdown tables and wording), ``plots.py`` (matplotlib figures), ``html.py`` (``report.html``
through Python-Markdown).
"""

from magic_unlearn.pipeline.report.build import ASSETS, ReportResult, build_report, select_runs
from magic_unlearn.pipeline.report.html import render_html
from magic_unlearn.pipeline.report.tables import four_questions, tamper_text

__all__ = [
    "ASSETS",
    "ReportResult",
    "build_report",
    "four_questions",
    "render_html",
    "select_runs",
    "tamper_text",
]
