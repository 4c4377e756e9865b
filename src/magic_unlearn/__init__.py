"""magic-unlearn: tamper-resistant unlearning guided by MAGIC data attribution.

Stages (see docs/architecture.md): world -> pretrain -> eval -> attribute -> analyze ->
unlearn -> tamper -> sweep/report. Each stage writes a self-describing artifact folder.
"""

__version__ = "0.1.0"

# Sign convention for attribution scores, used everywhere in the package:
# score_i = d f / d w_i at w = 1, with f an eval *loss*. Positive: up-weighting token i raises
# the eval loss (a detractor). Negative: the token teaches the benchmark (a proponent).
SIGN_CONVENTION = (
    "score = d(eval loss)/d(token weight) at w=1; positive = detractor (raises eval loss), "
    "negative = proponent (teaches the benchmark)"
)
