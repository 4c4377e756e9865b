"""``magic-unlearn study``: config and twins, the leaderboard's statistics on hand-made records,
and the micro study end to end (every real stage, 2 seeds; the numbers mean nothing)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from magic_unlearn.analysis.stats import mean_ci
from magic_unlearn.attribution.regimes import resolve_regime
from magic_unlearn.config import ConfigError, config_hash
from magic_unlearn.pipeline.demo import method_attribution
from magic_unlearn.pipeline.study import (
    Study,
    build_leaderboard,
    expand_methods,
    load_records,
    load_study_config,
    merge_records,
    run_study,
    seed_config,
    select_methods,
    study_fingerprint,
)
from magic_unlearn.pipeline.study.report import attribution_table, methods_table

# ------------------------------------------------------------------------------ config


def test_twins_are_generated_and_selected() -> None:
    cfg = load_study_config("tiny")
    ms = {m.name: m for m in expand_methods(cfg)}
    g = ms["magic_rr"]
    assert g.guidance == "magic" and g.twins == {
        "unguided": "rr",
        "grad_sim": "magic_rr.grad_sim",
        "random": "magic_rr.random",
        "keyword": "magic_rr.keyword",
    }
    kw = ms["magic_rr.keyword"]
    assert kw.twin_of == "magic_rr" and kw.guidance == "keyword"
    assert kw.unlearn["token_weights"] == ["{scores.keyword}"]
    assert {k: v for k, v in kw.unlearn.items() if k != "token_weights"} == {
        k: v for k, v in g.unlearn.items() if k != "token_weights"
    }
    assert ms["rr"].guidance == "none" and not ms["rr"].twins
    sel = [m.name for m in select_methods(list(ms.values()), ["magic_rr"], ["unguided", "keyword"])]
    assert sel == ["rr", "magic_rr", "magic_rr.keyword"]  # config order, twins pulled in
    assert len(select_methods(list(ms.values()), None)) == len(ms)
    with pytest.raises(ConfigError, match="unknown method"):
        select_methods(list(ms.values()), ["nope"])
    with pytest.raises(ConfigError, match="twin kind"):
        select_methods(list(ms.values()), ["rr"], ["cousin"])


# the tamper-resistance families of the shipped presets: (name, guidance, unguided twin)
FAMILIES = [
    ("undo", "none", None),
    ("undo_guided", "magic", "undo"),
    ("token_filter", "magic", None),
    ("sam", "none", None),
    ("weighted_sam", "magic", "sam"),
    ("tar", "none", None),
    ("weighted_tar", "magic", "tar"),
]


@pytest.mark.parametrize("preset", ["micro", "tiny", "small"])
def test_presets_carry_the_tamper_resistance_families(preset: str) -> None:
    ms = {m.name: m for m in expand_methods(load_study_config(preset, device="cpu"))}
    for name, guidance, unguided in FAMILIES:
        m = ms[name]
        assert m.guidance == guidance and m.family, name
        if guidance == "magic":  # the score twins swap the scores the method really reads
            assert m.twins.get("unguided") == unguided
            tw = ms[f"{name}.random"]
            assert "{scores.random}" in repr(tw.unlearn) and "{scores.magic}" not in repr(
                tw.unlearn
            )
            assert tw.attribution == m.attribution
    # the masks of the pretraining corpus read scores of a run that trained on it
    for name in ("undo_guided", "token_filter"):
        a = ms[name].attribution
        assert a.get("regime") == "acquire" or "pretrain" in a.get("mix", []), name
    for name in ("sam", "weighted_sam", "tar", "undo"):
        assert not ms[name].attribution
    sel = select_methods(
        list(ms.values()),
        [n for n, _, _ in FAMILIES] + (["rr", "magic_rr"] if preset != "micro" else []),
        ["unguided"],
    )
    assert {m.name for m in sel} >= {n for n, _, _ in FAMILIES}


def test_a_method_may_read_scores_of_its_own_attribution_run(tmp_path: Path) -> None:
    """undo_guided and token_filter read scores of an attribution run over forget + pretraining
    data: one extra set of runs per seed (MAGIC and each baseline), shared by both methods and
    their twins; the other methods and the study's own attribution runs are unchanged."""
    cfg = load_study_config("micro")
    plain = Study(cfg, tmp_path, methods=["ga"]).demo(0).plan()
    study = Study(
        cfg, tmp_path, methods=["ga", "undo_guided", "token_filter"], twin_kinds=["random"]
    )
    plan = study.demo(0).plan()
    att = {st.role: st.spec for st in plan.steps if st.role.startswith("attribute:")}
    main = {r: s for r, s in att.items() if "@" not in r}
    extra = {r: s for r, s in att.items() if "@" in r}
    assert {r: s.run_id for r, s in main.items()} == {
        st.role: st.spec.run_id for st in plain.steps if st.role.startswith("attribute:")
    }
    # one extra set, of the score sets the methods read (MAGIC, and random for the twins)
    assert sorted(r.split("@")[0] for r in extra) == ["attribute:magic", "attribute:random"]
    for s in extra.values():
        assert s.config.params["attribute"]["mix"] == ["pretrain"]
    for s in main.values():
        assert s.config.params["attribute"]["mix"] == []
    folder = {r.split(":")[1].split("@")[0]: str(s.folder(tmp_path)) for r, s in extra.items()}
    methods = {
        study.methods[int(st.role.split(":")[1])].name: st.spec
        for st in plan.steps
        if st.role.startswith("method:")
    }
    assert set(methods) == {
        "ga",
        "undo_guided",
        "undo_guided.random",
        "token_filter",
        "token_filter.random",
    }
    u = methods["undo_guided"].config.unlearn
    assert u["undo"]["mask"]["scores"].startswith(folder["magic"] + "/")
    r = methods["undo_guided.random"].config.unlearn
    assert r["undo"]["mask"]["scores"].startswith(folder["random"] + "/")
    tf = methods["token_filter"].config.unlearn
    assert tf["retrain"]["mask"]["scores"] == u["undo"]["mask"]["scores"]
    # the method's definition (its records) holds the attribution; the others' do not change
    ms = {m.name: m for m in expand_methods(cfg)}
    assert ms["ga"].definition_hash() == config_hash(
        {"label": ms["ga"].label, "unlearn": ms["ga"].unlearn, "tamper": ms["ga"].tamper}
    )
    ug = ms["undo_guided"]
    assert ug.definition_hash() != config_hash(
        {"label": ug.label, "unlearn": ug.unlearn, "tamper": ug.tamper}
    )


