"""Score -> per-token weight transform, curriculum order, artifacts and keyword masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magic_unlearn.data import tokenize_corpus
from magic_unlearn.unlearn.weights import (
    SEED_CONFIGS,
    WeightConfig,
    curriculum_order,
    keyword_mask,
    transform_scores,
    weights_from_artifacts,
)

# one row, 7 positions; position 0 (BOS) and 6 (pad) are not targets
LM = torch.tensor([[0, 1, 1, 1, 1, 1, 0]], dtype=torch.float)
SH = torch.tensor([[9.0, -3.0, -1.0, 2.0, 0.5, -2.0, 9.0]])  # hazard scores
SG = torch.tensor([[9.0, 1.0, -4.0, -1.0, 0.0, 1.0, 9.0]])  # general scores


def W(cfg: WeightConfig, general: torch.Tensor | None = SG) -> list[float]:
    return transform_scores(SH, LM, general, cfg)[0][0].tolist()


def test_select_predicates_follow_the_sign_convention() -> None:
    assert W(WeightConfig()) == [0, 1, 1, 1, 1, 1, 0]
    assert W(WeightConfig(select="hazard_proponent")) == [0, 1, 1, 0, 0, 1, 0]
    assert W(WeightConfig(select="hazard_detractor")) == [0, 0, 0, 1, 1, 0, 0]
    assert W(WeightConfig(select="hazard_only")) == [0, 1, 0, 0, 0, 1, 0]
    assert W(WeightConfig(select="general_only")) == [0, 0, 0, 1, 0, 0, 0]
    assert W(WeightConfig(select="selective")) == [0, 0, 0, 1, 1, 0, 0]
    assert W(WeightConfig(select="compatible")) == [0, 0, 0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="needs a general score"):
        W(WeightConfig(select="selective"), general=None)


def test_topk_topfrac_threshold_rank_by_hazard_minus_alpha_general() -> None:
    # priority = -s_h - alpha * (-s_g) = -s_h + alpha * s_g; alpha=1: [., 4, -3, -3, -0.5, 3, .]
    assert W(WeightConfig(top_k=2)) == [0, 1, 0, 0, 0, 1, 0]
    assert W(WeightConfig(top_k=2, alpha=0.0)) == [0, 1, 0, 0, 0, 1, 0]  # t_h: 3,1,-2,-.5,2
    assert W(WeightConfig(top_k=1, alpha=0.0)) == [0, 1, 0, 0, 0, 0, 0]
    # alpha = 2: priority [., 5, -7, -4, -0.5, 4]
    assert W(WeightConfig(top_frac=0.4, alpha=2.0)) == [0, 1, 0, 0, 0, 1, 0]
    assert W(WeightConfig(threshold=-1.0)) == [0, 1, 0, 0, 1, 1, 0]
    assert W(WeightConfig(value="priority", threshold=0.0)) == [0, 4, 0, 0, 0, 3, 0]


def test_values_normalisation_and_clipping() -> None:
    w = W(WeightConfig(value="score", normalize="mean_abs"))  # |s| mean over targets = 8.5/5
    assert w == pytest.approx([0, -3 / 1.7, -1 / 1.7, 2 / 1.7, 0.5 / 1.7, -2 / 1.7, 0])
    assert W(WeightConfig(value="sign")) == [0, -1, -1, 1, 1, -1, 0]
    assert W(WeightConfig(value="teach", normalize="max_abs")) == pytest.approx(
        [0, 1, 1 / 3, -2 / 3, -0.5 / 3, 2 / 3, 0]
    )
    # rank by |v|: |s| = 3,1,2,.5,2 -> ranks 5,2,3|4 (stable),1 -> /5 with sign
    assert W(WeightConfig(value="score", normalize="rank")) == pytest.approx(
        [0, -1.0, -0.4, 0.6, 0.2, -0.8, 0]
    )
    assert W(WeightConfig(value="teach", clip=[0.0, 2.0], scale=0.5)) == pytest.approx(
        [0, 1.0, 0.5, 0, 0, 1.0, 0]
    )


def test_example_level_selection_and_aggregate() -> None:
    sh = torch.tensor([[0, -1.0, -1.0, 0], [0, -5.0, 3.0, 0], [0, 2.0, 2.0, 0]])
    lm = torch.tensor([[0, 1, 1, 0]] * 3, dtype=torch.float)
    w, rows = transform_scores(
        sh, lm, None, WeightConfig(level="example", top_k=1, aggregate="sum")
    )
    # row teaching sums: 2, 2, -4 -> tie between rows 0 and 1, stable: row 0
    assert rows.tolist() == [0] and w[0].tolist() == [0, 1, 1, 0] and w[1:].abs().sum() == 0
    w, rows = transform_scores(
        sh, lm, None, WeightConfig(level="example", top_k=1, aggregate="max")
    )
    assert rows.tolist() == [1] and w[1].tolist() == [0, 1, 1, 0]
    w, rows = transform_scores(
        sh,
        lm,
        None,
        WeightConfig(level="example", top_frac=1.0, select="hazard_proponent", aggregate="mean"),
    )
    assert rows.tolist() == [1, 0]  # means 5 and 1; row 2 has no eligible token
    assert w.tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_seed_configurations_and_errors() -> None:
    vw = W(SEED_CONFIGS["value_weighted"])
    assert [x > 0 for x in vw[1:6]] == [s > 0 for s in SH[0, 1:6].tolist()]
    assert sum(abs(x) for x in vw) / 5 == pytest.approx(1.0)
    assert W(SEED_CONFIGS["detractor_sft"]) == [0, 0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="selected no token"):
        W(WeightConfig(threshold=100.0))
    with pytest.raises(ValueError, match="select='nope'"):
        W(WeightConfig(select="nope"))
    with pytest.raises(ValueError, match="NaN"):
        transform_scores(SH * float("nan"), LM, None)


def test_curriculum_puts_pure_hazard_first() -> None:
    sh = torch.tensor([[0, -1.0, -1.0], [0, -4.0, 0.0], [0, 1.0, 1.0], [0, -2.0, 0.0]])
    sg = torch.tensor([[0, -1.0, -1.0], [0, 0.0, 0.0], [0, -1.0, 0.0], [0, 0.0, 0.0]])
    lm = torch.tensor([[0, 1, 1]] * 4, dtype=torch.float)
    # purities: 0.5, 1, 0, 1 -> rows 1 (H=4) and 3 (H=2) first, then 0, then 2
    assert curriculum_order(sh, lm, sg).tolist() == [1, 3, 0, 2]


def _artifact(tmp: Path, corpus, tok, scores: dict, name: str) -> Path:  # noqa: ANN001
    from magic_unlearn.attribution.artifact import ScoreArtifact

    art = ScoreArtifact.from_corpus(corpus, scores, method="random", tokenizer=tok)
    return art.save(tmp / name)


def test_weights_from_artifacts_and_mismatch(tmp_path: Path, word_tokenizer) -> None:  # noqa: ANN001
    from magic_unlearn.attribution.artifact import ArtifactMismatchError

    docs = [
        {"id": str(i), "text": t}
        for i, t in enumerate(
            ["the red fox is in the gene", "a blue cat", "host route tissue virus"]
        )
    ]
    c = tokenize_corpus(docs, word_tokenizer, max_length=10)
    g = torch.Generator().manual_seed(0)
    sh = torch.randn(c.input_ids.shape, generator=g) * c.loss_mask
    sg = torch.randn(c.input_ids.shape, generator=g) * c.loss_mask
    one = _artifact(tmp_path, c, word_tokenizer, {"hazard_qa": sh, "general_qa": sg}, "one")
    two_h = _artifact(tmp_path, c, word_tokenizer, {"hazard_qa": sh}, "h")
    two_g = _artifact(tmp_path, c, word_tokenizer, {"general_qa": sg}, "g")
    cfg = WeightConfig(select="selective", value="teach", normalize="none")
    ref, _ = transform_scores(sh, c.loss_mask, sg, cfg)
    w1, _ = weights_from_artifacts([one], c, cfg, tokenizer=word_tokenizer)
    w2, _ = weights_from_artifacts([two_h, two_g], c, cfg, tokenizer=word_tokenizer)
    assert torch.equal(w1, ref) and torch.equal(w2, ref)
    other = tokenize_corpus(docs[::-1], word_tokenizer, max_length=10)
    with pytest.raises(ArtifactMismatchError, match="hash mismatch"):
        weights_from_artifacts([one], other, cfg)
    with pytest.raises(ValueError, match="general score is needed"):
        weights_from_artifacts([two_h], c, cfg)


def test_keyword_mask_marks_matching_tokens(word_tokenizer) -> None:  # noqa: ANN001
    docs = [{"id": "a", "text": "the red fox is in the gene"}, {"id": "b", "text": "a blue cat"}]
    c = tokenize_corpus(docs, word_tokenizer, max_length=10)
    m = keyword_mask(docs, c, word_tokenizer, [r"\bgene\b", "FOX"])
    # row 0: [BOS] the red fox is in the gene [EOS] -> fox at 3, gene at 7
    assert m[0].nonzero().flatten().tolist() == [3, 7] and m[1].sum() == 0
    ex = keyword_mask(docs, c, word_tokenizer, ["fox"], level="example")
    assert torch.equal(ex[0], c.loss_mask[0]) and ex[1].sum() == 0
    inv = keyword_mask(docs, c, word_tokenizer, ["fox"], invert=True)
    assert torch.equal(inv + keyword_mask(docs, c, word_tokenizer, ["fox"]), c.loss_mask)
    with pytest.raises(ValueError, match="invalid regex"):
        keyword_mask(docs, c, word_tokenizer, ["("])


def test_prepare_data_reads_each_artifact_once(tmp_path: Path, word_tokenizer, monkeypatch) -> None:  # noqa: ANN001
    import json

    from magic_unlearn.attribution.artifact import ScoreArtifact
    from magic_unlearn.unlearn.api import UnlearnConfig, prepare_data

    docs = [
        {"id": str(i), "text": t}
        for i, t in enumerate(["the red fox is in the gene", "a blue cat", "host route virus"])
    ]
    forget = tmp_path / "forget.jsonl"
    forget.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    c = tokenize_corpus(docs, word_tokenizer, max_length=9)
    g = torch.Generator().manual_seed(0)
    sh = torch.randn(c.input_ids.shape, generator=g) * c.loss_mask
    sg = torch.randn(c.input_ids.shape, generator=g) * c.loss_mask
    dirs = [
        _artifact(tmp_path, c, word_tokenizer, {"hazard_qa": sh}, "h"),
        _artifact(tmp_path, c, word_tokenizer, {"general_qa": sg}, "g"),
    ]
    loads: list[str] = []
    load = ScoreArtifact.load

    def counting(cls, folder):  # noqa: ANN001, ANN202
        loads.append(str(folder))
        return load(folder)

    monkeypatch.setattr(ScoreArtifact, "load", classmethod(counting))
    wcfg = WeightConfig(select="selective", value="teach")
    cfg = UnlearnConfig(
        forget=str(forget), retain=str(forget), token_weights=[str(d) for d in dirs], weights=wcfg
    )
    prep = prepare_data(cfg, word_tokenizer)
    assert loads == [str(d) for d in dirs]  # once each (row length and scores share the load)
    assert prep.data["forget"].input_ids.shape[1] == 9 == prep.data["retain"].input_ids.shape[1]
    assert torch.equal(prep.weights["forget"], transform_scores(sh, c.loss_mask, sg, wcfg)[0])
