"""The report's figures: recovery curves per attack and the hazard/general trade-off.

Drawn from data (each run's ``tamper/curves.json`` and summary), written as PNGs atomically.
Accuracies are in % (as in the tables); each method keeps one colour in every figure, distinct
from the references' (base black, filtered green) and the chance line's grey; legends sit under
the axes with full labels.
"""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path
from typing import Any

from magic_unlearn.intervals import wilson_interval
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


# references keep fixed styles; methods take colours from a palette without their colours
# (green, black) or the chance line's grey, assigned in row order so a method has one colour
# in every figure
REFERENCE_STYLE = {
    "base": dict(color="black", ls="--", lw=2.0, marker="s"),
    "filtered": dict(color="tab:green", ls=":", lw=2.4, marker="^"),
}
CHANCE_STYLE = dict(color="0.55", ls="-.", lw=1.0)
PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "navy",
    "darkgoldenrod",
    "darkmagenta",
    "teal",
    "crimson",
    "slateblue",
)


def _wrap(label: str, width: int = 34) -> str:
    """A legend label on lines of at most ``width`` characters (never cut off)."""
    return textwrap.fill(label, width) if len(label) > width else label


def _role(rec: RunRecord) -> str | None:
    if rec.kind != "reference":
        return None
    return "base" if rec.name.split("-")[0] == "base" else "filtered"


def method_colors(rows: list[RunRecord]) -> dict[str, str]:
    """Row label -> colour: the references' fixed colours, then the palette in row order."""
    out: dict[str, str] = {}
    k = 0
    for rec in rows:
        label, role = row_label(rec), _role(rec)
        if label in out:
            continue
        if role is not None:
            out[label] = str(REFERENCE_STYLE[role]["color"])
        else:
            out[label] = PALETTE[k % len(PALETTE)]
            k += 1
    return out


def _legend_below(ax: Any, n: int) -> None:
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=2 if n > 3 else n,
        frameon=False,
    )


def _x_axis(ax: Any, kind: str | None, x_label: str, xs: list[int]) -> None:
    """Layers and steps as integers; an ablation's two points as before / after."""
    from matplotlib.ticker import MaxNLocator

    if kind == "ablate" and set(xs) <= {0, 1}:
        ax.set_xticks([0, 1], ["before", "after ablation"])
        ax.set_xlim(-0.25, 1.25)
        ax.set_xlabel("direction ablation")
        return
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs and max(xs) - min(xs) <= 1:
        ax.set_xlim(min(xs) - 0.25, max(xs) + 0.25)
    ax.set_xlabel(x_label)


def load_curves(rec: RunRecord) -> dict[str, Any] | None:
    """A run's tamper curves (``curves.json``), or None when it has none."""
    p = rec.artifacts.get("tamper.curves")
    if p is None or not (rec.folder / p).exists():
        return None
    return read_json(rec.folder / p)


def plot_recovery_by_attack(rows: list[RunRecord], assets: Path) -> dict[str, Path]:
    """One PNG per attack: hazard accuracy (%) vs step (or layer) of every run, references in
    their fixed styles, chance as a grey line."""
    by_attack: dict[str, dict[str, Any]] = {}
    refs: dict[str, dict[str, Any]] = {}
    chance = None
    ref_rows: dict[str, str] = {}  # row label -> reference role drawn in its style
    colors = method_colors(rows)
    for rec in rows:
        cv = load_curves(rec)
        if cv is None:
            continue
        chance = cv.get("chance", chance)
        role = _role(rec)
        if role is not None:
            ref_rows[row_label(rec)] = role
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
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        x_label, kind, xs_all = "step", None, []
        drawn: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for label, e in lines.items():
            role = ref_rows.get(label)
            style = (
                dict(ls="-", marker="o", ms=3.5, lw=1.6, color=colors.get(label))
                if role is None
                else REFERENCE_STYLE[role]
            )
            drawn.append((label, e, style))
        for role, e in refs.get(atk, {}).items():
            if role in ref_rows.values():  # already drawn as its own row
                continue
            drawn.append((f"{role} (reference)", e, REFERENCE_STYLE.get(role, {})))
        for label, e, style in drawn:
            pts = sorted(e["points"], key=lambda p: p["step"])
            x_label, kind = e.get("x_label", x_label), e.get("kind", kind)
            xs = [int(p["step"]) for p in pts]
            xs_all += xs
            ax.plot(xs, [100 * p["hazard_acc"] for p in pts], label=_wrap(label), **style)
        if chance is not None:
            ax.axhline(100 * chance, label="chance", **CHANCE_STYLE)
        _x_axis(ax, kind, x_label, xs_all)
        ax.set_ylabel("hazard accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.set_title(f"recovery under attack: {atk}", fontsize=10)
        _legend_below(ax, len(drawn) + (chance is not None))
        out[atk] = _save(fig, assets / f"recovery_{re.sub(r'[^A-Za-z0-9_-]', '_', atk)}.png")
    return out


def _limits(values: list[float]) -> tuple[float, float]:
    """Axis limits (%) around the data with a margin (at most 3 beyond [0, 100]), at least 10
    wide."""
    lo, hi = min(values), max(values)
    pad = max(3.0, 0.08 * (hi - lo))
    lo, hi = max(-3.0, lo - pad), min(103.0, hi + pad)  # a point at 0 or 100 stays whole
    if hi - lo < 10:
        mid = (lo + hi) / 2
        lo, hi = mid - 5, mid + 5
    return lo, hi


def plot_results_scatter(rows: list[RunRecord], assets: Path) -> Path | None:
    """Hazard vs general accuracy (%) of every row with Wilson 95% intervals as error bars
    (the trade-off at a glance; lower right is better)."""
    pts = [(r, r.metrics.get("summary", {})) for r in rows]
    pts = [
        (r, s)
        for r, s in pts
        if s.get("hazard_acc") is not None and s.get("general_acc") is not None
    ]
    if not pts:
        return None
    plt = pyplot()
    colors = method_colors(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    markers = "ovD^<>phX*"
    xs_all: list[float] = []
    ys_all: list[float] = []
    for i, (r, s) in enumerate(pts):
        role = _role(r)
        x, y = 100 * float(s["hazard_acc"]), 100 * float(s["general_acc"])
        err = []
        for key in ("hazard", "general"):
            acc, n = float(s[f"{key}_acc"]), s.get(f"{key}_n")
            lo, hi = wilson_interval(acc, int(n)) if n else (acc, acc)
            err.append([[max(0.0, 100 * (acc - lo))], [max(0.0, 100 * (hi - acc))]])
            if key == "hazard":
                xs_all += [100 * lo, 100 * hi]
            else:
                ys_all += [100 * lo, 100 * hi]
        ax.errorbar(
            x,
            y,
            xerr=err[0],
            yerr=err[1],
            fmt=str(REFERENCE_STYLE[role]["marker"]) if role else markers[i % len(markers)],
            ms=7,
            capsize=3,
            elinewidth=1,
            alpha=0.9,
            color=colors.get(row_label(r)),
            label=_wrap(row_label(r)),
        )
    ax.set_xlabel("hazard accuracy (%), lower is better")
    ax.set_ylabel("general accuracy (%), higher is better")
    ax.set_xlim(*_limits(xs_all))
    ax.set_ylim(*_limits(ys_all))
    ax.grid(alpha=0.3)
    ax.set_title("hazard vs general accuracy (bars: 95% intervals)", fontsize=10)
    _legend_below(ax, len(pts))
    return _save(fig, assets / "tradeoff.png")
