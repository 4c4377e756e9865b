"""Tests for magic_unlearn.analysis: statistics vs brute force, the report, ground truth, LDS."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from magic_unlearn.analysis import (
    ScoreSet,
    analyze,
    from_tensors,
    ground_truth,
    lds,
    mass_concentration,
    pearson,
    precision_at_k,
    rankdata,
    roc_auc,
    spearman,
)
from magic_unlearn.analysis.lds import draw_subset
from magic_unlearn.analysis.run import example_aggregates, quadrants
from magic_unlearn.data import TokenizedCorpus, tokenize_corpus


# ----------------------------------------------------------------------------- statistics
def _brute_ranks(x: np.ndarray) -> np.ndarray:
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def test_rankdata_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float)
        np.testing.assert_allclose(rankdata(x), _brute_ranks(x))


def test_pearson_and_spearman_vs_references():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    xt, yt = np.round(x), np.round(y)  # many ties
    rx, ry = _brute_ranks(xt), _brute_ranks(yt)
    assert spearman(xt, yt) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
    # monotone transform: spearman 1, pearson < 1
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert pearson(x, np.exp(3 * x)) < 0.9
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="NaN"):
        spearman([1.0, float("nan")], [1.0, 2.0])


def test_roc_auc_vs_brute_force_pair_counting():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        s = rng.integers(0, 5, size=n).astype(float)  # ties on purpose
        pos = rng.random(n) < 0.4
        if pos.all() or not pos.any():
            continue
        pairs = [(a, b) for a, b in itertools.product(s[pos], s[~pos])]
        ref = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
        assert roc_auc(s, pos) == pytest.approx(ref, abs=1e-12)
    assert roc_auc([3, 2, 1], [True, False, False]) == 1.0
    assert np.isnan(roc_auc([1, 2], [True, True]))


def test_precision_at_k_tie_aware():
    s = np.array([5.0, 4.0, 3.0, 3.0, 1.0])
    pos = np.array([True, False, True, False, True])
    assert precision_at_k(s, pos, 1) == 1.0
    assert precision_at_k(s, pos, 2) == 0.5
    # k=3 takes one of the two tied 3.0s: expected hit 0.5
    assert precision_at_k(s, pos, 3) == pytest.approx((1 + 0.5) / 3)
    assert precision_at_k(s[::-1], pos[::-1], 3) == pytest.approx((1 + 0.5) / 3)


def test_mass_concentration_hand_example():
    m = mass_concentration([1.0, -4.0, 2.0, 3.0])  # |.| sorted 4,3,2,1; total 10
    assert m["n50"] == 2 and m["n90"] == 3
    assert m["frac50"] == 0.5


# ----------------------------------------------------------------------------- questions
def test_quadrants_hand_made_scores():
    # sign convention: negative = teaches
    h = np.array([-2.0, -2.0, -2.0, 1.0, 0.0, -0.1])
    g = np.array([1.0, 0.0, -1.0, -1.0, 0.0, 0.05])
    q = quadrants(h, g, 0.0, 0.0)
    c = q["counts"]
    assert c["purely_hazard"] == 3  # idx 0, 1, 5 (g >= 0); not idx 2 (teaches both)
    assert c["hazard_harms_general"] == 2  # idx 0 and 5 (g > 0)
    assert c["both"] == 1 and c["general_only"] == 1 and c["neither"] == 1
    assert q["purely_hazard_mass_frac"] == pytest.approx(4.1 / 6.1)
    qn = quadrants(h, g, 0.5, 0.5)  # idx 5 is noise now, idx 2 still teaches both
    assert qn["counts"]["purely_hazard"] == 2 and qn["counts"]["both"] == 1
    assert np.array(qn["table_rows_hazard_cols_general"]).sum() == 6


def _corpus(n: int = 6, length: int = 8, labels: bool = True, seed: int = 0) -> TokenizedCorpus:
    rng = np.random.default_rng(seed)
    ids = torch.tensor(rng.integers(5, 40, (n, length)))
    am = torch.ones(n, length, dtype=torch.long)
    lm = torch.ones(n, length)
    lm[:, 0] = 0
    am[-1, -2:] = 0  # padding on the last row
    lm[-1, -2:] = 0
    lab = (
        torch.tensor(rng.choice([0, 1, 2], (n, length))) if labels else torch.full((n, length), -1)
    )
    lab[:, 0] = -1
    lab[am == 0] = -1
    return TokenizedCorpus(
        ids, am, lm, lab, torch.full((n, length), -1), [f"doc{i}" for i in range(n)]
    )


def test_example_ranking_formula():
    c = _corpus(4, 5, labels=False)
    h = torch.zeros(4, 5)
    g = torch.zeros(4, 5)
    h[0, 1], g[0, 1] = -3.0, 0.0  # pure hazard teacher: rank 3
    h[1, 1], g[1, 1] = -3.0, -3.0  # teaches both: rank 0 (alpha 1)
    h[2, 1], g[2, 1] = 1.0, 0.0  # hazard detractor: rank -1
    h[3, 2], g[3, 2] = -1.0, 2.0  # teaches hazard, harms general: rank 3
    hz, gn = from_tensors(h, c, "hazard_qa", "magic"), from_tensors(g, c, "general_qa", "magic")
    ex = example_aggregates(hz, gn, alpha=1.0)
    np.testing.assert_allclose(ex["rank"], [3.0, 0.0, -1.0, 3.0])
    assert list(ex["order"]) == [0, 3, 1, 2]  # stable among ties
    ex2 = example_aggregates(hz, gn, alpha=0.5)
    np.testing.assert_allclose(ex2["rank"], [3.0, 1.5, -1.0, 2.0])


def _save(tmp_path, name, corpus, scores, method="magic"):
    from magic_unlearn.attribution.artifact import ScoreArtifact

    art = ScoreArtifact.from_corpus(corpus, scores, method=method)
    return art.save(tmp_path / name)


def test_analyze_writes_report_and_metrics(tmp_path):
    c = _corpus(12, 16)
    lab = c.labels.numpy()
    rng = np.random.default_rng(3)
    h = torch.tensor(rng.normal(size=lab.shape) - 4.0 * (lab == 2))
    g = torch.tensor(rng.normal(size=lab.shape) - 4.0 * (lab == 1))
    magic = _save(tmp_path, "magic", c, {"hazard_qa": h, "general_qa": g})
    rnd = _save(
        tmp_path,
        "random",
        c,
        {"hazard_qa": torch.randn(12, 16), "general_qa": torch.randn(12, 16)},
        method="random",
    )
    m = analyze([magic, rnd], tmp_path / "out")
    out = tmp_path / "out"
    for f in (
        "report.md",
        "metrics.json",
        "tokens_hexbin.png",
        "examples_scatter.png",
        "ratio_hist.png",
        "concentration.png",
        "per_position.png",
        "tokens_by_label.png",
    ):
        assert (out / f).stat().st_size > 0, f
    assert not list(tmp_path.glob(".out.*"))  # no temp folder left
    mj = json.loads((out / "metrics.json").read_text())
    assert mj["hazard"] == "magic:hazard_qa" and mj["general"] == "magic:general_qa"
    # per-token correlation is the one of the scored tokens only
    mask = c.loss_mask.numpy() > 0
    assert m["q1_correlation"]["token_spearman"] == pytest.approx(
        spearman(h.numpy()[mask], g.numpy()[mask]), abs=1e-6
    )
    gt = m["ground_truth"]["per_score_set"]
    assert gt["magic:hazard_qa"]["auc_hazard_vs_rest"] > 0.9
    assert abs(gt["random:hazard_qa"]["auc_hazard_vs_rest"] - 0.5) < 0.2
    assert m["ground_truth"]["combination"]["magic"]["scaled_auc_hazard_vs_general"] > 0.9
    assert len(m["q3_examples"]["ranked_doc_ids"]) == 12
    with pytest.raises(FileExistsError):
        analyze([magic], out)


def test_analyze_never_prints_real_corpus_text(tmp_path, word_tokenizer):
    docs = [
        {"id": f"r{i}", "text": "the fox is in the host with virus gamma and red bird"}
        for i in range(5)
    ]
    c = tokenize_corpus(docs, word_tokenizer, max_length=20)
    assert not (c.labels >= 0).any()  # real data: no labels
    art = _save(tmp_path, "real", c, {"wmdp": torch.randn(5, 20), "mmlu": torch.randn(5, 20)})
    analyze([art], tmp_path / "out", tokenizer=word_tokenizer)
    text = (tmp_path / "out" / "report.md").read_text() + (
        tmp_path / "out" / "metrics.json"
    ).read_text()
    for w in ("fox", "host", "virus", "gamma", "bird"):
        assert w not in text
    # the same data declared as the world may show decoded tokens
    analyze([art], tmp_path / "out_world", tokenizer=word_tokenizer, is_world=True)
    assert "fox" in (tmp_path / "out_world" / "report.md").read_text()


def test_pair_selection_and_mismatch_errors(tmp_path):
    c1, c2 = _corpus(4, 8, seed=0), _corpus(4, 8, seed=1)
    a = _save(tmp_path, "a", c1, {"hazard_qa": torch.randn(4, 8)})
    b = _save(tmp_path, "b", c2, {"general_qa": torch.randn(4, 8)})
    with pytest.raises(ValueError, match="different token ids"):
        analyze([a, b], tmp_path / "out")
    one = _save(tmp_path, "one", c1, {"hazard_qa": torch.randn(4, 8)})
    with pytest.raises(ValueError, match="need two queries"):
        analyze([one], tmp_path / "out2")
    # queries are picked by name regardless of order
    both = _save(
        tmp_path, "both", c1, {"general_qa": torch.randn(4, 8), "hazard_qa": torch.randn(4, 8)}
    )
    m = analyze([both], tmp_path / "out3")
    assert m["hazard"] == "magic:hazard_qa"
    with pytest.raises(FileNotFoundError):
        analyze([tmp_path / "missing"], tmp_path / "out4")


def test_ground_truth_perfect_and_inverted():
    c = _corpus(10, 12)
    lab = c.labels
    perfect = from_tensors(-(lab == 2).double(), c, "hazard_qa", "oracle")
    inverted = from_tensors((lab == 2).double(), c, "hazard_qa", "bad")
    gt = ground_truth([perfect, inverted])["per_score_set"]
    assert gt["oracle:hazard_qa"]["auc_hazard_vs_rest"] == 1.0
    assert gt["oracle:hazard_qa"]["p@R_hazard"] == 1.0
    assert gt["bad:hazard_qa"]["auc_hazard_vs_rest"] == 0.0
    with pytest.raises(ValueError, match="labels"):
        ground_truth([from_tensors(torch.zeros(6, 8), _corpus(6, 8, labels=False))])


def test_scoreset_rejects_nan():
    c = _corpus(3, 4)
    s = torch.zeros(3, 4)
    s[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        from_tensors(s, c)
    assert isinstance(from_tensors(torch.zeros(3, 4), c), ScoreSet)


# ----------------------------------------------------------------------------- LDS
class _Linear(nn.Module):
    """A 'model' whose training outcome is a known linear function of the token weights."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Parameter(torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("unit", ["doc", "token"])
