"""Sharded MAGIC: 2 gloo processes give one process's per-token scores (float64, to 1e-10)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from magic_unlearn.attribution import (
    LoraSpec,
    ScoreArtifact,
    TrajectoryConfig,
    attribute,
    magic,
    per_token_loss,
)
from magic_unlearn.attribution.shard import ShardGroup, flat_shard
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import build_model

V, N, L = 40, 7, 10
TINY = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
)
HELDOUT = torch.randint(4, V, (3, L), generator=torch.Generator().manual_seed(123))
HELDOUT2 = torch.randint(4, V, (2, L), generator=torch.Generator().manual_seed(7))


def make_corpus() -> TokenizedCorpus:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V, (N, L), generator=g)
    am = torch.ones(N, L, dtype=torch.long)
    am[1, 7:] = 0
    am[4, 4:] = 0
    ids[am == 0] = 0
    lm = am.float()
    lm[:, 0] = 0
    neg = torch.full((N, L), -1)
    return TokenizedCorpus(ids, am, lm, neg, neg.clone(), [f"d{i}" for i in range(N)])


def f_a(model: torch.nn.Module) -> torch.Tensor:
    return per_token_loss(model, HELDOUT, None)[:, 1:].mean()


def f_b(model: torch.nn.Module) -> torch.Tensor:
    return per_token_loss(model, HELDOUT2, None)[:, 1:].mean()


# batch 3 over 2 ranks: rank 1 runs one real row and one ghost row
CASES = {
    "sgd": dict(optimizer="sgd", lr=0.05, weight_decay=0.1, checkpointing="sqrt", storage="disk"),
    "adamw": dict(
        optimizer="adamw", lr=0.01, eps=1e-4, weight_decay=0.1, checkpointing="kary", storage="cpu"
    ),
    "adamw_lora": dict(
        optimizer="adamw",
        lr=0.01,
        eps=1e-4,
        checkpointing="every",
        storage="cpu",
        lora=LoraSpec(r=2, alpha=4, init="gaussian"),
    ),
}


def cfg_for(case: str) -> TrajectoryConfig:
    return TrajectoryConfig(
        steps=5, batch_size=3, dtype="float64", schedule="cosine", warmup_steps=2, **CASES[case]
    )


def _raw_scores(run) -> dict[str, torch.Tensor]:
    """Run ``run()`` and return the float64 scores before the artifact casts them to float32."""
    raw: dict[str, torch.Tensor] = {}
    real = magic._package

    def keep(corpus, scores, per, meta, tokenizer, keep_float64):
        raw.update({q: s.detach().clone() for q, s in scores.items()})
        return real(corpus, scores, per, meta, tokenizer, keep_float64)

    magic._package = keep
    try:
        run()
    finally:
        magic._package = real
    return raw


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    got = {}
    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    for case in CASES:
        out = Path(folder) / f"art_{case}"
        got[case] = _raw_scores(
            lambda case=case, out=out: attribute(
                model, make_corpus(), {"a": f_a, "b": f_b}, cfg_for(case), out=out, progress=False
            )
        )
        # every rank returns after rank 0 wrote the artifact and removed the work folder
        assert out.exists() and not (Path(folder) / f".art_{case}.magic-work").exists()
    torch.save(got, Path(folder) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    # the reference runs with the workers' single intra-op thread: float64 CPU kernels sum in an
    # order that depends on the thread count (tests/test_unlearn_loop.py, _check_distributed)
    with _threads(1):
        for case in CASES:
            ref = _raw_scores(
                lambda case=case: attribute(
                    model, make_corpus(), {"a": f_a, "b": f_b}, cfg_for(case), progress=False
                )
            )
            art = ScoreArtifact.load(tmp_path / f"art_{case}")
            for q in ("a", "b"):
                assert ref[q].dtype == torch.float64 and ref[q].abs().max() > 1e-4
                for got in ranks:
                    torch.testing.assert_close(got[case][q], ref[q], rtol=0, atol=1e-10)
                # the artifact rank 0 wrote holds the same scores (float64: a float64 run)
                torch.testing.assert_close(art.scores[q], ref[q], rtol=0, atol=1e-10)


def test_flat_shards_cover_the_tensor() -> None:
    t = torch.arange(10.0).view(2, 5)
    parts = [flat_shard(t, ShardGroup(r, 3)) for r in range(3)]
    assert [p.numel() for p in parts] == [4, 4, 4]
    assert torch.equal(torch.cat(parts)[:10], t.reshape(-1))
    assert torch.equal(torch.cat(parts)[10:], torch.zeros(2))


def test_world_size_one_equals_plain_engine() -> None:
    """The sharded code path in one process (shards, gather parametrization, sliced batches)."""
    from magic_unlearn.attribution.sharded import attribute_sharded

    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    for case in ("sgd", "adamw"):
        cfg = cfg_for(case)
        with _threads(1):  # tiny models: one thread is fastest, and the same for both runs
            ref = _raw_scores(
                lambda cfg=cfg: attribute(model, make_corpus(), {"a": f_a}, cfg, progress=False)
            )
            got = _raw_scores(
                lambda cfg=cfg: attribute_sharded(
                    model, make_corpus(), {"a": f_a}, cfg, progress=False
                )
            )
        assert ref["a"].abs().max() > 0
        torch.testing.assert_close(got["a"], ref["a"], rtol=0, atol=1e-12)


def _cli_setup(word_tokenizer, tmp_path: Path) -> tuple[Callable[[Path], list[str]], str]:
    """A tiny model folder, corpus, query and float64 trajectory config for ``attribute``.

    Returns ``argv(out)`` (the CLI arguments writing the artifact to ``out``) and the query key.
    """
    import json

    mdir = tmp_path / "model"
    build_model(TINY, vocab_size=len(word_tokenizer)).save_pretrained(mdir)
    word_tokenizer.save_pretrained(mdir)
    texts = ["the red fox is in the host", "a blue cat and a fish", "the gene of the virus"]
    corpus_file = tmp_path / "train.jsonl"
    corpus_file.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    qfile = tmp_path / "qa.jsonl"
    qfile.write_text(
        json.dumps(
            {
                "question": "the red fox is in the",
                "answer": 0,
                "choices": ["host", "route", "tissue", "gene"],
            }
        )
        + "\n"
    )
    cfg = tmp_path / "traj.yaml"
    cfg.write_text(
        "optimizer: adamw\nlr: 0.01\nsteps: 3\nbatch_size: 3\nmax_length: 12\ndtype: float64\n"
    )

    def argv(out: Path) -> list[str]:
        return [
            "attribute",
            "--model",
            str(mdir),
            "--corpus",
            str(corpus_file),
            "--query",
            str(qfile),
            "--config",
            str(cfg),
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ]

    return argv, str(qfile)


def _launcher_env() -> dict[str, str]:
    """This environment with one thread per process and this tree's ``src`` on the path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def _check_launched_equals_one_process(
    cmd: list[str], env: dict[str, str], argv: Callable[[Path], list[str]], q: str, tmp: Path
) -> None:
    """Run ``cmd`` (a launcher writing ``tmp/two``), then one in-process ``attribute`` writing
    ``tmp/one``; the two float64 artifacts hold the same scores (to 1e-10)."""
    import subprocess

    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with _threads(1):
        res = CliRunner().invoke(app, argv(tmp / "one"))
    assert res.exit_code == 0, res.output
    one, two = ScoreArtifact.load(tmp / "one"), ScoreArtifact.load(tmp / "two")
    # the launcher really started 2 ranks (a silent one-process run would match trivially)
    assert two.meta["timings"]["world_size"] == 2
    assert one.meta["model_hash"] == two.meta["model_hash"]
    assert one.scores[q].dtype == two.scores[q].dtype == torch.float64
    assert one.scores[q].abs().max() > 0
    torch.testing.assert_close(two.scores[q], one.scores[q], rtol=0, atol=1e-10)