def test_method_attribution_takes_a_named_regime_whole() -> None:
    cfg = load_study_config("tiny")
    a = method_attribution(cfg, {"regime": "acquire"})
    want = resolve_regime("acquire", "tiny")
    start, mix, traj = a.resolve("tiny")
    assert (start, mix, traj) == (want["start"], want["mix"], want["trajectory"])
    assert a.queries == cfg.attribution.queries and a.baselines == cfg.attribution.baselines
    # the method's own fields still apply on top of the regime
    b = method_attribution(cfg, {"regime": "acquire", "trajectory": {"steps": 7}})
    assert b.resolve("tiny")[2] == {**want["trajectory"], "steps": 7}
    # without a regime the fields merge over the study's section
    c = method_attribution(cfg, {"mix": ["pretrain"]})
    assert c.resolve("tiny")[1] == ["pretrain"] and c.trajectory == cfg.attribution.trajectory
    assert method_attribution(cfg, {}) is cfg.attribution


def test_method_attribution_errors_name_the_entry(tmp_path: Path) -> None:
    def bad(attribution: str, match: str) -> None:
        p = tmp_path / "s.yaml"
        p.write_text(
            "methods:\n  - name: g\n    unlearn: {method: ga, token_weights: "
            f"['{{scores.magic}}']}}\n    attribution: {attribution}\n"
        )
        with pytest.raises(ConfigError, match=match):
            load_study_config(config=p)

    bad("3", r"methods\[0\]: 'attribution' must be a mapping")
    bad("{regime: nope}", r"methods\[0\].attribution.regime")
    bad("{start: middle}", r"methods\[0\].attribution.start must be")
    bad("{colour: red}", "colour")