def test_lds_exact_for_linear_outcome(tmp_path, unit):
    c = _corpus(20, 6, labels=False)
    coef = torch.tensor(np.random.default_rng(4).normal(size=(20, 6)))

    def train(model, corpus, cfg, token_weights=None):
        w = torch.ones(20, 6, dtype=torch.float64) if token_weights is None else token_weights
        m = _Linear()
        m.f.data = (coef * w * corpus.loss_mask).sum() + 0.1 * (w * corpus.loss_mask).sum() ** 0
        return m

    scores = {"exact": coef, "negated": -coef, "noise": torch.randn(20, 6)}
    res = lds(
        _Linear,
        c,
        lambda m: m.f,
        {"steps": 1},
        scores,
        alpha=0.2,
        n_subsets=12,
        unit=unit,
        out=tmp_path / "lds",
        train_fn=train,
        bootstrap=100,
        progress=False,
    )
    r = res["results"]
    assert r["exact"]["pearson"] == pytest.approx(1.0, abs=1e-9)
    assert r["exact"]["spearman"] == pytest.approx(1.0)
    assert r["negated"]["spearman"] == pytest.approx(-1.0)
    assert abs(r["noise"]["spearman"]) < 0.9
    np.testing.assert_allclose(r["exact"]["predicted"], res["actual"]["loss"], atol=1e-9)

    # resume: all retrains are cached, so a failing trainer is never called
    def boom(*a, **k):
        raise AssertionError("retrained despite cache")

    res2 = lds(
        _Linear,
        c,
        lambda m: m.f,
        {"steps": 1},
        scores,
        alpha=0.2,
        n_subsets=12,
        unit=unit,
        out=tmp_path / "lds",
        train_fn=boom,
        bootstrap=100,
        progress=False,
    )
    assert res2["results"]["exact"]["spearman"] == r["exact"]["spearman"]
    with pytest.raises(ValueError, match="other inputs"):
        lds(
            _Linear,
            c,
            lambda m: m.f,
            {"steps": 1},
            scores,
            alpha=0.3,
            n_subsets=2,
            unit=unit,
            out=tmp_path / "lds",
            train_fn=boom,
            progress=False,
        )


