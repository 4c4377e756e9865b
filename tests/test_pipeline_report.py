"""The report renders every run of a results directory (fake stages, real verdict + analysis)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from magic_unlearn.pipeline import ResultsStore, Stage, StageResult, execute_run, make_spec
from magic_unlearn.pipeline.report import build_report, render_html, tamper_text
from magic_unlearn.pipeline.stages import verdict_summary

FILTERED = [0.25, 0.27, 0.30, 0.31]  # the filtered model relearns a little under attack
BASE = [0.95, 0.95, 0.96, 0.96]


def _curve(ys: list[float], gen: float) -> list[dict]:
    return [{"step": 5 * i, "hazard_acc": y, "general_acc": gen} for i, y in enumerate(ys)]


def fake_eval(ctx, out: Path) -> StageResult:
    u = ctx.config.unlearn
    return StageResult(summary={"hazard_acc": u["hz"], "general_acc": u["gen"]})


def fake_tamper(ctx, out: Path) -> StageResult:
    """Curves in the tamper stage's format and the real verdict logic on them."""
    from magic_unlearn.tamper.config import VerdictConfig
    from magic_unlearn.tamper.verdict import decide, summarize_attack

    u = ctx.config.unlearn
    ys = [u["hz"], *u["attacked"]]
    attacks = {
        a: {"x_label": "step", "points": _curve(ys, u["gen"])} for a in ("standard", "relearn")
    }
    curves = {
        "chance": 0.25,
        "attacks": attacks,
        "reference": {
            "base": {a: {"points": _curve(BASE, 0.9)} for a in attacks},
            "filtered": {a: {"points": _curve(FILTERED, 0.9)} for a in attacks},
        },
    }
    (out / "tamper").mkdir()
    (out / "tamper" / "curves.json").write_text(json.dumps(curves))
    cfg = VerdictConfig()
    sums = {
        a: summarize_attack(
            a,
            e["points"],
            cfg,
            base_acc=BASE[0],
            filtered_points=curves["reference"]["filtered"][a]["points"],
        )
        for a, e in attacks.items()
    }
    v = decide(sums, cfg, general_acc=u["gen"], reference_general_acc=0.9)
    return StageResult(
        artifacts={"curves": "tamper/curves.json"},
        summary={"tamper": verdict_summary(v, u.get("is_reference", False))},
    )


def fake_analyze(ctx, out: Path) -> StageResult:
    """The real analysis on random scores over a small fake corpus."""
    import torch

    from magic_unlearn.analysis import analyze, from_tensors
    from magic_unlearn.data import TokenizedCorpus

    g = torch.Generator().manual_seed(0)
    n, L = 12, 10
    ids = torch.randint(5, 50, (n, L), generator=g)
    am = torch.ones(n, L, dtype=torch.long)
    lm = am.float()
    lm[:, 0] = 0
    labels = torch.randint(0, 3, (n, L), generator=g)
    corpus = TokenizedCorpus(
        ids, am, lm, labels, torch.full((n, L), -1), [f"d{i}" for i in range(n)]
    )
    h = torch.randn(n, L, generator=g) - (labels == 2).float()
    gen = torch.randn(n, L, generator=g) - (labels == 1).float()
    sets = [from_tensors(h * lm, corpus, "hazard_qa"), from_tensors(gen * lm, corpus, "general_qa")]
    analyze(sets, out / "analysis", is_world=True)
    return StageResult(artifacts={"analysis": "analysis"})


STAGES = {
    "eval": Stage("eval", fake_eval),
    "tamper": Stage("tamper", fake_tamper),
    "analyze": Stage("analyze", fake_analyze),
}

RUNS = [
    # kind, name, hazard, general, attacked hazard curve, expected table wording
    (
        "reference",
        "base",
        0.95,
        0.90,
        [0.95, 0.96, 0.96],
        "no: broken by all 2 (relearn +65.0 pts before any attack, standard +65.0 pts",
    ),
    ("reference", "filtered", 0.25, 0.89, FILTERED[1:], "reference (filtered model)"),
    ("unlearn", "rmu", 0.30, 0.86, [0.28, 0.29, 0.31], "yes (resists 2/2)"),
    (
        "unlearn",
        "ga",
        0.26,
        0.87,
        [0.40, 0.80, 0.93],
        "no: broken by all 2 (relearn +62.0 pts from step 5",
    ),
    (
        "unlearn",
        "rr",
        0.25,
        0.30,
        [0.25, 0.25, 0.25],
        "false positive (general ability destroyed: 30.0% vs 90.0%)",
    ),
]


