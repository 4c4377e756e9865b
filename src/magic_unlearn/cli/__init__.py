"""The ``magic-unlearn`` command line: a thin layer over the Python API.

Each stage lives in its own module here and adds its commands in ``register(app)``.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="magic-unlearn",
    help="Tamper-resistant unlearning guided by MAGIC data attribution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_STAGES = ["world", "pretrain", "evaluate", "attribute", "analyze", "unlearn", "tamper", "pipeline"]

for _name in _STAGES:
    importlib.import_module(f"magic_unlearn.cli.{_name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