def _tiny_world(word_tokenizer, n: int = 12):
    rng = np.random.default_rng(0)
    words = "the a of is in host route tissue gene virus alpha beta gamma delta red blue".split()
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(words, size=10))} for i in range(n)]
    return tokenize_corpus(docs, word_tokenizer, max_length=14)


def test_lds_loo_oracle_high_random_low_real_trajectory(tmp_path, word_tokenizer, tiny_model):
    """Oracle scores from brute-force leave-one-document-out retraining with the real
    ``train_trajectory`` predict subset retraining (LDS high); random scores do not."""
    from magic_unlearn.attribution.config import TrajectoryConfig
    from magic_unlearn.attribution.trajectory import train_trajectory
    from magic_unlearn.data import per_token_nll

    n = 12
    corpus = _tiny_world(word_tokenizer, n)
    cfg = TrajectoryConfig(
        optimizer="sgd", lr=0.1, steps=6, batch_size=4, dtype="float64", checkpointing="every"
    )
    q = _tiny_world(word_tokenizer, 3)

    @torch.no_grad()
    def measure(model):
        nll = per_token_nll(model, q.input_ids, q.attention_mask)
        return (nll * q.loss_mask).sum() / q.loss_mask.sum()

    f0 = float(measure(train_trajectory(tiny_model, corpus, cfg)))
    loo = torch.zeros(n, 14, dtype=torch.float64)
    for i in range(n):
        w = torch.ones(n, 14, dtype=torch.float64)
        w[i] = 0
        # f(drop i) - f0 ~= -s_i  =>  put s_i on one scored token of row i
        loo[i, 1] = f0 - float(measure(train_trajectory(tiny_model, corpus, cfg, token_weights=w)))
    scores = {
        "oracle": loo,
        "random": torch.randn(n, 14, generator=torch.Generator().manual_seed(0)),
    }
    res = lds(
        tiny_model,
        corpus,
        measure,
        cfg,
        scores,
        alpha=0.25,
        n_subsets=16,
        out=tmp_path / "lds",
        bootstrap=200,
        progress=False,
    )
    r = res["results"]
    assert r["oracle"]["spearman"] > 0.8, r
    assert r["oracle"]["spearman"] > r["random"]["spearman"] + 0.3, r
    assert r["oracle"]["ci"][0] <= r["oracle"]["spearman"] <= r["oracle"]["ci"][1]


