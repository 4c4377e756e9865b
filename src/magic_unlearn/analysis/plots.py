"""PNG plots for the analysis report (matplotlib, Agg backend, files only).

Scores are heavy-tailed, so 2D plots use ``asinh(score / median|score|)`` axes: linear within
the noise level, logarithmic beyond it, sign preserved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from magic_unlearn.analysis.stats import concentration_curve
from magic_unlearn.plotting import pyplot

LABEL_COLORS = {0: "#9e9e9e", 1: "#1f77b4", 2: "#d62728"}
LABEL_TEXT = {0: "other", 1: "general-fact", 2: "hazard-fact"}


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def _zero_axes(ax: Any) -> None:
    """Lines through the origin: the quadrant boundaries of the sign convention."""
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", lw=0.6)


def squash(x: np.ndarray, scale: float) -> np.ndarray:
    """Signed log-like squashing: ``asinh(x / scale)``."""
    return np.arcsinh(x / (scale if scale > 0 else 1.0))


def hexbin_tokens(
    h: np.ndarray, g: np.ndarray, sh: float, sg: float, names: tuple[str, str], path: Path
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    hb = ax.hexbin(squash(h, sh), squash(g, sg), gridsize=60, bins="log", cmap="viridis", mincnt=1)
    fig.colorbar(hb, ax=ax, label="tokens (log)")
    _zero_axes(ax)
    ax.set_xlabel(f"asinh({names[0]} / {sh:.2g})   <- teaches hazard")
    ax.set_ylabel(f"asinh({names[1]} / {sg:.2g})   <- teaches general")
    ax.set_title("Token density (lower-left quadrant: teaches both)")
    _save(fig, path)


def tokens_by_label(
    h: np.ndarray,
    g: np.ndarray,
    labels: np.ndarray,
    sh: float,
    sg: float,
    names: tuple[str, str],
    path: Path,
    max_points: int = 20000,
    seed: int = 0,
) -> None:
    plt = pyplot()
    idx = np.arange(h.size)
    if idx.size > max_points:
        idx = np.random.default_rng(seed).choice(idx, max_points, replace=False)
    fig, ax = plt.subplots(figsize=(6, 5))
    for lab in (0, 1, 2):
        sel = idx[labels[idx] == lab]
        ax.scatter(
            squash(h[sel], sh),
            squash(g[sel], sg),
            s=3,
            alpha=0.5,
            c=LABEL_COLORS[lab],
            label=f"{LABEL_TEXT[lab]} ({(labels == lab).sum()})",
        )
    _zero_axes(ax)
    ax.set_xlabel(f"asinh({names[0]} / {sh:.2g})")
    ax.set_ylabel(f"asinh({names[1]} / {sg:.2g})")
    ax.set_title("Tokens by ground-truth label")
    ax.legend(markerscale=4, fontsize=8)
    _save(fig, path)


def scatter_examples(
    H: np.ndarray, G: np.ndarray, rank: np.ndarray, names: tuple[str, str], path: Path
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(H, G, c=rank, s=10, cmap="coolwarm")
    fig.colorbar(sc, ax=ax, label="ranking score (hazard-specific: high)")
    _zero_axes(ax)
    ax.set_xlabel(f"example sum of {names[0]} scores")
    ax.set_ylabel(f"example sum of {names[1]} scores")
    ax.set_title("Examples")
    _save(fig, path)


def ratio_hist(log_ratio: np.ndarray, path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if log_ratio.size:
        ax.hist(log_ratio, bins=80, color="#555")
        ax.axvline(
            np.median(log_ratio), color="r", lw=1, label=f"median {np.median(log_ratio):.2f}"
        )
        ax.legend()
    ax.set_xlabel("log10 |hazard score| / |general score| per token")
    ax.set_ylabel("tokens")
    ax.set_title(title)
    _save(fig, path)


def concentration(curves: dict[str, np.ndarray], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in curves.items():
        x, y = concentration_curve(v)
        ax.plot(x[1:], y[1:], label=name)  # x > 0 for the log axis
    u = np.logspace(-4, 0, 50)
    ax.plot(u, u, "k:", lw=0.8, label="uniform")
    ax.axhline(0.5, color="gray", lw=0.5)
    ax.axhline(0.9, color="gray", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of tokens (sorted by |score|)")
    ax.set_ylabel("fraction of total |score|")
    ax.set_title("Score mass concentration")
    ax.legend(fontsize=8)
    _save(fig, path)


def per_position(pos: dict[str, dict[str, list[float]]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for name, d in pos.items():
        x = np.asarray(d["position"])
        axes[0].plot(x, d["mean"], label=name)
        axes[1].plot(x, d["mean_abs"], label=name)
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_ylabel("mean score")
    axes[1].set_ylabel("mean |score|")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("position j (loss of token j)")
    axes[0].legend(fontsize=8)
    axes[0].set_title("Per-position summary")
    _save(fig, path)
