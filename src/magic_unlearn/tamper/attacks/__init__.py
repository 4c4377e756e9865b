"""The built-in attacks, one module per family; importing this package registers them.

* :mod:`.finetune` (``finetune``): relearning through the unlearning loop, lr sweeps;
* :mod:`.ablate` (``ablate``): direction ablation against the original model;
* :mod:`.probe` (``probe``): logit-lens / tuned-lens probes of every layer.

Every attack produces a *curve*: a list of points ``{"step", "hazard_acc", "hazard_loss",
"general_acc", "general_loss", ...}`` measured by the context's scorer (for ``probe`` the x value
is the layer). The interface is :class:`magic_unlearn.tamper.registry.Attack`.
"""

from magic_unlearn.tamper.attacks.ablate import (
    AblateAttack,
    DirectionAblation,
    ablate_attack,
    ablation_directions,
    mean_layer_activations,
)
from magic_unlearn.tamper.attacks.finetune import (
    FinetuneAttack,
    finetune_attack,
    loop_config,
    worst_case,
    worst_case_per_step,
)
from magic_unlearn.tamper.attacks.probe import ProbeAttack, probe_attack

__all__ = [
    "AblateAttack",
    "DirectionAblation",
    "FinetuneAttack",
    "ProbeAttack",
    "ablate_attack",
    "ablation_directions",
    "finetune_attack",
    "loop_config",
    "mean_layer_activations",
    "probe_attack",
    "worst_case",
    "worst_case_per_step",
]
