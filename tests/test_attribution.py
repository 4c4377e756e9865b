"""MAGIC attribution: metagradients vs finite differences (float64), checkpoints, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magic_unlearn.attribution import (
    ArtifactMismatchError,
    LoraSpec,
    ScoreArtifact,
    TrajectoryConfig,
    TrajectoryDriftError,
    attribute,
    batch_order,
    grad_similarity,
    per_token_loss,
    random_scores,
    reverse,
    train_trajectory,
)
from magic_unlearn.config import load_config
from magic_unlearn.data import TokenizedCorpus, tokenize_corpus
from magic_unlearn.models import build_model

V, N, L = 40, 6, 12
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def make_corpus(seed: int = 0) -> TokenizedCorpus:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (N, L), generator=g)
    am = torch.ones(N, L, dtype=torch.long)
    am[1, 8:] = 0
    am[3, 5:] = 0
    ids[am == 0] = 0
    lm = am.double()
    lm[:, 0] = 0
    neg = torch.full((N, L), -1)
    return TokenizedCorpus(ids, am, lm.float(), neg, neg.clone(), [f"d{i}" for i in range(N)])


HELDOUT = torch.randint(4, V, (3, L), generator=torch.Generator().manual_seed(123))
HELDOUT2 = torch.randint(4, V, (2, L), generator=torch.Generator().manual_seed(7))


def f_heldout(model: torch.nn.Module) -> torch.Tensor:
    """Tiny measurement: mean NLL of a few fixed held-out sequences."""
    return per_token_loss(model, HELDOUT, torch.ones_like(HELDOUT))[:, 1:].mean()


def f_heldout2(model: torch.nn.Module) -> torch.Tensor:
    return per_token_loss(model, HELDOUT2, torch.ones_like(HELDOUT2))[:, 1:].mean()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def corpus() -> TokenizedCorpus:
    return make_corpus()


def cfg_for(opt: str, lora: bool = False, **kw) -> TrajectoryConfig:
    base = dict(
        optimizer=opt,
        lr={"adamw": 0.01}.get(opt, 0.05),
        steps=5,
        batch_size=2,
        dtype="float64",
        schedule="cosine",
        warmup_steps=2,
        weight_decay=0.1,
        eps=1e-4,
        checkpointing="every",
        storage="gpu",
        lora=LoraSpec(r=4, alpha=8, init="gaussian") if lora else None,
        # the trust report retrains the trajectory 6 times; tests/test_attribution_trust.py
        # covers it, the exactness tests here do not need it
        trust={"enabled": False},
    )
    base.update(kw)
    return TrajectoryConfig(**base)


def f_after(model, corpus, cfg, w) -> float:
    m = train_trajectory(model, corpus, cfg, token_weights=w)
    with torch.no_grad():
        return float(f_heldout(m))


def fd(model, corpus, cfg, mask: torch.Tensor, eps: float) -> float:
    """Central finite difference of f w.r.t. a weight perturbation along ``mask``."""
    w = torch.ones(N, L, dtype=torch.float64)
    return (
        f_after(model, corpus, cfg, w + eps * mask) - f_after(model, corpus, cfg, w - eps * mask)
    ) / (2 * eps)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adamw"])
def test_token_scores_match_finite_differences(model, corpus, opt, lora) -> None:
    cfg = cfg_for(opt, lora)
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    s = art.scores["f"].double()
    # float32 artifact; compare at float64 from a second run's raw scores is overkill: the
    # float32 rounding (1e-7 relative) is far below the 1e-4 tolerance
    order = batch_order(N, cfg)
    tokens = [(int(order[0, 0]), 3), (int(order[1, 1]), 7), (int(order[4, 0]), 2)]
    # FD step: AdamW's normalisation is sharply curved where |g| ~ eps, so use a smaller step
    eps = 1e-6 if opt == "adamw" else 1e-4
    for i, j in tokens:
        mask = torch.zeros(N, L, dtype=torch.float64)
        mask[i, j] = 1.0
        ref = fd(model, corpus, cfg, mask, eps)
        assert abs(ref) > 1e-7, "degenerate check: finite difference is ~0"
        rel = abs(float(s[i, j]) - ref) / abs(ref)
        assert rel <= 1e-4, (opt, lora, i, j, float(s[i, j]), ref, rel)


def test_sdpa_model_matches_finite_differences(corpus) -> None:
    """SDPA models: fused kernels in the trajectory, the math kernel for the double backward."""
    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64, attn_implementation="sdpa")
    cfg = cfg_for("sgd", checkpointing="sqrt")
    s = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False).scores["f"]
    i, j = int(batch_order(N, cfg)[1, 1]), 7
    mask = torch.zeros(N, L, dtype=torch.float64)
    mask[i, j] = 1.0
    ref = fd(model, corpus, cfg, mask, 1e-4)
    assert abs(float(s[i, j]) - ref) / abs(ref) <= 1e-4


def test_example_scores_sum_and_match_fd(model, corpus) -> None:
    cfg = cfg_for("momentum")
    tok = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    ex = attribute(model, corpus, {"f": f_heldout}, cfg, per="example", progress=False)
    assert ex.scores["f"].shape == (N,)
    torch.testing.assert_close(tok.example_scores("f"), ex.example_scores("f"))
    torch.testing.assert_close(tok.scores["f"].sum(1), ex.scores["f"])
    # a per-example weight scales every token of the document
    i = 1
    mask = torch.zeros(N, L, dtype=torch.float64)
    mask[i] = 1.0
    ref = fd(model, corpus, cfg, mask, 1e-4)
    assert abs(float(ex.scores["f"][i]) - ref) / abs(ref) <= 1e-4
    # padding and BOS never get a score
    assert (tok.scores["f"][corpus.loss_mask == 0] == 0).all()


def _raw(model, corpus, cfg, queries=None, **kw) -> dict[str, torch.Tensor]:
    queries = queries or {"f": f_heldout}
    art = attribute(model, corpus, queries, cfg, progress=False, **kw)
    return art.scores


@pytest.mark.parametrize(
    "mode,k,storage",
    [
        ("sqrt", None, "gpu"),
        ("sqrt", 3, "cpu"),
        ("kary", 2, "gpu"),
        ("kary", 3, "disk"),
        ("every", None, "disk"),
    ],
)
def test_checkpoint_modes_agree(model, corpus, mode, k, storage) -> None:
    ref = _raw(model, corpus, cfg_for("adamw", steps=7, checkpointing="every"))["f"]
    got = _raw(
        model,
        corpus,
        cfg_for("adamw", steps=7, checkpointing=mode, checkpoint_k=k, storage=storage),
    )["f"]
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_reverse_microbatches_agree(model, corpus, opt) -> None:
    ref = _raw(
        model,
        corpus,
        cfg_for(opt, batch_size=3, checkpointing="sqrt"),
        {"a": f_heldout, "b": f_heldout2},
    )
    got = _raw(
        model,
        corpus,
        cfg_for(opt, batch_size=3, checkpointing="sqrt", reverse_microbatch=2),
        {"a": f_heldout, "b": f_heldout2},
    )
    for q in ("a", "b"):
        torch.testing.assert_close(got[q], ref[q], rtol=1e-6, atol=1e-12)


def test_plan_auto_fits_the_budget_and_keeps_the_longest_dense_tail() -> None:
    import math

    from magic_unlearn.attribution.replay import plan_auto

    T, k = 100, 10
    assert plan_auto(T, k, 100) == list(range(100))  # everything fits: no replay
    assert plan_auto(T, k, 0) == list(range(0, 100, 10))  # plain sqrt
    for n_fit in (20, 30, 57, 99):
        tops = plan_auto(T, k, n_fit)
        m = len([t for t in range(T) if all(u in tops for u in range(t, T))])  # dense tail
        assert tops[0] == 0 and sorted(set(tops)) == tops
        assert math.ceil((T - m) / k) + max(m, k) <= n_fit  # fits
        # one more dense step would not
        assert m == T - 1 or math.ceil((T - m - 1) / k) + max(m + 1, k) > n_fit


@pytest.mark.parametrize("n_fit", [3, 5, 6, 7])
def test_dense_tail_checkpointing_matches_every(model, corpus, monkeypatch, n_fit) -> None:
    """checkpointing "auto" with a GPU budget of n_fit states (forced here on the CPU): the
    scores of "every", with fewer replayed steps the more states fit."""
    from magic_unlearn.attribution import replay

    ref = _raw(model, corpus, cfg_for("adamw", steps=7, checkpointing="every"))["f"]
    cfg = cfg_for("adamw", steps=7, checkpointing="auto", checkpoint_k=3, storage="cpu")
    tops = replay.plan_auto(7, 3, n_fit)
    monkeypatch.setattr(replay.Replay, "_plan", lambda self, sb, rb: tops)
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    torch.testing.assert_close(art.scores["f"], ref, rtol=1e-5, atol=1e-9)  # float64 stored
    replayed = art.meta["timings"]["replayed_steps"]
    gaps = [b - a - 1 for a, b in zip(tops, [*tops[1:], 7], strict=True)]
    assert replayed == sum(gaps)  # only the steps between checkpoints are recomputed
    if tops != list(range(0, 7, 3)):  # a dense tail fits the budget (else plain sqrt)
        assert art.meta["timings"]["max_stored_states"] <= n_fit


def test_plan_uses_the_states_every_process_agrees_on(model, corpus, monkeypatch) -> None:
    """The checkpoint plan follows ``Replay.agree_states_fit`` (a sharded run's minimum over
    ranks), not the local count (0 on a CPU)."""
    from magic_unlearn.attribution import replay

    seen = []
    monkeypatch.setattr(replay.Replay, "agree_states_fit", lambda self, n: seen.append(n) or 5)
    cfg = cfg_for("sgd", steps=7, checkpointing="auto", checkpoint_k=3, storage="cpu")
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    tops = replay.plan_auto(7, 3, 5)
    assert seen == [0] and tops != replay.plan_auto(7, 3, 0)
    gaps = [b - a - 1 for a, b in zip(tops, [*tops[1:], 7], strict=True)]
    assert art.meta["timings"]["replayed_steps"] == sum(gaps)


def test_auto_storage_and_checkpointing_on_a_cpu_are_sqrt_in_memory(model, corpus) -> None:
    cfg = cfg_for("adamw", steps=9, checkpointing="auto", storage="auto")
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    t = art.meta["timings"]
    assert t["gpu_states"] == 0 and t["host_states"] > 0
    assert t["replayed_steps"] == 9 - 3  # sqrt with k = 3: two steps per segment replayed
    ref = _raw(model, corpus, cfg_for("adamw", steps=9, checkpointing="every"))["f"]
    torch.testing.assert_close(art.scores["f"], ref, rtol=1e-5, atol=1e-9)  # float64 stored


def test_kary_stores_logarithmically_many_states(model, corpus) -> None:
    cfg = cfg_for("sgd", steps=16, checkpointing="kary", checkpoint_k=2)
    art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
    t = art.meta["timings"]
    # forward keeps 2 top states; each of log2(16) levels adds at most k - 1 more
    assert t["max_stored_states"] <= 2 + 4
    assert t["replayed_steps"] <= 16 * 4


def test_two_queries_equal_separate_runs(model, corpus) -> None:
    cfg = cfg_for("adamw", checkpointing="sqrt")
    both = _raw(model, corpus, cfg, {"a": f_heldout, "b": f_heldout2})
    a = _raw(model, corpus, cfg, {"a": f_heldout})["a"]
    b = _raw(model, corpus, cfg, {"b": f_heldout2})["b"]
    torch.testing.assert_close(both["a"], a, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(both["b"], b, rtol=1e-6, atol=1e-12)
    assert not torch.allclose(a, b)


class _Killed(RuntimeError):
    """Stands in for a killed process in the resume test."""


@pytest.mark.parametrize("mode", ["sqrt", "kary"])
def test_resume_after_interruption(model, corpus, tmp_path: Path, mode: str, monkeypatch) -> None:
    cfg = cfg_for("momentum", steps=9, checkpointing=mode, checkpoint_k=3, resume_every=2)
    full = _raw(model, corpus, cfg, {"a": f_heldout, "b": f_heldout2})
    out = tmp_path / "scores"
    done = {"n": 0}
    real = reverse.ReverseStep.__call__

    def killed_after_5(self, t, state):
        if done["n"] == 5:  # the run dies after 5 reverse steps
            raise _Killed(f"killed before reverse step {t}")
        done["n"] += 1
        real(self, t, state)

    with monkeypatch.context() as m:
        m.setattr(reverse.ReverseStep, "__call__", killed_after_5)
        with pytest.raises(_Killed):
            attribute(
                model, corpus, {"a": f_heldout, "b": f_heldout2}, cfg, out=out, progress=False
            )
    assert done["n"] == 5
    work = tmp_path / ".scores.magic-work"
    assert (work / "reverse_state" / "state.json").exists() and not out.exists()
    art = attribute(model, corpus, {"a": f_heldout, "b": f_heldout2}, cfg, out=out, progress=False)
    assert not work.exists() and out.exists()
    for q in ("a", "b"):
        torch.testing.assert_close(art.scores[q], full[q], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(ScoreArtifact.load(out).scores[q], full[q])


def test_resume_state_is_one_unit(model, corpus, tmp_path: Path, monkeypatch, caplog) -> None:
    """The reverse state is one checkpoint folder: a kill between its renames resumes from the
    intact previous state, and adjoints of one save beside the step of another (what two files
    renamed separately could leave) are refused by the content hash; scores stay exact."""
    import os

    from magic_unlearn import checkpoint as ck_mod

    cfg = cfg_for("momentum", steps=9, checkpointing="sqrt", checkpoint_k=3, resume_every=2)
    qs = {"a": f_heldout, "b": f_heldout2}
    full = _raw(model, corpus, cfg, qs)
    out = tmp_path / "scores"
    work = tmp_path / ".scores.magic-work"
    real = os.replace

    def killed_mid_save(a, b):  # the 2nd save dies after moving the 1st state aside
        real(a, b)
        if Path(b).name == "reverse_state.old":
            raise _Killed("killed between the renames of a reverse-state save")

    with monkeypatch.context() as m:
        m.setattr(ck_mod.os, "replace", killed_mid_save)
        m.setattr(ck_mod.shutil, "rmtree", lambda *a, **k: None)
        with pytest.raises(_Killed):
            attribute(model, corpus, qs, cfg, out=out, progress=False)
    assert (work / "reverse_state.old" / "state.json").exists()
    assert not (work / "reverse_state").exists()
    art = attribute(model, corpus, qs, cfg, out=out, progress=False)
    for q in qs:
        torch.testing.assert_close(art.scores[q], full[q], rtol=1e-6, atol=1e-12)

    # two saves' files mixed: step of the first, adjoints of the second
    done = {"n": 0}
    real_step = reverse.ReverseStep.__call__

    def killed_after_7(self, t, state):
        if done["n"] == 7:
            raise _Killed("killed")
        done["n"] += 1
        real_step(self, t, state)

    out2 = tmp_path / "scores2"
    work2 = tmp_path / ".scores2.magic-work"
    saved: list[bytes] = []
    real_save = ck_mod.save_checkpoint

    def keep_tensors(folder, *a, **k):  # noqa: ANN001, ANN202
        real_save(folder, *a, **k)
        saved.append((Path(folder) / "tensors.safetensors").read_bytes())

    with monkeypatch.context() as m:
        m.setattr(reverse.ReverseStep, "__call__", killed_after_7)
        m.setattr("magic_unlearn.attribution.resume.save_checkpoint", keep_tensors)
        with pytest.raises(_Killed):
            attribute(model, corpus, qs, cfg, out=out2, progress=False)
    assert len(saved) == 3  # after reverse steps 2, 4 and 6
    state = work2 / "reverse_state"
    (state / "tensors.safetensors").write_bytes(saved[1])  # older adjoints, newer step
    art = attribute(model, corpus, qs, cfg, out=out2, progress=False)
    for q in qs:  # (accepting the mixed state gives wrong scores here)
        torch.testing.assert_close(art.scores[q], full[q], rtol=1e-6, atol=1e-12)
    assert "do not match their recorded hashes" in caplog.text


def test_replay_drift_is_detected(model, corpus, monkeypatch) -> None:
    from magic_unlearn.attribution import optim

    cfg = cfg_for("sgd", steps=6, checkpointing="sqrt")
    calls = {"n": 0}
    real = optim.SGD.step

    def noisy(self, params, bufs, grads, t):
        real(self, params, bufs, grads, t)
        calls["n"] += 1
        if calls["n"] > cfg.steps:  # replays only: the recorded run stays clean
            with torch.no_grad():
                params[0].add_(1e-2)

    monkeypatch.setattr(optim.SGD, "step", noisy)
    with pytest.raises(TrajectoryDriftError, match="differs from the recorded trajectory"):
        attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)


def test_train_trajectory_weights_and_lora(model, corpus) -> None:
    cfg = cfg_for("adamw")
    a = train_trajectory(model, corpus, cfg)
    b = train_trajectory(model, corpus, cfg, token_weights=torch.ones(N, L))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=False):
        assert torch.equal(pa, pb)
    # the caller's model is untouched
    assert not torch.equal(next(a.parameters()), next(model.parameters()))
    lcfg = cfg_for("adamw", lora=True)
    m = train_trajectory(model, corpus, lcfg)
    base = dict(model.named_parameters())
    n_changed_base = 0
    for n, p in m.named_parameters():
        if "lora_" in n:
            continue
        key = n.replace("base_model.model.", "").replace(".base_layer", "")
        n_changed_base += int(not torch.equal(p, base[key]))
    assert n_changed_base == 0
    with pytest.raises(ValueError, match="token_weights shape"):
        train_trajectory(model, corpus, cfg, token_weights=torch.ones(N, L + 1))


def test_grad_similarity_matches_brute_force(model, corpus) -> None:
    cfg = cfg_for("sgd")
    art = grad_similarity(model, corpus, {"f": f_heldout}, cfg)
    trained = train_trajectory(model, corpus, cfg)
    params = list(trained.parameters())
    gf = torch.autograd.grad(f_heldout(trained), params)
    for i, j in [(0, 3), (2, 5), (4, 11)]:
        lt = per_token_loss(trained, corpus.input_ids[i : i + 1], corpus.attention_mask[i : i + 1])
        gi = torch.autograd.grad(lt[0, j], params)
        ref = -cfg.lr * sum((a * b).sum() for a, b in zip(gi, gf, strict=False))
        torch.testing.assert_close(
            art.scores["f"][i, j].double(), ref.detach(), rtol=1e-5, atol=1e-9
        )
    assert art.method == "grad_sim"


def test_random_scores_masked_and_seeded(corpus) -> None:
    a = random_scores(corpus, ["x", "y"], seed=3)
    b = random_scores(corpus, ["x", "y"], seed=3)
    torch.testing.assert_close(a.scores["x"], b.scores["x"])
    assert (a.scores["x"][corpus.loss_mask == 0] == 0).all()
    assert not torch.allclose(a.scores["x"], a.scores["y"])


def test_artifact_round_trip_and_mismatch(word_tokenizer, tmp_path: Path) -> None:
    docs = [
        {
            "id": "a",
            "text": "the red fox is in the host",
            "labels": [0, 1, 1, 0, 0, 0, 2],
            "fact_ids": [-1, 3, 3, -1, -1, -1, 4],
        },
        {"id": "b", "text": "a blue cat and a dog"},
    ]
    corp = tokenize_corpus(docs, word_tokenizer, max_length=12)
    model = build_model(TINY, vocab_size=len(word_tokenizer), dtype=torch.float64)
    cfg = cfg_for("sgd", steps=2, batch_size=1)
    art = attribute(
        model,
        corp,
        {"q": f_heldout},
        cfg,
        progress=False,
        tokenizer=word_tokenizer,
        query_info={"q": {"task": "heldout", "fmt": "cloze", "n_questions": 3, "hash": "abc"}},
        out=tmp_path / "art",
    )
    back = ScoreArtifact.load(tmp_path / "art")
    torch.testing.assert_close(back.scores["q"], art.scores["q"])
    assert back.meta["queries"]["q"]["task"] == "heldout"
    assert back.meta["per"] == "token" and back.meta["method"] == "magic"
    assert set(back.meta["eval_losses"]) == {"before", "after"}
    assert back.meta["trajectory"]["optimizer"] == "sgd"
    assert back.meta["tokenizer"]["vocab_hash"] is not None
    assert back.meta["doc_ids"] == ["a", "b"]
    rc = back.corpus
    assert torch.equal(rc.input_ids, corp.input_ids) and torch.equal(rc.labels, corp.labels)
    assert torch.equal(rc.fact_ids, corp.fact_ids)
    back.check_compatible(corpus=corp, tokenizer=word_tokenizer)
    torch.testing.assert_close(back.example_scores("q"), art.scores["q"].sum(1))
    assert (tmp_path / "art" / "manifest.json").exists()

    other = tokenize_corpus(list(reversed(docs)), word_tokenizer, max_length=12)
    with pytest.raises(ArtifactMismatchError, match="corpus hash mismatch"):
        back.check_compatible(corpus=other)
    with pytest.raises(ArtifactMismatchError, match="corpus shape mismatch"):
        back.check_compatible(corpus=tokenize_corpus(docs, word_tokenizer, max_length=10))
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<unk>": 1, "x": 2}, unk_token="<unk>"))
    other_tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>")
    with pytest.raises(ArtifactMismatchError, match="tokenizer mismatch"):
        back.check_compatible(tokenizer=other_tok)
    with pytest.raises(KeyError, match="not in this artifact"):
        back.example_scores("nope")
    with pytest.raises(FileExistsError):
        attribute(model, corp, {"q": f_heldout}, cfg, progress=False, out=tmp_path / "art")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ScoreArtifact.load(tmp_path / "missing")


def test_config_yaml_and_validation(tmp_path: Path) -> None:
    p = tmp_path / "traj.yaml"
    p.write_text("optimizer: adamw\nlr: 1e-4\nlora:\n  r: 4\n  target_modules: [query_key_value]\n")
    cfg = load_config(TrajectoryConfig, p, ["steps=7", "checkpointing=kary"])
    assert cfg.optimizer == "adamw" and cfg.lora.r == 4 and cfg.steps == 7
    assert cfg.segment_k == 2
    assert TrajectoryConfig(steps=100).segment_k == 10
    with pytest.raises(ValueError, match="TrajectoryConfig.optimizer"):
        TrajectoryConfig(optimizer="lion")
    with pytest.raises(ValueError, match="checkpointing"):
        TrajectoryConfig(checkpointing="all")


def test_mcq_measurement_matches_finite_differences(word_tokenizer) -> None:
    """MAGIC through EVAL's differentiable correct-answer loss (cloze format)."""
    ev = pytest.importorskip("magic_unlearn.evaluation")
    qs = [
        {
            "question": "the red fox is in the",
            "choices": ["host", "route", "tissue", "gene"],
            "answer": 0,
            "subject": "bio",
        },
        {
            "question": "a blue cat and a",
            "choices": ["dog", "bird", "fish", "virus"],
            "answer": 2,
            "subject": "bio",
        },
    ]
    meas = ev.Measurement.from_task(word_tokenizer, qs, fmt="cloze", name="qa")
    docs = [
        {"id": str(i), "text": t}
        for i, t in enumerate(
            [
                "the red fox is in the host",
                "a blue cat and a fish",
                "the gene of the virus is red",
                "a dog with a bird",
                "alpha beta gamma delta",
            ]
        )
    ]
    corp = tokenize_corpus(docs, word_tokenizer, max_length=10)
    model = build_model(TINY, vocab_size=len(word_tokenizer), dtype=torch.float64)
    cfg = cfg_for("momentum", steps=4, batch_size=2)
    art = attribute(model, corp, {"qa": meas}, cfg, progress=False)
    assert art.meta["queries"]["qa"]["n_questions"] == 2
    assert art.meta["queries"]["qa"]["fmt"] == "cloze"
    s = art.scores["qa"].double()
    order = batch_order(len(corp), cfg)
    for i, j in [(int(order[0, 0]), 2), (int(order[1, 1]), 3)]:
        vals = []
        for sign in (1.0, -1.0):
            w = torch.ones(corp.input_ids.shape, dtype=torch.float64)
            w[i, j] += sign * 1e-4
            m = train_trajectory(model, corp, cfg, token_weights=w)
            with torch.no_grad():
                vals.append(float(meas(m)))
        ref = (vals[0] - vals[1]) / 2e-4
        assert abs(float(s[i, j]) - ref) / abs(ref) <= 1e-4, (float(s[i, j]), ref)


