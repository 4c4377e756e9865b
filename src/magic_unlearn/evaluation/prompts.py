"""Prompt strings and their tokenization, reproducing lm-evaluation-harness exactly.

Letter format (lm-eval ``mmlu``/``wmdp``)::

    {description}{question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:

scored continuations ``" A" .. " D"``. Cloze format (lm-eval ``mmlu_continuation``)::

    {description}Question: {question.strip()}\\nAnswer:

scored continuations ``" " + choice``. Few-shot examples are rendered the same way with the
target appended after a space, joined by ``"\\n\\n"`` and followed by ``"\\n\\n"``.

Tokenization follows lm-eval's ``HFLM._encode_pair``: trailing whitespace of the context moves
to the continuation; ``whole = enc(context + continuation)``, ``ctx = enc(context)``,
``cont = whole[len(ctx):]``; the model reads ``(ctx + cont)[-(max_len + 1):][:-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from magic_unlearn.evaluation.tasks import FORMATS, LETTERS, Task

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


def doc_to_text(q: dict[str, Any], fmt: str) -> str:
    """The question part of a prompt (lm-eval's ``doc_to_text``)."""
    if fmt == "letter":
        lines = [q["question"].strip()]
        lines += [f"{L}. {c}" for L, c in zip(LETTERS, q["choices"], strict=True)]
        return "\n".join(lines) + "\nAnswer:"
    if fmt == "cloze":
        return f"Question: {q['question'].strip()}\nAnswer:"
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")


def doc_to_choices(q: dict[str, Any], fmt: str) -> list[str]:
    """The answer strings (lm-eval's ``doc_to_choice``), without the leading space."""
    return list(LETTERS) if fmt == "letter" else list(q["choices"])


def build_context(task: Task, q: dict[str, Any], fmt: str) -> str:
    """Description + few-shot examples + question (lm-eval's ``fewshot_context``)."""
    ctx = task.description(fmt, q["subject"])
    shots = task.fewshot_examples(q["subject"])
    if shots:
        ctx += (
            FEWSHOT_DELIMITER.join(
                doc_to_text(ex, fmt) + TARGET_DELIMITER + doc_to_choices(ex, fmt)[ex["answer"]]
                for ex in shots
            )
            + FEWSHOT_DELIMITER
        )
    return ctx + doc_to_text(q, fmt)


def build_requests(task: Task, fmt: str) -> list[tuple[str, list[str]]]:
    """Per question: (context, [continuation per choice])."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    return [
        (build_context(task, q, fmt), [TARGET_DELIMITER + c for c in doc_to_choices(q, fmt)])
        for q in task.questions
    ]


def model_max_length(model: Any, tokenizer: Any) -> int:
    """The context length lm-eval's HFLM assumes for ``model``."""
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if cfg is not None and getattr(cfg, attr, None):
            return int(getattr(cfg, attr))
    mml = getattr(tokenizer, "model_max_length", None)
    if mml and mml < 10**12:
        return int(mml)
    return 2048


@dataclass
class EncodedRequests:
    """Token ids for every (question, choice) pair.

    Attributes:
        contexts: per question, the context ids (identical for its choices).
        continuations: per question, per choice, the continuation ids.
    """

    contexts: list[list[int]]
    continuations: list[list[list[int]]]

    @property
    def single_token(self) -> bool:
        """True when every continuation is one token: one forward per question suffices."""
        return all(len(c) == 1 for cs in self.continuations for c in cs)


def _encode_batch(
    tokenizer: Any, strings: list[str], add_special_tokens: bool | None, prepend_bos: bool
) -> list[list[int]]:
    """lm-eval's ``tok_encode`` over a batch (plus an optional explicit BOS)."""
    bos = getattr(tokenizer, "bos_token", None)
    if add_special_tokens is not None:
        groups = {add_special_tokens: list(range(len(strings)))}
    else:
        # lm-eval: default special tokens, except for a string that already starts with BOS
        groups = {None: [], False: []}
        for i, s in enumerate(strings):
            groups[False if bos and s.startswith(bos) else None].append(i)
    out: list[list[int]] = [[] for _ in strings]
    for ast, idx in groups.items():
        if not idx:
            continue
        kw: dict[str, Any] = {} if ast is None else {"add_special_tokens": ast}
        enc = tokenizer([strings[i] for i in idx], **kw)["input_ids"]
        for i, e in zip(idx, enc, strict=True):
            out[i] = list(e)
    if prepend_bos:
        bos_id = getattr(tokenizer, "bos_token_id", None)
        if bos_id is None:
            raise ValueError("prepend_bos needs a tokenizer with a bos_token_id")
        out = [e if e[:1] == [bos_id] else [bos_id] + e for e in out]
    return out


def encode_requests(
    tokenizer: Any,
    requests: list[tuple[str, list[str]]],
    add_special_tokens: bool | None = None,
    prepend_bos: bool = False,
) -> EncodedRequests:
    """Tokenize (context, continuations) pairs the way lm-eval's ``_encode_pair`` does."""
    ctx_strs: list[str] = []
    whole_strs: list[str] = []
    for context, conts in requests:
        n_sp = len(context) - len(context.rstrip())
        ctx = context[:-n_sp] if n_sp else context
        ctx_strs.append(ctx)
        whole_strs += [ctx + (context[-n_sp:] if n_sp else "") + c for c in conts]
    ctx_enc = _encode_batch(tokenizer, ctx_strs, add_special_tokens, prepend_bos)
    whole_enc = _encode_batch(tokenizer, whole_strs, add_special_tokens, prepend_bos)
    conts_out: list[list[list[int]]] = []
    k = 0
    for i, (_, conts) in enumerate(requests):
        n = len(ctx_enc[i])
        if n == 0:
            raise ValueError(f"question {i}: the context encodes to no tokens")
        row = []
        for _ in conts:
            cont = whole_enc[k][n:]
            if not cont:
                raise ValueError(
                    f"question {i}: a continuation encodes to no tokens "
                    f"(the tokenizer merged it into the context)"
                )
            row.append(cont)
            k += 1
        conts_out.append(row)
    return EncodedRequests(ctx_enc, conts_out)


def model_row(ctx: list[int], cont: list[int], max_len: int) -> tuple[list[int], int, int]:
    """lm-eval's model input for one pair, with where the continuation is scored.

    Returns:
        (input ids, first scored position, number of scored positions): logits at positions
        ``start .. start + n - 1`` predict the continuation tokens.
    """
    inp = (ctx + cont)[-(max_len + 1) :][:-1]
    n = len(cont)
    return inp, len(inp) - n, n
