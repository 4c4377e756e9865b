"""The ``magic-unlearn`` command line: a thin layer over the Python API.

Each stage lives in its own module here and adds its commands in ``register(app)``. The app
callback sets up logging for every command: status messages go to stderr through the
``magic_unlearn`` logger (INFO by default, DEBUG with ``-v``, WARNING with ``-q``), results
(tables, JSON, listings) to stdout.

Every command module is imported when the CLI starts, so each imports its stage's Python API
inside the command: the stage packages pull in torch and transformers (seconds), which
``magic-unlearn --help`` or ``report`` should not pay. Everywhere else imports sit at the top.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer
from tqdm.auto import tqdm

from magic_unlearn.cli import (
    analyze,
    attribute,
    evaluate,
    pipeline,
    pretrain,
    study,
    tamper,
    unlearn,
    world,
)

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"

app = typer.Typer(
    name="magic-unlearn",
    help="Tamper-resistant unlearning guided by MAGIC data attribution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _TqdmHandler(logging.Handler):
    """Writes log lines with ``tqdm.write`` to the current ``sys.stderr``: lines land above an
    active progress bar instead of breaking it, and a swapped stderr (tests) is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Send the package's log records of ``level`` and above to stderr (idempotent)."""
    log = logging.getLogger("magic_unlearn")
    for h in list(log.handlers):
        if isinstance(h, _TqdmHandler):
            log.removeHandler(h)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(level)


@app.callback()
def _configure(
    verbose: Optional[bool] = typer.Option(
        None,
        "--verbose/--quiet",
        "-v/-q",
        help="More log messages (debug) or fewer (warnings and errors only).",
    ),
) -> None:
    """Tamper-resistant unlearning guided by MAGIC data attribution."""
    setup_logging({None: logging.INFO, True: logging.DEBUG, False: logging.WARNING}[verbose])


for _module in (world, pretrain, evaluate, attribute, analyze, unlearn, tamper, pipeline, study):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
