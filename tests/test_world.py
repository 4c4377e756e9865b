"""The hazard world generator: determinism, ground-truth labels, corpus/question invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magic_unlearn.config import ConfigError
from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD, LABEL_OTHER, tokenize_corpus
from magic_unlearn.world import CORPORA, World, build_world, make_config
from magic_unlearn.world.generate import WorldGenerator

# a small but complete world: 6 agents (2 transfer-only), 2 general subjects
MICRO = dict(
    n_hazard_agents=6,
    n_transfer_agents=2,
    entities_per_subject=4,
    general_subjects=["geography", "general_biology"],
    pretrain_paraphrases=3,
    pretrain_qa=2,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.load(build_world("tiny", tmp_path_factory.mktemp("w") / "world"))


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.load(build_world(MICRO, tmp_path_factory.mktemp("m") / "world"))


def test_layout_and_manifest(world: World) -> None:
    for name in CORPORA:
        assert world.corpus_path(name).exists()
        assert world.corpus(name), name
    assert (world.dir / "tokenizer" / "tokenizer.json").exists()
    man = json.loads((world.dir / "world.json").read_text())
    assert man["hash"] == world.hash and man["stage"] == "world"
    assert man["counts"]["questions"]["hazard_qa"] == len(world.questions("hazard_qa"))
    world.verify()
    assert world.config.n_hazard_agents == 16


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, micro: World) -> None:
    again = World.load(build_world(MICRO, tmp_path / "a"))
    assert again.hash == micro.hash
    assert again.manifest["files"] == micro.manifest["files"]
    other = World.load(build_world({**MICRO, "seed": 1}, tmp_path / "b"))
    assert other.hash != micro.hash


def test_same_hash_in_a_fresh_process(tmp_path: Path, micro: World) -> None:
    # no dependence on Python's per-process string hashing (set order) anywhere
    import os
    import subprocess
    import sys

    code = (
        f"from magic_unlearn.world import World, build_world; "
        f"print(World.load(build_world({MICRO!r}, {str(tmp_path / 'p')!r})).hash)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = (
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert out == micro.hash


def test_labels_align_with_tokenizer_for_every_document(world: World) -> None:
    tok = world.tokenizer
    facts = {f["fact_id"]: f for f in world.facts()}
    for name in CORPORA:
        docs = world.corpus(name)
        enc = tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
        for d, ids in zip(docs, enc, strict=True):
            assert len(ids) == len(d["labels"]) == len(d["fact_ids"]), d["id"]
            assert tok.unk_token_id not in ids
            words = tok.convert_ids_to_tokens(ids)
            for j, (lab, fid) in enumerate(zip(d["labels"], d["fact_ids"], strict=True)):
                if lab == LABEL_OTHER:
                    assert fid == -1
                    continue
                f = facts[fid]
                # a labelled token is a word of that fact's value, with the fact's domain
                assert words[j] in f["value"].split(), (d["id"], j)
                assert lab == (LABEL_HAZARD if f["domain"] == "hazard" else LABEL_GENERAL)
    # the data module consumes the same labels (shifted by the BOS)
    tc = tokenize_corpus(world.corpus("forget")[:4], tok, max_length=128)
    first = world.corpus("forget")[0]
    n = len(first["labels"])
    assert tc.labels[0, 1 : n + 1].tolist() == first["labels"]


def test_every_fact_mention_is_labelled(micro: World) -> None:
    # independent count: each fact sentence / Q&A pair names its entity exactly once, so the
    # entity-name words (outside labelled values) must equal the labelled value spans
    tok = micro.tokenizer
    names = {f["name"] for f in micro.facts()}
    for name in CORPORA:
        for d in micro.corpus(name):
            words = tok.convert_ids_to_tokens(tok(d["text"], add_special_tokens=False).input_ids)
            mentions = sum(
                1
                for w, lab in zip(words, d["labels"], strict=True)
                if w in names and lab == LABEL_OTHER
            )
            fids = d["fact_ids"]
            runs = sum(1 for j, x in enumerate(fids) if x >= 0 and (j == 0 or fids[j - 1] != x))
            assert mentions == runs, d["id"]


def test_filtered_has_no_hazard_and_keeps_all_general(world: World) -> None:
    pre = world.corpus("pretrain")
    filt = world.corpus("pretrain_filtered")
    assert all(LABEL_HAZARD not in d["labels"] for d in filt)
    hazard_free = [d for d in pre if LABEL_HAZARD not in d["labels"]]
    assert [d["id"] for d in hazard_free] == [d["id"] for d in filt]
    assert len(filt) < len(pre)
    # every general fact is still taught by the filtered corpus
    gen_ids = {f["fact_id"] for f in world.facts() if f["domain"] == "general"}
    seen = {x for d in filt for x in d["fact_ids"] if x >= 0}
    assert gen_ids <= seen
    # hazard documents carry entangled general facts
    haz_docs = [d for d in pre if LABEL_HAZARD in d["labels"] and "Question" not in d["text"]]
    assert sum(LABEL_GENERAL in d["labels"] for d in haz_docs) == len(haz_docs)


def test_corpora_roles(world: World) -> None:
    facts = {f["fact_id"]: f for f in world.facts()}

    def fact_set(name: str) -> set[int]:
        return {x for d in world.corpus(name) for x in d["fact_ids"] if x >= 0}

    transfer = {i for i, f in facts.items() if f["transfer"]}
    evaluated_h = {i for i, f in facts.items() if f["domain"] == "hazard" and not f["transfer"]}
    general = {i for i, f in facts.items() if f["domain"] == "general"}
    assert fact_set("attack_transfer") == transfer
    assert fact_set("attack_relearn") == evaluated_h
    assert fact_set("forget") & (evaluated_h | general) == fact_set("forget")
    assert evaluated_h <= fact_set("forget")
    assert fact_set("retain") == general == fact_set("attack_benign")
    assert (evaluated_h | transfer) <= fact_set("pretrain")
    # held-out / fresh paraphrases: no attack or forget document is a pretraining document
    pre_texts = {d["text"] for d in world.corpus("pretrain")}
    for name in ("forget", "attack_relearn", "attack_transfer"):
        assert not pre_texts & {d["text"] for d in world.corpus(name)}, name
    relearn = {d["text"] for d in world.corpus("attack_relearn")}
    assert not relearn & {d["text"] for d in world.corpus("forget")}


def test_questions(world: World) -> None:
    facts = {f["fact_id"]: f for f in world.facts()}
    pools = world.manifest["pools"]
    hq, gq = world.questions("hazard_qa"), world.questions("general_qa")
    transfer_agents = {a["name"] for a in world.manifest["agents"] if a["transfer"]}
    assert transfer_agents
    assert not transfer_agents & {q["agent"] for q in hq}
    assert all(not facts[q["fact_id"]]["transfer"] for q in hq)
    assert len(hq) == world.manifest["counts"]["evaluated_hazard_facts"]
    assert {q["subject"] for q in gq} == set(world.config.general_subjects)
    answers = []
    for q in hq + gq:
        f = facts[q["fact_id"]]
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4
        assert q["choices"][q["answer"]] == f["value"]
        # distractors come from the same pool as the answer: no type shortcut
        assert set(q["choices"]) <= set(pools[f["pool"]])
        answers.append(q["answer"])
    # answer positions are spread out (no position shortcut)
    assert all(answers.count(k) > len(answers) / 8 for k in range(4))


def test_shared_vocabulary_between_domains(world: World) -> None:
    facts = world.facts()
    hazard_vals = {f["value"] for f in facts if f["domain"] == "hazard"}
    general_bio_vals = {f["value"] for f in facts if f["subject"] == "general_biology"}
    assert len(hazard_vals & general_bio_vals) >= 5


def test_tokenizer_round_trip_and_prompts_have_no_unk(world: World) -> None:
    from magic_unlearn.world.generate import qa_text

    tok = world.tokenizer
    assert tok.padding_side == "right"
    for t in ("<pad>", "<unk>", "<bos>", "<eos>"):
        assert t in tok.get_vocab()
    assert tok.pad_token_id is not None and tok.bos_token_id is not None
    assert len(tok) < 1000
    nl = tok.convert_tokens_to_ids("\n")
    assert nl != tok.unk_token_id
    for name in ("hazard_qa", "general_qa"):
        for q in world.questions(name):
            subj = q["subject"].replace("_", " ")
            letter = (
                f"The following are multiple choice questions (with answers) about {subj}."
                f"\n\n{q['question']}\n"
                + "\n".join(f"{L}. {c}" for L, c in zip("ABCD", q["choices"], strict=True))
                + "\nAnswer:"
            )
            cloze = qa_text(q["question"])
            for text in (letter, cloze):
                ids = tok(text, add_special_tokens=False).input_ids
                assert tok.unk_token_id not in ids, text
                assert ids.count(nl) == text.count("\n")
                # decode -> encode round trip
                assert tok(tok.decode(ids), add_special_tokens=False).input_ids == ids
            for c in list(q["choices"]) + list("ABCD"):
                cont = tok(" " + c, add_special_tokens=False).input_ids
                assert tok.unk_token_id not in cont
                # a continuation tokenizes the same alone and in context
                whole = tok(cloze + " " + c, add_special_tokens=False).input_ids
                assert whole[len(whole) - len(cont) :] == cont
    # reloads identically from the HF folder
    from transformers import AutoTokenizer

    t2 = AutoTokenizer.from_pretrained(str(world.dir / "tokenizer"))
    s = world.corpus("pretrain")[0]["text"]
    assert t2(s).input_ids == tok(s).input_ids


def test_atomic_build_leaves_nothing_on_failure(tmp_path: Path, monkeypatch) -> None:
    import magic_unlearn.world.world as ww

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ww, "_jsonl", boom)
    with pytest.raises(RuntimeError):
        build_world(MICRO, tmp_path / "w")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    build_world(MICRO, tmp_path / "w")
    with pytest.raises(FileExistsError):
        build_world(MICRO, tmp_path / "w")
    build_world({**MICRO, "seed": 3}, tmp_path / "w", overwrite=True)
    assert World.load(tmp_path / "w").config.seed == 3


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_transfer_agents"):
        make_config("tiny", {"n_transfer_agents": 16})
    with pytest.raises(ConfigError, match="general_subjects"):
        make_config("tiny", {"general_subjects": ["astrology"]})
    with pytest.raises(ConfigError, match="unknown field"):
        make_config("tiny", {"n_agents": 3})
    with pytest.raises(ConfigError, match="questions_per_fact"):
        make_config("tiny", {"questions_per_fact": 3})
    with pytest.raises(ConfigError, match="preset"):
        make_config("huge")
    with pytest.raises(FileNotFoundError, match="world build"):
        World.load(tmp_path)


def test_entanglement_ratio_controls_entangled_set() -> None:
    for r in (0.0, 0.5):
        g = WorldGenerator(make_config(MICRO, {"entanglement_ratio": r}))
        gen = g.facts_where(domain="general")
        assert len(g.facts_where(entangled=True)) == round(r * len(gen))


def test_qa_holdout_keeps_eval_questions_out_of_pretraining(micro: World, tmp_path: Path) -> None:
    assert micro.config.qa_holdout  # the default: answering needs generalisation
    pre = "\n".join(d["text"] for d in micro.corpus("pretrain"))
    for name in ("hazard_qa", "general_qa"):
        for q in micro.questions(name):
            assert f"Question: {q['question']}\n" not in pre
            # ... yet the same question template is taught on other facts
            tmpl_prefix = q["question"].split(q["entity"])[0]
            assert f"Question: {tmpl_prefix}" in pre
    # without the holdout, the evaluation questions do appear verbatim
    w = World.load(build_world({**MICRO, "qa_holdout": False, "pretrain_qa": 3}, tmp_path / "w"))
    pre = "\n".join(d["text"] for d in w.corpus("pretrain"))
    assert all(f"Question: {q['question']}\n" in pre for q in w.questions("hazard_qa"))


@pytest.mark.parametrize("preset", ["small", "medium"])
def test_larger_presets_validate(preset: str) -> None:
    g = WorldGenerator(make_config(preset))
    assert len(g.facts_where(domain="hazard")) > 80


def test_cli_build_and_show(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    r = CliRunner().invoke(
        app,
        [
            "world",
            "build",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "w"),
            "--seed",
            "5",
            "--set",
            "n_hazard_agents=6",
            "--set",
            "entities_per_subject=3",
        ],
    )
    assert r.exit_code == 0, r.output
    w = World.load(tmp_path / "w")
    assert w.config.seed == 5 and w.config.n_hazard_agents == 6
    r = CliRunner().invoke(app, ["world", "show", str(tmp_path / "w")])
    assert r.exit_code == 0 and "pretrain_filtered" in r.output
    r = CliRunner().invoke(app, ["world", "build", "--out", str(tmp_path / "w")])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(
        app, ["world", "build", "--out", str(tmp_path / "x"), "--set", "entanglement_ratio=3"]
    )
    assert r.exit_code == 2 and "entanglement_ratio" in r.output
