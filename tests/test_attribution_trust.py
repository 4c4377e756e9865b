"""The trust report (smoothness, float64 prefix, drift, verdict) and the score semantics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from magic_unlearn.attribution import ScoreArtifact, TrajectoryConfig, attribute, train_trajectory
from magic_unlearn.attribution import trust as tr
from magic_unlearn.attribution.config import TrustConfig
from magic_unlearn.models import build_model
from test_attribution import TINY, V, cfg_for, f_heldout, make_corpus


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)


# ------------------------------------------------------------------------------ unit pieces
def test_drop_directions_are_seeded_masked_subsets() -> None:
    corpus = make_corpus()
    mask = corpus.loss_mask > 0
    for unit, cfg in (
        ("doc", TrustConfig(directions=3, fraction=0.34, unit="doc", seed=1)),
        ("token", TrustConfig(directions=2, fraction=0.1, unit="token", seed=1)),
    ):
        a = tr.drop_directions(corpus, cfg)
        b = tr.drop_directions(corpus, cfg)
        assert len(a) == cfg.directions
        for va, vb in zip(a, b, strict=True):
            assert torch.equal(va, vb)
            assert set(va.unique().tolist()) <= {-1.0, 0.0}
            assert (va[~mask] == 0).all()
            if unit == "doc":  # whole documents: 2 of 6 rows
                rows = (va != 0).any(1)
                assert int(rows.sum()) == 2
                assert torch.equal(va[rows] != 0, mask[rows])
            else:
                assert int((va != 0).sum()) == round(0.1 * int(mask.sum()))
        assert not torch.equal(a[0], a[1])


def test_smoothness_against_known_functions() -> None:
    """Linear f: zero error at every step; quadratic f: error c * h, computed by hand."""
    s = {"f": torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)}
    v = torch.tensor([[-1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # predicted / h = -1.5
    base = {"f": 3.0}

    def linear(w: torch.Tensor) -> dict[str, float]:
        return {"f": 3.0 + float((s["f"] * (w - 1)).sum())}

    def quadratic(w: torch.Tensor) -> dict[str, float]:
        d = float((s["f"] * (w - 1)).sum())
        return {"f": 3.0 + d + 0.75 * d * d}  # error = 0.75 |d| = 0.75 * 1.5 h

    lin = tr.smoothness(linear, base, s, [v], [0.1, 1.0])
    assert lin["per_query"]["f"]["rel_err"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert lin["per_query"]["f"]["linear_extent"] == 1.0
    assert tr.smoothness_status(lin) == "reliable"
    quad = tr.smoothness(quadratic, base, s, [v], [0.01, 0.1, 1.0])
    r = quad["per_query"]["f"]
    assert r["rel_err"] == pytest.approx([0.01125, 0.1125, 1.125], rel=1e-9)
    assert r["linear_extent"] == 0.1
    assert r["ratio"] == pytest.approx([1 - 0.01125, 1 - 0.1125, 1 - 1.125], rel=1e-9)
    assert r["sign_agree"] == [1.0, 1.0, 0.0]
    assert tr.smoothness_status(quad) == "reliable"  # judged at the smallest step
    p0 = quad["points"][0]
    assert p0["predicted"] == pytest.approx(-0.01 * 1.5) and p0["h"] == 0.01


def test_sign_agreement_of_parameter_responses() -> None:
    g = torch.Generator().manual_seed(0)
    t0 = [torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g)]
    d = [torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g)]
    lin = [[a + h * b for a, b in zip(t0, d, strict=True)] for h in (0.01, 0.1)]
    assert tr.sign_agreement(t0, *lin) == pytest.approx(1.0)
    flip = [a - 0.2 * b for a, b in zip(t0, d, strict=True)]  # goes back past the start
    assert tr.sign_agreement(t0, lin[0], flip) == pytest.approx(-1.0)
    # hand-computed: movements |c - a| = (3, 1), signs agree on the first coordinate only
    a, b, c = [torch.tensor([0.0, 0.0])], [torch.tensor([1.0, 1.0])], [torch.tensor([3.0, -1.0])]
    assert tr.sign_agreement(a, b, c) == pytest.approx((3 - 1) / 4)
    assert tr.sign_agreement(a, a, a) == 1.0  # no movement at all


def test_verdict_is_the_worst_check_and_unchecked_without_checks() -> None:
    sm = {"step_sizes": [0.01, 0.1], "points": [], "per_query": {}}

    def smooth(errs: list[float]) -> dict:
        return {
            **sm,
            "per_query": {
                "f": {"rel_err": errs, "ratio": [1, 1], "sign_agree": [1, 1], "linear_extent": 0.0}
            },
        }

    prec_ok = {"steps": 2, "queries": {"f": {"step_rel_err": [0.3, 1e-4]}}}
    prec_bad = {"steps": 2, "queries": {"f": {"step_rel_err": [0.3, 0.5]}}}
    rep = tr.trust_report(smooth([0.05, 0.1]), prec_ok, 0.0, 4, 0.05)
    assert rep["verdict"] == "reliable"
    assert rep["checks"]["precision"]["per_step_error"] == 1e-4
    assert tr.trust_report(smooth([0.7, 0.9]), prec_ok, 0.0, 4, 0.05)["verdict"] == "doubtful"
    # the parameter sign agreement: high passes, middling is doubtful, low fails
    for agree, want in ((0.95, "reliable"), (0.85, "doubtful"), (0.5, "unreliable")):
        with_agree = {**smooth([0.05, 0.1]), "param_agreement": [agree]}
        assert tr.trust_report(with_agree, prec_ok, 0.0, 4, 0.05)["verdict"] == want, agree
    assert tr.trust_report(smooth([3.0, 9.0]), prec_ok, 0.0, 4, 0.05)["verdict"] == "unreliable"
    assert tr.trust_report(smooth([0.05, 0.1]), prec_bad, 0.0, 4, 0.05)["verdict"] == "unreliable"
    assert tr.trust_report(smooth([0.05, 0.1]), None, 0.03, 4, 0.05)["verdict"] == "doubtful"
    # a longer prefix (AdamW's warmup) is judged on its last two steps, the ones nearest the
    # steps that keep the run's precision: the replaced first steps' errors do not count
    long_ok = {"steps": 5, "queries": {"f": {"step_rel_err": [1.0, 0.9, 0.5, 1e-4, 2e-4]}}}
    long_bad = {"steps": 5, "queries": {"f": {"step_rel_err": [1.0, 0.9, 0.5, 1e-4, 0.4]}}}
    rep = tr.trust_report(smooth([0.05, 0.1]), long_ok, 0.0, 4, 0.05)
    assert rep["verdict"] == "reliable" and rep["checks"]["precision"]["per_step_error"] == 2e-4
    assert tr.trust_report(smooth([0.05, 0.1]), long_bad, 0.0, 4, 0.05)["verdict"] == "unreliable"
    # later steps sampled after the prefix count too: a good prefix end with a bad later step
    # (the small world's AdamW 1e-3 without warmup: 9e-4 at step 7, 0.075 later) is doubtful
    q_ok = {**long_ok["queries"]["f"], "total_rel_change": 0.1, "total_pearson": 1.0}
    smp = {"steps": [9, 20], "queries": {"f": {"step_rel_err": [1e-3, 0.075]}}}
    later = {"steps": 5, "queries": {"f": q_ok}, "samples": smp}
    rep = tr.trust_report(smooth([0.05, 0.1]), later, 0.0, 4, 0.05)
    assert rep["verdict"] == "doubtful" and rep["checks"]["precision"]["per_step_error"] == 0.075
    assert "Later steps 9, 20" in "\n".join(tr.trust_markdown(rep))
    # samples alone (a one-step prefix) are a precision check of their own
    one = {"steps": 1, "queries": {"f": {"step_rel_err": [0.9]}}}
    assert tr.precision_status(one) == (None, None)
    assert tr.precision_status({**one, "samples": smp}) == ("doubtful", 0.075)
    # no replays, no prefix, no smoothness: nothing was checked
    none = tr.trust_report(None, None, 0.0, 0, 0.05)
    assert none["verdict"] == tr.UNCHECKED and none["checks"]["drift"]["status"] is None
    assert "unreliable" in tr.trust_report(smooth([3.0, 9.0]), None, 0, 0, 0.05)["summary"]
    with pytest.raises(tr.UntrustworthyScoresError, match="DOUBTFUL"):
        tr.enforce(tr.trust_report(smooth([0.7, 0.9]), None, 0, 0, 0.05), TrustConfig(strict=True))
    tr.enforce(tr.trust_report(smooth([0.7, 0.9]), None, 0, 0, 0.05), TrustConfig())  # warns
    # the message names what failed: a precision failure points at the precision, not at lr
    with pytest.raises(tr.UntrustworthyScoresError, match="in fp32") as e:
        tr.enforce(
            tr.trust_report(smooth([0.05, 0.1]), prec_bad, 0, 4, 0.05), TrustConfig(strict=True)
        )
    assert "smoother trajectories" not in str(e.value)


def test_trust_config_validation() -> None:
    with pytest.raises(ValueError, match="step_sizes"):
        TrustConfig(step_sizes=[0.0, 1.0])
    with pytest.raises(ValueError, match="strict"):
        TrustConfig(enabled=False, strict=True)
    with pytest.raises(ValueError, match="unit"):
        TrustConfig(unit="row")
    with pytest.raises(ValueError, match="float64_prefix"):
        TrajectoryConfig(float64_prefix=-1)
    cfg = TrajectoryConfig(trust={"directions": 3})
    assert isinstance(cfg.trust, TrustConfig) and cfg.trust.directions == 3


# ------------------------------------------------------------------------------ in attribute
def test_smoothness_points_match_independent_retraining(model) -> None:
    """Each reported point: actual = train_trajectory with w = 1 + h v, predicted = h <s, v>."""
    corpus = make_corpus()
    cfg = cfg_for(
        "sgd",
        lr=0.05,
        steps=5,
        checkpointing="sqrt",
        trust={"directions": 2, "step_sizes": [0.1, 1.0], "fraction": 0.34},
    )
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    rep = art.meta["trust"]
    sm = rep["checks"]["smoothness"]
    assert len(sm["points"]) == 4 and rep["verdict"] in tr.VERDICTS
    dirs = tr.drop_directions(corpus, cfg.trust)
    f1 = art.meta["eval_losses"]["after"]["f"]
    s = art.scores["f"].double()
    for p in (sm["points"][1], sm["points"][2]):
        v = dirs[p["direction"]]
        trained = train_trajectory(model, corpus, cfg, token_weights=1 + p["h"] * v)
        with torch.no_grad():
            f = float(f_heldout(trained))
        assert p["actual"] == pytest.approx(f - f1, rel=1e-9, abs=1e-13)
        assert p["predicted"] == pytest.approx(p["h"] * float((s * v).sum()), rel=1e-9)
    # the run left nothing changed: scores equal a run without the trust report
    off = attribute(
        model, corpus, {"f": f_heldout}, cfg_for("sgd", lr=0.05, steps=5), progress=False
    )
    torch.testing.assert_close(off.scores["f"], art.scores["f"], rtol=0, atol=0)
    assert off.meta["trust"]["checks"]["smoothness"]["status"] is None


def test_inplace_model_ends_at_theta0_after_the_checks() -> None:
    corpus = make_corpus()
    m = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float32)
    ref = {n: p.detach().clone() for n, p in m.named_parameters()}
    cfg = cfg_for("adamw", dtype="float32", steps=4, trust={"directions": 1, "step_sizes": [1.0]})
    attribute(m, corpus, {"f": f_heldout}, cfg, progress=False, inplace=True)
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), ref[n]), n


def test_float64_prefix_fixes_adamw_fp32_scores(model) -> None:
    """AdamW eps 1e-8 in fp32: step 0 is ill-conditioned (the error is in g_0, not in the
    optimiser VJP); its float64 recomputation brings the fp32 scores to float64's."""
    corpus = make_corpus()
    kw = dict(steps=6, checkpointing="sqrt", storage="cpu", eps=1e-8)
    s64 = attribute(model, corpus, {"f": f_heldout}, cfg_for("adamw", **kw), progress=False)
    assert s64.scores["f"].dtype == torch.float64  # float64 runs keep float64 scores
    assert s64.meta["trust"]["checks"]["precision"]["status"] is None  # nothing to check
    errs, pears = {}, {}
    mask = corpus.loss_mask > 0
    for k in (0, 2):
        cfg = cfg_for("adamw", dtype="float32", float64_prefix=k, **kw)
        cfg.trust = TrustConfig(directions=1, step_sizes=[1.0])  # with the sampled later steps
        art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
        assert art.scores["f"].dtype == torch.float32
        a, b = art.scores["f"].double()[mask], s64.scores["f"][mask]
        errs[k] = float((a - b).norm() / b.norm())
        pears[k] = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    prec = art.meta["trust"]["checks"]["precision"]
    assert prec["steps"] == 2 and prec["status"] == "reliable"
    # the later steps 2..5 recomputed in float64 from the run's states: fp32-sized errors
    smp = prec["samples"]
    assert smp["steps"] == [2, 3, 4, 5]
    assert all(1e-12 < e < 1e-3 for e in smp["queries"]["f"]["step_rel_err"]), smp
    step_err = prec["queries"]["f"]["step_rel_err"]
    # measured: total error 5.3e-2 -> 1.2e-4, 1 - Pearson 3.5e-8 -> 2e-13; the optimiser
    # VJP in float64 alone leaves 5.3e-2 (docs/benchmarks.md, Issue 14)
    assert step_err[0] > 1e-2 and step_err[1] < 1e-3
    assert errs[0] > 1e-2 and errs[2] < 1e-3, errs
    # the issue's target, Pearson >= 0.99 against float64; here fp32's error is mostly a
    # scale error (Pearson 0.99999 before the prefix), so the distance to 1 is what shrinks
    assert pears[2] >= 0.99 and 1 - pears[2] < 1e-2 * max(1 - pears[0], 1e-10), pears
    assert prec["queries"]["f"]["total_rel_change"] == pytest.approx(errs[0], rel=0.1)


