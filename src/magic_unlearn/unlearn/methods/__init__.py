"""Unlearning methods: small loss objects behind one interface, registered by name.

    from magic_unlearn.unlearn.methods import get_method
    method = get_method("npo", beta=0.1, retain_kl=0.5)     # + any regulariser

Modules: :mod:`.base` (the :class:`Method` interface and its hooks), :mod:`.registry`
(``register_method``, ``get_method``, ``METHODS``, ``describe_methods``), :mod:`.tensors`
(shared tensor helpers), and one module per family: :mod:`.sft` (fine-tuning),
:mod:`.ascent` (ga, graddiff, npo, simnpo), :mod:`.representation` (rmu, rr, orth_cb,
ga_orth), :mod:`.layerwise` (lens, sequential), :mod:`.ablation` (dir_ablate),
:mod:`.distill` (distill: UNDO's distillation step), :mod:`.sam` (sam: sharpness-aware
unlearning), :mod:`.tar` (tar: meta-unlearning with exact metagradients),
:mod:`.regularizers` (l2sp, retain_kl, retain_nll). Importing this package registers them all.
"""

# importing a family module registers its methods
from magic_unlearn.unlearn.methods.ablation import DirAblate
from magic_unlearn.unlearn.methods.ascent import NPO, GradDiff, GradientAscent, SimNPO
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.distill import Distill, perturb_toward_init
from magic_unlearn.unlearn.methods.layerwise import Lens, Sequential
from magic_unlearn.unlearn.methods.registry import (
    METHODS,
    REGULARIZERS,
    describe_methods,
    get_method,
    register_method,
)
from magic_unlearn.unlearn.methods.regularizers import L2SP, Regularized, RetainKL, RetainNLL
from magic_unlearn.unlearn.methods.representation import (
    RMU,
    RR,
    GAOrth,
    OrthCB,
    orthogonality_loss,
)
from magic_unlearn.unlearn.methods.sam import SAM
from magic_unlearn.unlearn.methods.sft import SFT
from magic_unlearn.unlearn.methods.tar import TAR
from magic_unlearn.unlearn.methods.tensors import Batch, kl_per_token, token_mean

__all__ = [
    "METHODS",
    "REGULARIZERS",
    "Batch",
    "DirAblate",
    "Distill",
    "GAOrth",
    "GradDiff",
    "GradientAscent",
    "L2SP",
    "Lens",
    "Method",
    "NPO",
    "OrthCB",
    "RMU",
    "RR",
    "Regularized",
    "RetainKL",
    "RetainNLL",
    "SAM",
    "SFT",
    "TAR",
    "Sequential",
    "SimNPO",
    "describe_methods",
    "get_method",
    "kl_per_token",
    "orthogonality_loss",
    "perturb_toward_init",
    "register_method",
    "token_mean",
]
