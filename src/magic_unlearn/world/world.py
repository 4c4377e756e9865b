"""Build a world folder atomically, and load one back.

Layout::

    world.json                      manifest: config, counts, file hashes, content hash
    facts.jsonl                     ground truth: one record per fact
    tokenizer/                      Hugging Face tokenizer (PreTrainedTokenizerFast)
    corpora/<name>.jsonl            {"id", "text", "labels", "fact_ids"} per document
    questions/<name>.jsonl          {"question", "choices", "answer", "subject", "fact_id", ...}
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import magic_unlearn
from magic_unlearn.config import from_dict, to_dict
from magic_unlearn.io import atomic_dir, atomic_write_json, atomic_write_text, bytes_hash, file_hash
from magic_unlearn.world.config import WorldConfig, make_config
from magic_unlearn.world.generate import (
    CORPORA,
    QUESTION_SETS,
    WorldGenerator,
    hazard_keywords,
    qa_text,
    vocabulary_text,
)
from magic_unlearn.world.tokenizer import build_tokenizer, load_world_tokenizer

WORLD_FORMAT = 1


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)


def build_world(
    cfg_or_preset: str | WorldConfig | dict[str, Any] = "tiny",
    out_dir: str | Path = "runs/world",
    overwrite: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Generate a world and write it to ``out_dir`` (built under a temp name, then renamed).

    Args:
        cfg_or_preset: a preset name (``tiny``, ``small``, ``medium``), a :class:`WorldConfig`
            or a dict of its fields.
        out_dir: the world folder to create.
        overwrite: replace an existing folder.
        overrides: field values applied on top of the preset/config.

    Returns:
        ``out_dir`` as a :class:`Path`.
    """
    cfg = make_config(cfg_or_preset, overrides)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite)")
    gen = WorldGenerator(cfg)
    corpora = gen.corpora()
    questions = gen.questions()
    tok = build_tokenizer(vocabulary_text(corpora, questions))
    # labels are computed from pre-tokenization; the word-level tokenizer is one id per word
    for name, docs in corpora.items():
        enc = tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"] if docs else []
        for d, ids in zip(docs, enc, strict=True):
            if len(ids) != len(d["labels"]) or tok.unk_token_id in ids:
                raise AssertionError(f"{name}/{d['id']}: tokenizer does not match the labels")
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        tok.save_pretrained(str(tmp / "tokenizer"))
        for name, docs in corpora.items():
            atomic_write_text(tmp / "corpora" / f"{name}.jsonl", _jsonl(docs))
        for name, qs in questions.items():
            atomic_write_text(tmp / "questions" / f"{name}.jsonl", _jsonl(qs))
        atomic_write_text(tmp / "facts.jsonl", _jsonl([f.record() for f in gen.facts]))
        files = {
            str(p.relative_to(tmp)): file_hash(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        content_hash = bytes_hash(
            json.dumps({"config": to_dict(cfg), "files": files}, sort_keys=True).encode()
        )

        def ntok(docs: list[dict[str, Any]]) -> int:
            return sum(len(d["labels"]) for d in docs)

        manifest = {
            "stage": "world",
            "format": WORLD_FORMAT,
            "magic_unlearn_version": magic_unlearn.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "complete",
            "hash": content_hash,
            "config": to_dict(cfg),
            "counts": {
                "facts": len(gen.facts),
                "hazard_facts": len(gen.facts_where(domain="hazard")),
                "evaluated_hazard_facts": len(gen.facts_where(domain="hazard", transfer=False)),
                "transfer_hazard_facts": len(gen.facts_where(domain="hazard", transfer=True)),
                "general_facts": len(gen.facts_where(domain="general")),
                "entangled_general_facts": len(gen.facts_where(entangled=True)),
                "vocab_size": len(tok),
                "corpora": {n: {"docs": len(d), "tokens": ntok(d)} for n, d in corpora.items()},
                "questions": {n: len(q) for n, q in questions.items()},
            },
            "agents": gen.agents,
            "pools": gen.pools,
            "labels": {
                "0": "other (template, filler, entity name)",
                "1": "general-fact value",
                "2": "hazard-fact value",
            },
            "files": files,
        }
        atomic_write_json(tmp / "world.json", manifest)
    return out_dir


class World:
    """A built world folder. Use :meth:`load`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.dir = path
        self.manifest = manifest
        self.config: WorldConfig = from_dict(
            WorldConfig, manifest["config"], source=str(path / "world.json")
        )
        self.hash: str = manifest["hash"]

    @classmethod
    def load(cls, path: str | Path) -> World:
        """Open a world folder written by :func:`build_world`."""
        path = Path(path)
        mf = path / "world.json"
        if not mf.exists():
            raise FileNotFoundError(
                f"{path} is not a world folder (no world.json); create one "
                f"with `magic-unlearn world build --preset tiny --out {path}`"
            )
        man = json.loads(mf.read_text())
        if man.get("stage") != "world" or "hash" not in man or "config" not in man:
            raise ValueError(f"{mf}: not a world manifest (needs stage 'world', hash, config)")
        return cls(path, man)

    @cached_property
    def tokenizer(self) -> Any:
        return load_world_tokenizer(self.dir / "tokenizer")

    def corpus_path(self, name: str) -> Path:
        if name not in CORPORA:
            raise KeyError(f"unknown corpus {name!r}; worlds have {list(CORPORA)}")
        return self.dir / "corpora" / f"{name}.jsonl"

    def corpus(self, name: str) -> list[dict[str, Any]]:
        return _read_jsonl(self.corpus_path(name))

    def questions_path(self, name: str) -> Path:
        if name not in QUESTION_SETS:
            raise KeyError(f"unknown question set {name!r}; worlds have {list(QUESTION_SETS)}")
        return self.dir / "questions" / f"{name}.jsonl"

    def questions(self, name: str) -> list[dict[str, Any]]:
        return _read_jsonl(self.questions_path(name))

    def facts(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.dir / "facts.jsonl")

    def hazard_keywords(self) -> list[str]:
        """The world's hazard keyword blocklist (regexes; :func:`~.generate.hazard_keywords`):
        the ground-truth-free guidance of the ``keyword`` attribution baseline."""
        return hazard_keywords(self.config)

    def verify(self) -> None:
        """Re-hash every file and raise if one changed since the build."""
        for rel, h in self.manifest["files"].items():
            if file_hash(self.dir / rel) != h:
                raise ValueError(
                    f"{self.dir / rel} changed since the world was built "
                    f"(hash mismatch); rebuild the world"
                )

    def __repr__(self) -> str:
        return f"World({str(self.dir)!r}, hash={self.hash})"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (incomplete world folder?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cloze_prompt(question: dict[str, Any]) -> str:
    """``Question: {question}\\nAnswer:`` (the continuation is `` {choice}``)."""
    return qa_text(question["question"])
