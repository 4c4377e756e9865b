"""Shared fixtures: tiny tokenizers and models for CPU tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(
    os.environ.get(
        "MAGIC_UNLEARN_BENCHMARKS",
        Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks",
    )
)


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not BENCHMARKS.exists():
        pytest.skip(f"benchmark data not found at {BENCHMARKS}")
    return BENCHMARKS


@pytest.fixture(scope="session")
def word_tokenizer():
    """A small word-level HF tokenizer with BOS/EOS/PAD, built in code."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = (
        "the a of is in and to with host route tissue gene virus alpha beta gamma delta "
        "red blue green fox cat dog bird fish Question Answer : ? . , A B C D"
    ).split()
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", "\n", *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    tok.padding_side = "right"
    return tok


@pytest.fixture
def tiny_model(word_tokenizer):
    from magic_unlearn.models import build_model

    return build_model(
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        vocab_size=len(word_tokenizer),
        seed=0,
        dtype=torch.float64,
    )