def test_sampled_steps_reproduce_the_run_in_float64(model, monkeypatch) -> None:
    """A float64 run with the prefix forced on: the later steps recomputed from the run's own
    states and adjoints reproduce the run's own steps to float64 rounding (a wrong state or
    adjoint, off by one step, would differ by O(1)), and so do the prefix steps."""
    from magic_unlearn.attribution import magic as magic_mod
    from magic_unlearn.attribution.prefix import sample_steps

    assert sample_steps(48, 8, 4) == [13, 23, 33, 43]
    assert sample_steps(6, 2, 4) == [2, 3, 4, 5] and sample_steps(10, 2, 1) == [6]
    assert sample_steps(8, 8, 4) == [] and sample_steps(48, 8, 0) == []
    corpus = make_corpus()
    monkeypatch.setattr(magic_mod, "prefix_steps", lambda cfg, dtype: 2)
    cfg = cfg_for("adamw", steps=7, checkpointing="sqrt", storage="cpu", eps=1e-8)
    cfg.trust = TrustConfig(directions=1, step_sizes=[1.0], precision_samples=3)
    art = attribute(model, corpus, {"f": f_heldout, "g": f_heldout}, cfg, progress=False)
    prec = art.meta["trust"]["checks"]["precision"]
    assert prec["samples"]["steps"] == sample_steps(7, 2, 3) == [2, 4, 6]
    for q in ("f", "g"):
        assert max(prec["samples"]["queries"][q]["step_rel_err"]) < 1e-10, prec["samples"]
        # the float64 trajectory is the run's own here: the same steps again
        assert max(prec["samples"]["queries"][q]["trajectory_rel_err"]) < 1e-10
        assert max(prec["queries"][q]["step_rel_err"]) < 1e-10
    with pytest.raises(ValueError, match="precision_samples"):
        TrustConfig(precision_samples=-1)
    # the samples belong to the trust report: none without it
    cfg.trust = TrustConfig(enabled=False)
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    assert "samples" not in art.meta["trust"]["checks"]["precision"]


