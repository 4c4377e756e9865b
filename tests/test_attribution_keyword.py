"""The keyword-blocklist attribution baseline on a real world: what it marks, and that it uses no
ground truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from magic_unlearn.attribution import AttributionJob, ScoreArtifact, run_attribution
from magic_unlearn.attribution.baselines import keyword_scores, sentence_pattern
from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD, tokenize_corpus
from magic_unlearn.world import World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World.load(build_world("tiny", tmp_path_factory.mktemp("kw") / "world"))


def test_keyword_list_holds_no_ground_truth(world: World) -> None:
    kws = world.hazard_keywords()
    words = {re.sub(r"\\b", "", k).replace("\\ ", " ") for k in kws}
    assert {"virus", "pathogen", "bacillus", "fungus", "natural host"} <= words
    man = json.loads((world.dir / "world.json").read_text())
    names = {a["name"].lower() for a in man["agents"]}
    values = {v.lower() for vals in man["pools"].values() for v in vals}
    assert not (words & names) and not (words & values)


def test_keyword_scores_mark_hazard_sentences(world: World) -> None:
    docs = world.corpus("forget")
    tok = world.tokenizer
    corpus = tokenize_corpus(docs, tok, max_length=64)
    q = ["hazard_qa", "general_qa"]
    sent = keyword_scores(docs, corpus, q, world.hazard_keywords(), "sentence", tokenizer=tok)
    h, g = sent.token_scores("hazard_qa"), sent.token_scores("general_qa")
    lm, lab = corpus.loss_mask > 0, corpus.labels
    marked = h < 0
    assert set(h[lm].unique().tolist()) == {-1.0, 0.0} and (h[~lm] == 0).all()
    # the general query scores exactly the other target tokens
    assert torch.equal(g < 0, lm & ~marked) and (g[lm & ~marked] == -1).all()
    # every hazard sentence names its agent's class: all hazard-fact tokens are marked, no
    # general-fact token (the entangled general sentences of hazard documents) is
    assert marked[lab == LABEL_HAZARD].all()
    assert not marked[lab == LABEL_GENERAL].any()
    assert 0 < marked[lm].float().mean() < 1  # filler and general sentences stay unmarked
    token = keyword_scores(docs, corpus, q, world.hazard_keywords(), "token", tokenizer=tok)
    tmark = token.token_scores("hazard_qa") < 0
    assert tmark.any() and (tmark <= marked).all() and tmark.sum() < marked.sum()
    assert not tmark[lab == LABEL_HAZARD].any()  # values are no keywords
    doc = keyword_scores(docs, corpus, q, world.hazard_keywords(), "example", tokenizer=tok)
    assert ((doc.token_scores("hazard_qa") < 0) >= marked).all()
    with pytest.raises(ValueError, match="keyword level"):
        keyword_scores(docs, corpus, q, world.hazard_keywords(), "word", tokenizer=tok)


def test_sentence_pattern_matches_whole_sentences() -> None:
    rx = re.compile(sentence_pattern([r"\bvirus\b"]), re.IGNORECASE)
    text = "The filler is here. The Vorl virus infects the dune vole. Other text!"
    assert [m.group(0).strip() for m in rx.finditer(text)] == [
        "The Vorl virus infects the dune vole."
    ]


def test_run_attribution_keyword_needs_no_model(world: World, tmp_path: Path) -> None:
    art = run_attribution(
        AttributionJob(
            model=None,
            corpus="forget",
            queries=["hazard_qa", "general_qa"],
            out=tmp_path / "kw",
            method="keyword",
            world=world.dir,
        )
    )
    assert art.method == "keyword" and art.meta["keyword_level"] == "sentence"
    assert art.meta["keywords"] == world.hazard_keywords()
    again = ScoreArtifact.load(tmp_path / "kw")
    assert torch.equal(again.token_scores("hazard_qa"), art.token_scores("hazard_qa"))
    with pytest.raises(ValueError, match="keyword_level"):
        AttributionJob(
            model=None, corpus="forget", queries=["q"], method="keyword", keyword_level="line"
        )
