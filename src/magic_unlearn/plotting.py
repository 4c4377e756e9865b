"""matplotlib for the package's figures: PNG files only, on the Agg backend."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib's ``pyplot`` on the Agg backend (PNG files only, no display needed).

    Imported on first use, not at module import: selecting the backend at import time would
    override the backend of a notebook or script that merely imports magic_unlearn, and
    matplotlib adds about a second to the start of every CLI command.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
