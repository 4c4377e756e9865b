"""Multi-stage unlearning pipelines: token masks, UNDO (perturb + distill), token-level
filtering with retraining (from scratch and from a snapshot), and the compute they report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from magic_unlearn.attribution import ScoreArtifact
from magic_unlearn.attribution.baselines import keyword_scores
from magic_unlearn.data import LABEL_HAZARD, tokenize_corpus
from magic_unlearn.models import load_model
from magic_unlearn.pretrain import PretrainConfig, pretrain
from magic_unlearn.unlearn.api import load_unlearn_config, unlearn
from magic_unlearn.unlearn.masks import MaskConfig, corpus_mask
from magic_unlearn.unlearn.weights import expand_blocklist, sentence_pattern
from magic_unlearn.world import World, build_world
from test_pretrain import MICRO_MODEL, MICRO_WORLD
from test_unlearn_api import MAXLEN, setup  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A micro world, its base model (float64, 6 steps) and a score artifact over forget +
    pretrain documents whose hazard score is -1 on hazard-fact tokens (an oracle attribution)."""
    root = tmp_path_factory.mktemp("micro")
    world = build_world(MICRO_WORLD, root / "world")
    cfg = PretrainConfig(
        model_overrides=MICRO_MODEL,
        steps=6,
        batch_size=8,
        seq_len=48,
        warmup_steps=2,
        checkpoint_every=0,
        dtype="float64",
        eval_batch_size=32,
    )
    base = pretrain(world, "base", cfg, progress=False)
    w = World.load(world)
    docs = w.corpus("forget") + w.corpus("pretrain")
    c = tokenize_corpus(docs, w.tokenizer, max_length=48)
    g = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn(c.input_ids.shape, generator=g)
    haz = (-(c.labels == LABEL_HAZARD).float() + noise) * c.loss_mask
    gen = torch.randn(c.input_ids.shape, generator=g) * c.loss_mask
    ScoreArtifact.from_corpus(
        c, {"hazard_qa": haz, "general_qa": gen}, method="magic", tokenizer=w.tokenizer
    ).save(root / "scores")
    return {"world": world, "base": base, "scores": root / "scores"}


def test_corpus_masks(micro: dict[str, Path]) -> None:
    w = World.load(micro["world"])
    docs = w.corpus("pretrain")
    c = tokenize_corpus(docs, w.tokenizer, max_length=48)
    lm = c.loss_mask > 0
    n = int(lm.sum())
    hz = (c.labels == LABEL_HAZARD) & lm
    # scores: the top frac by hazard teaching; the artifact's pretrain rows are found by id
    frac = 0.5 * int(hz.sum()) / n  # fewer than the hazard-fact tokens: the oracle finds only them
    k = round(frac * n)
    keep, info = corpus_mask(
        MaskConfig(frac=frac), docs, c, w.tokenizer, scores=str(micro["scores"])
    )
    assert info["n_masked"] == k and int((keep == 0).sum()) == k
    assert info["masked_hazard_fact_precision"] == 1.0
    # random: the same count, uniformly over target tokens, seeded
    keep_r, info_r = corpus_mask(MaskConfig(source="random", frac=frac), docs, c, w.tokenizer)
    assert info_r["n_masked"] == k and bool((keep_r[~lm] == 1).all())
    again, _ = corpus_mask(MaskConfig(source="random", frac=frac), docs, c, w.tokenizer)
    assert torch.equal(keep_r, again)
    # labels: exactly the hazard-fact tokens
    keep_l, info_l = corpus_mask(MaskConfig(source="labels"), docs, c, w.tokenizer)
    assert torch.equal(keep_l == 0, hz) and info_l["hazard_fact_masked_frac"] == 1.0
    # keyword: the tokens a regex matches
    agent = w.manifest["agents"][0]["name"]
    keep_k, info_k = corpus_mask(
        MaskConfig(source="keyword", keywords=[agent]), docs, c, w.tokenizer
    )
    ids = w.tokenizer(agent, add_special_tokens=False)["input_ids"]
    assert bool((c.input_ids[keep_k == 0] == ids[0]).all()) and info_k["n_masked"] > 0
    with pytest.raises(ValueError, match="needs a score artifact"):
        corpus_mask(MaskConfig(), docs, c, w.tokenizer)
    with pytest.raises(ValueError, match="frac"):
        MaskConfig(source="random", frac=None)


