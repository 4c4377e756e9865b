"""Tests of the multiple-choice evaluator: lm-eval prompt format, scoring against a brute-force
reference, the fast path, batching, loaders and their errors, the differentiable loss, the CLI.

The lm-eval comparisons (slow, need the ``lmeval`` extra) live at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from magic_unlearn.evaluation import (
    LETTER_DESCRIPTION,
    Measurement,
    Task,
    as_task,
    build_context,
    build_mcq_batch,
    evaluate,
    load_task,
    mcq_loss,
    read_questions,
)
from magic_unlearn.models import build_model, get_unembedding

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=512,
)
BENCH = Path(
    os.environ.get(
        "MAGIC_UNLEARN_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
    )
)
needs_bench = pytest.mark.skipif(
    not (BENCH / "mmlu").is_dir(), reason=f"benchmark data not found at {BENCH}"
)

WORDS = "red blue green fox cat dog bird fish host gene route tissue alpha beta".split()


def _questions(n: int = 11, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    qs = []
    for i in range(n):
        ch = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 4)))) for _ in range(4)]
        qs.append(
            {
                "question": f"  which {WORDS[i % len(WORDS)]} is the {i}th? ",
                "choices": ch,
                "answer": int(rng.integers(0, 4)),
                "subject": ["gen_bio", "geo"][i % 2],
            }
        )
    return qs


def _bpe_tokenizer(merges: bool = True, add_bos: bool = False):
    """GPT-NeoX-like byte-level BPE built in code; without merges every char is a token;
    ``add_bos``: a Llama-like post-processor puts BOS before every encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    text = [LETTER_DESCRIPTION, "Question: which is it?\nAnswer: A B C D", " ".join(WORDS)] * 4
    vocab = 400 if merges else 257
    tr = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(text, tr)
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def bpe():
    return _bpe_tokenizer(True)


@pytest.fixture(scope="module")
def bpe_bos():
    return _bpe_tokenizer(True, add_bos=True)


@pytest.fixture(scope="module")
def chars():
    return _bpe_tokenizer(False)


def _model(tok, dtype=torch.float64, seed=0):
    return build_model(TINY, vocab_size=len(tok), seed=seed, dtype=dtype)


# ------------------------------------------------------------------------------------------
# an independent reference: prompts written out by hand, one full forward per choice


def _ref_prompt(q: dict, fmt: str, subject_desc: bool = True) -> tuple[str, list[str]]:
    s = q["subject"].replace("_", " ")
    if fmt == "letter":
        ctx = (
            f"The following are multiple choice questions (with answers) about {s}.\n\n"
            f"{q['question'].strip()}\nA. {q['choices'][0]}\nB. {q['choices'][1]}\n"
            f"C. {q['choices'][2]}\nD. {q['choices'][3]}\nAnswer:"
        )
        return ctx, [" A", " B", " C", " D"]
    ctx = (
        f"The following are questions (with answers) about {s}.\n\n"
        f"Question: {q['question'].strip()}\nAnswer:"
    )
    return ctx, [" " + c for c in q["choices"]]


def _ref_loglik(model, tok, questions, fmt, max_len: int = 10**9) -> np.ndarray:
    out = np.zeros((len(questions), 4))
    with torch.no_grad():
        for i, q in enumerate(questions):
            ctx, conts = _ref_prompt(q, fmt)
            c_ids = tok.encode(ctx)
            for j, cont in enumerate(conts):
                whole = tok.encode(ctx + cont)
                target = whole[len(c_ids) :]
                seq = (c_ids + target)[-(max_len + 1) :]  # lm-eval keeps the last L+1 tokens
                ids = torch.tensor([seq[:-1]])
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)  # (T, V)
                first = len(seq) - 1 - len(target)  # the logits that predict target[0]
                out[i, j] = sum(float(logp[first + k, t]) for k, t in enumerate(target))
    return out


