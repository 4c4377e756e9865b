"""MAGIC data attribution: exact per-token metagradients through a fine-tuning run.

Public API::

    TrajectoryConfig, LoraSpec                      # the differentiated run (config.py)
    train_trajectory(model, corpus, cfg, token_weights=None) -> model
    attribute(model, corpus, {name: f}, cfg, per="token", out=None) -> ScoreArtifact
    grad_similarity(...), random_scores(...)        # baselines in the same artifact format
    ScoreArtifact.save / load / check_compatible / example_scores
"""

from magic_unlearn.attribution.artifact import ArtifactMismatchError, ScoreArtifact
from magic_unlearn.attribution.baselines import grad_similarity, random_scores
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.magic import TrajectoryDriftError, attribute
from magic_unlearn.attribution.optim import FunctionalOptimizer, lr_at
from magic_unlearn.attribution.trajectory import (
    batch_order,
    per_token_loss,
    prepare_model,
    train_trajectory,
)
from magic_unlearn.lora import LoraSpec

__all__ = [
    "ArtifactMismatchError",
    "FunctionalOptimizer",
    "LoraSpec",
    "ScoreArtifact",
    "TrajectoryConfig",
    "TrajectoryDriftError",
    "attribute",
    "batch_order",
    "grad_similarity",
    "lr_at",
    "per_token_loss",
    "prepare_model",
    "random_scores",
    "train_trajectory",
]
