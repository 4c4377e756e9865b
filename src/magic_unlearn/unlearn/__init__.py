"""Unlearning engine: one training loop, methods as registered loss objects, attribution weights.

    from magic_unlearn.unlearn import LoopConfig, get_method, train_loop
    res = train_loop(model, get_method("rr"), {"forget": f, "retain": r}, LoopConfig(steps=200))

    from magic_unlearn.unlearn import load_unlearn_config, unlearn
    cfg = load_unlearn_config("x.yaml", ["loop.lr=1e-4"], recipe="weighted_orth_cb")
    unlearn(cfg, "runs/unlearned")             # HF model folder + metrics.json + config.yaml

Modules: :mod:`.loop` (``train_loop``, DDP/FSDP, checkpoints), :mod:`.methods` (the ``Method``
interface, its registry, one module per method family, regularisers), :mod:`.weights` (scores ->
per-token weights, keyword masks, curriculum), :mod:`.edit` (representation editing),
:mod:`.api` (``unlearn``, configs, recipes).
"""

from magic_unlearn.lora import LoraSpec
from magic_unlearn.unlearn.api import (
    RECIPES,
    EditConfig,
    PhaseConfig,
    UnlearnConfig,
    load_unlearn_config,
    make_eval_fn,
    unlearn,
)
from magic_unlearn.unlearn.loop import LoopConfig, LoopResult, train_loop
from magic_unlearn.unlearn.methods import (
    METHODS,
    Method,
    describe_methods,
    get_method,
    register_method,
)
from magic_unlearn.unlearn.weights import SEED_CONFIGS, WeightConfig, transform_scores

__all__ = [
    "LoopConfig",
    "LoopResult",
    "LoraSpec",
    "train_loop",
    "METHODS",
    "Method",
    "describe_methods",
    "get_method",
    "register_method",
    "RECIPES",
    "EditConfig",
    "PhaseConfig",
    "UnlearnConfig",
    "load_unlearn_config",
    "make_eval_fn",
    "unlearn",
    "SEED_CONFIGS",
    "WeightConfig",
    "transform_scores",
]
