"""MAGIC data attribution: exact per-token metagradients through a fine-tuning run.

Public API::

    TrajectoryConfig, LoraSpec                      # the differentiated run (config.py)
    train_trajectory(model, corpus, cfg, token_weights=None) -> model
    attribute(model, corpus, {name: f}, cfg, per="token", out=None) -> ScoreArtifact
    attack_metagradient(model, corpus, f, cfg) -> (f(theta_T), d f(theta_T) / d theta_0)
    grad_similarity(...), random_scores(...)        # baselines in the same artifact format
    build_measurements(tokenizer, queries, ...)     # query names -> measurements f(model)
    run_attribution(AttributionJob(...))            # the attribute stage (CLI and pipeline)
    register_optimizer(name), OPTIMIZERS            # trajectory optimisers (optim.py)
    ScoreArtifact.save / load / check_compatible / example_scores

Modules: ``config`` (TrajectoryConfig), ``optim`` (optimiser registry, steps and VJPs),
``trajectory`` (batches, training gradient, ``train_trajectory``), ``replay`` (REPLAY
checkpointing, drift checks), ``store`` (checkpoint storage), ``reverse`` (the fused reverse
step), ``resume`` (the saved reverse-pass state), ``magic`` (``attribute``), ``baselines``,
``metagrad`` (``attack_metagradient``), ``measurements``, ``artifact``, ``run``
(``run_attribution``), ``attention``, ``layers``, ``compiled`` and ``graphs`` (GPU engine pieces:
fused nodes, their compiled double backwards, CUDA graphs).
"""

from magic_unlearn.attribution.artifact import (
    METHODS,
    ArtifactCorruptError,
    ArtifactMismatchError,
    ScoreArtifact,
)
from magic_unlearn.attribution.baselines import grad_similarity, random_scores
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.magic import attribute
from magic_unlearn.attribution.measurements import MeasureFn, build_measurements
from magic_unlearn.attribution.metagrad import attack_metagradient
from magic_unlearn.attribution.optim import (
    OPTIMIZERS,
    TrajectoryOptimizer,
    lr_at,
    make_optimizer,
    register_optimizer,
)
from magic_unlearn.attribution.replay import TrajectoryDriftError
from magic_unlearn.attribution.run import AttributionJob, run_attribution
from magic_unlearn.attribution.store import pinned_pool_bytes, release_pinned_memory
from magic_unlearn.attribution.trajectory import (
    batch_order,
    per_token_loss,
    prepare_model,
    train_trajectory,
)
from magic_unlearn.lora import LoraSpec

__all__ = [
    "METHODS",
    "OPTIMIZERS",
    "ArtifactCorruptError",
    "ArtifactMismatchError",
    "AttributionJob",
    "LoraSpec",
    "MeasureFn",
    "ScoreArtifact",
    "TrajectoryConfig",
    "TrajectoryDriftError",
    "TrajectoryOptimizer",
    "attack_metagradient",
    "attribute",
    "batch_order",
    "build_measurements",
    "grad_similarity",
    "lr_at",
    "make_optimizer",
    "per_token_loss",
    "pinned_pool_bytes",
    "prepare_model",
    "random_scores",
    "register_optimizer",
    "release_pinned_memory",
    "run_attribution",
    "train_trajectory",
]
