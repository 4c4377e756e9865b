"""The ``magic-unlearn`` command line: a thin layer over the Python API.

Each stage lives in its own module here and adds its commands in ``register(app)``. The app
callback sets up logging for every command: status messages go to stderr through the
``magic_unlearn`` logger (INFO by default, DEBUG with ``-v``, WARNING with ``-q``), results
(tables, JSON, listings) to stdout.

A failing command prints one line, ``error: <message>``, and exits with status 2 for bad input
(a missing file, a bad config value, a corrupt artifact: the message names the file, field and
fix) or 1 for anything unexpected; ``-v`` adds the traceback (:class:`_ErrorsAsOneLine`).

Every command module is imported when the CLI starts, so each imports its stage's Python API
inside the command: the stage packages pull in torch and transformers (seconds), which
``magic-unlearn --help`` or ``report`` should not pay. Everywhere else imports sit at the top.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, Optional

import typer
import typer.core
import typer.exceptions
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

# bad input: a one-line message naming the file / field / fix, exit status 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, ImportError)


def error_line(e: BaseException) -> str:
    """The one-line ``error: ...`` text of an exception (``KeyError`` without its quotes)."""
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(msg.split()) or type(e).__name__
    if not isinstance(e, USER_ERRORS):
        msg = f"{type(e).__name__}: {msg} (run with -v for the traceback)"
    return f"error: {msg}"


class _ErrorsAsOneLine(typer.core.TyperGroup):
    """The app's group: an exception escaping a command becomes ``error: ...`` on stderr and
    exit status 2 (bad input: ``USER_ERRORS``) or 1 (anything else), with the traceback only
    under ``-v``. Click's own exits (``--help``, usage errors, ``typer.Exit``) pass through."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise  # --help, usage errors (they have their own message), typer.Exit(code)
        except Exception as e:
            if logging.getLogger("magic_unlearn").isEnabledFor(logging.DEBUG):
                traceback.print_exc(file=sys.stderr)
            typer.echo(error_line(e), err=True)
            raise typer.Exit(2 if isinstance(e, USER_ERRORS) else 1) from None
        finally:
            _restore_threads()


# --threads: the torch thread count of a command (restored afterwards, for in-process callers)
_saved_threads: list[int] = []


def set_threads(threads: int | None) -> None:
    """Apply ``--threads``: None keeps ``$OMP_NUM_THREADS`` if set, else 1; 0 leaves torch's
    default (all cores). Before torch is imported this goes through ``OMP_NUM_THREADS`` (read
    when torch loads, and inherited by worker processes), so commands that never need torch do
    not import it."""
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        threads = 1
    if threads <= 0:
        return
    if "torch" in sys.modules:
        import torch

        _saved_threads.append(torch.get_num_threads())
        torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _restore_threads() -> None:
    if _saved_threads:
        import torch

        torch.set_num_threads(_saved_threads.pop())


def _flag_display_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """An option's type in ``--help``: none for on/off flags (they take no value), else
    Typer's (``<int>``, ``<path>``, ...)."""
    if self.is_flag:
        return ""
    return _typer_display_type(self, ctx)


# Typer versions with this hook show ``<bool>`` after flags such as ``--overwrite`` though they
# take no value; versions without it (the GPU image's) print none: leave them alone
_typer_display_type = getattr(typer.core.TyperOption, "display_type_rich", None)
if _typer_display_type is not None:
    typer.core.TyperOption.display_type_rich = _flag_display_type  # type: ignore[method-assign]

app = typer.Typer(
    name="magic-unlearn",
    cls=_ErrorsAsOneLine,
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
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        envvar="MAGIC_UNLEARN_THREADS",
        help="CPU threads for torch. Default 1 (or $OMP_NUM_THREADS): the tiny world's models "
        "train ~8x faster on 1 thread than on 2 on a busy 2-core machine; 0 = all cores, for "
        "large models on an idle CPU.",
    ),
) -> None:
    """Tamper-resistant unlearning guided by MAGIC data attribution."""
    setup_logging({None: logging.INFO, True: logging.DEBUG, False: logging.WARNING}[verbose])
    set_threads(threads)


for _module in (world, pretrain, evaluate, attribute, analyze, unlearn, tamper, pipeline, study):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