def test_cli_attribute_end_to_end(word_tokenizer, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    mdir = tmp_path / "model"
    build_model(TINY, vocab_size=len(word_tokenizer)).save_pretrained(mdir)
    word_tokenizer.save_pretrained(mdir)
    corpus_file = tmp_path / "train.jsonl"
    corpus_file.write_text(
        "\n".join(
            json.dumps({"id": f"d{i}", "text": t})
            for i, t in enumerate(
                ["the red fox is in the host", "a blue cat and a fish", "the gene of the virus"]
            )
        )
        + "\n"
    )
    qfile = tmp_path / "qa.jsonl"
    qfile.write_text(
        json.dumps(
            {
                "question": "the red fox is in the",
                "answer": 0,
                "choices": ["host", "route", "tissue", "gene"],
                "subject": "bio",
            }
        )
        + "\n"
    )
    cfg = tmp_path / "traj.yaml"
    cfg.write_text("optimizer: adamw\nlr: 0.001\nsteps: 3\nbatch_size: 2\nmax_length: 12\n")
    runner = CliRunner()
    for method in ("magic", "grad_sim", "random"):
        out = tmp_path / f"scores_{method}"
        res = runner.invoke(
            app,
            [
                "attribute",
                "--model",
                str(mdir),
                "--corpus",
                str(corpus_file),
                "--query",
                str(qfile),
                "--config",
                str(cfg),
                "--method",
                method,
                "--set",
                "checkpointing=kary",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(out),
            ],
        )
        assert res.exit_code == 0, res.output
        art = ScoreArtifact.load(out)
        assert art.method == method and art.scores[str(qfile)].shape == (3, 12)
        art.check_compatible(tokenizer=word_tokenizer)
    assert (tmp_path / "scores_magic" / "config.yaml").exists()
    res = runner.invoke(
        app,
        [
            "attribute",
            "--model",
            str(mdir),
            "--corpus",
            str(corpus_file),
            "--query",
            str(qfile),
            "--set",
            "optimizer=lion",
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert res.exit_code == 2 and "optimizer" in res.output


@pytest.mark.gpu
def test_gpu_storage_and_modes_agree() -> None:
    """On CUDA: async pinned-CPU storage with prefetch = GPU storage = disk, for every mode."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    model = build_model("neox-tiny", vocab_size=V, seed=0, attn_implementation="sdpa").to(dev)
    corpus = make_corpus()
    q = {
        "f": lambda m: per_token_loss(m, HELDOUT.to(dev), torch.ones_like(HELDOUT).to(dev))[
            :, 1:
        ].mean()
    }
    ref = None
    for mode, k, storage in [
        ("every", None, "gpu"),
        ("every", None, "cpu"),
        ("sqrt", 3, "cpu"),
        ("kary", 2, "cpu"),
        ("kary", 3, "disk"),
        ("sqrt", None, "gpu"),
        ("auto", None, "auto"),
        ("sqrt", 3, "auto"),
    ]:
        cfg = TrajectoryConfig(
            optimizer="adamw",
            lr=1e-3,
            steps=9,
            batch_size=2,
            checkpointing=mode,
            checkpoint_k=k,
            storage=storage,
        )
        s = attribute(model, corpus, q, cfg, progress=False).scores["f"]
        if ref is None:
            ref = s
            assert ref.abs().max() > 0
        torch.testing.assert_close(s, ref, rtol=1e-4, atol=1e-7)
    # bf16 autocast (trajectory and reverse pass) stays close to fp32 for SGD; AdamW's
    # normalisation amplifies bf16 gradient noise, so it is not compared here
    fp32 = TrajectoryConfig(optimizer="sgd", lr=0.05, steps=9, batch_size=2)
    bf16 = TrajectoryConfig(
        optimizer="sgd", lr=0.05, steps=9, batch_size=2, precision="bf16", reverse_microbatch=1
    )
    a32 = attribute(model, corpus, q, fp32, progress=False)
    a16 = attribute(model, corpus, q, bf16, progress=False)
    s32, s16 = a32.scores["f"], a16.scores["f"]
    corr = torch.corrcoef(torch.stack([s16.flatten(), s32.flatten()]))[0, 1]
    rel = (s16 - s32).norm() / s32.norm()
    print(
        f"bf16 vs fp32 SGD scores: corr {float(corr):.4f}, rel L2 {float(rel):.3g}, replay "
        f"drift fp32 {a32.meta['timings']['max_replay_drift']:.3g} bf16 "
        f"{a16.meta['timings']['max_replay_drift']:.3g}"
    )
    assert corr > 0.9, float(corr)


@pytest.mark.gpu
def test_gpu_auto_storage_keeps_states_on_the_gpu_and_spills_to_the_host(monkeypatch) -> None:
    """storage/checkpointing "auto": the whole run fits on the card (no replay, no host
    memory); with a budget of 2 states the rest goes to pinned host memory, same scores."""
    from magic_unlearn.attribution import replay

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    dev = torch.device("cuda")
    model = build_model("neox-tiny", vocab_size=V, seed=0, attn_implementation="sdpa").to(dev)
    corpus = make_corpus()
    q = {"f": lambda m: per_token_loss(m, HELDOUT.to(dev), None)[:, 1:].mean()}
    cfg = TrajectoryConfig(optimizer="momentum", lr=0.05, steps=9, batch_size=2)
    assert (cfg.storage, cfg.checkpointing) == ("auto", "auto")
    a = attribute(model, corpus, q, cfg, progress=False)
    t = a.meta["timings"]
    assert t["gpu_states"] == 9 and t["host_states"] == 0 and t["replayed_steps"] == 0, t
    state_bytes = int(t["state_gb"] * 2**30)
    monkeypatch.setattr(replay, "gpu_state_budget", lambda dev, sb, rb=0: 2 * state_bytes + 16)
    b = attribute(model, corpus, q, cfg, progress=False)
    t = b.meta["timings"]
    assert t["gpu_states"] <= 2 and t["host_states"] > 0 and t["replayed_steps"] > 0, t
    torch.testing.assert_close(b.scores["f"], a.scores["f"], rtol=1e-5, atol=1e-8)


@pytest.mark.gpu
def test_gpu_fp32_fused_nodes_match_float64_and_plain_ops(monkeypatch) -> None:
    """fp32 on a GPU runs the fused nodes (memory-efficient attention kernels, LayerNorm and
    GELU nodes, compiled double backwards, precompiled during the forward): its scores match
    the float64 engine (plain ops, the reference) and the fp32 engine on plain ops."""
    import warnings

    from magic_unlearn.attribution import attention, compiled, layers
    from magic_unlearn.attribution.compiled import CompileFallbackWarning

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    # head size 32: the memory-efficient kernels' fp32 path
    model = build_model("neox-tiny", vocab_size=V, seed=0, attn_implementation="sdpa").to(dev)
    corpus = make_corpus()
    q = {"f": lambda m: per_token_loss(m, HELDOUT.to(dev), None)[:, 1:].mean()}
    used = {"attn": 0, "ln": 0}
    orig_attn, orig_ln = attention._Attn.apply, layers._LayerNorm.apply

    def counted(kind, fn):
        def inner(*a):
            used[kind] += 1
            return fn(*a)

        return inner

    monkeypatch.setattr(attention._Attn, "apply", counted("attn", orig_attn))
    monkeypatch.setattr(layers._LayerNorm, "apply", counted("ln", orig_ln))
    for kw, tol in [
        (dict(optimizer="sgd", lr=0.05), 1e-4),
        (dict(optimizer="adamw", lr=1e-3, eps=1e-4), 1e-3),
    ]:
        cfg = TrajectoryConfig(steps=9, batch_size=2, dtype="float32", **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            fused = attribute(model, corpus, q, cfg, progress=False)
        assert used["attn"] > 0 and used["ln"] > 0
        assert fused.meta["timings"].get("precompiled", 0) >= 3
        ref = attribute(
            model,
            corpus,
            q,
            TrajectoryConfig(**{**cfg.__dict__, "dtype": "float64"}),
            progress=False,
        ).scores["f"]
        with monkeypatch.context() as m:
            m.setattr(compiled, "fused_nodes_apply", lambda dev, dt: False)
            plain = attribute(model, corpus, q, cfg, progress=False).scores["f"]
        s = fused.scores["f"]
        for other in (ref, plain):
            rel = float((s.double() - other.double()).norm() / other.double().norm())
            assert rel < tol, (kw, rel)


def test_dropping_the_mask_of_right_padded_rows_is_exact(model, corpus, monkeypatch) -> None:
    """Right-padded rows run without attention_mask; forcing the mask gives the same scores."""
    from magic_unlearn.attribution import trajectory

    assert trajectory.right_padded(corpus)
    left = TokenizedCorpus(
        corpus.input_ids.flip(1),
        corpus.attention_mask.flip(1),
        corpus.loss_mask.flip(1),
        corpus.labels,
        corpus.fact_ids,
        corpus.doc_ids,
    )
    assert not trajectory.right_padded(left)
    cfg = cfg_for("adamw", steps=3)
    fast = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False).scores["f"]
    monkeypatch.setattr(trajectory, "right_padded", lambda c: False)
    masked = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False).scores["f"]
    assert fast.abs().max() > 0
    torch.testing.assert_close(fast, masked, rtol=1e-9, atol=1e-13)


@pytest.mark.gpu
def test_gpu_cuda_graphs_equal_eager() -> None:
    """CUDA-graphed training and reverse steps give the eager engine's scores (fp32, no TF32)."""
    import warnings

    from magic_unlearn.attribution.attention import CompileFallbackWarning
    from magic_unlearn.attribution.graphs import GraphCaptureWarning

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    model = build_model("neox-tiny", vocab_size=V, seed=0, attn_implementation="sdpa").to(dev)
    corpus = make_corpus()
    q = {
        "f": lambda m: per_token_loss(m, HELDOUT.to(dev), None)[:, 1:].mean(),
        "g": lambda m: per_token_loss(m, HELDOUT2.to(dev), None)[:, 1:].mean(),
    }
    for kw in [
        dict(optimizer="sgd", lr=0.05),
        dict(optimizer="adamw", lr=1e-3, reverse_microbatch=1),
        dict(optimizer="momentum", lr=0.05, precision="bf16"),
    ]:
        cfg = TrajectoryConfig(steps=9, batch_size=2, checkpointing="sqrt", storage="cpu", **kw)
        with warnings.catch_warnings():
            # the engine's own fallbacks fail the test; unrelated warnings (e.g. deprecations
            # from lazily imported torch modules) do not
            warnings.simplefilter("error", GraphCaptureWarning)
            warnings.simplefilter("error", CompileFallbackWarning)
            graphed = attribute(model, corpus, q, cfg, progress=False).scores
        eager = attribute(
            model,
            corpus,
            q,
            TrajectoryConfig(**{**cfg.__dict__, "cuda_graphs": False}),
            progress=False,
        ).scores
        for k in q:
            assert eager[k].abs().max() > 0
            tol = (
                dict(rtol=2e-2, atol=1e-4)
                if kw.get("precision") == "bf16"
                else dict(rtol=1e-4, atol=1e-7)
            )
            torch.testing.assert_close(graphed[k], eager[k], **tol)


def test_token_nll_matches_cross_entropy_to_second_order() -> None:
    """The fused per-token NLL: values = F.cross_entropy, and first and second derivatives
    pass torch's finite-difference gradcheck / gradgradcheck (float64)."""
    import torch.nn.functional as F

    from magic_unlearn.data import TokenNLL

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 9, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 9, (6,), generator=g)
    torch.testing.assert_close(TokenNLL.apply(z, y), F.cross_entropy(z, y, reduction="none"))
    assert torch.autograd.gradcheck(lambda x: TokenNLL.apply(x, y), (z,))
    assert torch.autograd.gradgradcheck(lambda x: TokenNLL.apply(x, y), (z,))


def test_per_token_loss_equals_reference(model) -> None:
    import torch.nn.functional as F

    ids = torch.randint(4, V, (3, L), generator=torch.Generator().manual_seed(5))
    logits = model(input_ids=ids).logits[:, :-1]
    ref = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none")
    got = per_token_loss(model, ids, None)
    assert (got[:, 0] == 0).all()
    torch.testing.assert_close(got[:, 1:].reshape(-1), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("opt,tol", [("sgd", 1e-5), ("momentum", 1e-5), ("adamw", 1e-3)])
def test_fp32_scores_match_float64(model, opt, tol) -> None:
    """fp32 trajectories give the float64 scores to fp32 accuracy (measured: 2e-7 for SGD and
    momentum, 7e-5 for AdamW with eps 1e-4).

    AdamW with eps 1e-8 read 3e-2 on this model before the float64 prefix: its first step,
    g / (|g| + eps), is ill-conditioned in fp32 for gradients near eps; with the first two
    reverse steps in float64 (the default) it reads 2e-5
    (test_attribution_trust.py::test_float64_prefix_fixes_adamw_fp32_scores).
    """
    corpus = make_corpus()
    cfg = cfg_for(opt, steps=6, batch_size=2, checkpointing="sqrt", storage="cpu")
    s64 = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False).scores["f"]
    s32 = attribute(
        model,
        corpus,
        {"f": f_heldout},
        TrajectoryConfig(**{**cfg.__dict__, "dtype": "float32"}),
        progress=False,
    ).scores["f"]
    rel = float((s32.double() - s64.double()).norm() / s64.double().norm())
    assert s64.abs().max() > 0 and rel < tol, rel


def test_attribute_runs_float32_matmuls_without_tf32(model, corpus) -> None:
    """A caller's TF32 (e.g. pretraining earlier in the same process) must not reach MAGIC:
    fp32 AdamW scores amplify TF32's ~1e-3 matmul error at the first reverse steps."""
    seen: list[bool] = []

    def f(m: torch.nn.Module) -> torch.Tensor:
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return f_heldout(m)

    flag = torch.backends.cuda.matmul
    prev = flag.allow_tf32
    try:
        flag.allow_tf32 = True
        attribute(model, corpus, {"q": f}, cfg_for("sgd"), progress=False)
        assert seen and not any(seen)  # the measurement ran before and after training
        assert flag.allow_tf32 is True  # the caller's setting is back
        # precision "tf32" asks for them, and the caller's "off" comes back too
        flag.allow_tf32 = False
        seen.clear()
        cfg = TrajectoryConfig(**{**cfg_for("sgd").__dict__, "precision": "tf32"})
        art = attribute(model, corpus, {"q": f}, cfg, progress=False)
        assert seen and all(seen) and flag.allow_tf32 is False
        assert art.meta["trajectory"]["precision"] == "tf32"
    finally:
        flag.allow_tf32 = prev


def test_train_trajectory_sets_the_matmul_precision_of_its_config(model, corpus) -> None:
    """Retraining (LDS, finite differences) runs the trajectory's matmuls, not the caller's."""
    from magic_unlearn.attribution.trajectory import trajectory_matmuls

    seen: list[bool] = []

    @trajectory_matmuls
    def probe(x: int, cfg: TrajectoryConfig) -> int:
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return x

    flag = torch.backends.cuda.matmul
    prev = flag.allow_tf32
    try:
        flag.allow_tf32 = True
        assert probe(1, cfg_for("sgd")) == 1
        assert probe(2, cfg=TrajectoryConfig(**{**cfg_for("sgd").__dict__, "precision": "tf32"}))
        assert seen == [False, True] and flag.allow_tf32 is True
        assert getattr(train_trajectory, "__wrapped__", None) is not None  # decorated
    finally:
        flag.allow_tf32 = prev