def test_report_contains_every_run(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    specs = []
    for kind, name, hz, gen, attacked, _ in RUNS:
        spec = make_spec(
            {
                "name": name,
                "kind": kind,
                "label": name,
                "stages": ["eval", "tamper"],
                "data": "forget corpus" if kind == "unlearn" else "",
                "unlearn": {
                    "hz": hz,
                    "gen": gen,
                    "attacked": attacked,
                    "is_reference": name == "filtered",
                },
            }
        )
        execute_run(spec, tmp_path, STAGES, store=store)
        specs.append(spec)
    an = make_spec({"name": "magic", "kind": "analyze", "stages": ["analyze"]})
    execute_run(an, tmp_path, STAGES, store=store)
    bad = make_spec({"name": "npo", "stages": ["eval"], "unlearn": {}})
    with pytest.raises(KeyError):
        execute_run(bad, tmp_path, STAGES, store=store)

    res = build_report(tmp_path)
    md = res.markdown.read_text()
    assert res.n_rows == len(RUNS) and res.n_failed == 1
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "runs/" in ln]
    assert len(table) == len(RUNS)
    # reference rows first, then methods in creation order
    assert [ln.split("|")[1].strip() for ln in table] == [r[1] for r in RUNS]
    for (kind, name, hz, gen, _, wording), spec, ln in zip(RUNS, specs, table, strict=True):
        assert spec.run_id in ln and wording in ln
        assert (f"| {name} | - |" in ln) == (kind == "reference")
        assert f"| {100 * hz:.1f} | {100 * gen:.1f} |" in ln
        # links resolve to the run folder and its resolved config
        links = re.findall(r"\]\(([^)]+)\)", ln)
        assert (tmp_path / links[0]).resolve() == spec.folder(tmp_path).resolve()
        assert (tmp_path / links[1]).is_file() and links[1].endswith("config.yaml")
    assert "## Recovery curves" in md and "recovery_standard.png" in md
    assert (tmp_path / "report_assets" / "recovery_relearn.png").exists()
    assert "1. How separated" in md and "4. What is the magnitude ratio" in md
    assert "tokens_hexbin.png" in md and "AUC hazard-fact vs rest" in md
    assert bad.run_id in md and "failed" in md
    html = res.html.read_text()
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(imgs) >= 4 and all(s.startswith("data:image/png;base64,") for s in imgs)
    for spec in specs:
        assert spec.run_id in html
    assert html.count("<tr>") >= len(RUNS) + 4


def test_tamper_wording_and_html_escaping(tmp_path: Path) -> None:
    attacks = {
        "b": {"excess": 0.45, "first_break_step": 5, "x_label": "step"},
        "c": {"excess": 0.2, "first_break_step": 0, "x_label": "step"},
        "p": {"excess": 0.1, "first_break_step": 1, "x_label": "layer"},
    }
    v = {"label": "partial", "resisted": ["a"], "broken": ["b", "c"], "attacks": attacks}
    assert tamper_text({"tamper": v}) == (
        "partially: resists 1/3; broken by c +20.0 pts before any attack, b +45.0 pts from step 5"
    )
    v = {"label": "no", "resisted": [], "broken": ["b", "c", "p", "z"], "attacks": attacks}
    assert tamper_text({"tamper": v}) == (
        "no: broken by all 4 (c +20.0 pts before any attack, p +10.0 pts from layer 1, "
        "b +45.0 pts from step 5, 1 more)"
    )
    assert tamper_text({}) == "-"
    h = render_html("# T\n\n| a | b |\n|---|---|\n| <x> | [l](p/) |\n", tmp_path, "t")
    assert "&lt;x&gt;" in h and '<a href="p/">l</a>' in h and "<x>" not in h


def test_report_on_empty_dir_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no results"):
        build_report(tmp_path / "nothing")