@pytest.mark.slow
def test_cli_attribute_under_torchrun(word_tokenizer, tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m magic_unlearn.cli attribute``: rank 0 writes the artifact
    of one process (gloo, float64)."""
    import sys

    argv, q = _cli_setup(word_tokenizer, tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "magic_unlearn.cli",
        *argv(tmp_path / "two"),
    ]
    _check_launched_equals_one_process(cmd, _launcher_env(), argv, q, tmp_path)


@pytest.mark.slow
def test_cli_attribute_under_accelerate_launch(word_tokenizer, tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2 -m magic_unlearn.cli attribute``: rank 0
    writes the artifact of one process (gloo on the CPU, float64).

    ``--multi_gpu`` is accelerate's multi-process launcher (``torch.distributed.run`` underneath,
    the documented GPU command); the processes run on the CPU because the CLI is given
    ``--device cpu``. accelerate's ``--cpu`` flag would start a single process (its multi-CPU
    launch needs ``mpirun``). No accelerate config from the user's home is read: ``HF_HOME``
    points to an empty folder and every setting is on the command line.
    """
    import sys

    pytest.importorskip("accelerate")
    argv, q = _cli_setup(word_tokenizer, tmp_path)
    env = _launcher_env()
    env["HF_HOME"] = str(tmp_path / "hf_home")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "--main_process_port=0",
        "--num_cpu_threads_per_process=1",
        "-m",
        "magic_unlearn.cli",
        *argv(tmp_path / "two"),
    ]
    _check_launched_equals_one_process(cmd, env, argv, q, tmp_path)


