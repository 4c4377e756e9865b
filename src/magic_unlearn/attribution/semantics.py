"""What a MAGIC score means, exactly: the conventions of the differentiated run, per optimiser.

Recorded in every score artifact (``meta["semantics"]``) and documented in the README
("What a score means"). A score is the exact derivative s_i = d f(theta_T(w)) / d w_i at w = 1,
so sum_i s_i (w_i - 1) predicts f(w) - f(1) to first order; the trust report (``trust.py``)
measures how far that holds.
"""

from __future__ import annotations

from typing import Any

from magic_unlearn.attribution.config import TrajectoryConfig

# optimisers whose update is linear in the gradient: scaling every weight scales the run's
# gradient steps, so the scores carry an absolute meaning
ABSOLUTE = ("sgd", "momentum")


def score_semantics(cfg: TrajectoryConfig) -> dict[str, Any]:
    """The exact meaning of the scores of a run with ``cfg`` (JSON-safe, for the artifact)."""
    wd = cfg.weight_decay
    decay = (
        "none"
        if not wd
        else f"{wd:g}, "
        + ("decoupled (AdamW)" if cfg.optimizer == "adamw" else "coupled L2 (torch SGD)")
        + ", on every trained tensor (biases and norms included)"
    )
    if cfg.optimizer == "adamw" and cfg.adam_denominator == "frozen":
        scale = (
            "absolute, approximate: each step's sqrt(v_hat) + eps is held at its recorded "
            "value, so a score is the derivative through the recorded preconditioned momentum "
            "steps (not the exact derivative of the AdamW run); a negative score means the "
            "token's gradient pushes the eval loss down along those steps"
        )
    elif cfg.optimizer in ABSOLUTE:
        scale = (
            "absolute: the update is linear in the gradient, so the scores sum to d f / d c for "
            "all weights scaled by c (training more on the whole corpus); a negative score "
            "means up-weighting the token lowers the eval loss"
        )
    else:
        scale = (
            "mean-relative: Adam divides each gradient coordinate by its running RMS, so "
            "scaling every weight by one factor barely changes the run and the scores sum to "
            "~0; a negative score means the token teaches the query more than the average "
            "token of the corpus does"
        )
    return {
        "score": "s_i = d f(theta_T(w)) / d w_i at w = 1, exact (a first-order quantity)",
        "prediction": "f(w) - f(1) ~= sum_i s_i (w_i - 1); trust.smoothness says how far",
        "loss": (
            "step t minimises sum_i w_i l_i / n_t with n_t the number of target tokens of the "
            "batch at w = 1: a fixed denominator, so down-weighting tokens does not renormalise "
            "the others"
        ),
        "weight_sharing": (
            "one weight per token position, shared by every step that trains on it (all "
            "epochs of the fixed data order)"
        ),
        "zero_weight": (
            "w_i = 0 removes only the token's loss term: the row stays in its batch, in the "
            "forward pass and in the data order (the token still serves as context)"
        ),
        "weight_decay": decay,
        "scale": scale,
        "float64_prefix_steps": 0 if cfg.dtype == "float64" else cfg.prefix_len,
        "adam_denominator": cfg.adam_denominator if cfg.optimizer == "adamw" else None,
    }


__all__ = ["ABSOLUTE", "score_semantics"]
