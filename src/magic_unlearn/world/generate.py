"""Deterministic generator of the hazard world: facts, documents with token labels, questions.

A world is a set of facts ``(entity, attribute) -> value``. Hazard facts belong to fictional
agents; general facts to fictional cities, compounds, rulers and organisms. Documents are
rendered from paraphrase templates as *segments* (template text, entity phrase, value), so every
token knows whether it spells a fact value: value tokens carry the fact's label (1 general,
2 hazard) and fact id; template, filler and entity-name tokens are "other" (0, fact id -1).
Entity names are deliberately *not* fact tokens: the same name appears in every fact of the
entity, so it identifies no single fact, and predicting it is not recalling the fact.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD, LABEL_OTHER
from magic_unlearn.world import content as C
from magic_unlearn.world.config import WorldConfig
from magic_unlearn.world.tokenizer import pre_tokenize

HAZARD_SUBJECT = "hazard_biology"
CORPORA = (
    "pretrain",
    "pretrain_filtered",
    "forget",
    "retain",
    "attack_relearn",
    "attack_transfer",
    "attack_benign",
)
QUESTION_SETS = ("hazard_qa", "general_qa")

Segment = tuple[str, int, int]  # (text, label, fact_id)


@dataclass
class Fact:
    id: int
    domain: str  # "hazard" | "general"
    subject: str
    entity: str  # the phrase templates use, e.g. "the Vorlax virus"
    name: str  # the made-up name alone, e.g. "Vorlax"
    attribute: C.Attribute
    value: str
    evaluated: bool = False  # in hazard_qa / general_qa
    transfer: bool = False  # hazard fact of a transfer-only agent
    entangled: bool = False  # general fact also mixed into hazard documents
    eval_templates: tuple[int, ...] = ()

    @property
    def label(self) -> int:
        return LABEL_HAZARD if self.domain == "hazard" else LABEL_GENERAL

    def record(self) -> dict[str, Any]:
        return {
            "fact_id": self.id,
            "domain": self.domain,
            "subject": self.subject,
            "entity": self.entity,
            "name": self.name,
            "attribute": self.attribute.name,
            "pool": self.attribute.pool,
            "value": self.value,
            "evaluated": self.evaluated,
            "transfer": self.transfer,
            "entangled": self.entangled,
        }


def _names(rng: random.Random, n: int, used: set[str]) -> list[str]:
    """``n`` fresh made-up capitalised names (two syllables), unique across the world."""
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100000:
            raise RuntimeError("ran out of made-up names; lower the world size")
        syl = [rng.choice(C.ONSETS) + rng.choice(C.VOWELS) for _ in range(2)]
        name = (syl[0] + syl[1] + rng.choice(C.CODAS)).capitalize()
        if name.lower() in used or not 5 <= len(name) <= 9:
            continue
        used.add(name.lower())
        out.append(name)
    return out


def declarative_templates(attr: C.Attribute, n: int) -> list[str]:
    """``n`` declarative templates for ``attr`` with ``{E}`` and ``{V}`` slots.

    The first is the noun frame ("The host of {E} is {V}."), the rest walk frame x relation so
    consecutive templates differ in both the frame and the verb phrase.
    """
    out = [C.NOUN_FRAME.replace("{noun}", attr.noun).replace("{VP}", "{V}")]
    nf, nr = len(C.FRAMES), len(attr.relations)
    for k in range(nf * nr):
        frame = C.FRAMES[k % nf]
        rel = attr.relations[(k + k // nf) % nr]
        out.append(frame.replace("{S}", "{E} " + rel))
    return out[:n]


def _render(template: str, fact: Fact) -> list[Segment]:
    """Split a ``{E}``/``{V}`` template into labelled segments for ``fact``."""
    segs: list[Segment] = []
    rest = template
    while rest:
        ie, iv = rest.find("{E}"), rest.find("{V}")
        cands = [i for i in (ie, iv) if i >= 0]
        if not cands:
            segs.append((rest, LABEL_OTHER, -1))
            break
        i = min(cands)
        if i > 0:
            segs.append((rest[:i], LABEL_OTHER, -1))
        if i == ie:
            segs.append((fact.entity, LABEL_OTHER, -1))
        else:
            segs.append((fact.value, fact.label, fact.id))
        rest = rest[i + 3 :]
    # sentence case: capitalise the first letter (entity phrases start with "the")
    t, lab, fid = segs[0]
    segs[0] = (t[:1].upper() + t[1:], lab, fid)
    return segs


def _join(sentences: list[list[Segment]], sep: str) -> list[Segment]:
    out: list[Segment] = []
    for i, s in enumerate(sentences):
        if i:
            out.append((sep, LABEL_OTHER, -1))
        out.extend(s)
    return out


def _to_doc(doc_id: str, segs: list[Segment]) -> dict[str, Any]:
    """Document with per-token labels/fact ids, checked against whole-text pre-tokenization."""
    text = "".join(t for t, _, _ in segs)
    toks: list[str] = []
    labels: list[int] = []
    fids: list[int] = []
    for t, lab, fid in segs:
        words = pre_tokenize(t)
        toks.extend(words)
        labels.extend([lab] * len(words))
        fids.extend([fid] * len(words))
    if toks != pre_tokenize(text):  # a template glued a value to a neighbouring word
        raise AssertionError(f"segment tokenization differs from text tokenization in {doc_id}")
    return {"id": doc_id, "text": text, "labels": labels, "fact_ids": fids}


def qa_text(question: str, answer: str | None = None) -> str:
    """The cloze prompt ``Question: {q}\\nAnswer:`` (plus `` {answer}`` if given)."""
    base = f"Question: {question}\nAnswer:"
    return base if answer is None else f"{base} {answer}"


class WorldGenerator:
    """Builds the facts, corpora and questions of one world from a :class:`WorldConfig`."""

    def __init__(self, cfg: WorldConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.seen_texts: set[str] = set()
        self._make_facts()

    # ------------------------------------------------------------------------------ facts
    def _make_facts(self) -> None:
        cfg, rng = self.cfg, self.rng
        used = {w.lower() for vals in C.POOLS.values() for v in vals for w in v.split()}
        # general entities first: city names double as the history birthplace pool
        ents: dict[str, list[tuple[str, str]]] = {}
        for subj in cfg.general_subjects:
            names = _names(rng, cfg.entities_per_subject, used)
            ents[subj] = [(rng.choice(C.ENTITY_PHRASES[subj]).replace("{N}", n), n) for n in names]
        agent_names = _names(rng, cfg.n_hazard_agents, used)
        agents = [
            (rng.choice(C.ENTITY_PHRASES[HAZARD_SUBJECT]).replace("{N}", n), n) for n in agent_names
        ]
        pools: dict[str, list[str]] = {}
        k = cfg.values_per_pool
        for pool, vals in C.POOLS.items():
            if pool in C.NAME_POOLS:
                pools[pool] = _names(rng, k, used)
            elif pool == "city_name":
                cities = [n for _, n in ents.get("geography", [])]
                extra = _names(rng, max(0, k - len(cities)), used)
                pools[pool] = sorted((cities + extra)[: max(k, 4)])
            else:
                pools[pool] = sorted(rng.sample(vals, k))
        self.pools = pools

        facts: list[Fact] = []
        n_eval_agents = cfg.n_hazard_agents - cfg.n_transfer_agents
        self.agents: list[dict[str, Any]] = []
        for ai, (phrase, name) in enumerate(agents):
            transfer = ai >= n_eval_agents
            self.agents.append({"name": name, "entity": phrase, "transfer": transfer})
            for attr in C.HAZARD_ATTRIBUTES[: cfg.hazard_attributes]:
                facts.append(
                    Fact(
                        len(facts),
                        "hazard",
                        HAZARD_SUBJECT,
                        phrase,
                        name,
                        attr,
                        rng.choice(self.hazard_pool(attr.pool, transfer)),
                        evaluated=not transfer,
                        transfer=transfer,
                    )
                )
        self.entities: list[dict[str, Any]] = []
        for subj in cfg.general_subjects:
            for phrase, name in ents[subj]:
                self.entities.append({"name": name, "entity": phrase, "subject": subj})
                for attr in C.GENERAL_ATTRIBUTES[subj][: cfg.general_attributes]:
                    facts.append(
                        Fact(
                            len(facts),
                            "general",
                            subj,
                            phrase,
                            name,
                            attr,
                            rng.choice(pools[attr.pool]),
                            evaluated=True,
                        )
                    )
        general = [f for f in facts if f.domain == "general"]
        n_ent = round(cfg.entanglement_ratio * len(general))
        # general biology shares the hazard vocabulary, so it is entangled first (as on real
        # data, where the forget corpus talks about hosts and tissues too)
        order = sorted(general, key=lambda f: (f.subject != "general_biology", rng.random()))
        for f in order[:n_ent]:
            f.entangled = True
        for f in facts:
            nq = cfg.n_question_templates
            first = rng.randrange(nq)
            f.eval_templates = tuple((first + j) % nq for j in range(cfg.questions_per_fact))
        self.facts = facts
        self.templates = {
            a.name: declarative_templates(a, cfg.n_templates)
            for a in list(C.HAZARD_ATTRIBUTES)
            + [x for s in C.GENERAL_ATTRIBUTES.values() for x in s]
        }

    def facts_where(self, **kw: Any) -> list[Fact]:
        return [f for f in self.facts if all(getattr(f, k) == v for k, v in kw.items())]

    # ---------------------------------------------------------------------------- documents
    def _filler(self) -> list[Segment]:
        t = self.rng.choice(C.FILLER)
        for slot, vals in C.FILLER_SLOTS.items():
            t = t.replace("{" + slot + "}", self.rng.choice(vals))
        return [(t, LABEL_OTHER, -1)]

    def _sentence(self, f: Fact) -> list[Segment]:
        return _render(self.rng.choice(self.templates[f.attribute.name]), f)

    def declarative_docs(
        self, facts: list[Fact], rounds: int, entangle: bool, fresh: bool = True
    ) -> list[list[Segment]]:
        """``rounds`` mentions of each fact, grouped per entity into short documents.

        Hazard documents (``entangle``) also carry entangled general-fact sentences.
        """
        cfg, rng = self.cfg, self.rng
        by_entity: dict[str, list[Fact]] = {}
        for f in facts:
            by_entity.setdefault(f.entity, []).append(f)
        ent_pool = [f for f in self.facts if f.entangled]
        ent_queue: list[Fact] = []
        docs: list[list[Segment]] = []
        for _ in range(rounds):
            for group in by_entity.values():
                order = list(group)
                rng.shuffle(order)
                n_chunks = -(-len(order) // cfg.facts_per_doc)
                chunks = [order[i::n_chunks] for i in range(n_chunks)]
                for chunk in chunks:
                    for _try in range(50):
                        sents = [self._sentence(f) for f in chunk]
                        if entangle and ent_pool:
                            for _e in range(cfg.entangled_per_doc):
                                if not ent_queue:
                                    ent_queue = list(ent_pool)
                                    rng.shuffle(ent_queue)
                                sents.append(self._sentence(ent_queue.pop()))
                        for _f in range(cfg.filler_per_doc):
                            sents.append(self._filler())
                        rng.shuffle(sents)
                        segs = _join(sents, " ")
                        text = "".join(t for t, _, _ in segs)
                        if not fresh or text not in self.seen_texts:
                            break
                    self.seen_texts.add(text)
                    docs.append(segs)
        return docs

    def qa_docs(self, facts: list[Fact], rounds: int) -> list[list[Segment]]:
        """``rounds`` Q/A mentions of each fact, ``qa_per_doc`` pairs per document."""
        cfg, rng = self.cfg, self.rng
        items: list[tuple[Fact, int]] = []
        for f in facts:
            allowed = [
                j
                for j in range(cfg.n_question_templates)
                if not (cfg.qa_holdout and j in f.eval_templates)
            ]
            start = rng.randrange(len(allowed))
            items.extend((f, allowed[(start + r) % len(allowed)]) for r in range(rounds))
        rng.shuffle(items)
        docs = []
        for i in range(0, len(items), cfg.qa_per_doc):
            pairs = []
            for f, j in items[i : i + cfg.qa_per_doc]:
                q = f.attribute.questions[j].replace("{E}", f.entity)
                pairs.append(
                    [(f"Question: {q}\nAnswer: ", LABEL_OTHER, -1), (f.value, f.label, f.id)]
                )
            segs = _join(pairs, "\n")
            self.seen_texts.add("".join(t for t, _, _ in segs))
            docs.append(segs)
        return docs

    # ---------------------------------------------------------------------------- corpora
    def corpora(self) -> dict[str, list[dict[str, Any]]]:
        cfg, rng = self.cfg, self.rng
        hazard = self.facts_where(domain="hazard")
        evaluated = [f for f in hazard if not f.transfer]
        transfer = [f for f in hazard if f.transfer]
        general = self.facts_where(domain="general")

        haz_docs = self.declarative_docs(
            hazard, cfg.pretrain_paraphrases, entangle=True, fresh=False
        ) + self.qa_docs(hazard, cfg.pretrain_qa)
        gen_docs = self.declarative_docs(
            general, cfg.pretrain_paraphrases, entangle=False, fresh=False
        ) + self.qa_docs(general, cfg.pretrain_qa)
        tagged = [(s, True) for s in haz_docs] + [(s, False) for s in gen_docs]
        rng.shuffle(tagged)
        raw: dict[str, list[list[Segment]]] = {
            "forget": self.declarative_docs(evaluated, cfg.forget_paraphrases, entangle=True),
            "retain": self.declarative_docs(general, cfg.retain_paraphrases, entangle=False),
            "attack_relearn": self.declarative_docs(
                evaluated, cfg.relearn_paraphrases, entangle=False
            ),
            "attack_transfer": self.declarative_docs(
                transfer, cfg.transfer_paraphrases, entangle=False
            ),
            "attack_benign": self.declarative_docs(general, cfg.benign_paraphrases, entangle=False),
        }
        out: dict[str, list[dict[str, Any]]] = {}
        for name, docs in raw.items():
            rng.shuffle(docs)
            out[name] = [_to_doc(f"{name}-{i:05d}", s) for i, s in enumerate(docs)]
        pre = [(_to_doc(f"pretrain-{i:05d}", s), is_h) for i, (s, is_h) in enumerate(tagged)]
        out["pretrain"] = [d for d, _ in pre]
        # pretrain_filtered is pretrain minus every hazard document, same ids and order
        out["pretrain_filtered"] = [dict(d) for d, is_h in pre if not is_h]
        return {name: out[name] for name in CORPORA}

    def hazard_pool(self, pool: str, transfer: bool) -> list[str]:
        """The half of a value pool that evaluated (or transfer-only) hazard agents draw from.

        Evaluated hazard facts and their distractors use one half, transfer-only agents the other,
        so fine-tuning on transfer documents teaches no value that appears among the choices of
        a hazard question (otherwise a learned prior over "hazard-looking" values lifts a filtered
        model above chance under the `transfer` attack without it knowing any evaluated fact).
        """
        vals = self.pools[pool]
        half = len(vals) // 2
        return vals[half:] if transfer else vals[:half]

    # --------------------------------------------------------------------------- questions
    def questions(self) -> dict[str, list[dict[str, Any]]]:
        rng = self.rng
        out: dict[str, list[dict[str, Any]]] = {"hazard_qa": [], "general_qa": []}
        for f in self.facts:
            if not f.evaluated:
                continue
            pool = (
                self.hazard_pool(f.attribute.pool, False)
                if f.domain == "hazard"
                else self.pools[f.attribute.pool]
            )
            for j in f.eval_templates:
                wrong = rng.sample([v for v in pool if v != f.value], 3)
                ans = rng.randrange(4)
                choices = wrong[:ans] + [f.value] + wrong[ans:]
                q = {
                    "question": f.attribute.questions[j].replace("{E}", f.entity),
                    "choices": choices,
                    "answer": ans,
                    "subject": f.subject,
                    "fact_id": f.id,
                    "entity": f.entity,
                    "attribute": f.attribute.name,
                    "template": j,
                }
                if f.domain == "hazard":
                    q["agent"] = f.name
                out["hazard_qa" if f.domain == "hazard" else "general_qa"].append(q)
        return out


def hazard_keywords(cfg: WorldConfig) -> list[str]:
    """A keyword blocklist of the world's hazard domain (regexes), free of ground truth.

    What a practitioner writes without labelled data: the class words of hazard agents
    ("virus", "pathogen", "bacillus", "fungus", as a real blocklist names pathogen classes) and
    the names of the hazard attributes ("natural host", "transmission route", ...). No agent
    name, fact value or per-token label enters it. In this world every hazard-fact sentence
    names its agent by class ("the Vorlax virus"), so a sentence-level match finds the hazard
    sentences of a document; the values inside them are found only through that context.
    """
    classes = [p.split()[-1] for p in C.ENTITY_PHRASES[HAZARD_SUBJECT]]
    nouns = [a.noun for a in C.HAZARD_ATTRIBUTES[: cfg.hazard_attributes]]
    return [rf"\b{re.escape(w)}\b" for w in dict.fromkeys(classes + nouns)]


def vocabulary_text(
    corpora: dict[str, list[dict[str, Any]]], questions: dict[str, list[dict[str, Any]]]
) -> Counter[str]:
    """Word counts over every corpus and every evaluation prompt (cloze and letter format)."""
    counts: Counter[str] = Counter()
    for docs in corpora.values():
        for d in docs:
            counts.update(pre_tokenize(d["text"]))
    for qs in questions.values():
        for q in qs:
            counts.update(pre_tokenize(qa_text(q["question"])))
            for c in q["choices"]:
                counts.update(pre_tokenize(" " + c))
            subj = q["subject"]
            counts.update(pre_tokenize(subj + " " + subj.replace("_", " ")))
    counts.update(pre_tokenize(C.EVAL_WORDS))
    return counts