def test_cli_report_and_sweep_dry_run(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    store = ResultsStore(tmp_path / "res")
    spec = make_spec(
        {"name": "ga", "label": "GA", "stages": ["eval"], "unlearn": {"hz": 0.3, "gen": 0.8}}
    )
    execute_run(spec, tmp_path / "res", STAGES, store=store)
    r = CliRunner().invoke(app, ["report", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    assert "1 run(s), 0 failed" in r.output and (tmp_path / "res" / "report.html").exists()

    (tmp_path / "vars.yaml").write_text(
        yaml.safe_dump({"world": "/w", "base": "/m/base", "filtered": "/m/filtered"})
    )
    grid = {
        "vars": str(tmp_path / "vars.yaml"),
        "name": "{unlearn.method}-{unlearn.loop.lr}",
        "base": {
            "world": "{world}",
            "model": "{base}",
            "reference": "{filtered}",
            "unlearn": {"forget": "{world}:forget", "loop": {"steps": 5}},
            "tamper": {"suite": "world", "only": ["standard"]},
        },
        "grid": {"unlearn.method": ["ga", "rmu"], "unlearn.loop.lr": [1e-4, 3e-4]},
    }
    g = tmp_path / "grid.yaml"
    g.write_text(yaml.safe_dump(grid))
    r = CliRunner().invoke(app, ["sweep", str(g), "--out", str(tmp_path / "sw"), "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith("pending") for ln in lines)
    assert "unlearn/ga-0.0001-" in lines[0] and "unlearn/rmu-0.0003-" in lines[3]
    grid["base"]["unlearn"]["loop"]["stepz"] = 5  # a typo fails before anything runs
    g.write_text(yaml.safe_dump(grid))
    r = CliRunner().invoke(app, ["sweep", str(g), "--out", str(tmp_path / "sw"), "--dry-run"])
    assert r.exit_code == 2 and "stepz" in r.output


# ------------------------------------------------------------------------------------------
# the answer at the top, intervals, plots (issue #18)


def _param_eval(ctx, out: Path) -> StageResult:
    f = ctx.config.params["fake"]
    return StageResult(
        summary={"hazard_acc": f["hz"], "general_acc": f["gen"], "hazard_n": 60, "general_n": 128}
    )


def _param_tamper(ctx, out: Path) -> StageResult:
    """Like fake_tamper, with 60 questions behind every accuracy (the interval rule)."""
    from magic_unlearn.tamper.config import VerdictConfig
    from magic_unlearn.tamper.verdict import decide, summarize_attack

    f = ctx.config.params["fake"]
    attacks = {a: _curve([f["hz"], *f["attacked"][a]], f["gen"]) for a in f["attacked"]}
    curves = {
        "chance": 0.25,
        "n_questions": {"hazard": 60, "general": 128},
        "attacks": {
            a: {"kind": "finetune", "x_label": "step", "points": p} for a, p in attacks.items()
        },
        "reference": {"filtered": {a: {"points": _curve(FILTERED, 0.9)} for a in attacks}},
    }
    (out / "tamper").mkdir()
    (out / "tamper" / "curves.json").write_text(json.dumps(curves))
    cfg = VerdictConfig()
    sums = {
        a: summarize_attack(a, p, cfg, filtered_points=_curve(FILTERED, 0.9), n=60)
        for a, p in attacks.items()
    }
    v = decide(sums, cfg, general_acc=f["gen"], reference_general_acc=0.9, n_general=128)
    return StageResult(
        artifacts={"curves": "tamper/curves.json"},
        summary={"tamper": verdict_summary(v, f.get("is_reference", False))},
    )


PARAM_STAGES = {"eval": Stage("eval", _param_eval), "tamper": Stage("tamper", _param_tamper)}
# label, kind, hazard, general, attacked curves, token weights (a run folder per attribution)
PARAM_RUNS = [
    ("filtered", "reference", 0.25, 0.90, {"standard": FILTERED[1:], "lora": FILTERED[1:]}, None),
    ("RR", "unlearn", 0.20, 0.88, {"standard": [0.22, 0.30], "lora": [0.25, 0.33]}, None),
    (
        "MAGIC-weighted RR",
        "unlearn",
        0.22,
        0.89,
        {"standard": [0.25, 0.35], "lora": [0.30, 0.70]},
        "runs/attribute/magic-0123abcd/attribute/scores",
    ),
    (
        "grad-sim-weighted RR",
        "unlearn",
        0.25,
        0.90,
        {"standard": [0.60, 0.90], "lora": [0.30, 0.35]},
        "runs/attribute/grad_sim-4567ef01/attribute/scores",
    ),
    ("GA", "unlearn", 0.30, 0.40, {"standard": [0.3, 0.3], "lora": [0.3, 0.3]}, None),
]


def _param_results(root: Path) -> list:
    store = ResultsStore(root)
    specs = []
    for label, kind, hz, gen, attacked, tw in PARAM_RUNS:
        unlearn = {"recipe": "weighted_rr", "retain": "w:retain"}
        if tw:
            unlearn["token_weights"] = [tw]
        spec = make_spec(
            {
                "name": label.replace(" ", "_"),
                "kind": kind,
                "label": label,
                "stages": ["eval", "tamper"],
                "unlearn": unlearn if kind == "unlearn" else {},
                "params": {
                    "fake": {
                        "hz": hz,
                        "gen": gen,
                        "attacked": attacked,
                        "is_reference": kind == "reference",
                    }
                },
            }
        )
        execute_run(spec, root, PARAM_STAGES, store=store)
        specs.append(spec)
    return specs


def test_report_answers_first_with_intervals(tmp_path: Path) -> None:
    from magic_unlearn.intervals import wilson_interval

    _param_results(tmp_path)
    md = build_report(tmp_path).markdown.read_text()
    answer = md.split("## Answer", 1)[1].split("## Results", 1)[0]
    assert md.index("## Answer") < md.index("## Results")
    # RR resists both attacks (lora's 33% is above the filtered 31% + 3 points only within
    # noise); MAGIC-weighted RR is broken by lora, grad-sim-weighted RR by standard; GA is a
    # false positive
    lo, hi = wilson_interval(0.20, 60)
    assert f"**Best method: RR**: hazard accuracy 20.0% [{100 * lo:.1f}-{100 * hi:.1f}]" in answer
    assert "resists 2 of 2 attacks" in answer
    assert "within noise of the filtered model's" in answer
    assert "Tamper resistant: RR" in answer
    assert "False positives (general ability destroyed): GA." in answer
    assert "MAGIC guidance did not beat grad-sim beyond noise" in answer
    assert "MAGIC-weighted RR has hazard 22.0%" in answer and "grad-sim-weighted RR" in answer
    rows = {
        ln.split("|")[1].strip(): ln for ln in md.splitlines() if "| runs/" in ln or "](runs/" in ln
    }
    assert f"20.0 [{100 * lo:.1f}-{100 * hi:.1f}]" in rows["RR"]
    assert (
        "partially: resists 1/2; broken by lora +39.0 pts from step 10" in rows["MAGIC-weighted RR"]
    )
    assert "yes (resists 2/2)" in rows["RR"]
    assert "Wilson 95% interval" in md and "60 hazard questions" in md


def test_plot_colours_are_distinct(tmp_path: Path) -> None:
    from magic_unlearn.pipeline.report.build import select_runs
    from magic_unlearn.pipeline.report.plots import (
        CHANCE_STYLE,
        REFERENCE_STYLE,
        method_colors,
    )

    _param_results(tmp_path)
    rows = select_runs(ResultsStore(tmp_path)).rows
    colors = method_colors(rows)
    methods = [c for label, c in colors.items() if label != "filtered"]
    reserved = {s["color"] for s in REFERENCE_STYLE.values()} | {CHANCE_STYLE["color"], "grey"}
    assert len(set(methods)) == len(methods) and not set(methods) & reserved
    assert colors["filtered"] == REFERENCE_STYLE["filtered"]["color"]


def _chromium() -> str | None:
    import shutil

    return next(
        (
            p
            for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
            if p
        ),
        None,
    )


@pytest.mark.slow
def test_report_html_renders_in_a_browser(tmp_path: Path) -> None:
    """report.html in headless Chromium: a non-blank page whose DOM holds the tables and the
    embedded figures (skips without a chromium binary: `apt-get install chromium`)."""
    import subprocess

    from matplotlib.image import imread

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary found")
    res_dir = tmp_path / "results"
    _param_results(res_dir)
    html = build_report(res_dir).html
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,1800", html.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), r.stderr[-2000:]
    img = imread(shot)  # (H, W, 3|4) floats in [0, 1]
    gray = img[..., :3].mean(axis=2)
    assert gray.std() > 0.05 and (gray < 0.5).mean() > 0.005  # text and figures, not blank
    dom = subprocess.run(
        [*flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<table") >= 2 and "Best method" in dom
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', dom)
    assert len(imgs) >= 3 and all(s.startswith("data:image/png;base64,") for s in imgs)


def test_wilson_interval_contains_the_estimate_at_the_ends() -> None:
    """At 0% or 100% the interval's end equals the estimate only up to rounding; an end past it
    gave the demo's trade-off plot negative error bars, which matplotlib refuses."""
    from magic_unlearn.intervals import wilson_interval

    for n in range(1, 301):
        for k in range(n + 1):
            lo, hi = wilson_interval(k / n, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)


def test_tradeoff_plot_draws_rows_at_0_and_100_percent(tmp_path: Path) -> None:
    """Rows with hazard accuracy 0 or 1 (every n) draw their Wilson error bars."""
    from magic_unlearn.pipeline.report.plots import plot_results_scatter
    from magic_unlearn.pipeline.store import RunRecord

    rows = [
        RunRecord(
            run_id=f"r{i}",
            kind="tamper",
            name=f"m{i}",
            config_hash="h",
            folder=tmp_path,
            status="complete",
            metrics={"summary": {"hazard_acc": h, "general_acc": g, "hazard_n": n, "general_n": n}},
        )
        for i, (h, g, n) in enumerate([(0.0, 1.0, 5), (1.0, 0.0, 13), (0.0, 1.0, 60)])
    ]
    out = plot_results_scatter(rows, tmp_path)
    assert out is not None and out.exists() and out.stat().st_size > 0