# ----------------------------------------------------------------------------- CLI
def test_cli_analyze(tmp_path):
    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    c = _corpus(8, 10)
    art = _save(
        tmp_path, "a", c, {"hazard_qa": torch.randn(8, 10), "general_qa": torch.randn(8, 10)}
    )
    r = CliRunner().invoke(
        app, ["analyze", "--scores", str(art), "--out", str(tmp_path / "o"), "--alpha", "0.5"]
    )
    assert r.exit_code == 0, r.output
    assert "purely hazard" in r.output
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["alpha"] == 0.5


def test_cli_validate_lds(tmp_path, word_tokenizer, tiny_model):
    """End to end: MAGIC + random artifacts on a tiny model, then `validate lds` from the CLI."""
    from typer.testing import CliRunner

    from magic_unlearn.attribution import TrajectoryConfig, attribute, random_scores
    from magic_unlearn.cli import app
    from magic_unlearn.evaluation.measure import Measurement
    from magic_unlearn.evaluation.tasks import load_task

    qfile = tmp_path / "qs.jsonl"
    qs = [
        {
            "question": "the virus is in the",
            "choices": ["host", "gene", "red", "fox"],
            "answer": i % 4,
            "subject": "x",
        }
        for i in range(4)
    ]
    qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
    word_tokenizer.save_pretrained(tmp_path / "tok")
    tiny_model.save_pretrained(tmp_path / "model")
    corpus = _tiny_world(word_tokenizer, 10)
    cfg = TrajectoryConfig(
        optimizer="sgd",
        lr=0.1,
        steps=3,
        batch_size=4,
        dtype="float64",
        max_length=14,
        checkpointing="every",
    )
    meas = {"qs": Measurement.from_task(word_tokenizer, load_task(str(qfile)), name="qs")}
    attribute(
        tiny_model,
        corpus,
        meas,
        cfg,
        out=tmp_path / "magic",
        progress=False,
        tokenizer=word_tokenizer,
    )
    random_scores(corpus, ["qs"], out=tmp_path / "random")
    args = [
        "validate",
        "lds",
        "--model",
        str(tmp_path / "model"),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--query",
        str(qfile),
        "--scores",
        str(tmp_path / "magic"),
        "--scores",
        str(tmp_path / "random"),
        "--out",
        str(tmp_path / "lds"),
        "--subsets",
        "6",
        "--alpha",
        "0.2",
        "--bootstrap",
        "50",
        "--device",
        "cpu",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "lds" / "lds.json").read_text())
    assert set(res["results"]) == {"magic:qs", "random:qs"}
    assert res["results"]["magic:qs"]["spearman"] > 0.5
    assert (tmp_path / "lds" / "lds.md").exists()