def test_seed_config_sets_every_seed() -> None:
    cfg = load_study_config("tiny")
    ms = select_methods(expand_methods(cfg), ["rr"])
    d = seed_config(cfg, 7, ms)
    assert d.seed == 7 and d.world["overrides"]["seed"] == 7
    assert d.pretrain["config"]["seed"] == 7 and d.attribution.trajectory["seed"] == 7
    assert d.tamper["all_attacks"]["seed"] == 7 and d.tamper["suite"] == "world_budget"
    assert [m["label"] for m in d.methods] == ["RR"]
    # seeds, methods and workers do not change the fingerprint; a setting does
    other = load_study_config("tiny", overrides=["seeds=[4]", "workers=2"])
    assert study_fingerprint(other) == study_fingerprint(cfg)
    assert study_fingerprint(load_study_config("tiny", overrides=["eval.limit=5"])) != (
        study_fingerprint(cfg)
    )


def test_study_config_errors_name_the_entry(tmp_path: Path) -> None:
    def bad(text: str, match: str) -> None:
        p = tmp_path / "s.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_study_config(config=p)

    bad("methods:\n  - {label: x, unlearn: {method: ga}}\n", r"methods\[0\]: 'name'")
    bad("methods:\n  - {name: a, unlearn: {method: ga}, twin: {}}\n", "unknown key")
    bad(
        "methods:\n  - {name: a, unlearn: {method: ga}}\n  - {name: a, unlearn: {method: ga}}\n",
        "duplicate",
    )
    bad(
        "methods:\n  - name: g\n    unlearn: {token_weights: ['{scores.magic}']}\n"
        "    twins: {unguided: missing}\n",
        "not a method name",
    )
    bad("methods:\n  - {name: a, unlearn: {method: ga}, twins: {unguided: a}}\n", "only MAGIC")
    bad(
        "methods:\n  - name: a\n    unlearn: {token_weights: ['{scores.magic}', "
        "'{scores.random}']}\n",
        "several score sets",
    )
    bad("seeds: []\n", "seeds")
    for preset in ("tiny", "small"):  # the shipped configs validate against every stage
        # small ships device: cuda; resolving the device is checked in test_pipeline_demo
        Study(load_study_config(preset, device="cpu"), tmp_path / preset).validate()
    with pytest.raises(ConfigError, match="headline_attack"):
        Study(load_study_config("tiny", overrides=["headline_attack=nope"]), tmp_path).validate()


# ------------------------------------------------------------------------------ leaderboard