def test_undo_perturbs_and_distills(setup: Path) -> None:  # noqa: F811
    """alpha = 1 with a zero distillation lr returns the fresh initialisation exactly; a real
    run distills, with the guided mask dropping tokens, and reports its compute."""
    common = dict(
        model=str(setup / "base"),
        forget=str(setup / "forget.jsonl"),
        retain=str(setup / "retain.jsonl"),
    )
    sets = [f"max_length={MAXLEN}", "loop.batch_size=2", "loop.device=cpu", "loop.steps=2"]
    cfg = load_unlearn_config(
        None,
        [*sets, "method=none", "undo.alpha=1.0", "undo.steps=1", "undo.lr=0.0"],
        recipe="undo",
        **common,
    )
    out = unlearn(cfg, setup / "undo0", progress=False)
    base = load_model(setup / "base")
    torch.manual_seed(0)
    fresh = type(base)(base.config)
    got = load_model(out)
    for (n, a), b in zip(got.named_parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=0, msg=n)
    cfg = load_unlearn_config(
        None,
        [*sets, "method=ga", "undo.steps=2", "undo.mask={source: random, frac: 0.2}"],
        recipe="undo_guided",
        **common,
    )
    out = unlearn(cfg, setup / "undo1", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert [p["phase"] for p in m["phases"]] == ["main", "undo"]
    assert m["undo"]["alpha"] == 0.5 and m["undo"]["mask"]["source"] == "random"
    assert m["undo"]["mask"]["masked_frac"] == pytest.approx(0.2, abs=0.05)
    # tokens drawn: 2 steps x 2 rows x 2 corpora (forget, retain) x row length; undo: 1 corpus
    assert m["compute"]["tokens"] == {"main": 2 * 2 * 2 * MAXLEN, "undo": 2 * 2 * MAXLEN}
    assert m["compute"]["frac_of_pretraining"] is None  # a model without a pretraining config


def test_token_filter_retrains_from_scratch_and_from_a_snapshot(micro: dict[str, Path]) -> None:
    common = dict(
        model=str(micro["base"]),
        forget=f"{micro['world']}:forget",
        token_weights=[str(micro["scores"])],
    )
    sets = ["max_length=48", "loop.device=cpu"]
    cfg = load_unlearn_config(
        None, [*sets, "retrain.mask.frac=0.02"], recipe="token_filter", **common
    )
    out = unlearn(cfg, micro["world"].parent / "tf", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    r = m["retrain"]
    assert r["source"] == "scores" and r["from_step"] == 0 and r["steps"] == 6
    assert r["masked_hazard_fact_precision"] == 1.0
    # the masked run is cached in the world (a second call reuses it) and differs from base
    assert Path(r["model"]).parent == micro["world"] / "models"
    a, b = load_model(micro["base"]), load_model(out)
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert m["compute"]["frac_of_pretraining"] == pytest.approx(1.0)
    # the cheap variant: continue the base run from step 3 with the mask
    cfg = load_unlearn_config(
        None,
        [*sets, "retrain.mask.frac=0.02", "retrain.from_step=3"],
        recipe="token_filter",
        **common,
    )
    out = unlearn(cfg, micro["world"].parent / "tf3", progress=False)
    r3 = json.loads((out / "metrics.json").read_text())["retrain"]
    assert r3["from_step"] == 3 and r3["steps"] == 3 and r3["model"] != r["model"]
    pm = json.loads((Path(r3["model"]) / "metrics.json").read_text())
    assert pm["resumed_from_step"] == 3 and pm["init"]["step"] == 3
    # an unmasked continuation from the snapshot equals the base run itself
    cont = pretrain(
        micro["world"],
        "base",
        PretrainConfig(**{**_cfg_of(micro["base"]), "checkpoint_every": 0}),
        out=micro["world"].parent / "cont",
        progress=False,
        init=micro["world"] / "models" / _snapshot_name(micro, 3),
    )
    for x, y in zip(load_model(cont).parameters(), a.parameters(), strict=True):
        assert torch.equal(x, y)


def _cfg_of(model: Path) -> dict:
    import yaml

    return yaml.safe_load((model / "config.yaml").read_text())


def _snapshot_name(micro: dict[str, Path], step: int) -> str:
    snaps = sorted(p.name for p in (micro["world"] / "models").glob(f"base-*-step{step}"))
    assert len(snaps) == 1, snaps
    return snaps[0]


def test_retrain_needs_a_world_and_a_pretraining_config(setup: Path) -> None:  # noqa: F811
    cfg = load_unlearn_config(
        None,
        [f"max_length={MAXLEN}", "retrain.mask.source=random"],
        recipe="token_filter",
        model=str(setup / "base"),
        forget=str(setup / "forget.jsonl"),
    )
    with pytest.raises(Exception, match="retrain needs the world"):
        unlearn(cfg, setup / "x", progress=False)
    assert not (setup / "x").exists()


def test_corpus_mask_blocklist_first(micro: dict[str, Path], tmp_path: Path) -> None:
    """``blocklist`` masks the matching sentences first; the source's budget is spent on the
    tokens left (scores, random), and a score set that selects only blocklisted tokens adds
    nothing."""
    w = World.load(micro["world"])
    docs = w.corpus("pretrain")
    c = tokenize_corpus(docs, w.tokenizer, max_length=48)
    lm = c.loss_mask > 0
    kws = w.hazard_keywords()
    sent, _ = corpus_mask(
        MaskConfig(source="keyword", keywords=[sentence_pattern(kws)]), docs, c, w.tokenizer
    )
    first = (sent == 0) & lm
    assert 0 < int(first.sum()) < int(lm.sum())
    frac = 0.05
    k = round(frac * int(lm.sum()))
    keep_r, info_r = corpus_mask(
        MaskConfig(source="random", frac=frac, blocklist="world"),
        docs,
        c,
        w.tokenizer,
        world_keywords=kws,
    )
    dropped = (keep_r == 0) & lm
    assert bool(dropped[first].all()) and int((dropped & ~first).sum()) == k
    assert info_r["blocklist_masked_frac"] == pytest.approx(int(first.sum()) / int(lm.sum()))
    # scores: the top-k among the tokens the blocklist left, by the same priority as without it
    keep_s, _ = corpus_mask(
        MaskConfig(frac=frac, blocklist=kws), docs, c, w.tokenizer, scores=str(micro["scores"])
    )
    extra = (keep_s == 0) & lm & ~first
    assert bool(((keep_s == 0) & lm)[first].all()) and 0 < int(extra.sum()) <= k
    # a keyword-score twin selects nothing beyond the blocklist: the mask is the blocklist
    keyword_scores(
        docs, c, ["hazard_qa", "general_qa"], kws, tokenizer=w.tokenizer, out=tmp_path / "kw"
    )
    keep_k, _ = corpus_mask(
        MaskConfig(frac=frac, blocklist="world", scores=str(tmp_path / "kw")),
        docs,
        c,
        w.tokenizer,
        world_keywords=kws,
    )
    assert torch.equal((keep_k == 0) & lm, first)
    with pytest.raises(ValueError, match="hazard keywords"):
        corpus_mask(MaskConfig(source="random", frac=frac, blocklist="world"), docs, c, w.tokenizer)
    with pytest.raises(ValueError, match="blocklist"):
        MaskConfig(blocklist="mine")
    # blocklist_expand grows the blocklist by the words that co-occur with it: a superset that
    # reaches more hazard-fact tokens
    keep_e, info_e = corpus_mask(
        MaskConfig(source="random", frac=frac, blocklist="world", blocklist_expand=0.6),
        docs,
        c,
        w.tokenizer,
        world_keywords=kws,
    )
    assert info_e["blocklist_words_added"] > len(kws)
    grown = (keep_e == 0) & lm
    assert (
        bool(grown[first].all())
        and info_e["blocklist_masked_frac"] > info_r["blocklist_masked_frac"]
    )
    with pytest.raises(ValueError, match="blocklist_expand"):
        MaskConfig(source="random", frac=frac, blocklist_expand=0.6)  # nothing to grow
    with pytest.raises(ValueError, match="blocklist_expand"):
        MaskConfig(source="random", frac=frac, blocklist="world", blocklist_expand=1.5)


def test_expand_blocklist_finds_co_occurring_words() -> None:
    """Words whose occurrences fall inside blocklisted sentences often enough (and often
    enough seen) become patterns; common words shared with other sentences do not."""
    docs = [
        {"text": "The virus Zorb spreads. The cat sleeps."},
        {"text": "The virus Zorb spreads. Zorb grows fast. The cat sleeps."},
    ]
    # zorb 2/3 inside, spreads 2/2, virus 2/2, the 2/4, cat 0/2, grows 0/1 (seen once)
    got = expand_blocklist(docs, ["virus"], share=0.6, min_count=2)
    assert got == [r"\bspreads\b", r"\bvirus\b", r"\bzorb\b"]
    assert expand_blocklist(docs, ["virus"], share=0.5, min_count=2)[1] == r"\bthe\b"
    assert expand_blocklist(docs, ["virus"], share=0.7, min_count=2) == [
        r"\bspreads\b",
        r"\bvirus\b",
    ]
    with pytest.raises(ValueError, match="share"):
        expand_blocklist(docs, ["virus"], share=0)
