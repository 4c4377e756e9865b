"""Tamper attacks, recovery curves and the tamper-resistance verdict.

See :func:`tamper` (the API), :mod:`.config` (attack settings and suites), :mod:`.registry`
(the :class:`Attack` interface, ``register_attack``, ``get_attack``, ``ATTACKS``),
:mod:`.attacks` (the built-in attacks: finetune, ablate, probe; importing this package registers
them), :mod:`.context` (what a suite run shares), :mod:`.scoring` + :mod:`.fastscore` (the
curve scorer), :mod:`.verdict` (pure verdict logic), :mod:`.plots`.
"""

from magic_unlearn.tamper.api import (
    TamperResult,
    model_hash,
    run_attack,
    run_suite,
    tamper,
    verdict_from_curves,
    write_outputs,
)
from magic_unlearn.tamper.attacks import (
    DirectionAblation,
    ablate_attack,
    ablation_directions,
    finetune_attack,
    mean_layer_activations,
    probe_attack,
)
from magic_unlearn.tamper.config import (
    BUILTIN_SUITES,
    AttackConfig,
    SuiteConfig,
    TamperEvalConfig,
    VerdictConfig,
    load_suite,
    suite_names,
)
from magic_unlearn.tamper.context import AttackContext, make_attack_context
from magic_unlearn.tamper.registry import (
    ATTACKS,
    Attack,
    AttackRun,
    AttackSkipped,
    describe_attacks,
    get_attack,
    register_attack,
)
from magic_unlearn.tamper.verdict import (
    AttackSummary,
    Verdict,
    auc,
    decide,
    format_table,
    summarize_attack,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackConfig",
    "AttackContext",
    "AttackRun",
    "AttackSkipped",
    "AttackSummary",
    "BUILTIN_SUITES",
    "DirectionAblation",
    "SuiteConfig",
    "TamperEvalConfig",
    "TamperResult",
    "Verdict",
    "VerdictConfig",
    "ablate_attack",
    "ablation_directions",
    "auc",
    "decide",
    "describe_attacks",
    "finetune_attack",
    "format_table",
    "get_attack",
    "load_suite",
    "make_attack_context",
    "mean_layer_activations",
    "model_hash",
    "probe_attack",
    "register_attack",
    "run_attack",
    "run_suite",
    "suite_names",
    "summarize_attack",
    "tamper",
    "verdict_from_curves",
    "write_outputs",
]
