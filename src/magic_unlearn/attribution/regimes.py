"""Attribution regimes: which fine-tuning run MAGIC differentiates to score the forget corpus.

A regime names the start model, the corpora trained on and a trajectory preset per world
preset. MAGIC scores say what a run *learned* from each token, so the run should be one in which
the hazard knowledge is learned:

- ``seed``: fine-tune the model that already knows (the base model) on the forget corpus, the
  seed experiments' setting. The hazard loss starts near 0 and barely moves: thin signal.
- ``filtered``: fine-tune the filtered model on the forget corpus (24 smooth AdamW steps), the
  earlier demo default. Smooth (high LDS), but the facts are hardly learned: on the tiny world
  hazard_qa stays ~20-37% even after 96 steps at 3e-3, because the forget corpus's two
  declarative paraphrases per fact do not teach the question format.
- ``acquire``: the filtered model trained on the forget corpus mixed with the pretraining
  corpus (hazard and general documents, the data the base model learned the facts from) until
  hazard_qa rises from chance to >= 80% (tiny world: 18% -> 93% in 204 steps, general_qa kept
  at ~98%). Every pretraining document is scored too, so the same artifact guides unlearning on
  the forget rows, token-level filtering of pretraining data and UNDO's distillation data.
- ``smooth``: the acquire corpus under the smooth fine-tuning trajectory (one epoch, AdamW 1e-4
  with warmup): every pretraining document scored by a run as smooth as the ``filtered``
  regime's, at the price of hardly learning the facts.

``docs/results.md`` ("Phase 2: attribution regimes") compares the regimes (LDS, token and
document AUC, the four questions; ``benchmarks/attribution_regimes.py``) and says which one the
study uses where.
"""

from __future__ import annotations

import copy
from typing import Any

# trajectory fields shared by the world presets' acquire runs; AdamW with a linear warmup
# (AdamW's first steps are sign-descent-like; a warmup keeps the run smooth enough for LDS)
_ACQUIRE = dict(optimizer="adamw", schedule="warmup", checkpointing="sqrt")

REGIMES: dict[str, dict[str, Any]] = {
    "seed": {
        "start": "base",
        "mix": [],
        "trajectory": {
            "tiny": dict(
                optimizer="adamw",
                lr=1e-4,
                schedule="warmup",
                warmup_steps=8,
                steps=24,
                batch_size=8,
                max_length=64,
                checkpointing="sqrt",
                storage="cpu",
            ),
            "small": dict(
                optimizer="adamw",
                lr=5e-4,
                schedule="constant",
                steps=100,
                batch_size=16,
                max_length=128,
                checkpointing="sqrt",
                storage="gpu",
            ),
        },
    },
    "filtered": {
        "start": "filtered",
        "mix": [],
        "trajectory": {
            "tiny": dict(
                optimizer="adamw",
                lr=1e-4,
                schedule="warmup",
                warmup_steps=8,
                steps=24,
                batch_size=8,
                max_length=64,
                checkpointing="sqrt",
                storage="cpu",
            ),
            "small": dict(
                optimizer="adamw",
                lr=5e-4,
                schedule="constant",
                steps=100,
                batch_size=16,
                max_length=128,
                checkpointing="sqrt",
                storage="gpu",
            ),
        },
    },
    "acquire": {
        "start": "filtered",
        "mix": ["pretrain"],
        "trajectory": {
            # tiny: 1,094 rows (forget 48 + pretrain 1,046); 204 steps of 16 = 3 epochs; the
            # pretraining lr (3e-3) after a 24-step warmup: hazard_qa 18% -> 93%
            "tiny": dict(
                _ACQUIRE,
                lr=3e-3,
                warmup_steps=24,
                steps=204,
                batch_size=16,
                max_length=64,
                storage="cpu",
            ),
            # small (scaled from tiny: 3 epochs of batch 32 at the small pretraining lr);
            # measured on an H200, world seed 0: 3,344 rows, hazard_qa 27.8% -> 91.7%, general
            # kept (docs/results.md, "Phase 2")
            "small": dict(
                _ACQUIRE,
                lr=2e-3,
                warmup_steps=30,
                steps=260,
                batch_size=32,
                max_length=128,
                storage="gpu",
            ),
        },
    },
    # the acquire corpus under the smooth fine-tuning trajectory: one epoch (every document
    # scored once) at AdamW 1e-4 with warmup, the settings the trust report reads reliable on
    # the tiny world's forget corpus (on this corpus: doubtful on 1 of 3 seeds, unreliable on
    # 2; docs/results.md, "Token filtering"); the facts are barely learned
    "smooth": {
        "start": "filtered",
        "mix": ["pretrain"],
        "trajectory": {
            # tiny: 1,094 rows / 16 = 69 steps, one epoch
            "tiny": dict(
                _ACQUIRE,
                lr=1e-4,
                warmup_steps=8,
                steps=69,
                batch_size=16,
                max_length=64,
                storage="cpu",
            ),
            # small (not measured): 3,344 rows / 32 = 105 steps, one epoch
            "small": dict(
                _ACQUIRE,
                lr=1e-4,
                warmup_steps=8,
                steps=105,
                batch_size=32,
                max_length=128,
                storage="gpu",
            ),
        },
    },
}


def resolve_regime(name: str, world_preset: str) -> dict[str, Any]:
    """``{start, mix, trajectory}`` of regime ``name`` for a world preset.

    Presets other than ``tiny`` / ``small`` (e.g. ``medium``) use the ``small`` trajectory.

    Raises:
        ValueError: an unknown regime name.
    """
    if name not in REGIMES:
        raise ValueError(f"unknown attribution regime {name!r}; choose from {sorted(REGIMES)}")
    r = REGIMES[name]
    traj = r["trajectory"].get(world_preset, r["trajectory"]["small"])
    return {"start": r["start"], "mix": list(r["mix"]), "trajectory": copy.deepcopy(traj)}


__all__ = ["REGIMES", "resolve_regime"]