def test_lds_drops_diverged_retrains():
    c = _corpus(20, 6, labels=False)
    coef = torch.tensor(np.random.default_rng(5).normal(size=(20, 6)))

    def train(model, corpus, cfg, token_weights=None):
        w = torch.ones(20, 6, dtype=torch.float64) if token_weights is None else token_weights
        m = _Linear()
        m.f.data = (coef * w * corpus.loss_mask).sum()
        if w[0].sum() == 0:  # dropping doc 0 "diverges"
            m.f.data = torch.tensor(float("nan"), dtype=torch.float64)
        return m

    with pytest.warns(UserWarning, match="non-finite"):
        res = lds(
            _Linear,
            c,
            lambda m: m.f,
            {},
            {"exact": coef},
            alpha=0.2,
            n_subsets=12,
            train_fn=train,
            bootstrap=50,
            progress=False,
        )
    n_bad = sum(0 in draw_subset(20, 0.2, 0, m) for m in range(12))
    assert n_bad > 0 and res["n_diverged"]["loss"] == n_bad
    assert res["results"]["exact"]["n_used"] == 12 - n_bad
    assert res["results"]["exact"]["spearman"] == pytest.approx(1.0)


def test_ground_truth_first_fact_token_auc():
    c = _corpus(2, 8)
    c.labels[:] = 0
    c.labels[:, 0] = -1
    c.fact_ids[:] = -1
    c.labels[0, 2:4] = 2  # hazard fact 5 spans positions 2-3
    c.fact_ids[0, 2:4] = 5
    c.labels[1, 4:6] = 1  # general fact 9
    c.fact_ids[1, 4:6] = 9
    s = torch.zeros(2, 8, dtype=torch.float64)
    s[0, 2] = -1.0  # only the first hazard token teaches
    gt = ground_truth([from_tensors(s, c, "hazard_qa", "m")])["per_score_set"]["m:hazard_qa"]
    assert gt["auc_hazard_first_token_vs_other"] == 1.0
    # all hazard tokens vs rest: the continuation token ties with the rest (AUC < 1)
    assert gt["auc_hazard_vs_rest"] == pytest.approx((1.0 + 0.5) / 2)


def test_ground_truth_document_auc_by_brute_force():
    """Hazard documents (any hazard-fact token) ranked by -sum of their token scores: the AUC
    is the fraction of (hazard doc, other doc) pairs in the right order."""
    rng = np.random.default_rng(5)
    c = _corpus(8, 6)
    c.labels[:] = 0
    c.labels[:, 0] = -1
    for i in (1, 4, 6):
        c.labels[i, 3] = 2
    s = torch.tensor(rng.normal(size=(8, 6)))
    gt = ground_truth([from_tensors(s, c, "hazard_qa", "m")])["per_score_set"]["m:hazard_qa"]
    teach = [-float((s[i] * c.loss_mask[i]).sum()) for i in range(8)]
    pos, neg = [teach[i] for i in (1, 4, 6)], [teach[i] for i in (0, 2, 3, 5, 7)]
    want = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert gt["auc_hazard_doc_vs_rest"] == pytest.approx(want)
    assert gt["n_hazard_docs"] == 3 and gt["n_docs"] == 8
    c.labels[:, 3] = 2  # every document a hazard document: undefined
    gt = ground_truth([from_tensors(s, c, "hazard_qa", "m")])["per_score_set"]["m:hazard_qa"]
    assert np.isnan(gt["auc_hazard_doc_vs_rest"])
