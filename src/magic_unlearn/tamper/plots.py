"""Recovery-curve figures (matplotlib, Agg), written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from magic_unlearn.io import atomic_write_bytes

# the report's styles (pipeline/report/plots.py): base black dashed, filtered green dotted
STYLE = {
    "model": ("tab:red", "-", "o"),
    "base": ("black", "--", "s"),
    "filtered": ("tab:green", ":", "^"),
}


def plot_recovery(
    path: str | Path,
    attack: str,
    curves: dict[str, list[dict[str, Any]]],
    *,
    x_label: str = "step",
    chance: float | None = None,
    title: str | None = None,
    kind: str | None = None,
) -> Path:
    """Hazard and general accuracy of every curve on shared axes; one PNG per attack.

    Args:
        path: output PNG.
        attack: attack name (title).
        curves: label (``model``, ``base``, ``filtered`` or any) -> points with ``step``,
            ``hazard_acc`` and optionally ``general_acc``.
        x_label: meaning of ``step`` (``step`` or ``layer``).
        chance: chance accuracy drawn as a grey line.
        title: figure title (default: the attack name).
        kind: the attack kind (an ``ablate`` curve's two points read "before" / "after").
    """
    # deferred: pyplot takes seconds to import, and the backend must be chosen before it is
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True)
    for ax, key, name in (
        (axes[0], "hazard_acc", "hazard accuracy"),
        (axes[1], "general_acc", "general accuracy"),
    ):
        for label, pts in curves.items():
            xs = [p["step"] for p in pts if p.get(key) is not None]
            ys = [p[key] for p in pts if p.get(key) is not None]
            if not xs:
                continue
            color, ls, marker = STYLE.get(label, (None, "-", "."))
            ax.plot(xs, [100 * y for y in ys], ls, color=color, marker=marker, ms=3, label=label)
        if chance is not None:
            ax.axhline(100 * chance, color="0.55", lw=1.0, ls="-.", label="chance")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"{name} (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        steps = sorted({p["step"] for pts in curves.values() for p in pts})
        if kind == "ablate" and set(steps) <= {0, 1}:
            ax.set_xticks([0, 1], ["before", "after ablation"])
            ax.set_xlabel("direction ablation")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if steps and steps[-1] - steps[0] <= 1:
            ax.set_xlim(steps[0] - 0.25, steps[-1] + 0.25)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False
    )
    fig.suptitle(title or f"attack: {attack}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
