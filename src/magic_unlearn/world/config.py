"""World configuration and presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from magic_unlearn.config import ConfigError, from_dict, to_dict
from magic_unlearn.world.content import GENERAL_ATTRIBUTES, HAZARD_ATTRIBUTES, POOLS


@dataclass
class WorldConfig:
    """Everything that determines a world; the same config always builds the same bytes.

    Attributes:
        seed: master seed of every random choice.
        n_hazard_agents: fictional hazard agents in total (evaluated + transfer-only).
        n_transfer_agents: agents kept out of ``hazard_qa``; their documents form
            ``attack_transfer`` (they are still in ``pretrain``).
        hazard_attributes: attributes per agent (host, route, tissue, gene, medium, incubation).
        values_per_pool: values drawn from each pool; distractors come from the same pool (for hazard facts, the half of it that evaluated agents use).
        general_subjects: general-knowledge subjects (geography, chemistry, history,
            general_biology).
        entities_per_subject: fictional entities per general subject.
        general_attributes: attributes per general entity (at most 4).
        n_templates: declarative paraphrase templates per attribute (1 noun frame + frame x
            relation combinations, at most 33).
        n_question_templates: question templates per attribute (at most 3).
        facts_per_doc: facts of one entity per declarative document.
        qa_per_doc: question/answer pairs per Q/A document.
        entanglement_ratio: fraction of general facts that are also mixed into hazard
            documents (the entangled set).
        entangled_per_doc: entangled general-fact sentences per hazard declarative document.
        filler_per_doc: filler sentences per declarative document.
        pretrain_paraphrases: declarative mentions of each fact in ``pretrain``.
        pretrain_qa: ``Question: ..\\nAnswer: ..`` mentions of each fact in ``pretrain``.
        qa_holdout: if true, a fact's evaluation question template never appears for that same
            fact in pretraining (only for other facts), so answering needs generalisation.
        forget_paraphrases: declarative mentions of each evaluated hazard fact in ``forget``.
        relearn_paraphrases: held-out mentions of each evaluated hazard fact in
            ``attack_relearn``.
        transfer_paraphrases: mentions of each transfer-agent fact in ``attack_transfer``.
        retain_paraphrases: mentions of each general fact in ``retain``.
        benign_paraphrases: mentions of each general fact in ``attack_benign``.
        questions_per_fact: questions per fact in ``hazard_qa`` / ``general_qa`` (different
            question templates and distractors).
    """

    seed: int = 0
    n_hazard_agents: int = 16
    n_transfer_agents: int = 4
    hazard_attributes: int = 5
    values_per_pool: int = 12
    general_subjects: list[str] = field(
        default_factory=lambda: ["geography", "chemistry", "history", "general_biology"]
    )
    entities_per_subject: int = 8
    general_attributes: int = 4
    n_templates: int = 8
    n_question_templates: int = 3
    facts_per_doc: int = 3
    qa_per_doc: int = 3
    entanglement_ratio: float = 0.25
    entangled_per_doc: int = 1
    filler_per_doc: int = 1
    pretrain_paraphrases: int = 8
    pretrain_qa: int = 4
    qa_holdout: bool = True
    forget_paraphrases: int = 2
    relearn_paraphrases: int = 2
    transfer_paraphrases: int = 2
    retain_paraphrases: int = 2
    benign_paraphrases: int = 1
    questions_per_fact: int = 1

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field and the fix for impossible settings."""

        def bad(name: str, msg: str) -> None:
            raise ConfigError(f"WorldConfig.{name}={getattr(self, name)!r}: {msg}")

        if self.n_hazard_agents < 1:
            bad("n_hazard_agents", "need at least one hazard agent")
        if not 0 <= self.n_transfer_agents < self.n_hazard_agents:
            bad("n_transfer_agents", "must be in [0, n_hazard_agents) so some agents are evaluated")
        if not 1 <= self.hazard_attributes <= len(HAZARD_ATTRIBUTES):
            bad("hazard_attributes", f"must be in [1, {len(HAZARD_ATTRIBUTES)}]")
        if not 8 <= self.values_per_pool <= min(len(v) for v in POOLS.values() if v):
            bad(
                "values_per_pool",
                "must be >= 8 (evaluated and transfer-only hazard agents each draw from half a pool of >= 4: answer + 3 distractors) and <= 24",
            )
        unknown = [s for s in self.general_subjects if s not in GENERAL_ATTRIBUTES]
        if unknown:
            bad(
                "general_subjects",
                f"unknown subject(s) {unknown}; choose from {sorted(GENERAL_ATTRIBUTES)}",
            )
        if len(set(self.general_subjects)) != len(self.general_subjects):
            bad("general_subjects", "subjects must be distinct")
        if self.entities_per_subject < 1 and self.general_subjects:
            bad("entities_per_subject", "must be >= 1")
        if not 1 <= self.general_attributes <= 4:
            bad("general_attributes", "must be in [1, 4]")
        if not 1 <= self.n_templates <= 33:
            bad("n_templates", "must be in [1, 33]")
        if not 1 <= self.n_question_templates <= 3:
            bad("n_question_templates", "must be in [1, 3]")
        if self.qa_holdout and self.n_question_templates < 2:
            bad("qa_holdout", "needs n_question_templates >= 2")
        if self.facts_per_doc < 1:
            bad("facts_per_doc", "must be >= 1")
        if self.qa_per_doc < 1:
            bad("qa_per_doc", "must be >= 1")
        if not 0.0 <= self.entanglement_ratio <= 1.0:
            bad("entanglement_ratio", "must be in [0, 1]")
        for name in (
            "entangled_per_doc",
            "filler_per_doc",
            "pretrain_qa",
            "forget_paraphrases",
            "relearn_paraphrases",
            "transfer_paraphrases",
            "retain_paraphrases",
            "benign_paraphrases",
        ):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.pretrain_paraphrases < 1:
            bad("pretrain_paraphrases", "must be >= 1")
        if not 1 <= self.questions_per_fact <= self.n_question_templates:
            bad("questions_per_fact", "must be in [1, n_question_templates]")
        if self.qa_holdout and self.questions_per_fact >= self.n_question_templates:
            bad(
                "questions_per_fact",
                "with qa_holdout, must be < n_question_templates so "
                "pretraining keeps a question template for each fact",
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # CPU: 16 agents x 5 attributes (80 hazard facts, 60 evaluated) + 4 x 8 x 4 = 128 general facts
    "tiny": {},
    # GPU (neox-small): 48 agents x 6 attributes + 4 x 24 x 4 general facts
    "small": dict(
        n_hazard_agents=48,
        n_transfer_agents=12,
        hazard_attributes=6,
        values_per_pool=20,
        entities_per_subject=24,
        n_question_templates=3,
        n_templates=12,
        pretrain_paraphrases=8,
        pretrain_qa=4,
        questions_per_fact=1,
    ),
    # larger GPU world
    "medium": dict(
        n_hazard_agents=120,
        n_transfer_agents=30,
        hazard_attributes=6,
        values_per_pool=24,
        entities_per_subject=60,
        n_question_templates=3,
        n_templates=16,
        pretrain_paraphrases=10,
        pretrain_qa=4,
        questions_per_fact=1,
    ),
}


def make_config(
    preset: str | WorldConfig | dict[str, Any] = "tiny", overrides: dict[str, Any] | None = None
) -> WorldConfig:
    """A validated :class:`WorldConfig` from a preset name, dict or config, plus overrides."""
    if isinstance(preset, WorldConfig):
        data = to_dict(preset)
    elif isinstance(preset, dict):
        data = dict(preset)
    else:
        if preset not in PRESETS:
            raise ConfigError(f"unknown world preset {preset!r}; choose from {sorted(PRESETS)}")
        data = dict(PRESETS[preset])
    data.update(overrides or {})
    cfg = from_dict(
        WorldConfig,
        data,
        source=f"world preset {preset!r}" if isinstance(preset, str) else "WorldConfig",
    )
    cfg.validate()
    return dataclasses.replace(cfg)