def test_trajectory_samples_see_what_the_run_states_hide(model, monkeypatch) -> None:
    """AdamW lr 0.1, eps 1e-8, no warmup, fp32: each of the run's reverse steps is exact to
    fp32 rounding from its own states, yet its scores are ~190x off float64's (measured; 0.15
    at lr 0.03): the rounded trajectory has moved where the steps are ill-conditioned. Only the
    samples recomputed from the float64 trajectory's states see it, and the verdict follows."""
    from magic_unlearn.attribution import magic as magic_mod

    corpus = make_corpus()
    monkeypatch.setattr(magic_mod, "prefix_steps", lambda cfg, dtype: 2)
    kw = dict(steps=30, checkpointing="sqrt", storage="cpu", eps=1e-8, lr=0.1, warmup_steps=0)
    kw["schedule"] = "constant"
    s64 = attribute(model, corpus, {"f": f_heldout}, cfg_for("adamw", **kw), progress=False)
    cfg = cfg_for("adamw", dtype="float32", **kw)
    cfg.trust = TrustConfig(directions=1, step_sizes=[1.0], precision_samples=3)
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    mask = corpus.loss_mask > 0
    a, b = art.scores["f"].double()[mask], s64.scores["f"].double()[mask]
    assert float((a - b).norm() / b.norm()) > 1  # measured 189
    prec = art.meta["trust"]["checks"]["precision"]
    smp = prec["samples"]["queries"]["f"]
    assert max(smp["step_rel_err"]) < 1e-4, smp  # measured <= 3.6e-6
    assert max(smp["trajectory_rel_err"]) > tr.PRECISION_DOUBTFUL, smp  # measured 2.7
    assert prec["status"] == "unreliable"
    md = "\n".join(tr.trust_markdown(art.meta["trust"]))
    assert "from the float64 trajectory's" in md


