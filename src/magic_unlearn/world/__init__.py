"""The hazard world: a seeded synthetic testbed with per-token ground truth.

``build_world("tiny", "runs/world")`` writes a folder with a tokenizer, seven corpora and two
question sets; ``World.load(dir)`` reads it back. See :mod:`magic_unlearn.world.world` for the
layout and :mod:`magic_unlearn.world.generate` for how facts become labelled tokens.

Design, in short:

* Facts ``(entity, attribute) -> value``. Hazard entities are made-up agents ("the Vorlax
  virus") with host / route / tissue / gene / medium / incubation; general entities are made-up
  cities, compounds, rulers and organisms. Value pools are shared across domains (hosts are also
  prey, tissues are also organs, growth media are also lab media), so hazard value tokens are
  general-fact tokens elsewhere: unlearning by token identity hurts general knowledge.
* Documents render 1-3 facts of one entity with paraphrase templates, plus filler, and (hazard
  documents) ``entangled_per_doc`` general-fact sentences drawn from the entangled set
  (``entanglement_ratio`` of the general facts, general biology first). Pretraining also holds
  ``Question: ..\\nAnswer: ..`` documents; with ``qa_holdout`` (default) a fact's evaluation
  question template never appears for that fact, only for others, so answering the cloze
  question requires generalisation, not string recall.
* Labels: the value tokens of a fact carry its label (1 general, 2 hazard) and fact id; every
  other token (template, filler, entity name) is 0 / -1.
* ``pretrain`` = hazard + general (all agents, evaluated and transfer-only);
  ``pretrain_filtered`` = the same documents minus every hazard document; ``forget`` = fresh
  paraphrases of the evaluated agents' facts (with entangled general sentences); ``retain`` and
  ``attack_benign`` = fresh general documents; ``attack_relearn`` = held-out paraphrases of the
  evaluated hazard facts; ``attack_transfer`` = documents about the transfer-only agents, which
  ``hazard_qa`` never asks about. Distractors come from the answer's own pool.
"""

from magic_unlearn.world.config import PRESETS, WorldConfig, make_config
from magic_unlearn.world.generate import CORPORA, HAZARD_SUBJECT, QUESTION_SETS, qa_text
from magic_unlearn.world.tokenizer import SPECIAL_TOKENS, pre_tokenize
from magic_unlearn.world.world import World, build_world, cloze_prompt

__all__ = [
    "CORPORA",
    "HAZARD_SUBJECT",
    "PRESETS",
    "QUESTION_SETS",
    "SPECIAL_TOKENS",
    "World",
    "WorldConfig",
    "build_world",
    "cloze_prompt",
    "make_config",
    "pre_tokenize",
    "qa_text",
]
