"""What every attack of a suite run shares: the scorer, the attack corpora, the ablation prompts.

:func:`make_attack_context` builds it from a suite (tasks, scorer, cache key); attacks read
their corpora through :meth:`AttackContext.corpus` so each is tokenized once per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magic_unlearn.config import config_hash, to_dict
from magic_unlearn.data import TokenizedCorpus, load_corpus, tokenize_corpus
from magic_unlearn.io import bytes_hash
from magic_unlearn.tamper.config import AttackConfig, SuiteConfig
from magic_unlearn.tamper.scoring import Scorer, TimedScorer, load_tasks, make_scorer, prompt_rows

WORLD_CORPORA = ("forget", "attack_relearn", "attack_transfer", "attack_benign", "retain")


@dataclass
class AttackContext:
    """Shared state of one suite run: the scorer, the attack corpora and the ablation prompts.

    Attributes:
        scorer: measures a model; wrapped in :class:`TimedScorer` to account eval time.
        tokenizer: tokenizes attack corpora.
        eval_key: hash of what the scorer measures (tasks, questions, settings) for caching.
        chance: chance accuracy of the hazard set (None if unknown).
        prompts: (input_ids, attention_mask) of hazard question prompts (for ``ablate``).
        world: a loaded world (resolves corpus names) or None.
        sources: logical corpus name -> ``load_corpus`` source.
        device: training / scoring device.
        progress: tqdm bars during fine-tuning.
        n_questions: questions the scorer measures, ``{"hazard": n, "general": n}`` (the
            noise of every accuracy; empty when unknown, e.g. a custom scorer).
    """

    scorer: Scorer
    tokenizer: Any
    eval_key: str
    chance: float | None = None
    prompts: tuple[torch.Tensor, torch.Tensor] | None = None
    world: Any = None
    sources: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    progress: bool = False
    n_questions: dict[str, int] = field(default_factory=dict)
    _corpora: dict[tuple, TokenizedCorpus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scorer, TimedScorer):
            self.scorer = TimedScorer(self.scorer)

    def corpus(self, name: str, attack: AttackConfig, attack_name: str) -> TokenizedCorpus:
        """Tokenized rows of corpus ``name`` for ``attack`` (cached)."""
        key = (name, attack.max_length, attack.max_examples)
        if key not in self._corpora:
            docs = self._docs(name, attack_name)
            if attack.max_examples is not None:
                docs = docs[: attack.max_examples]
            self._corpora[key] = tokenize_corpus(docs, self.tokenizer, max_length=attack.max_length)
        return self._corpora[key]

    def _docs(self, name: str, attack_name: str) -> list[dict[str, Any]]:
        if name in self.sources:
            return load_corpus(self.sources[name])
        if self.world is not None and name in WORLD_CORPORA:
            docs = self.world.corpus(name)
            if isinstance(docs, TokenizedCorpus):
                raise TypeError("world.corpus() returned token rows; expected documents")
            return list(docs)
        p = Path(name)
        if (
            p.exists()
            or name.startswith("hf:")
            or (":" in name and Path(name.rsplit(":", 1)[0]).is_dir())
        ):
            return load_corpus(name)
        raise ValueError(
            f"attack '{attack_name}': cannot resolve corpus {name!r}: pass a world (--world DIR) "
            f"for world corpora {list(WORLD_CORPORA)}, or map it to a file with "
            f"--set sources.{name}=PATH.jsonl (or name a JSONL/Parquet file directly)"
        )


def make_attack_context(
    suite: SuiteConfig,
    tokenizer: Any,
    *,
    world: Any = None,
    device: str = "auto",
    scorer: Scorer | None = None,
    progress: bool = False,
) -> AttackContext:
    """The :class:`AttackContext` of a run: tasks, scorer, ablation prompts, corpora sources.

    With a custom ``scorer`` the tasks are still loaded when possible (for chance level and the
    ablation prompts); if they cannot be, ``ablate`` is skipped and chance is unknown.
    """
    ev = suite.eval
    hazard = general = None
    try:
        hazard, general = load_tasks(ev, world)
    except (ValueError, FileNotFoundError, ImportError):
        if scorer is None:
            raise
    n_questions: dict[str, int] = {}
    if scorer is None:
        scorer = make_scorer(tokenizer, hazard, general, ev.fmt, ev.batch_size)
        qkey = bytes_hash(
            json.dumps([hazard.questions, general.questions], sort_keys=True, default=str).encode()
        )
        n_questions = {"hazard": len(hazard.questions), "general": len(general.questions)}
    else:
        qkey = f"custom:{getattr(scorer, '__qualname__', type(scorer).__name__)}"
    chance = None
    prompts = None
    if hazard is not None:
        chance = float(np.mean([1.0 / len(q["choices"]) for q in hazard.questions]))
        prompts = prompt_rows(tokenizer, hazard, ev.fmt)
    # the batch size changes speed, not results: keep it out of the cache key
    ev_d = {k: v for k, v in to_dict(ev).items() if k != "batch_size"}
    eval_key = config_hash(
        {"eval": ev_d, "questions": qkey, "tokenizer": [type(tokenizer).__name__, len(tokenizer)]}
    )
    return AttackContext(
        scorer=scorer,
        tokenizer=tokenizer,
        eval_key=eval_key,
        chance=chance,
        prompts=prompts,
        world=world,
        sources=dict(suite.sources),
        device=device,
        progress=progress,
        n_questions=n_questions,
    )
