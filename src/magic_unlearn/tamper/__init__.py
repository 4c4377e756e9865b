"""Tamper attacks, recovery curves and the tamper-resistance verdict.

See :func:`tamper` (the API), :mod:`.config` (attacks and suites), :mod:`.attacks` (fine-tune,
ablate, probe), :mod:`.verdict` (pure verdict logic).
"""

from magic_unlearn.tamper.api import (
    AttackContext,
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
    LensModel,
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
    "AttackConfig",
    "AttackContext",
    "AttackSummary",
    "BUILTIN_SUITES",
    "DirectionAblation",
    "LensModel",
    "SuiteConfig",
    "TamperEvalConfig",
    "TamperResult",
    "Verdict",
    "VerdictConfig",
    "ablate_attack",
    "ablation_directions",
    "auc",
    "decide",
    "finetune_attack",
    "format_table",
    "load_suite",
    "mean_layer_activations",
    "model_hash",
    "probe_attack",
    "run_attack",
    "run_suite",
    "summarize_attack",
    "tamper",
    "verdict_from_curves",
    "write_outputs",
]
