"""The hazard world: a seeded synthetic testbed with per-token ground truth.

``build_world("tiny", "runs/world")`` writes a folder with a tokenizer, seven corpora and two
question sets; ``World.load(dir)`` reads it back. See :mod:`magic_unlearn.world.world` for the
layout and :mod:`magic_unlearn.world.generate` for how facts become labelled tokens.
"""

from magic_unlearn.world.config import PRESETS, WorldConfig, make_config
from magic_unlearn.world.generate import CORPORA, HAZARD_SUBJECT, QUESTION_SETS, qa_text
from magic_unlearn.world.tokenizer import SPECIAL_TOKENS, pre_tokenize
from magic_unlearn.world.world import World, build_world, cloze_prompt

__all__ = [
    "CORPORA", "HAZARD_SUBJECT", "PRESETS", "QUESTION_SETS", "SPECIAL_TOKENS", "World",
    "WorldConfig", "build_world", "cloze_prompt", "make_config", "pre_tokenize", "qa_text",
]
