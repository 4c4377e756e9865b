"""The world's word-level tokenizer (Hugging Face format).

One token per word or punctuation mark; spaces are dropped, newlines are kept as their own
token (evaluation prompts are ``Question: ..\\nAnswer:``). Because splitting happens at every
space, ``tok(context + " " + choice) == tok(context) + tok(" " + choice)``, so cloze and letter
continuations tokenize the same alone or in context. Decoding joins tokens with spaces; decoded
text re-encodes to the same ids (the round trip the tests check).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer
from tokenizers import pre_tokenizers as pt
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


@lru_cache(maxsize=1)
def _pre_tokenizer() -> Any:
    return pt.Sequence(
        [
            pt.Split(Regex(r"[^\S\n]+"), "removed"),  # spaces/tabs separate words, then vanish
            pt.Split(Regex(r"\n"), "isolated"),  # each newline is a token
            pt.Punctuation("isolated"),  # each punctuation mark is a token
        ]
    )


def pre_tokenize(text: str) -> list[str]:
    """The words the world tokenizer maps one-to-one to ids."""
    return [w for w, _ in _pre_tokenizer().pre_tokenize_str(text)]


def build_tokenizer(counts: Counter[str], model_max_length: int = 1024) -> Any:
    """A ``PreTrainedTokenizerFast`` over every word in ``counts``.

    Ids are deterministic: special tokens first, then words by descending count, ties by
    spelling.
    """
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = _pre_tokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def load_world_tokenizer(path: str | Path) -> Any:
    """Load a saved world tokenizer (right padding, pad token set)."""
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{path} has no tokenizer.json; rebuild the world with `magic-unlearn world build`"
        )
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.padding_side = "right"
    return tok