@pytest.mark.gpu
def test_gpu_world_size_one_equals_plain_engine() -> None:
    """On one GPU: the sharded code path (W = 1) gives the plain engine's scores (fp32, no TF32,
    CUDA graphs in both)."""
    from magic_unlearn.attribution.sharded import attribute_sharded

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    model = build_model("neox-tiny", vocab_size=V, seed=0, attn_implementation="sdpa").to(dev)
    q = {"a": lambda m: per_token_loss(m, HELDOUT.to(dev), None)[:, 1:].mean()}
    for kw in (
        dict(optimizer="sgd", lr=0.05),
        dict(optimizer="adamw", lr=1e-3, reverse_microbatch=1),
        dict(optimizer="sgd", lr=0.05, precision="bf16", lora=LoraSpec(r=4, alpha=8)),
    ):
        # float64_prefix=0: the sharded path has no float64 prefix (its trust report is drift
        # only), so the plain engine runs without one too and both give the same fp32 math
        cfg = TrajectoryConfig(
            steps=9, batch_size=3, checkpointing="sqrt", storage="cpu", float64_prefix=0, **kw
        )
        ref = _raw_scores(lambda cfg=cfg: attribute(model, make_corpus(), q, cfg, progress=False))
        got = _raw_scores(
            lambda cfg=cfg: attribute_sharded(model, make_corpus(), q, cfg, progress=False)
        )
        assert ref["a"].abs().max() > 0
        tol = dict(rtol=2e-2, atol=1e-5) if kw.get("precision") == "bf16" else {}
        torch.testing.assert_close(got["a"], ref["a"], **tol)


class _Killed(RuntimeError):
    """Stands in for a killed process."""


def test_sharded_run_resumes_after_interruption(tmp_path: Path, monkeypatch) -> None:
    from magic_unlearn.attribution import reverse
    from magic_unlearn.attribution.sharded import attribute_sharded

    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    cfg = TrajectoryConfig(
        **{**cfg_for("sgd").__dict__, "steps": 7, "resume_every": 2, "storage": "disk"}
    )
    out = tmp_path / "scores"
    real = reverse.ReverseStep.__call__
    done = {"n": 0}

    def killed_after_4(self, t, state):
        if done["n"] == 4:
            raise _Killed(f"killed before reverse step {t}")
        done["n"] += 1
        real(self, t, state)

    with _threads(1):
        full = _raw_scores(
            lambda: attribute_sharded(model, make_corpus(), {"a": f_a}, cfg, progress=False)
        )
        with monkeypatch.context() as m:
            m.setattr(reverse.ReverseStep, "__call__", killed_after_4)
            with pytest.raises(_Killed):
                attribute_sharded(model, make_corpus(), {"a": f_a}, cfg, out=out, progress=False)
        work = tmp_path / ".scores.magic-work"
        assert (work / "rank0" / "reverse_state" / "state.json").exists() and not out.exists()
        calls = {"n": 0}

        def counted(self, t, state):
            calls["n"] += 1
            real(self, t, state)

        with monkeypatch.context() as m:
            m.setattr(reverse.ReverseStep, "__call__", counted)
            resumed = _raw_scores(
                lambda: attribute_sharded(
                    model, make_corpus(), {"a": f_a}, cfg, out=out, progress=False
                )
            )
    # the state was saved after reverse steps 6, 5, 4, 3 (every 2): 3 steps were left
    assert calls["n"] == 3
    assert not work.exists() and out.exists()
    torch.testing.assert_close(resumed["a"], full["a"], rtol=0, atol=1e-12)
