"""The demo's real stages end to end on the micro preset (tiny step counts; seconds)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from magic_unlearn.config import ConfigError
from magic_unlearn.pipeline import ResultsStore, is_complete
from magic_unlearn.pipeline.demo import Demo, load_demo_config, run_demo


@pytest.fixture(scope="module")
def micro_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("demo")
    t0 = time.time()
    run_demo("micro", out=out, progress=False)
    return out, time.time() - t0


def test_demo_micro_runs_every_stage(micro_demo: tuple[Path, float]) -> None:
    out, _ = micro_demo
    cfg = load_demo_config("micro")
    store = ResultsStore(out)
    recs = store.runs()
    assert all(r.status == "complete" and is_complete(r.folder) for r in recs)
    kinds = sorted(r.kind for r in recs)
    n_attr = 1 + len(cfg.attribution.baselines)
    assert kinds == sorted(
        ["world"]
        + ["pretrain"] * 2
        + ["reference"] * 2
        + ["attribute"] * n_attr
        + ["analyze"]
        + ["unlearn"] * len(cfg.methods)
    )
    # the stages produced real artifacts: HF models, score artifacts, tamper curves
    for r in store.runs(kind="unlearn") + store.runs(kind="reference"):
        s = r.metrics["summary"]
        assert 0.0 <= s["hazard_acc"] <= 1.0 and 0.0 <= s["general_acc"] <= 1.0
        assert s["tamper"]["label"] in ("yes", "no", "partial", "false_positive", "unknown")
        curves = json.loads(r.artifact("tamper.curves").read_text())
        assert set(curves["attacks"]) == set(cfg.tamper["only"])
    for r in store.runs(kind="unlearn"):
        assert (r.artifact("unlearn.model") / "config.json").exists()
        assert r.metrics["summary"]["method"] in ("ga", "orth_cb")
    # the weighted method really read the MAGIC artifact
    w = [r for r in store.runs(kind="unlearn") if r.config["unlearn"].get("token_weights")]
    magic = [r for r in store.runs(kind="attribute") if r.name == "magic"][0]
    assert w and w[0].config["unlearn"]["token_weights"] == [
        str(magic.artifact("attribute.scores"))
    ]


def test_demo_report_lists_every_row(micro_demo: tuple[Path, float]) -> None:
    out, _ = micro_demo
    md = (out / "report.md").read_text()
    cfg = load_demo_config("micro")
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "](runs/" in ln]
    labels = [ln.split("|")[1].strip() for ln in rows]
    assert labels == ["base", "filtered"] + [m["label"] for m in cfg.methods]
    for ln in rows:
        folder = re.search(r"\]\((runs/[^)]+)/\)", ln).group(1)
        assert is_complete(out / folder)
    assert "## Attribution" in md and "1. How separated" in md
    assert "## Recovery curves" in md and "## Demo timings" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="report_assets' not in html


def test_demo_rerun_is_cached(micro_demo: tuple[Path, float]) -> None:
    out, cold = micro_demo
    demo = Demo(load_demo_config("micro"), out, progress=False)
    t0 = time.time()
    demo.run()
    warm = time.time() - t0
    assert all(cached for _, _, cached, _ in demo.timings[:-1])  # every step but the report
    assert warm < cold


def test_demo_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown demo preset 'huge'"):
        load_demo_config("huge")
    with pytest.raises(ConfigError, match="unknown field"):
        load_demo_config("micro", overrides=["attribution.strat=base"])
    bad = tmp_path / "d.yaml"
    bad.write_text("methods:\n  - {label: x, unlern: {method: ga}}\n")
    with pytest.raises(ConfigError, match=r"methods\[0\]"):
        load_demo_config(config=bad)
    for preset in ("tiny", "small"):  # the shipped configs validate against every stage
        cfg = load_demo_config(preset, device="cpu")  # small ships device: cuda
        assert len(cfg.methods) >= 6
        Demo(cfg, tmp_path / preset, progress=False).validate()
    cfg = load_demo_config("micro")
    cfg.methods[0]["unlearn"]["loop"] = {"stepz": 3}
    with pytest.raises(ConfigError, match=r"methods\[0\].*stepz"):
        Demo(cfg, tmp_path / "m", progress=False).validate()
    cfg = load_demo_config("micro", overrides=["tamper.attacks.standard.lrr=1"])
    with pytest.raises(ConfigError, match="lrr"):
        Demo(cfg, tmp_path / "m", progress=False).validate()


def test_readme_trajectory_is_the_demos() -> None:
    """configs/traj_tiny.yaml (the README tour's `attribute --config`) is the tiny demo's
    trajectory: one run, not two that drift apart."""
    from magic_unlearn.attribution import TrajectoryConfig
    from magic_unlearn.config import from_dict, load_config
    from magic_unlearn.pipeline.demo import config_path, load_demo_config

    tour = load_config(TrajectoryConfig, config_path("tiny").with_name("traj_tiny.yaml"))
    demo = from_dict(TrajectoryConfig, load_demo_config("tiny").attribution.resolve("tiny")[2])
    assert tour == demo


def test_attribution_regime_presets_and_overrides(micro_demo: tuple[Path, float]) -> None:
    from magic_unlearn.attribution.regimes import REGIMES

    # fields left unset (null) come from the regime; set ones override it
    unset = ["attribution.start=null", "attribution.mix=null", "attribution.trajectory={}"]
    cfg = load_demo_config("tiny", overrides=["attribution.regime=acquire", *unset])
    start, mix, traj = cfg.attribution.resolve("tiny")
    assert (start, mix) == ("filtered", ["pretrain"])
    assert traj == REGIMES["acquire"]["trajectory"]["tiny"]
    cfg = load_demo_config(
        "tiny",
        overrides=[
            "attribution.regime=seed",
            *unset,
            "attribution.trajectory={steps: 5}",
            "attribution.mix=[]",
        ],
    )
    start, mix, traj = cfg.attribution.resolve("tiny")
    assert start == "base" and mix == [] and traj["steps"] == 5 and traj["lr"] == 1e-4
    with pytest.raises(ConfigError, match="regime"):
        load_demo_config("tiny", overrides=["attribution.regime=nope"])
    # the micro demo trained on forget + pretrain; its forget rows were found by id
    out, _ = micro_demo
    magic = [r for r in ResultsStore(out).runs(kind="attribute") if r.name == "magic"][0]
    ids = json.loads((magic.artifact("attribute.scores") / "meta.json").read_text())["doc_ids"]
    assert any(i.startswith("forget-") for i in ids) and any(i.startswith("pretrain-") for i in ids)