@pytest.mark.parametrize("fmt", ["letter", "cloze"])
@pytest.mark.parametrize("tokname", ["bpe", "chars", "bpe_bos"])
def test_matches_bruteforce_reference(fmt, tokname, request):
    tok = request.getfixturevalue(tokname)
    model = _model(tok)
    qs = _questions(6)
    res = evaluate(model, tok, qs, fmt=fmt, batch_size=4)
    ref = _ref_loglik(model, tok, qs, fmt)
    np.testing.assert_allclose(np.array(res.loglikelihoods), ref, rtol=0, atol=1e-9)
    assert res.predictions == ref.argmax(1).tolist()
    ans = np.array([q["answer"] for q in qs])
    assert res.acc == pytest.approx(float((ref.argmax(1) == ans).mean()))
    np.testing.assert_allclose(res.correct_loss, -ref[np.arange(6), ans], atol=1e-9)
    if fmt == "cloze":
        lens = np.array([[len(c) for c in q["choices"]] for q in qs])
        assert res.acc_norm == pytest.approx(float(((ref / lens).argmax(1) == ans).mean()))
    else:
        assert res.acc_norm is None
    # letters are single BPE tokens (fast path); char-level " A" is two tokens (full path)
    assert res.fast_path == (6 if (fmt == "letter" and tokname != "chars") else 0)
    if tokname == "bpe_bos":  # the tokenizer's own BOS is kept, never doubled
        b = build_mcq_batch(tok, qs, fmt=fmt, prepend_bos=True)
        assert (b.input_ids[:, 0] == tok.bos_token_id).all()
        assert (b.input_ids[:, 1] != tok.bos_token_id).all()
        assert mcq_loss(model, b).item() == pytest.approx(res.mean_correct_loss, abs=1e-9)


@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_left_truncation_matches_reference(chars, fmt):
    model = _model(chars)
    qs = _questions(3)
    res = evaluate(model, chars, qs, fmt=fmt, max_length=40)
    ref = _ref_loglik(model, chars, qs, fmt, max_len=40)
    np.testing.assert_allclose(np.array(res.loglikelihoods), ref, rtol=0, atol=1e-9)
    full = _ref_loglik(model, chars, qs, fmt)
    assert np.abs(full - ref).max() > 1e-3  # the truncation did change the inputs


def test_letter_fast_path_equals_full_scoring(bpe):
    model = _model(bpe)
    qs = _questions(9)
    fast = evaluate(model, bpe, qs, fmt="letter", batch_size=3)
    full = evaluate(model, bpe, qs, fmt="letter", batch_size=3, fast=False)
    assert fast.fast_path == 9 and full.fast_path == 0
    np.testing.assert_allclose(fast.loglikelihoods, full.loglikelihoods, rtol=0, atol=1e-12)
    assert fast.predictions == full.predictions
    # letter correct loss = -log p(correct letter) over the full vocabulary at the last position
    with torch.no_grad():
        ctx = bpe.encode(build_context(as_task(qs), qs[0], "letter"))
        logp = torch.log_softmax(model(torch.tensor([ctx])).logits[0, -1], -1)
    letter = bpe.encode(" " + "ABCD"[qs[0]["answer"]])
    assert len(letter) == 1
    assert fast.correct_loss[0] == pytest.approx(-float(logp[letter[0]]), abs=1e-12)


@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_batching_and_padding_side_invariance(bpe, fmt):
    import copy

    model = _model(bpe)
    qs = _questions(13)
    r1 = evaluate(model, bpe, qs, fmt=fmt, batch_size=1)
    r7 = evaluate(model, bpe, qs, fmt=fmt, batch_size=7)
    left = copy.deepcopy(bpe)
    left.padding_side = "left"
    rl = evaluate(model, left, qs, fmt=fmt, batch_size=7)
    assert r1.predictions == r7.predictions == rl.predictions
    np.testing.assert_allclose(r1.loglikelihoods, r7.loglikelihoods, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r1.loglikelihoods, rl.loglikelihoods, rtol=0, atol=1e-12)