def _entry(haz, gen, excess, verdict="no", steps=None, budget=40, filtered=0.3):
    """A run entry whose one attack reaches ``filtered + excess``."""
    m = filtered + excess
    return {
        "hazard_acc": haz,
        "general_acc": gen,
        "verdict": verdict,
        "chance": 0.25,
        "thresholds": {"general_drop": 0.10},
        "attacks": {
            "standard": {
                "kind": "finetune",
                "trains": True,
                "in_verdict": True,
                "x_label": "step",
                "max_hazard_acc": m,
                "filtered_max": None if verdict == "reference" else filtered,
                "steps_to_recover": steps,
                "budget": budget,
                "base_acc": 1.0,
                "status": "recovers" if excess > 0.03 else "resists",
                "points": [[0, haz, gen], [budget // 2, (haz + m) / 2, gen], [budget, m, gen]],
            }
        },
    }


INFO = {
    "a": {"label": "A", "guidance": "none", "twins": {}},
    "bad": {"label": "Destroyer", "guidance": "none", "twins": {}},
    "g": {"label": "G", "guidance": "magic", "twins": {"unguided": "a", "keyword": "g.keyword"}},
    "g.keyword": {"label": "G kw", "guidance": "keyword", "twin_of": "g", "twin_kind": "keyword"},
}


def _seeds(g_excess: list[float], a_excess: list[float], kw_excess: list[float]) -> dict:
    seeds = {}
    for s, (ge, ae, ke) in enumerate(zip(g_excess, a_excess, kw_excess, strict=True)):
        seeds[s] = {
            "references": {
                "filtered": _entry(0.28, 0.98, 0.0, "reference", steps=None),
                "base": _entry(1.0, 1.0, 0.7, "no", steps=0),
            },
            "methods": {
                "a": _entry(0.3, 0.97, ae, steps=20 + s),
                "bad": _entry(0.25, 0.40, -0.05, "false_positive"),  # lowest excess, destroyed
                "g": _entry(0.27, 0.96, ge, steps=None),  # never recovers: censored at 40
                "g.keyword": _entry(0.29, 0.97, ke, steps=30),
            },
            "attribution": {"magic:hazard_qa": {"auc_hazard_vs_rest": 0.6 + 0.01 * s}},
        }
    return seeds


def test_leaderboard_statistics_on_hand_made_records() -> None:
    lb = build_leaderboard(
        _seeds([0.02, 0.05, 0.03], [0.40, 0.50, 0.45], [0.10, 0.0, 0.20]), INFO, {"name": "t"}
    )
    rows = lb["rows"]
    assert list(rows) == ["filtered", "base", "a", "bad", "g", "g.keyword"]
    g = rows["g"]["attack_excess"]
    ref = mean_ci([0.02, 0.05, 0.03])
    assert g["mean"] == pytest.approx(ref.mean) and g["lo"] == pytest.approx(ref.lo)
    assert g["hi"] == pytest.approx(ref.hi) and g["n"] == 3
    assert rows["filtered"]["attack_excess"]["values"] == [0.0, 0.0, 0.0]
    assert rows["filtered"]["verdicts"] == {} and rows["a"]["verdicts"] == {"no": 3}
    # steps to recover: censored seeds count as the budget, and are counted
    s = rows["g"]["attacks"]["standard"]["steps_to_recover"]
    assert s["values"] == [40.0] * 3 and s["n_censored"] == 3 and s["budget"] == 40
    a = rows["a"]["attacks"]["standard"]["steps_to_recover"]
    assert a["values"] == [20.0, 21.0, 22.0] and a["n_censored"] == 0
    assert rows["base"]["attacks"]["standard"]["curve"]["steps"] == [0, 20, 40]
    # the budget sweep read off the curves: budgets 4, 8, 20 and 40 steps (10-100% of 40)
    mb = rows["a"]["attacks"]["standard"]["max_by_budget"]
    assert list(mb) == ["4", "8", "20", "40"]
    assert mb["4"]["values"] == mb["8"]["values"] == [0.3, 0.3, 0.3]  # step 0 only
    assert mb["20"]["values"] == pytest.approx([(0.3 + 0.3 + e) / 2 for e in (0.4, 0.5, 0.45)])
    assert mb["40"]["values"] == rows["a"]["attacks"]["standard"]["max_hazard_acc"]["values"]
    # paired: guided minus twin, same seed
    p = {(d["twin"], d["metric"]): d for d in lb["paired"]}
    d = p[("a", "attack_excess")]
    assert d["diffs"] == pytest.approx([-0.38, -0.45, -0.42])
    assert d["sign_test_p"] == 0.25 and d["n_negative"] == 3
    assert d["hi"] < 0 and d["finding"] == "better"
    k = p[("g.keyword", "attack_excess")]
    assert k["lo"] < 0 < k["hi"] and k["finding"] == "no detectable difference"
    assert p[("a", "max_hazard_acc[standard]")]["diffs"] == pytest.approx(d["diffs"])
    # the headline: "bad" has the lowest excess but destroyed general accuracy
    h = lb["headline"]
    assert (h["best_unguided"], h["best_guided"], h["filtered"]) == ("a", "g", "filtered")
    assert h["sentence"].startswith("Does MAGIC guidance help? Yes: G against its unguided")
    assert "paired diff -41.7 points, 95% CI [" in h["sentence"]
    assert "keyword no detectable difference" in h["sentence"]
    # the goal: chance 0.25 + 3 points, base general 1.0 - 1 point, excess <= 3 points
    go = rows["g"]["goal"]
    assert go["hazard"]["met_mean"] and go["hazard"]["limit"] == pytest.approx(0.28)
    assert not go["general"]["met_mean"] and go["general"]["gap"] == pytest.approx(0.03)
    assert not go["attacks"]["met_mean"]  # mean excess 3.3 points
    assert lb["attribution"]["magic:hazard_qa"]["auc_hazard_vs_rest"]["n"] == 3
    assert rows["a"]["compute_frac"] is None  # hand-made entries carry no compute
    assert lb["trust"] == {}  # records without trust verdicts (written before they existed)


def test_trust_verdicts_per_seed_reach_leaderboard_and_report() -> None:
    seeds = _seeds([0.02, 0.05, 0.03], [0.40, 0.50, 0.45], [0.10, 0.0, 0.20])
    verdicts = ["reliable", "doubtful", "reliable"]
    for s, v in zip(seeds.values(), verdicts, strict=True):
        s["trust"] = {"magic": v, "magic@smooth-abc": "unreliable"}
    lb = build_leaderboard(seeds, INFO, {"name": "t"})
    assert lb["trust"]["magic"] == {
        "seeds": {"0": "reliable", "1": "doubtful", "2": "reliable"},
        "counts": {"reliable": 2, "doubtful": 1},
    }
    assert lb["trust"]["magic@smooth-abc"]["counts"] == {"unreliable": 3}
    lines = attribution_table(lb)
    assert "| magic | reliable | doubtful | reliable |" in lines
    assert "| magic@smooth-abc | unreliable | unreliable | unreliable |" in lines


def test_compute_column_reads_each_runs_unlearning_compute() -> None:
    seeds = _seeds([0.02, 0.05, 0.03], [0.40, 0.50, 0.45], [0.10, 0.0, 0.20])
    for s in seeds.values():
        s["methods"]["a"]["compute_frac"] = 0.125
        s["methods"]["g"]["compute_frac"] = None  # a record written before the column existed
    lb = build_leaderboard(seeds, INFO, {"name": "t"})
    assert lb["rows"]["a"]["compute_frac"]["values"] == [0.125] * 3
    assert lb["rows"]["g"]["compute_frac"] is None
    table = methods_table(lb)
    assert table[0].endswith("| compute (x pretraining) |")
    cells = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert cells["A"].endswith("| 0.125 |") and cells["G"].endswith("| - |")


def test_headline_sentence_claims_only_what_the_interval_supports() -> None:
    mixed = build_leaderboard(
        _seeds([0.10, 0.50, 0.30], [0.30, 0.20, 0.40], [0.3, 0.3, 0.3]), INFO, {}
    )
    s = mixed["headline"]["sentence"]
    assert s.startswith("Does MAGIC guidance help? No detectable difference: G")
    d = next(x for x in mixed["paired"] if x["twin"] == "a" and x["metric"] == "attack_excess")
    assert f"sign test p={d['sign_test_p']:.2f}, n=3 seeds" in s
    worse = build_leaderboard(
        _seeds([0.50, 0.55, 0.60], [0.10, 0.12, 0.11], [0.3, 0.3, 0.3]), INFO, {}
    )
    assert "No, it does worse" in worse["headline"]["sentence"]
    one = build_leaderboard(_seeds([0.0], [0.5], [0.3]), INFO, {})
    assert (
        "Cannot tell yet" in one["headline"]["sentence"]
        and "no interval" in (one["headline"]["sentence"])
    )
    assert math.isnan(one["rows"]["g"]["attack_excess"]["lo"])
    none = build_leaderboard(
        _seeds([0.0], [0.5], [0.3]), {k: v for k, v in INFO.items() if k == "a"}, {}
    )
    assert "Not measured" in none["headline"]["sentence"]


def test_merge_records_by_fingerprint_and_definition() -> None:
    def rec(seed, methods, fp="F", created=0.0):
        return {
            "seed": seed,
            "study": {"fingerprint": fp},
            "created": created,
            "references": {"filtered": {"who": created}},
            "methods": {m: {"definition": d} for m, d in methods.items()},
            "seconds": {},
            "_path": f"seed-{seed}-{created}.json",
        }

    recs = [
        rec(0, {"a": "1"}, created=1.0),
        rec(0, {"g": "2"}, created=2.0),
        rec(1, {"a": "1", "g": "old"}),
        rec(2, {"a": "1"}, fp="other"),
    ]
    seeds, notes = merge_records(recs, "F", {"a": "1", "g": "2"})
    assert sorted(seeds) == [0, 1]
    assert set(seeds[0]["methods"]) == {"a", "g"}  # union of two method groups
    assert seeds[0]["references"]["filtered"] == {"who": 1.0}  # the earliest record's
    assert set(seeds[1]["methods"]) == {"a"}
    assert any("another definition" in n for n in notes)
    assert any("another study configuration" in n for n in notes)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    res = run_study(
        "micro", out, methods=["ga", "magic_orth_cb"], twin_kinds=["unguided", "keyword"]
    )
    assert not res.failed
    return out


def test_micro_study_end_to_end(micro_study: Path) -> None:
    lb = json.loads((micro_study / "leaderboard.json").read_text())
    assert lb["seeds"] == [0, 1] and lb["n_seeds"] == 2
    names = ["filtered", "base", "ga", "orth_cb", "magic_orth_cb", "magic_orth_cb.keyword"]
    assert list(lb["rows"]) == names
    recs = load_records(micro_study)
    assert sorted(r["seed"] for r in recs) == [0, 1]
    for name, row in lb["rows"].items():
        assert row["n"] == 2 and row["seeds"] == [0, 1]
        for m in ("hazard_acc", "general_acc", "attack_excess", "worst_max_hazard_acc"):
            c = row[m]
            vals = c["values"]
            assert len(vals) == 2 and all(math.isfinite(v) for v in vals)
            assert c["mean"] == pytest.approx(sum(vals) / 2)
            assert c["lo"] <= c["mean"] + 1e-12 <= c["hi"] + 2e-12
            if m.endswith("acc"):
                assert all(0.0 <= v <= 1.0 for v in vals)
        std = row["attacks"]["standard"]
        assert std["curve"]["steps"] == [0, 2, 4]  # the budget sweep: 4 steps, eval every 2
        assert std["max_hazard_acc"]["mean"] >= max(std["curve"]["mean"]) - 1e-9
        if name == "filtered":
            assert row["attack_excess"]["values"] == [0.0, 0.0]
        if name != "base":  # the base model has no base reference to recover to
            rec = std["steps_to_recover"]
            assert rec["n"] == 2 and rec["budget"] == 4
            assert all(0 <= v <= 4 for v in rec["values"])
    # the worst-attack excess is the largest per-attack excess over the filtered model
    for r in recs:
        for name, e in r["methods"].items():
            ex = [a["max_hazard_acc"] - a["filtered_max"] for a in e["attacks"].values()]
            got = lb["rows"][name]["per_seed"][str(r["seed"])]["attack_excess"]
            assert got == pytest.approx(max(ex))
    pairs = {(d["twin_kind"], d["metric"]) for d in lb["paired"]}
    assert ("unguided", "attack_excess") in pairs and ("keyword", "attack_excess") in pairs
    for d in lb["paired"]:
        assert d["guided"] == "magic_orth_cb" and d["n"] == 2
        g, t = lb["rows"][d["guided"]], lb["rows"][d["twin"]]
        if d["metric"] in ("hazard_acc", "general_acc", "attack_excess"):
            want = [g[d["metric"]]["values"][i] - t[d["metric"]]["values"][i] for i in range(2)]
            assert d["diffs"] == pytest.approx(want)
    assert lb["headline"]["sentence"].startswith("Does MAGIC guidance help?")
    # unlearning compute: each method's own run (metrics.json of its unlearn stage)
    for row in lb["rows"].values():
        if row["kind"] == "reference":
            assert row["compute_frac"] is None
        else:
            assert 0 < row["compute_frac"]["mean"] < 1
    md = (micro_study / "report.md").read_text()
    first_table = md.split("## Headline", 1)[1].split("\n\n")[1]
    assert len(first_table.splitlines()) == 5  # header, separator, three rows
    assert "filtered model (reference)" in first_table
    assert "best attribution-guided method (MAGIC)" in first_table
    assert f"**{lb['headline']['sentence']}**" in md
    assert "## Paired comparisons" in md and "### standard" in md
    html = (micro_study / "report.html").read_text()
    assert "data:image/png;base64," in html
    # each seed's MAGIC trust verdict, read from its attribute run, reaches the report
    run_verdicts = {}
    for m in (micro_study / "runs" / "attribute").glob("s*-magic-*/metrics.json"):
        t = json.loads(m.read_text())["stages"]["attribute"]["trust"]
        run_verdicts[m.parent.name.split("-")[0][1:]] = t["verdict"]
    seeds_v = lb["trust"]["magic"]["seeds"]
    assert seeds_v == run_verdicts
    assert set(seeds_v.values()) <= {"reliable", "doubtful", "unreliable", "unchecked"}
    assert sum(lb["trust"]["magic"]["counts"].values()) == 2
    assert "Trust verdicts of the MAGIC scores" in md


def test_micro_study_resumes_and_merges(micro_study: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in (micro_study / "runs").rglob("manifest.json"))
    cfg = load_study_config("micro")
    study = Study(
        cfg,
        micro_study,
        seeds=[1],
        methods=["ga", "magic_orth_cb"],
        twin_kinds=["unguided", "keyword"],
    )
    res = study.run()  # every run cached; the leaderboard still covers both seeds
    assert sorted(p.name for p in (micro_study / "runs").rglob("manifest.json")) == before
    assert res.seeds == [0, 1] and not res.failed
    full = json.loads((micro_study / "leaderboard.json").read_text())
    # merging: the records of the two seeds, copied into an empty directory
    other = tmp_path / "merged"
    (other / "seeds").mkdir(parents=True)
    for p in (micro_study / "seeds").glob("*.json"):
        shutil.copy(p, other / "seeds" / p.name)
    # a record of another configuration is left out, with a note
    alien = json.loads(next((micro_study / "seeds").glob("seed-0-*.json")).read_text())
    alien["study"]["fingerprint"] = "different"
    (other / "seeds" / "seed-5-alien.json").write_text(json.dumps(alien))
    merged = run_study("micro", other, report_only=True)
    lb = json.loads(merged.leaderboard.read_text())
    assert lb["seeds"] == [0, 1] and any("fingerprint differs" in n for n in lb["notes"])
    for name, row in full["rows"].items():
        assert lb["rows"][name]["attack_excess"] == row["attack_excess"]
    assert lb["paired"] == full["paired"]
    with pytest.raises(FileNotFoundError, match="no seed record"):
        run_study("micro", tmp_path / "empty", report_only=True)


def test_cli_study(micro_study: Path, tmp_path: Path) -> None:
    from magic_unlearn.cli import app

    r = CliRunner().invoke(app, ["study", "--preset", "micro", "--list-methods"])
    assert r.exit_code == 0 and "magic_orth_cb.keyword" in r.output
    r = CliRunner().invoke(
        app, ["study", "--preset", "micro", "--methods", "nope", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 2 and "unknown method" in r.output
    r = CliRunner().invoke(
        app, ["study", "--preset", "micro", "--report-only", "--out", str(micro_study)]
    )
    assert r.exit_code == 0 and "leaderboard.json" in r.output


# ------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_tiny_cpu_study_two_seeds_three_methods(tmp_path: Path) -> None:
    """The tiny study on the CPU: 2 seeds, RR, MAGIC-weighted RR and its keyword twin, two
    worker processes of one thread (docs/results.md has the measured time: < 15 min on 2 idle
    cores)."""
    import time

    t0 = time.time()
    res = run_study(
        "tiny",
        tmp_path / "study",
        seeds=[0, 1],
        methods=["rr", "magic_rr"],
        twin_kinds=["unguided", "keyword"],
        workers=2,
        threads=1,
    )
    wall = time.time() - t0
    assert not res.failed and res.seeds == [0, 1]
    lb = json.loads(res.leaderboard.read_text())
    assert list(lb["rows"]) == ["filtered", "base", "rr", "magic_rr", "magic_rr.keyword"]
    rows = lb["rows"]
    for row in rows.values():
        assert row["n"] == 2
        for m in ("hazard_acc", "general_acc", "attack_excess", "worst_max_hazard_acc"):
            c = row[m]
            assert all(math.isfinite(v) for v in c["values"]) and len(c["values"]) == 2
            assert c["lo"] <= c["mean"] <= c["hi"]
        std = row["attacks"]["standard"]
        assert std["curve"]["steps"][-1] == 150  # the 10x budget of the tiny suite
        # the curve starts at the unattacked model: its max is at least the model's accuracy
        assert std["max_hazard_acc"]["mean"] >= row["hazard_acc"]["mean"] - 0.02
    # the world works as designed: the base model knows the hazard facts, the filtered one not
    assert rows["base"]["hazard_acc"]["mean"] >= 0.9
    assert rows["filtered"]["hazard_acc"]["mean"] <= 0.45
    assert rows["filtered"]["attacks"]["standard"]["steps_to_recover"]["budget"] == 150
    kinds = {(d["twin_kind"], d["metric"]) for d in lb["paired"]}
    assert {("unguided", "attack_excess"), ("keyword", "attack_excess")} <= kinds
    assert lb["headline"]["best_guided"] == "magic_rr"
    assert lb["headline"]["sentence"].startswith("Does MAGIC guidance help?")
    print(f"tiny study, 2 seeds x 3 methods: {wall:.0f} s wall")


@pytest.mark.slow
def test_micro_study_runs_every_tamper_resistance_family(tmp_path: Path) -> None:
    """Every family of the micro preset (UNDO and its guided variant, token filtering, SAM,
    TAR, the weighted ones) with its unguided and random twins runs through unlearning, the
    evaluation and the attacks, and lands in the leaderboard (1 seed; about 1 min)."""
    names = [n for n, _, _ in FAMILIES]
    res = run_study("micro", tmp_path, seeds=[0], methods=names, twin_kinds=["unguided", "random"])
    assert not res.failed
    lb = json.loads(res.leaderboard.read_text())
    want = names + [f"{n}.random" for n, g, _ in FAMILIES if g == "magic"]
    assert set(lb["rows"]) == {"filtered", "base", *want}
    for name in want:
        row = lb["rows"][name]
        assert row["n"] == 1 and math.isfinite(row["attack_excess"]["values"][0])
    runs = tmp_path / "runs" / "unlearn"
    tf = [p for p in runs.iterdir() if p.name.startswith("s0-MAGIC_token_filtering-")]
    m = json.loads((tf[0] / "unlearn" / "model" / "metrics.json").read_text())
    assert m["retrain"]["from_step"] == 3 and m["retrain"]["masked_frac"] == pytest.approx(
        0.1, abs=0.01
    )
    pairs = {(d["guided"], d["twin_kind"]) for d in lb["paired"]}
    for n, g, unguided in FAMILIES:
        if g == "magic":
            assert (n, "random") in pairs and (unguided is None or (n, "unguided") in pairs)


def test_smooth_regime_scores_every_tiny_document_in_one_epoch(tmp_path: Path) -> None:
    """The `smooth` regime exists to score every pretraining document (token filtering's mask):
    its steps x batch must cover the forget + pretraining rows once, and not run a second epoch
    (the run stays as short and smooth as the `filtered` regime's)."""
    from magic_unlearn.data import load_corpus
    from magic_unlearn.world import build_world

    w = build_world("tiny", tmp_path / "world")
    r = resolve_regime("smooth", "tiny")
    assert r["start"] == "filtered" and r["mix"] == ["pretrain"]
    n = len(load_corpus(f"{w}:forget")) + len(load_corpus(f"{w}:pretrain"))
    t = r["trajectory"]
    assert n <= t["steps"] * t["batch_size"] < n + t["batch_size"]
    assert t["optimizer"] == "adamw" and t["lr"] <= 1e-4 and t["warmup_steps"] > 0


def test_headline_answers_for_the_best_guided_method_that_has_twins() -> None:
    """A guided variant run without twins (lower excess than the twinned one) is the best
    guided row, but the sentence is about the best guided method that can be compared."""
    seeds = _seeds([0.20, 0.25, 0.22], [0.40, 0.50, 0.45], [0.10, 0.0, 0.20])
    info = {**INFO, "g2": {"label": "G2", "guidance": "magic", "twins": {}}}
    for s in seeds.values():
        s["methods"]["g2"] = _entry(0.27, 0.97, 0.05)
    h = build_leaderboard(seeds, info, {"name": "t"})["headline"]
    assert h["best_guided"] == "g2"
    assert h["sentence"].startswith("Does MAGIC guidance help?")
    assert "G against its unguided twin A" in h["sentence"]
    assert h["sentence"].endswith(
        "(G2, the best MAGIC-guided method by the same criterion, has no twin in this study.)"
    )