def test_default_float64_prefix_covers_adamw_warmup(model) -> None:
    """AdamW stays ill-conditioned while v is small: the default prefix is the warmup, at least
    8 steps (here 8 of 12), which brings fp32 much closer to float64 than 2 steps do (measured
    here: relative error 6.7e-6 with 2, 6.3e-7 with 8; on the small world's filtered start, H200: Pearson 0.92-0.95
    with 2, 1.0000 with 8, docs/benchmarks.md)."""
    corpus = make_corpus()
    mask = corpus.loss_mask > 0
    kw = dict(steps=12, checkpointing="sqrt", storage="cpu", eps=1e-8, lr=1e-3)
    kw.update(schedule="warmup", warmup_steps=6)
    ref = attribute(model, corpus, {"f": f_heldout}, cfg_for("adamw", **kw), progress=False)
    assert ref.meta["semantics"]["float64_prefix_steps"] == 0  # a float64 run needs none
    b = ref.scores["f"][mask]
    errs = {}
    for k in (2, None):
        cfg = cfg_for("adamw", dtype="float32", float64_prefix=k, **kw)
        art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
        assert art.meta["semantics"]["float64_prefix_steps"] == (k or 8)
        a = art.scores["f"].double()[mask]
        errs[k] = float((a - b).norm() / b.norm())
    assert errs[None] < 0.3 * errs[2] and errs[2] < 1e-4, errs