def _rigged(tok, letter: str):
    """A model whose final hidden state is constant and whose head only scores ``letter``."""
    model = _model(tok)
    lid = tok.encode(" " + letter)
    assert len(lid) == 1
    with torch.no_grad():
        ln, head = get_unembedding(model)
        ln.weight.zero_()
        ln.bias.zero_()
        ln.bias[0] = 1.0
        head.weight.zero_()
        head.weight[lid[0], 0] = 10.0
    return model


def test_rigged_model_accuracy_and_loss(bpe):
    qs = _questions(20, seed=3)
    model = _rigged(bpe, "C")
    res = evaluate(model, bpe, qs, fmt="letter", batch_size=8)
    ans = np.array([q["answer"] for q in qs])
    assert res.predictions == [2] * 20
    assert res.acc == pytest.approx(float((ans == 2).mean()))
    assert 0 < res.acc < 1  # the seed gives both kinds of questions
    V = len(bpe)
    lse = np.log(np.exp(10.0) + (V - 1))  # logits: 10 for " C", 0 elsewhere
    expect = np.where(ans == 2, lse - 10.0, lse)
    np.testing.assert_allclose(res.correct_loss, expect, atol=1e-9)
    # micro average = question-weighted mean of the subject accuracies
    ps = res.per_subject
    assert sum(d["n"] for d in ps.values()) == 20
    assert res.acc == pytest.approx(sum(d["acc"] * d["n"] for d in ps.values()) / 20)
    assert res.acc_macro == pytest.approx(np.mean([d["acc"] for d in ps.values()]))


def test_bf16_model_runs_with_float32_logprobs(bpe):
    model = _model(bpe, dtype=torch.float32).to(torch.bfloat16)
    qs = _questions(5)
    res = evaluate(model, bpe, qs, fmt="letter", batch_size=1)
    letters = [bpe.encode(" " + L)[0] for L in "ABCD"]
    with torch.no_grad():
        for q, ll in zip(qs, res.loglikelihoods, strict=True):
            ctx = bpe.encode(build_context(as_task(qs), q, "letter"))
            logits = model(torch.tensor([ctx])).logits[0, -1]  # bf16
            ref32 = torch.log_softmax(logits.float(), -1)[letters]
            ref16 = torch.log_softmax(logits, -1)[letters].float()
            # float32 log-softmax of the bf16 logits, not a bf16 one
            np.testing.assert_allclose(ll, ref32.double().numpy(), atol=1e-5)
            assert np.abs(np.array(ll) - ref16.double().numpy()).max() > 1e-4


# ------------------------------------------------------------------------------------------
# differentiable measurement


@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_mcq_loss_equals_eval_and_has_gradients(bpe, fmt):
    model = _model(bpe)
    qs = _questions(7)
    task = as_task(qs)
    res = evaluate(model, bpe, task, fmt=fmt, batch_size=3)
    batch = build_mcq_batch(bpe, task, fmt=fmt)
    assert batch.input_ids.shape[0] == 7
    loss = mcq_loss(model, batch)
    assert loss.item() == pytest.approx(res.mean_correct_loss, abs=1e-10)
    per_q = mcq_loss(model, batch, reduction="none")
    np.testing.assert_allclose(per_q.detach().numpy(), res.correct_loss, atol=1e-10)
    if fmt == "letter":
        assert batch.choice_ids is not None and batch.choice_ids.shape == (7, 4)
    loss.backward()
    head = model.get_output_embeddings().weight
    g = head.grad.clone()
    assert float(g.abs().sum()) > 0
    # what the MAGIC replay does: the loss of functional_call(model, params), in microbatches
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    meas = Measurement("q", batch, microbatch=3)
    lf = meas(FunctionalModel(model, params))
    assert lf.item() == pytest.approx(res.mean_correct_loss, abs=1e-10)
    name = next(k for k, v in model.named_parameters() if v is head)
    (gw,) = torch.autograd.grad(lf, [params[name]])
    torch.testing.assert_close(gw, g, atol=1e-12, rtol=1e-9)


