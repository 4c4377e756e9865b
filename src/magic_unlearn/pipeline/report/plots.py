"""The report's figures: recovery curves per attack and the hazard/general trade-off.

Drawn from data (each run's ``tamper/curves.json`` and summary), written as PNGs atomically.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from magic_unlearn.io import atomic_write_bytes, read_json
from magic_unlearn.pipeline.report.tables import row_label
from magic_unlearn.pipeline.store import RunRecord
from magic_unlearn.plotting import pyplot


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _short(label: str) -> str:
    return label if len(label) <= 28 else label[:27] + "…"


def load_curves(rec: RunRecord) -> dict[str, Any] | None:
    """A run's tamper curves (``curves.json``), or None when it has none."""
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
        cv = load_curves(rec)
        if cv is None:
            continue
        chance = cv.get("chance", chance)
        if rec.kind == "reference":
            ref_rows[row_label(rec)] = "base" if "base" in rec.name else "filtered"
        for atk, e in (cv.get("attacks") or {}).items():
            if e.get("points"):
                by_attack.setdefault(atk, {})[row_label(rec)] = e
        for role, entries in (cv.get("reference") or {}).items():
            for atk, e in (entries or {}).items():
                if e.get("points"):
                    refs.setdefault(atk, {}).setdefault(role, e)
    out = {}
    for atk, lines in by_attack.items():
        plt = pyplot()
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
            ax.plot(
                [p["step"] for p in pts],
                [p["hazard_acc"] for p in pts],
                label=_short(label),
                **style,
            )
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    markers = "ovD^<>phX*"
    for i, (r, s) in enumerate(pts):
        marker = "s" if r.kind == "reference" else markers[i % len(markers)]
        ax.scatter(
            s["hazard_acc"],
            s["general_acc"],
            marker=marker,
            s=40,
            alpha=0.85,
            label=_short(row_label(r)),
        )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel("hazard acc (lower is better)")
    ax.set_ylabel("general acc (higher is better)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, assets / "tradeoff.png")
