"""``python -m magic_unlearn.cli``: the CLI as a module (what ``torchrun -m`` and
``accelerate launch -m`` start in every process, docs/scale.md)."""

from magic_unlearn.cli import main

main()
