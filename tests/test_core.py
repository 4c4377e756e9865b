"""Core modules: config, io, models, data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from magic_unlearn.config import ConfigError, config_hash, load_config, save_config, to_dict
from magic_unlearn.data import load_corpus, per_token_nll, tokenize_corpus
from magic_unlearn.io import atomic_dir, atomic_write_json, file_hash, read_manifest, write_manifest
from magic_unlearn.models import LayerCapture, get_decoder_layers, get_unembedding, load_model


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    layers: list[int] | None = None


def test_config_yaml_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  lr: 1\n")
    cfg = load_config(Outer, p, ["inner.steps=5", "layers=[1, 2]"])
    assert cfg.name == "run" and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 5 and cfg.layers == [1, 2]
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg
    assert config_hash(cfg) == config_hash(to_dict(cfg))
    assert config_hash(cfg) != config_hash(load_config(Outer, p))


def test_config_errors_name_source_and_field(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:inner.*lrr"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(Outer, None, ["inner.lr"])
    with pytest.raises(ConfigError, match="expects a number"):
        load_config(Outer, None, ["inner.lr=fast"])


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "m.json", {"a": 1})
        write_manifest(tmp, "test", inputs={"x": 1})
    assert read_manifest(out, "test")["inputs"] == {"x": 1}
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_dir(out):
            pass
    with pytest.raises(ValueError, match="expected 'other'"):
        read_manifest(out, "other")
    h = file_hash(out)
    (out / "m.json").write_text("{}")
    assert file_hash(out) != h


def test_tokenize_corpus_alignment(word_tokenizer) -> None:
    docs = [
        {
            "id": "d0",
            "text": "the fox is red .",
            "labels": [0, 1, 0, 2, 0],
            "fact_ids": [-1, 3, -1, 3, -1],
        },
        {"id": "d1", "text": "a cat"},
    ]
    tc = tokenize_corpus(docs, word_tokenizer, max_length=8)
    assert tc.input_ids.shape == (2, 8)
    assert tc.input_ids[0, 0] == word_tokenizer.bos_token_id
    assert tc.input_ids[0, 6] == word_tokenizer.eos_token_id
    assert tc.labels[0, 1:6].tolist() == [0, 1, 0, 2, 0] and tc.labels[0, 0] == -1
    assert tc.fact_ids[0, 2] == 3 and tc.labels[1].max() == -1
    assert tc.loss_mask[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 0]
    assert tc.subset([1]).doc_ids == ["d1"]
    with pytest.raises(ValueError, match="labels must align"):
        tokenize_corpus([{"id": "x", "text": "the fox", "labels": [0]}], word_tokenizer)


def test_load_corpus_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl: record 2 has no 'text'"):
        load_corpus(p)
    p.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"c.jsonl:2: invalid JSON"):
        load_corpus(p)
    p.write_text('{"body": "a"}\n')
    assert load_corpus(p, text_field="body")[0]["text"] == "a"
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "missing.jsonl")


def test_per_token_nll_matches_hf_loss(tiny_model, word_tokenizer) -> None:
    tc = tokenize_corpus([{"id": "0", "text": "the fox is red with a cat"}], word_tokenizer, 12)
    nll = per_token_nll(tiny_model, tc.input_ids, tc.attention_mask)  # (1, 12)
    labels = tc.input_ids.masked_fill(tc.loss_mask == 0, -100)
    labels[:, 0] = -100
    ref = tiny_model(input_ids=tc.input_ids, attention_mask=tc.attention_mask, labels=labels).loss
    ours = (nll * tc.loss_mask).sum() / tc.loss_mask.sum()
    assert nll.dtype == torch.float64  # a float64 model's NLL is not rounded to float32
    torch.testing.assert_close(ours.float(), ref)  # Hugging Face's loss is float32


def test_layer_helpers_and_roundtrip(tiny_model, word_tokenizer, tmp_path: Path) -> None:
    assert len(get_decoder_layers(tiny_model)) == 2
    norm, head = get_unembedding(tiny_model)
    ids = torch.tensor([[2, 5, 6, 7]])
    with LayerCapture(tiny_model, [0, -1], detach=True) as cap:
        out = tiny_model(input_ids=ids, output_hidden_states=True)
    assert cap.outputs[0].shape == (1, 4, 32)
    torch.testing.assert_close(cap.outputs[0], out.hidden_states[1])
    # raw output of the last block -> final norm -> head reproduces the logits (logit lens)
    torch.testing.assert_close(head(norm(cap.outputs[-1])), out.logits)
    with pytest.raises(ValueError, match="out of range"):
        LayerCapture(tiny_model, [5])
    tiny_model.save_pretrained(tmp_path / "m")
    m2 = load_model(tmp_path / "m", dtype="float64")
    torch.testing.assert_close(m2(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_matmul_tf32_sets_and_restores_the_global_flag() -> None:
    from magic_unlearn.models import matmul_tf32

    flag = torch.backends.cuda.matmul
    prev = flag.allow_tf32
    try:
        flag.allow_tf32 = True
        with pytest.raises(RuntimeError), matmul_tf32(False):
            assert flag.allow_tf32 is False
            raise RuntimeError("restored on errors too")
        assert flag.allow_tf32 is True

        @matmul_tf32(True)
        def inside() -> bool:
            return flag.allow_tf32

        flag.allow_tf32 = False
        assert inside() is True and flag.allow_tf32 is False
    finally:
        flag.allow_tf32 = prev
