"""Pretraining: artifact, cache, resume == uninterrupted, packing, CLI; slow: accuracy targets."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from magic_unlearn.pretrain import PretrainConfig, default_out, lr_at, pack_rows, pretrain
from magic_unlearn.world import World, build_world

MICRO_WORLD = dict(
    n_hazard_agents=4,
    n_transfer_agents=1,
    hazard_attributes=3,
    entities_per_subject=3,
    general_subjects=["geography", "general_biology"],
    general_attributes=2,
    pretrain_paraphrases=2,
    pretrain_qa=1,
)
MICRO_MODEL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


def micro_cfg(**kw) -> PretrainConfig:
    base = dict(
        model_overrides=MICRO_MODEL,
        steps=8,
        batch_size=8,
        seq_len=48,
        warmup_steps=2,
        checkpoint_every=3,
        dtype="float64",
        eval_batch_size=32,
    )
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(MICRO_WORLD, tmp_path_factory.mktemp("w") / "world")


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def private_cloze_acc(model, tok, questions) -> float:
    """Independent cloze scorer: argmax over sum log p(" choice" | [BOS] Question: ..\\nAnswer:)."""
    correct = 0
    for q in questions:
        ctx = [tok.bos_token_id] + tok(
            f"Question: {q['question']}\nAnswer:", add_special_tokens=False
        ).input_ids
        scores = []
        for c in q["choices"]:
            cont = tok(" " + c, add_special_tokens=False).input_ids
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        correct += int(max(range(4), key=lambda i: scores[i]) == q["answer"])
    return correct / len(questions)


def test_artifact_cache_and_metrics(world_dir: Path, monkeypatch) -> None:
    from magic_unlearn.models import load_model, load_tokenizer

    cfg = micro_cfg()
    out = pretrain(world_dir, "base", cfg, progress=False)
    assert out == default_out(world_dir, "base", cfg)
    assert out.parent == world_dir / "models" and out.name.startswith("base-")
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.json",
        "config.yaml",
        "manifest.json",
        "loss_history.json",
    ):
        assert (out / f).exists(), f
    assert not (out.parent / f"{out.name}.partial").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete"
    assert man["inputs"]["world_hash"] == World.load(world_dir).hash
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 8 and len(json.loads((out / "loss_history.json").read_text())) == 8
    model = load_model(out, dtype="float64")
    tok = load_tokenizer(out)
    w = World.load(world_dir)
    for name in ("hazard_qa", "general_qa"):
        # the shared evaluator's number matches an independent scorer on the saved model
        assert m[name]["acc"] == pytest.approx(private_cloze_acc(model, tok, w.questions(name)))
    # cache hit: same inputs return at once, without building a model
    import magic_unlearn.pretrain as P

    monkeypatch.setattr(P, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    t = time.perf_counter()
    assert pretrain(world_dir, "base", cfg, progress=False) == out
    assert time.perf_counter() - t < 5
    # a config change, or the other variant, is a different artifact
    assert default_out(world_dir, "base", micro_cfg(lr=1e-3)) != out
    assert default_out(world_dir, "filtered", cfg) != out
    # checkpointing cadence does not change the key; the CPU thread count does (it changes
    # the weights), and threads=0 means torch's current count
    assert default_out(world_dir, "base", micro_cfg(checkpoint_every=5)) == out
    assert default_out(world_dir, "base", micro_cfg(threads=2)) != out
    import torch as T

    before = T.get_num_threads()
    try:
        T.set_num_threads(1)
        assert default_out(world_dir, "base", micro_cfg(threads=0)) == out
    finally:
        T.set_num_threads(before)


def test_resume_equals_uninterrupted(world_dir: Path, tmp_path: Path) -> None:
    cfg = micro_cfg()
    full = pretrain(world_dir, "filtered", cfg, out=tmp_path / "full", progress=False)
    part = pretrain(world_dir, "filtered", cfg, out=tmp_path / "res", progress=False, max_steps=5)
    assert part.name == "res.partial" and (part / "ckpt" / "optimizer.pt").exists()
    assert json.loads((part / "ckpt" / "state.json").read_text())["step"] == 5
    res = pretrain(world_dir, "filtered", cfg, out=tmp_path / "res", progress=False)
    assert json.loads((res / "metrics.json").read_text())["resumed_from_step"] == 5
    a, b = _state(full), _state(res)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((full / "loss_history.json").read_text()) == json.loads(
        (res / "loss_history.json").read_text()
    )
    m = json.loads((res / "metrics.json").read_text())
    assert m["corpus"] == "pretrain_filtered"
    # a checkpoint of another config is never resumed into this one
    pretrain(world_dir, "filtered", cfg, out=tmp_path / "x", progress=False, max_steps=2)
    with pytest.raises(ValueError, match="different run"):
        pretrain(world_dir, "filtered", micro_cfg(lr=1e-2), out=tmp_path / "x", progress=False)


def test_training_lowers_loss(world_dir: Path, tmp_path: Path) -> None:
    import torch as T

    before = T.get_num_threads()
    cfg = micro_cfg(steps=40, lr=3e-3, dtype="float32", checkpoint_every=0, threads=1)
    out = pretrain(world_dir, "base", cfg, out=tmp_path / "m", progress=False)
    h = json.loads((out / "loss_history.json").read_text())
    assert sum(h[-5:]) / 5 < 0.7 * sum(h[:5]) / 5
    m = json.loads((out / "metrics.json").read_text())
    assert m["torch_threads"] == 1 and T.get_num_threads() == before


def test_pack_rows_keeps_every_document_whole() -> None:
    # docs [BOS] t.. [EOS] of lengths 5, 4, 6, 3 padded to 8; pad=0, bos=1, eos=2
    docs = [[1, 10, 11, 12, 2], [1, 20, 2, 0], [1, 30, 31, 32, 33, 2], [1, 40, 2]]
    docs[1] = [1, 20, 21, 2]
    ids = torch.zeros((4, 8), dtype=torch.long)
    am = torch.zeros((4, 8), dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = torch.tensor(d)
        am[i, : len(d)] = 1
    pid, pam, plm = pack_rows(ids, am, 10, bos_id=1, pad_id=0)
    # best fit: 6+4 and 5+3 fill two rows (in-order greedy would need three)
    assert pid.shape == (2, 10) and int(pam.sum()) == 18
    got = []
    for r, m in zip(pid, pam, strict=True):
        toks = [int(t) for t, x in zip(r, m, strict=True) if x]
        while toks:  # split the row back into [BOS] .. [EOS] documents
            e = toks.index(2)
            got.append(toks[: e + 1])
            toks = toks[e + 1 :]
    assert sorted(got) == sorted(docs)
    assert (pid[pam == 0] == 0).all()
    assert (plm[pid == 1] == 0).all() and (plm[pam == 0] == 0).all()
    assert plm.sum() == 18 - 4  # every real token but the four BOS


def test_lm_loss_matches_hf_labels_loss() -> None:
    from magic_unlearn.models import build_model
    from magic_unlearn.pretrain import lm_loss

    model = build_model(MICRO_MODEL, vocab_size=50, dtype="float64")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 50, (3, 12), generator=g)
    am = torch.ones_like(ids)
    am[1, 9:] = 0
    lm = am.clone().double()
    lm[:, 0] = 0
    lm[2, 5] = 0  # e.g. a BOS inside a packed row
    labels = ids.clone()
    labels[lm == 0] = -100  # HF shifts labels itself: label j is predicted at position j-1
    got = lm_loss(model, ids, am, lm).item()
    # HF computes its loss in float32
    ref = model(input_ids=ids, attention_mask=am, labels=labels).loss
    assert got == pytest.approx(float(ref), rel=1e-6)
    # explicit float64 loop
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits, -1)
    terms = [
        -float(logp[b, j - 1, ids[b, j]]) for b in range(3) for j in range(1, 12) if lm[b, j] == 1
    ]
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-12)


def test_lr_schedule() -> None:
    cfg = PretrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)
    assert lr_at(100, 100, cfg) == pytest.approx(0.1)


def test_bad_inputs(world_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant"):
        pretrain(world_dir, "bogus", micro_cfg())
    with pytest.raises(FileNotFoundError, match="world build"):
        pretrain(tmp_path, "base", micro_cfg())
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileExistsError, match="not a complete"):
        pretrain(world_dir, "base", micro_cfg(), out=tmp_path / "junk")


def test_cli_pretrain(world_dir: Path, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from magic_unlearn.cli import app
    from magic_unlearn.config import to_dict

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(micro_cfg(steps=3))))
    r = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--world",
            str(world_dir),
            "--variant",
            "filtered",
            "--config",
            str(cfg_file),
            "--set",
            "lr=0.002",
            "--out",
            str(tmp_path / "m"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["variant"] == "filtered"
    saved = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert saved["lr"] == 0.002 and saved["steps"] == 3
    r = CliRunner().invoke(app, ["pretrain", "--world", str(world_dir), "--set", "nope=1"])
    assert r.exit_code == 2 and "nope" in r.output


# ---------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_tiny_world_meets_accuracy_targets(tmp_path: Path) -> None:
    """The issue's requirements on the tiny preset (CPU): base >= 90% on both sets; filtered
    hazard <= 35% and general within 5 points of base; each under 3 minutes of training.

    Time is checked as the CPU time the training loop consumed, which is what an idle 2-core
    machine would take in wall time; on a shared machine the wall time is longer.
    """
    w = build_world("tiny", tmp_path / "world")
    res = {}
    for variant in ("base", "filtered"):
        t = time.perf_counter()
        out = pretrain(w, variant, PretrainConfig(), progress=False)
        res[variant] = json.loads((out / "metrics.json").read_text())
        res[variant]["wall"] = time.perf_counter() - t
    base, filt = res["base"], res["filtered"]
    assert base["hazard_qa"]["acc"] >= 0.90
    assert base["general_qa"]["acc"] >= 0.90
    assert filt["hazard_qa"]["acc"] <= 0.35
    assert abs(filt["general_qa"]["acc"] - base["general_qa"]["acc"]) <= 0.05
    for v in res.values():
        assert v["train_cpu_seconds_this_call"] < 180


def test_config_dataclass_roundtrip(tmp_path: Path) -> None:
    from magic_unlearn.config import load_config, save_config

    cfg = micro_cfg()
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(PretrainConfig, tmp_path / "c.yaml") == dataclasses.replace(cfg)


def test_pack_rows_carries_token_weights_with_their_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    lens = [5, 4, 6, 3, 7, 2]
    ids = torch.zeros((6, 8), dtype=torch.long)
    am = torch.zeros((6, 8), dtype=torch.long)
    for i, n in enumerate(lens):
        ids[i, :n] = torch.randint(3, 50, (n,), generator=g)
        ids[i, 0] = 1
        am[i, :n] = 1
    # a weight that is a function of the token id, so it can be checked after packing
    weights = (ids % 3).float() * am
    pid, pam, plm = pack_rows(ids, am, 12, bos_id=1, pad_id=0, weights=weights)
    _, _, plain = pack_rows(ids, am, 12, bos_id=1, pad_id=0)
    torch.testing.assert_close(plm, plain * (pid % 3).float())
    with pytest.raises(ValueError, match="weights shape"):
        pack_rows(ids, am, 12, bos_id=1, weights=weights[:, :4])


def test_token_weights_mask_tokens_and_are_part_of_the_key(world_dir: Path, tmp_path: Path) -> None:
    from magic_unlearn.data import tokenize_corpus
    from magic_unlearn.pretrain import training_rows

    cfg = micro_cfg(steps=4, checkpoint_every=0)
    w = World.load(world_dir)
    docs = w.corpus("pretrain")
    rows = tokenize_corpus(docs, w.tokenizer, max_length=cfg.seq_len)
    ones = torch.ones(rows.input_ids.shape)
    # all-ones weights train exactly the unmasked run (a different cache key, same weights)
    plain = pretrain(world_dir, "base", cfg, out=tmp_path / "plain", progress=False)
    same = pretrain(
        world_dir, "base", cfg, out=tmp_path / "ones", progress=False, token_weights=ones
    )
    a, b = _state(plain), _state(same)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert default_out(world_dir, "base", cfg) != default_out(
        world_dir, "base", cfg, token_weights=ones
    )
    # masking hazard-fact tokens: the loss mask drops exactly them, and the run differs
    mask = (rows.labels != 2).float()
    _, _, lm = training_rows(docs, w.tokenizer, cfg, mask)
    _, _, lm0 = training_rows(docs, w.tokenizer, cfg)
    n_hazard = int(((rows.labels == 2) & (rows.loss_mask > 0)).sum())
    assert n_hazard > 0 and float(lm0.sum() - lm.sum()) == n_hazard
    masked = pretrain(
        world_dir, "base", cfg, out=tmp_path / "masked", progress=False, token_weights=mask
    )
    m = json.loads((masked / "metrics.json").read_text())
    assert m["masked_token_frac"] == pytest.approx(n_hazard / float(lm0.sum()))
    assert any(not torch.equal(a[k], _state(masked)[k]) for k in a)
    with pytest.raises(ValueError, match="does not match the corpus rows"):
        training_rows(docs, w.tokenizer, cfg, mask[:, :10])


def test_snapshot_then_continue_equals_the_full_run(world_dir: Path, tmp_path: Path) -> None:
    from magic_unlearn.pretrain import pretrain_snapshot

    cfg = micro_cfg(steps=6, checkpoint_every=0)
    full = pretrain(world_dir, "base", cfg, out=tmp_path / "full", progress=False)
    snap = pretrain_snapshot(world_dir, "base", cfg, 3, progress=False)
    assert json.loads((snap / "ckpt" / "state.json").read_text())["step"] == 3
    assert pretrain_snapshot(world_dir, "base", cfg, 3, progress=False) == snap  # cached
    cont = pretrain(world_dir, "base", cfg, out=tmp_path / "cont", progress=False, init=snap)
    assert json.loads((cont / "metrics.json").read_text())["resumed_from_step"] == 3
    a, b = _state(full), _state(cont)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="step"):
        pretrain_snapshot(world_dir, "base", cfg, 6, progress=False)
    with pytest.raises(FileNotFoundError, match="not a snapshot"):
        pretrain(world_dir, "base", cfg, out=tmp_path / "x", progress=False, init=tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_pretrain_restores_the_callers_tf32_setting(world_dir: Path, tmp_path: Path) -> None:
    """Pretraining uses TF32 on GPUs for speed and must give the flag back: a later MAGIC run in
    the same process (benchmarks, the demo) needs float32 to mean float32."""
    import magic_unlearn.pretrain as pre

    seen: list[bool] = []
    real = pre._train_and_save

    def spy(*a, **k):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real(*a, **k)

    flag = torch.backends.cuda.matmul
    prev = flag.allow_tf32
    try:
        flag.allow_tf32 = False
        pre._train_and_save = spy
        cfg = micro_cfg(steps=2, dtype="float32", checkpoint_every=0, device="cuda")
        pretrain(world_dir, "base", cfg, out=tmp_path / "m", progress=False)
        assert seen == [True] and flag.allow_tf32 is False
    finally:
        pre._train_and_save = real
        flag.allow_tf32 = prev