def test_strict_refuses_and_writes_nothing(model, tmp_path: Path, monkeypatch) -> None:
    corpus = make_corpus()
    cfg = cfg_for("sgd", steps=4, trust={"directions": 1, "step_sizes": [1.0], "strict": True})
    out = tmp_path / "scores"
    with monkeypatch.context() as m:  # whatever the numbers, the check says "unreliable"
        m.setattr(tr, "smoothness_status", lambda sm: "unreliable")
        with pytest.raises(tr.UntrustworthyScoresError, match="UNRELIABLE.*refused"):
            attribute(model, corpus, {"f": f_heldout}, cfg, out=out, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # without strict: an artifact carrying the trust report and the semantics
    cfg.trust.strict = False
    art = attribute(model, corpus, {"f": f_heldout}, cfg, out=out, progress=False)
    loaded = ScoreArtifact.load(out)
    assert loaded.scores["f"].dtype == torch.float64  # a float64 run keeps float64 on disk
    torch.testing.assert_close(loaded.scores["f"], art.scores["f"], rtol=0, atol=0)
    assert loaded.meta["trust"]["verdict"] in tr.VERDICTS
    assert loaded.meta["trust"] == art.meta["trust"]
    sem = loaded.meta["semantics"]
    assert "absolute" in sem["scale"] and "fixed denominator" in sem["loss"]
    assert not math.isnan(
        loaded.meta["trust"]["checks"]["smoothness"]["per_query"]["f"]["rel_err"][0]
    )


def test_score_sums_mean_relative_for_adamw_absolute_for_sgd(model) -> None:
    """AdamW's scale invariance: up-weighting every token changes the run very little, so
    the scores (exact derivatives) sum to ~0 next to their absolute sum ("mean-relative");
    for SGD the sum is the (nonzero) effect of training more on everything."""
    corpus = make_corpus()
    cfg = cfg_for("adamw", eps=1e-10, weight_decay=0.0, steps=5)
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    s = art.scores["f"]
    assert abs(float(s.sum())) < 1e-3 * float(s.abs().sum())
    assert "mean-relative" in art.meta["semantics"]["scale"]
    # the sum of the scores is the derivative for all weights scaled together (w = c * 1)
    for c in (cfg, cfg_for("sgd", steps=5)):
        total = float(
            attribute(model, corpus, {"f": f_heldout}, c, progress=False).scores["f"].sum()
        )
        fs = []
        for scale in (1 + 1e-5, 1 - 1e-5):
            trained = train_trajectory(model, corpus, c, token_weights=torch.full((6, 12), scale))
            with torch.no_grad():
                fs.append(float(f_heldout(trained)))
        fd = (fs[0] - fs[1]) / 2e-5
        assert abs(total - fd) <= 1e-2 * abs(fd), (c.optimizer, total, fd)


@pytest.mark.slow
def test_tiny_world_verdicts(tmp_path: Path) -> None:
    """Acceptance (issue 14): on the tiny world, filtered start, fp32, default trust settings,
    SGD lr 0.3 is ``unreliable`` and AdamW 1e-4 with warmup ``reliable``."""
    from magic_unlearn.data import load_corpus, tokenize_corpus
    from magic_unlearn.evaluation.measure import Measurement
    from magic_unlearn.evaluation.tasks import load_task
    from magic_unlearn.models import load_model
    from magic_unlearn.pretrain import pretrain
    from magic_unlearn.world import World, build_world

    wdir = build_world("tiny", tmp_path / "world")
    mdir = pretrain(wdir, "filtered", progress=False)
    tok = World.load(wdir).tokenizer
    corpus = tokenize_corpus(load_corpus(f"{wdir}:forget"), tok, max_length=64)
    meas = {
        q: Measurement.from_task(tok, load_task(q, world=wdir), name=q)
        for q in ("hazard_qa", "general_qa")
    }
    common = dict(steps=24, batch_size=8, max_length=64, dtype="float32")
    verdicts = {}
    for name, kw in {
        "sgd0.3": dict(optimizer="sgd", lr=0.3),
        "adamw1e-4": dict(optimizer="adamw", lr=1e-4, schedule="warmup", warmup_steps=8),
    }.items():
        model = load_model(mdir, dtype="float32", device="cpu")
        art = attribute(model, corpus, meas, TrajectoryConfig(**common, **kw), progress=False)
        verdicts[name] = art.meta["trust"]["verdict"]
        assert art.meta["trust"]["checks"]["smoothness"]["status"] == verdicts[name]
    assert verdicts == {"sgd0.3": "unreliable", "adamw1e-4": "reliable"}, verdicts


def test_analyze_and_report_show_the_trust_report(model, tmp_path: Path) -> None:
    from magic_unlearn.analysis import analyze
    from magic_unlearn.pipeline.report.tables import trust_lines
    from test_attribution import f_heldout2

    corpus = make_corpus()
    cfg = cfg_for("sgd", steps=4, trust={"directions": 1, "step_sizes": [0.01, 1.0]})
    art = attribute(
        model, corpus, {"hazard_q": f_heldout, "general_q": f_heldout2}, cfg, progress=False
    )
    m = analyze(art, tmp_path / "an")
    (names, rep), *rest = m["trust"].items()
    assert not rest and names == "magic:hazard_q, magic:general_q"
    assert rep["verdict"] == art.meta["trust"]["verdict"]
    md = (tmp_path / "an" / "report.md").read_text()
    assert "## Can these scores be trusted?" in md and "error at h=0.01" in md
    assert rep["summary"] in md
    lines = trust_lines(m["trust"])
    assert (
        lines[0].startswith("- Trust of magic:hazard_q, magic:general_q")
        and rep["verdict"] in (lines[0])
    )
    assert trust_lines(None) == [] and trust_lines({}) == []


def test_cli_strict_exits_3_and_writes_nothing(word_tokenizer, tmp_path: Path, monkeypatch) -> None:
    import json

    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    mdir = tmp_path / "model"
    build_model(TINY, vocab_size=len(word_tokenizer)).save_pretrained(mdir)
    word_tokenizer.save_pretrained(mdir)
    corpus_file = tmp_path / "train.jsonl"
    texts = ["the red fox is in the host", "a blue cat and a fish", "the gene of the virus"]
    corpus_file.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    qfile = tmp_path / "qa.jsonl"
    q = {
        "question": "the red fox is in the",
        "answer": 0,
        "choices": ["host", "route", "gene", "cat"],
    }
    qfile.write_text(json.dumps(q) + "\n")
    args = ["attribute", "--model", str(mdir), "--corpus", str(corpus_file), "--query", str(qfile)]
    args += ["--set", "steps=2", "--set", "batch_size=2", "--set", "max_length=12"]
    args += ["--set", "trust.directions=1", "--set", "trust.step_sizes=[1.0]"]
    args += ["--device", "cpu", "--no-progress"]
    monkeypatch.setattr(tr, "smoothness_status", lambda sm: "unreliable")
    res = CliRunner().invoke(app, [*args, "--strict", "--out", str(tmp_path / "s")])
    assert res.exit_code == 3, res.output
    assert "UNRELIABLE" in res.output and "refused" in res.output
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.magic-work").exists()
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "trust: unreliable" in res.output and (tmp_path / "s").exists()


def test_float64_prefix_replaces_fp32_scores_and_only_checks_bf16() -> None:
    """The prefix replaces the first reverse steps of fp32 runs; float64 runs need none; in bf16
    runs it only measures precision (replacing made them much worse on the small world)."""
    from magic_unlearn.attribution.config import TrajectoryConfig
    from magic_unlearn.attribution.prefix import prefix_steps, replaces_scores

    assert prefix_steps(TrajectoryConfig(steps=5, float64_prefix=2), torch.float32) == 2
    assert prefix_steps(TrajectoryConfig(steps=1, float64_prefix=2), torch.float32) == 1
    assert prefix_steps(TrajectoryConfig(steps=5, float64_prefix=2), torch.float64) == 0
    # the default: AdamW's warmup within [8, 16], 2 for the other optimisers; capped by steps
    wu = dict(optimizer="adamw", schedule="warmup", steps=48)
    assert prefix_steps(TrajectoryConfig(**wu, warmup_steps=12), torch.float32) == 12
    assert prefix_steps(TrajectoryConfig(**wu, warmup_steps=1), torch.float32) == 8
    assert prefix_steps(TrajectoryConfig(**wu, warmup_steps=30), torch.float32) == 16
    assert prefix_steps(TrajectoryConfig(optimizer="adamw", steps=48), torch.float32) == 8
    assert prefix_steps(TrajectoryConfig(optimizer="sgd", steps=48), torch.float32) == 2
    assert prefix_steps(TrajectoryConfig(**{**wu, "steps": 5}, warmup_steps=8), torch.float32) == 5
    assert (
        prefix_steps(TrajectoryConfig(**wu, warmup_steps=8, float64_prefix=0), torch.float32) == 0
    )
    with pytest.raises(ValueError, match="float64_prefix"):
        TrajectoryConfig(float64_prefix=1.5)
    assert replaces_scores(TrajectoryConfig(precision="fp32"))
    assert not replaces_scores(TrajectoryConfig(precision="bf16"))
    assert not replaces_scores(TrajectoryConfig(precision="tf32"))
