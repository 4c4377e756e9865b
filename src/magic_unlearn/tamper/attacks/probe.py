"""Lens probes (``kind: probe``): hazard answers decoded from every layer.

The logit lens (nostalgebraist 2020) reads each layer through the model's own final norm and
unembedding; with ``tuned_lens: true`` a tuned lens (Belrose et al. 2023) is also fitted on the
probed model (on benign text) and reported. Knowledge that an unlearning method only hid in the
last layers shows up in earlier ones.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.lens import LensModel, train_tuned_lens
from magic_unlearn.models import get_decoder_layers
from magic_unlearn.tamper.config import AttackConfig
from magic_unlearn.tamper.context import AttackContext
from magic_unlearn.tamper.registry import Attack, AttackRun, Curve, register_attack
from magic_unlearn.tamper.scoring import Scorer


def probe_attack(
    model: nn.Module, scorer: Scorer, lens: nn.Module | None = None
) -> tuple[Curve, dict[str, Any]]:
    """Hazard/general accuracy decoded from every layer; x = layer index.

    With ``lens`` (a tuned lens of this model) the points hold the tuned-lens numbers and the
    logit-lens ones under ``logit_*`` keys; otherwise the logit lens.
    """
    t0 = time.perf_counter()
    pts = []
    for i in range(len(get_decoder_layers(model))):
        logit = scorer(LensModel(model, i))
        if lens is None:
            pts.append({"step": i, **logit})
        else:
            tuned = scorer(LensModel(model, i, lens))
            pts.append({"step": i, **tuned, **{f"logit_{k}": v for k, v in logit.items()}})
    return pts, {"wall_s": time.perf_counter() - t0}


@register_attack("probe")
class ProbeAttack(Attack):
    """Decode hazard answers from every layer with the logit lens, and optionally a tuned lens
    (nostalgebraist 2020; Belrose et al. 2023, "Eliciting Latent Predictions from Transformers
    with the Tuned Lens")."""

    x_label = "layer"
    starts_at_model = False

    def corpora(self, attack: AttackConfig) -> dict[str, str]:
        return {"data": attack.data} if attack.tuned_lens else {}

    def run(
        self,
        model: nn.Module,
        attack: AttackConfig,
        ctx: AttackContext,
        *,
        corpora: dict[str, TokenizedCorpus],
        original: nn.Module | None,
        initial: dict[str, float] | None,
    ) -> AttackRun:
        info: dict[str, Any] = {"lens": "logit"}
        lens = None
        if attack.tuned_lens:
            # fit on a copy so the probed model's parameters keep requires_grad untouched
            lens, losses = train_tuned_lens(
                copy.deepcopy(model),
                corpora["data"],
                steps=attack.steps,
                lr=attack.lr,
                batch_size=attack.batch_size,
                seed=attack.seed,
            )
            info = {"lens": "tuned", "lens_final_kl": losses[-1] if losses else None}
        pts, _info = probe_attack(model, ctx.scorer, lens)
        return AttackRun(points=pts, info=info)