class FunctionalModel(torch.nn.Module):
    """Forwards through ``functional_call(model, params)``."""

    def __init__(self, model, params):
        super().__init__()
        self.model = model
        self.params = params

    def forward(self, input_ids, logits_to_keep=0):
        return torch.func.functional_call(
            self.model,
            self.params,
            args=(),
            kwargs={"input_ids": input_ids, "logits_to_keep": logits_to_keep},
        )


def test_mcq_loss_finite_difference(bpe):
    model = _model(bpe)
    batch = build_mcq_batch(bpe, _questions(4), fmt="cloze")
    w = model.get_output_embeddings().weight
    loss = mcq_loss(model, batch)
    (g,) = torch.autograd.grad(loss, [w])
    idx = torch.nonzero(g.abs() > 1e-4)[0]
    eps = 1e-6
    with torch.no_grad():
        w[tuple(idx)] += eps
        up = float(mcq_loss(model, batch))
        w[tuple(idx)] -= 2 * eps
        down = float(mcq_loss(model, batch))
        w[tuple(idx)] += eps
    assert float(g[tuple(idx)]) == pytest.approx((up - down) / (2 * eps), rel=1e-6)


# ------------------------------------------------------------------------------------------
# files, loaders and their errors


def _write_jsonl(path: Path, recs: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.mark.parametrize(
    "bad, field, msg",
    [
        ({"choices": ["a", "b", "c", "d"], "answer": 0}, "question", "missing field 'question'"),
        ({"question": "q", "answer": 0}, "choices", "missing field 'choices'"),
        ({"question": "q", "choices": ["a", "b", "c", "d"]}, "answer", "missing field 'answer'"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": "B"}, "answer", "integer"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 1.0}, "answer", "integer"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}, "answer", "0..3"),
        ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": -1}, "answer", "0..3"),
        ({"question": "q", "choices": ["a", "b", "c"], "answer": 0}, "choices", "has 3 entries"),
        ({"question": "q", "choices": ["a", "b", "c", "d", "e"], "answer": 0}, "choices", "5"),
        ({"question": "q", "choices": ["a", "b", "c", 4], "answer": 0}, "choices", "string"),
    ],
)
def test_bad_question_file_names_file_line_field(tmp_path, bad, field, msg):
    good = {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 1}
    f = _write_jsonl(tmp_path / "qs.jsonl", [good, good, bad])
    with pytest.raises(ValueError) as e:
        read_questions(f)
    s = str(e.value)
    assert f"{f}:3" in s and f"'{field}'" in s and msg in s
    with pytest.raises(ValueError, match=r"qs.jsonl:3"):  # same through load_task
        load_task(str(f))


def test_bad_csv_and_json_errors(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("q1,a,b,c,d,A\nq2,a,b,c,X\n")
    with pytest.raises(ValueError, match=r"m.csv:2.*'choices'"):
        read_questions(f)
    f.write_text("q1,a,b,c,d,A\nq2,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"m.csv:2.*'answer'"):
        read_questions(f)
    j = tmp_path / "m.json"
    j.write_text(
        json.dumps(
            [
                {"question": "q", "choices": ["a"] * 4, "answer": 0},
                {"question": "q", "choices": ["a"] * 4, "answer": 9},
            ],
            indent=2,
        )
    )
    with pytest.raises(ValueError, match=r"m.json:12 \(record 2\).*'answer' is 9"):
        read_questions(j)
    with pytest.raises(ValueError, match=r"record 1.*'answer'"):
        evaluate(None, None, [{"question": "q", "choices": ["a"] * 4, "answer": "1"}])
    with pytest.raises(ValueError, match="unknown task"):
        load_task("no_such_task")


def test_file_formats_agree(tmp_path):
    qs = [
        {
            "question": f"q{i}, with comma",
            "choices": ["a", "b, c", "d", "e"],
            "answer": i % 4,
            "subject": "s1",
        }
        for i in range(5)
    ]
    _write_jsonl(tmp_path / "a.jsonl", qs)
    (tmp_path / "a.json").write_text(json.dumps(qs))
    import csv

    with open(tmp_path / "a.csv", "w", newline="") as f:  # MMLU layout: no header, letters
        w = csv.writer(f)
        for q in qs:
            w.writerow([q["question"], *q["choices"], "ABCD"[q["answer"]]])
    with open(tmp_path / "h.csv", "w", newline="") as f:  # header with a JSON choices column
        w = csv.writer(f)
        w.writerow(["question", "choices", "answer", "subject"])
        for q in qs:
            w.writerow([q["question"], json.dumps(q["choices"]), q["answer"], q["subject"]])
    ref = read_questions(tmp_path / "a.jsonl")
    assert read_questions(tmp_path / "a.json") == ref
    assert read_questions(tmp_path / "a.csv", default_subject="s1") == ref
    assert read_questions(tmp_path / "h.csv") == ref
    try:
        import pandas as pd

        pd.DataFrame(qs).to_parquet(tmp_path / "a.parquet")
        assert read_questions(tmp_path / "a.parquet") == ref
    except ImportError:
        pass
    t = load_task(str(tmp_path / "a.jsonl"), limit=3)
    assert t.name == "a" and len(t) == 3


def test_hub_loaders_with_a_fake_datasets(monkeypatch):
    """The hub code paths (cais/mmlu, cais/wmdp, EleutherAI/wmdp_bio_robust_mcqa), offline."""
    from magic_unlearn.evaluation import tasks as T

    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(path, name=None, split=None):
            calls.append((path, name, split))
            q = {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 2}
            if path == "cais/mmlu":
                return [dict(q, subject=s) for s in ("anatomy", "virology", "anatomy")]
            return [dict(q), dict(q)]

    monkeypatch.setattr(T, "_import_datasets", lambda what: FakeDatasets)
    m = load_task("mmlu", source="hf", num_fewshot=1)
    assert len(m) == 3 and m.subjects == ["anatomy", "virology"] and len(m.fewshot_pool) == 3
    assert ("cais/mmlu", "all", "test") in calls and ("cais/mmlu", "all", "dev") in calls
    assert len(load_task("mmlu_virology", source="hf")) == 1
    w = load_task("wmdp_bio", source="hf")
    assert len(w) == 2 and ("cais/wmdp", "wmdp-bio", "test") in calls
    r = load_task("wmdp_bio_robust", source="hf")
    assert len(r) == 12 and len(r.subjects) == 6
    assert all(c[2] == "robust" for c in calls if c[0] == "EleutherAI/wmdp_bio_robust_mcqa")


def test_world_and_robust_local_layouts(tmp_path):
    qs = _questions(6)
    (tmp_path / "w" / "questions").mkdir(parents=True)
    _write_jsonl(tmp_path / "w" / "questions" / "hazard_qa.jsonl", qs)
    t = load_task("hazard_qa", world=tmp_path / "w", limit=4)
    assert len(t) == 4 and t.default_fmt == "cloze" and t.prepend_bos
    assert (
        build_context(t, t.questions[0], "cloze")
        == f"Question: {qs[0]['question'].strip()}\nAnswer:"
    )
    with pytest.raises(ValueError, match="world"):
        load_task("hazard_qa")
    rob = tmp_path / "robust"
    rob.mkdir()
    strip = [{k: v for k, v in q.items() if k != "subject"} for q in qs]
    _write_jsonl(rob / "dual_use_virology.jsonl", strip[:4])
    _write_jsonl(rob / "viral_vector_research.jsonl", strip[4:])
    r = load_task("wmdp_bio_robust", source=rob)
    assert r.subjects == ["dual_use_virology", "viral_vector_research"] and len(r) == 6
    assert len(load_task("wmdp_bio_robust", source=rob, limit=1)) == 2  # per subject
    assert r.description("letter", "dual_use_virology").endswith("about biology.\n\n")


def test_register_task_builds_it_by_name(tmp_path, monkeypatch, bpe):
    """A named task is a TaskSpec: a loader plus prompt settings (copy this to add a task)."""
    from magic_unlearn.evaluation import tasks as T

    monkeypatch.setattr(T, "TASKS", dict(T.TASKS))  # leave the real registry untouched
    qs = _questions(7)
    _write_jsonl(tmp_path / "toy.jsonl", qs)
    seen = []

    def load_toy(req: T.TaskRequest) -> T.LoadedQuestions:
        seen.append(req)
        src = req.source or tmp_path / "toy.jsonl"
        return read_questions(src), [], str(src)

    T.register_task(
        T.TaskSpec(
            "toy",
            load_toy,
            descriptions={"letter": "About {subject}:\n\n", "cloze": ""},
            default_fmt="cloze",
            limit_per_subject=True,
            subtasks=True,
        )
    )
    t = load_task("toy", limit=2)  # per subject: 2 of gen_bio + 2 of geo
    assert t.name == "toy" and len(t) == 4 and t.default_fmt == "cloze"
    assert [q["question"] for q in t.questions] == [q["question"] for q in qs[:4]]
    assert t.description("letter", "gen_bio") == "About gen bio:\n\n"
    assert load_task("toy_geo").name == "toy_geo" and seen[-1].name == "toy_geo"
    r = evaluate(_model(bpe), bpe, t)  # evaluates like any task, in its default format
    assert r.fmt == "cloze" and r.n == 4
    with pytest.raises(ValueError, match="already registered"):
        T.register_task(T.TaskSpec("toy", load_toy))
    with pytest.raises(ValueError, match=r"unknown task 'toysx'.*toy, .*toy_<subject>"):
        load_task("toysx")


def test_prepend_bos_and_fewshot(bpe):
    model = _model(bpe)
    qs = _questions(6)
    pool = _questions(4, seed=9)
    for q in pool:
        q["subject"] = "geo"
    t = Task("t", [q for q in qs if q["subject"] == "geo"], fewshot_pool=pool, num_fewshot=2)
    ctx = build_context(t, t.questions[0], "letter")
    shot = build_context(Task("x", pool[:1]), pool[0], "letter").split("\n\n", 1)[1]
    assert ctx.startswith(
        LETTER_DESCRIPTION.replace("{subject}", "geo")
        + shot
        + " "
        + "ABCD"[pool[0]["answer"]]
        + "\n\n"
    )
    r = evaluate(model, bpe, t, fmt="letter")
    ref = _ref_loglik(model, bpe, t.questions, "letter")  # 0-shot reference must differ
    assert np.abs(np.array(r.loglikelihoods) - ref).max() > 1e-4
    rb = evaluate(model, bpe, t, fmt="letter", prepend_bos=True)
    assert np.abs(np.array(rb.loglikelihoods) - np.array(r.loglikelihoods)).max() > 1e-6
    b = build_mcq_batch(bpe, t, fmt="letter", prepend_bos=True)
    assert (b.input_ids[:, 0] == bpe.bos_token_id).all()
    assert mcq_loss(model, b).item() == pytest.approx(rb.mean_correct_loss, abs=1e-10)
    with pytest.raises(ValueError, match="few-shot"):
        Task("t", qs, fewshot_pool=pool, num_fewshot=2).fewshot_examples("gen_bio")


@needs_bench
def test_mmlu_wmdp_local_counts_and_exact_prompts():
    mmlu = load_task("mmlu", source=BENCH)
    assert len(mmlu) == 14042 and len(mmlu.subjects) == 57 and len(mmlu.fewshot_pool) == 285
    assert len(load_task("mmlu", source=BENCH, split="val")) == 1531
    assert len(load_task("mmlu", source=BENCH, limit=2)) == 114
    aa = load_task("mmlu_abstract_algebra", source=BENCH, num_fewshot=1)
    q = aa.questions[0]
    assert build_context(aa, q, "letter") == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\n"
        "Answer: B\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert build_context(aa, q, "cloze") == (
        "The following are questions (with answers) about abstract algebra.\n\n"
        "Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nAnswer: 1\n\n"
        "Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18))"
        " over Q.\nAnswer:"
    )
    assert q["answer"] == 1 and q["subject"] == "abstract_algebra"
    wmdp = load_task("wmdp_bio", source=BENCH)
    assert len(wmdp) == 1273
    # structure only: WMDP text is never printed by the tests
    w0 = wmdp.questions[0]
    ctx = build_context(wmdp, w0, "letter")
    head = "The following are multiple choice questions (with answers) about biology.\n\n"
    tail = "".join(f"\n{L}. {c}" for L, c in zip("ABCD", w0["choices"], strict=True))
    assert ctx == head + w0["question"].strip() + tail + "\nAnswer:"


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_eval_smoke(tmp_path, bpe):
    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    model = _model(bpe, dtype=torch.float32)
    mdir = tmp_path / "model"
    model.save_pretrained(mdir)
    bpe.save_pretrained(mdir)
    qs = _questions(7)
    qf = _write_jsonl(tmp_path / "qs.jsonl", qs)
    out = tmp_path / "ev"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            str(mdir),
            "--task",
            str(qf),
            "--format",
            "cloze",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "acc_norm" in r.output
    m = json.loads((out / "metrics.json").read_text())
    ref = evaluate(model, bpe, qs, fmt="cloze")
    assert m["tasks"]["qs"]["acc"] == pytest.approx(ref.acc)
    assert m["tasks"]["qs"]["acc_norm"] == pytest.approx(ref.acc_norm)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [x["prediction"] for x in rows] == ref.predictions
    assert not any("question" in x for x in rows)
    assert (out / "config.yaml").exists() and (out / "manifest.json").exists()
    # a second run refuses to overwrite; a bad file is a clean error naming the line
    r2 = CliRunner().invoke(
        app,
        [
            "eval",
            "--model",
            str(mdir),
            "--task",
            str(qf),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert r2.exit_code == 2 and "exists" in r2.output
    bad = _write_jsonl(
        tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a"] * 3, "answer": 0}]
    )
    r3 = CliRunner().invoke(
        app, ["eval", "--model", str(mdir), "--task", str(bad), "--device", "cpu", "--no-progress"]
    )
    assert r3.exit_code == 2 and "bad.jsonl:1" in r3.output and "'choices'" in r3.output


# ------------------------------------------------------------------------------------------
# lm-evaluation-harness compatibility (slow; needs the lmeval extra)


def _save(tmp_path: Path, tok, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    from magic_unlearn.models import load_model

    mdir = tmp_path / f"model_{seed}"
    _model(tok, dtype=torch.float32, seed=seed).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    return mdir, load_model(mdir, dtype="float32", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("fmt, tokname", [("letter", "bpe"), ("cloze", "bpe"), ("letter", "chars")])
def test_lmeval_identical_choices(tmp_path, fmt, tokname, request):
    pytest.importorskip("lm_eval")
    from magic_unlearn.evaluation.lmeval_compat import run_lmeval

    tok = request.getfixturevalue(tokname)
    mdir, model = _save(tmp_path, tok)
    task = as_task(_questions(24, seed=5))  # two subjects: per-question description lines
    ours = evaluate(model, tok, task, fmt=fmt, batch_size=5)
    theirs = run_lmeval(mdir, None, task, fmt, batch_size=5, device="cpu")
    # the same prompt strings ...
    for q, reqs in zip(task.questions, theirs["requests"], strict=True):
        ctx = build_context(task, q, fmt)
        conts = [" " + c for c in (["A", "B", "C", "D"] if fmt == "letter" else q["choices"])]
        assert reqs == [(ctx, c) for c in conts]
    # ... the same scores, choices and accuracies
    np.testing.assert_allclose(ours.loglikelihoods, theirs["loglikelihoods"], atol=2e-5)
    assert ours.predictions == theirs["predictions"]
    assert ours.acc == pytest.approx(theirs["acc"], abs=1e-12)
    if fmt == "cloze":
        assert ours.predictions_norm == theirs["predictions_norm"]
        assert ours.acc_norm == pytest.approx(theirs["acc_norm"], abs=1e-12)


@pytest.mark.slow
@needs_bench
def test_lmeval_real_mmlu_yaml_5shot(tmp_path, bpe):
    """lm-eval's own MMLU task YAML (installed package), 5-shot from dev, on local data."""
    lm_eval = pytest.importorskip("lm_eval")
    import yaml
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    subj = "college_biology"
    task = load_task(f"mmlu_{subj}", source=BENCH, num_fewshot=5, limit=12)
    ydir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    cfg = yaml.safe_load((ydir / "_default_template_yaml").read_text())
    cfg.update(
        {
            k: v
            for k, v in yaml.safe_load((ydir / f"mmlu_{subj}.yaml").read_text()).items()
            if k not in ("include", "group", "group_alias", "tag", "task_alias")
        }
    )
    data = {}
    for split, qs in (("test", task.questions), ("dev", task.fewshot_pool)):
        data[split] = str(
            _write_jsonl(
                tmp_path / f"{split}.jsonl",
                [{k: q[k] for k in ("question", "choices", "answer", "subject")} for q in qs],
            )
        )
    cfg.pop("dataset_name", None)
    cfg.update(
        task="mu_mmlu_real",
        dataset_path="json",
        dataset_kwargs={"data_files": data},
        test_split="test",
        fewshot_split="dev",
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mu_mmlu_real.yaml").write_text(yaml.safe_dump(cfg))
    mdir, model = _save(tmp_path, bpe)
    lm = HFLM(pretrained=str(mdir), dtype="float32", batch_size=4, device="cpu")
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["mu_mmlu_real"],
        num_fewshot=5,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        bootstrap_iters=0,
    )
    samples = sorted(out["samples"]["mu_mmlu_real"], key=lambda s: s["doc_id"])
    ours = evaluate(model, bpe, task, fmt="letter")
    for q, s in zip(task.questions, samples, strict=True):
        assert s["arguments"][0][0] == build_context(task, q, "letter")
    ll = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    np.testing.assert_allclose(ours.loglikelihoods, ll, atol=2e-5)
    assert ours.predictions == ll.argmax(1).tolist()
    assert ours.acc == pytest.approx(out["results"]["mu_mmlu_real"]["acc,none"], abs=1e-12)


@pytest.mark.slow
def test_world_integration(tmp_path):
    """hazard_qa / general_qa straight from a generated world (optional: needs world/)."""
    world = pytest.importorskip("magic_unlearn.world")
    wdir = world.build_world("tiny", tmp_path / "world")
    tok = world.World.load(wdir).tokenizer
    model = build_model(TINY, vocab_size=len(tok), dtype=torch.float64)
    for name in ("hazard_qa", "general_qa"):
        task = load_task(name, world=wdir)
        assert task.default_fmt == "cloze" and len(task) > 0
        res = evaluate(model, tok, task, batch_size=16)
        assert res.fmt == "cloze" and res.n == len(task)
        batch = build_mcq_batch(tok, task)
        assert (batch.input_ids[:, 0] == tok.bos_token_id).all()
        assert mcq_loss(model, batch).item() == pytest.approx(res.mean_correct_loss, abs=1e-9)
        full = evaluate(model, tok, task, batch_size=16, fast=False)
        np.testing.assert_allclose(res.loglikelihoods, full.loglikelihoods, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_cuda_matches_cpu(bpe, fmt):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = _model(bpe, dtype=torch.float32)
    qs = _questions(16)
    cpu = evaluate(model, bpe, qs, fmt=fmt)
    gpu = evaluate(model, bpe, qs, fmt=fmt, device="cuda")
    np.testing.assert_allclose(gpu.loglikelihoods, cpu.loglikelihoods, atol=1e-3)
    batch = build_mcq_batch(bpe, qs, fmt=fmt).to("cuda")
    assert mcq_loss(model, batch).item() == pytest.approx(gpu.mean_correct_loss, abs=1e-4)
