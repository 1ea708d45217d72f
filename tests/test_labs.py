"""Labs: config round trips, the pure analyses on hand-made metric rows, and every lab end to end on
a tiny configuration (numbers read back from the runs, never constants).

Tiny means: digits8 / faces, a few images per class, 32 px, 1-2 epochs and a test_resnet-sized
"pretrained" backbone saved as a lab backbone (``backbones.save_local_backbone``) so that every
pretrained path (weights file, freezing, caching) runs without the 2M-parameter MobileNetV2.
"""
import dataclasses
import time

import pytest
import timm
import torch

from tl_core.models import backbones
from tl_core import labs
from tl_core.labs import stats
from tl_core.runs.policy import DIED
from tl_core.runs.store import RunStore

TINY_KEY = "tiny_cnn"


@pytest.fixture
def tiny_backbone():
    """A test_resnet with (random) weights saved as a catalogue backbone: it loads like pretrained ones."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    spec = backbones.BackboneSpec(
        key=TINY_KEY, label="Tiny CNN", family="Lab", timm_name="test_resnet", num_classes=10,
        data_config={"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
                     "std": [0.5, 0.5, 0.5], "crop_pct": 1.0})
    backbones.save_local_backbone(model, spec)
    backbones.forget(TINY_KEY)
    yield TINY_KEY
    backbones.forget(TINY_KEY)


def tiny(lab: str, **kw) -> labs.LabConfig:
    c = labs.default_config(lab)
    c.backbone, c.data, c.per_class, c.image_size, c.epochs, c.batch_size = TINY_KEY, "digits8", 4, 32, 1, 16
    c.val_fraction, c.seeds = 0.1, 1  # one seed: the end-to-end tests stay fast
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _store_best(res: labs.LabResult) -> dict:
    store = RunStore()
    try:
        return {rid: store.get(rid).summary["best_val_acc"] for rid in res.table["run"]}
    finally:
        store.close()


def _stored_accs(lab: dict) -> dict:
    """{(run key without its seed, seed): validation accuracy per epoch} as the run store holds them."""
    store = RunStore()
    try:
        return {(r["key"].split("@")[0], r["seed"]): [m["val_acc"] for m in store.metrics(r["run_id"], "epoch")]
                for r in lab["runs"]}
    finally:
        store.close()


_MARKS = {"✔ agrees": "agrees", "– inconclusive": "inconclusive", "✖ **disagrees**": "disagrees"}


def _assert_shown(res: labs.LabResult, expected: list[bool | None]) -> None:
    """Each check's verdict and the overall one, as the result holds them and as its text shows them, are
    ``expected`` (recomputed by the test from the stored numbers with ``labs.stats``)."""
    assert [c["agrees"] for c in res.checks] == expected
    for check, want in zip(res.checks, expected):
        line = next(t for t in res.text.splitlines() if t.startswith(f"- {check['claim']}:"))
        assert [v for m, v in _MARKS.items() if "→ " + m in line] == [stats.verdict_of(want)], line
    known = [e for e in expected if e is not None]
    overall = all(known) if known else None
    assert res.agrees is overall and res.verdict() == stats.verdict_of(overall)
    assert ("The measurement agrees with the prediction." in res.text) == (overall is True)
    assert ("**The measurement disagrees with the prediction**" in res.text) == (overall is False)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("lab", list(labs.LABS))
@pytest.mark.parametrize("preset", labs.PRESETS)
def test_config_json_and_query_round_trip(lab, preset):
    c = labs.default_config(lab, preset)
    assert labs.LabConfig.from_json(c.to_json()) == c
    assert labs.LabConfig.from_json(c.to_json(compact=False)) == c
    assert labs.LabConfig.from_query(c.to_query()) == c
    assert labs.LabConfig.from_query(c.to_query_string()) == c
    assert labs.LabConfig.from_query("?" + c.to_query_string()) == c


def test_query_values_nones_lists_and_errors():
    c = labs.default_config("quadrant")
    c.sizes, c.strategies, c.seed = [5, None], ["feature_extraction", "full"], 3
    q = c.to_query_string()
    assert "sizes=5,all" in q and "strategies=feature_extraction,full" in q
    back = labs.LabConfig.from_query(q + "&run=abc")  # other pages' parameters are ignored
    assert back == c and back.sizes == [5, None]
    y = labs.default_config("yosinski")
    y.depths, y.classes_a, y.classes_b, y.per_class = [1, 3], ["0", "1"], ["2", "3"], None
    assert "per_class=all" in y.to_query_string()
    assert labs.LabConfig.from_query(y.to_query()) == y
    with pytest.raises(ValueError, match="unknown lab"):
        labs.LabConfig.from_query("lab=nope")
    with pytest.raises(ValueError, match="epochs"):
        labs.LabConfig.from_query("lab=race&epochs=many")
    with pytest.raises(ValueError, match="unknown lab config field"):
        labs.LabConfig.from_dict({"lab": "race", "bogus": 1})
    with pytest.raises(ValueError, match="scratch"):
        labs.LabConfig(lab="race", strategies=["full", "partial"]).validate()
    with pytest.raises(ValueError, match="disjoint"):
        labs.LabConfig(lab="yosinski", data="digits8", classes_a=["0", "1"], classes_b=["1", "2"]).validate()


def test_ready_made_configs_load():
    ready = labs.ready_made()
    assert {"race_default", "yosinski_default", "quadrant_gpu"} <= set(ready)
    assert ready["race_default"] == labs.default_config("race")
    assert ready["quadrant_gpu"].preset == "gpu"


def test_yosinski_split_is_disjoint_and_seeded():
    c = labs.default_config("yosinski")
    a, b = labs.yosinski_classes(c)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert labs.yosinski_classes(c) == (a, b)


# ------------------------------------------------------------------ pure analysis on hand-made rows


def _rec(key, accs, label=None, status="completed", **summary):
    return {"key": key, "label": label or key, "run_id": f"id-{key}", "status": status, "reason": None,
            "config": {}, "summary": {"wall_s": 1.0, "trainable_params": 10, "total_params": 100, **summary},
            "epochs": [{"epoch": i + 1, "val_acc": a} for i, a in enumerate(accs)]}


def test_race_benefits_start_slope_asymptote():
    b = labs.race_benefits({"scratch": [0.2, 0.4, 0.6], "fe": [0.7, 0.75, 0.8], "bad": [0.1, 0.2, 0.3],
                            "same": [0.21, 0.4, 0.6]})
    assert b["target"] == 0.6 and b["baseline_epochs"] == 3
    fe, bad, same = b["strategies"]["fe"], b["strategies"]["bad"], b["strategies"]["same"]
    assert fe["start_verdict"] == "higher" and fe["start_diff"] == pytest.approx(0.5)
    assert fe["epochs_to_target"] == 1 and fe["slope_verdict"] == "higher"
    assert fe["best_verdict"] == "higher" and fe["best_diff"] == pytest.approx(0.2)
    assert bad["epochs_to_target"] is None and bad["slope_verdict"] == "lower" and bad["best_verdict"] == "lower"
    assert same["start_verdict"] == same["best_verdict"] == same["slope_verdict"] == "similar"
    assert labs.epochs_to_reach([0.1, 0.5, 0.9], 0.5) == 2
    assert labs.race_benefits({"scratch": [0.2, 0.3], "x": [0.5, 0.6]}, target=0.55)["strategies"]["x"][
        "epochs_to_target"] == 2


def test_race_analysis_agrees_and_disagrees():
    cfg = labs.default_config("race")
    good = labs.analyse_race(cfg, [_rec("scratch", [0.2, 0.4, 0.6]), _rec("full", [0.7, 0.8, 0.9]),
                                   _rec("feature_extraction", [0.6, 0.7, 0.72])])
    assert good.agrees is True and "agrees with the prediction" in good.text
    assert good.table.set_index("key").loc["full", "best vs scratch (pts)"] == pytest.approx(30.0)
    assert "90.0%" in good.text and len(good.figure.data) == 3
    bad = labs.analyse_race(cfg, [_rec("scratch", [0.5, 0.8, 0.9]), _rec("full", [0.3, 0.5, 0.6]),
                                  _rec("feature_extraction", [0.2, 0.25, 0.3]),
                                  _rec("partial", [], status="failed")])
    assert bad.agrees is False and bad.verdict() == "disagrees"
    assert "disagrees with the prediction" in bad.text and "partial" in bad.text  # the missing run is named
    assert labs.analyse_race(cfg, [_rec("full", [0.5])]).agrees is None  # no scratch: nothing to compare


def test_yosinski_analysis_paper_pattern_and_disagreement():
    cfg = labs.default_config("yosinski")
    rows = [_rec("baseA", [0.9]), _rec("baseB", [0.80])]
    pattern = {"BnB": [0.80, 0.74, 0.79], "BnB+": [0.80, 0.81, 0.80], "AnB": [0.82, 0.78, 0.60],
               "AnB+": [0.85, 0.86, 0.84]}
    for v, accs in pattern.items():
        rows += [_rec(f"{v}:{n}", [a]) for n, a in zip((1, 2, 3), accs)]
    res = labs.analyse_yosinski(cfg, rows)
    assert res.agrees is True
    assert res.extra["baseline"] == 0.80 and res.extra["curves"]["AnB+"] == {1: 0.85, 2: 0.86, 3: 0.84}
    assert "The paper" in res.text and list(res.table["n (layers copied)"]) == [1, 2, 3]
    assert len(res.figure.data) == 5  # four curves + the baseline
    rows_bad = [r for r in rows if not r["key"].startswith("AnB+")] + [_rec("AnB+:1", [0.7]), _rec("AnB+:2", [0.81])]
    bad = labs.analyse_yosinski(cfg, rows_bad)
    assert bad.agrees is False and "**disagrees**" in bad.text and "AnB+" in bad.text


def test_freeze_depth_analysis():
    cfg = labs.default_config("freeze_depth")
    rows = [_rec(f"frozen:{n}", [a]) for n, a in ((0, 0.80), (2, 0.81), (4, 0.79), (6, 0.60))]
    rows += [_rec(f"copy:{n}", [a]) for n, a in ((0, 0.30), (2, 0.50), (4, 0.70))]
    res = labs.analyse_freeze_depth(cfg, rows, n_groups=6)
    assert res.agrees is True and res.extra["general_upto"] == 4
    assert res.table.set_index("n (groups)").loc[6, "copied first n, rest re-init (best acc)"] == 0.80
    flat = labs.analyse_freeze_depth(cfg, [_rec(f"frozen:{n}", [0.8]) for n in (0, 3, 6)], n_groups=6)
    assert flat.agrees is False


def test_quadrant_textbook_and_analysis():
    assert labs.textbook_choice(5, "near") == {"feature_extraction"}
    assert labs.textbook_choice(5, "far") == {"partial"}
    assert labs.textbook_choice(None, "far") == {"full"}
    assert labs.textbook_choice(100, "medium") == {"partial", "full"}
    cfg = labs.default_config("quadrant")
    cfg.sizes, cfg.domains = [5, 100], ["faces", "mnist"]
    acc = {("faces", "5"): {"feature_extraction": 0.8, "partial": 0.7, "full": 0.6},
           ("faces", "100"): {"feature_extraction": 0.8, "partial": 0.9, "full": 0.85},
           ("mnist", "5"): {"feature_extraction": 0.5, "partial": 0.6, "full": 0.4},
           ("mnist", "100"): {"feature_extraction": 0.9, "partial": 0.7, "full": 0.75}}
    rows = [_rec(f"q:{d}:{s}:{k}", [v]) for (d, s), c in acc.items() for k, v in c.items()]
    res = labs.analyse_quadrant(cfg, rows, similarity={"faces": "near", "mnist": "far"})
    assert [bool(c["agrees"]) for c in res.checks] == [True, True, True, False]
    assert res.agrees is False and "3 of 4 cells" in res.text
    assert res.table.set_index(["domain", "images/class"]).loc[("mnist", "100"), "measured best"] == \
        "feature_extraction"


def test_bn_and_normalization_analysis():
    def bn_rec(key, accs, drift):
        r = _rec(key, accs, phases=[{"trainable": ["b2", "head"]}])
        for m, d in zip(r["epochs"], drift):
            m["bn_stat_drift"] = {"b0": d, "b1": d / 2, "b2": 0.5}
            m["drift"] = {"b0": 0.0, "b1": 0.0, "b2": 0.1, "head": 0.2}
        return r

    cfg = labs.default_config("bn")
    res = labs.analyse_bn(cfg, [bn_rec("bn:frozen", [0.7, 0.8], [0.0, 0.0]),
                                bn_rec("bn:train", [0.5, 0.6], [0.1, 0.2])])
    assert labs.frozen_bn_drift(bn_rec("x", [0.1], [0.3])) == [0.3]
    assert res.agrees is True
    assert res.table.set_index("BatchNorm in frozen blocks").loc["train", "max frozen-block BN drift"] == 0.2
    same = labs.analyse_bn(cfg, [bn_rec("bn:frozen", [0.7], [0.0]), bn_rec("bn:train", [0.71], [0.1])])
    assert same.agrees is True and "within 2 pts" in same.text  # accuracy claim undecided, drift claims hold
    n = labs.analyse_normalization(labs.default_config("normalization"),
                                   [_rec("norm:backbone", [0.7, 0.8]), _rec("norm:wrong", [0.4, 0.5])])
    assert n.agrees is True and "30.0 points" in n.text
    n2 = labs.analyse_normalization(labs.default_config("normalization"),
                                    [_rec("norm:backbone", [0.7]), _rec("norm:wrong", [0.72])])
    assert n2.agrees is False and "disagrees" in n2.text


def test_mix_state_dicts_copies_first_groups_with_bn_buffers():
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", num_classes=5)
    with torch.no_grad():
        src.bn1.running_mean.fill_(3.0)
    dst = timm.create_model("test_resnet", num_classes=5)
    sd, n = labs.mix_state_dicts(dst, src.state_dict(), "test_resnet", 32, 2)  # stem + layer1
    assert n > 0
    assert torch.equal(sd["bn1.running_mean"], src.bn1.running_mean)
    assert torch.equal(sd["layer1.0.conv1.weight"], src.layer1[0].conv1.weight)
    assert torch.equal(sd["layer2.0.conv1.weight"], dst.layer2[0].conv1.weight)
    assert torch.equal(sd["fc.weight"], dst.fc.weight)


# ------------------------------------------------------------------ every lab end to end (tiny)


def test_race_lab_end_to_end(tiny_backbone):
    cfg = tiny("race", strategies=["scratch", "feature_extraction", "two_phase"], epochs=2)
    res = labs.run_lab(cfg)
    assert list(res.table["key"]) == ["scratch", "feature_extraction", "two_phase"]
    best = _store_best(res)
    assert [best[r] for r in res.table["run"]] == pytest.approx(list(res.table["best acc"]), abs=1e-4)
    t = res.table.set_index("key")
    assert t.loc["feature_extraction", "trainable params"] < t.loc["scratch", "trainable params"]
    assert f"{best[t.loc['scratch', 'run']]:.1%}" in res.text
    # the verdict, recomputed from the stored curves: each claim holds when most transfer strategies beat
    # scratch (one seed: by more than stats.TOL; the slope: in fewer epochs to scratch's best)
    acc = {k: a for (k, _), a in _stored_accs(labs.list_labs(lab="race")[0]).items()}
    scratch, transfer = acc.pop("scratch"), acc

    def epochs_to(a):
        return next((i for i, v in enumerate(a, 1) if v >= max(scratch) - 1e-9), len(a) + 1)

    claims = [[stats.paired([a[0] - scratch[0]]) for a in transfer.values()],
              [stats.paired([epochs_to(scratch) - epochs_to(a)], stats.tol_rule(0)) for a in transfer.values()],
              [stats.paired([max(a) - max(scratch)]) for a in transfer.values()]]
    _assert_shown(res, [sum(p.agrees is True for p in ps) * 2 > len(ps) for ps in claims])
    names = [RunStore().get(r).name for r in res.table["run"]]
    assert names[0] == "lab race · From scratch"


def test_freeze_depth_lab_end_to_end(tiny_backbone):
    res = labs.run_lab(tiny("freeze_depth", depths=[0, 2, 5]))
    t = res.table.set_index("n (groups)")
    assert list(t.index) == [0, 2, 5]
    store = RunStore()
    lab = labs.list_labs(lab="freeze_depth")[0]
    by_key = {r["key"]: store.get(r["run_id"]) for r in lab["runs"]}
    assert set(by_key) == {"frozen:0", "frozen:2", "frozen:5", "copy:0", "copy:2"}
    assert all(i.status == "completed" for i in by_key.values()), {k: i.reason for k, i in by_key.items()}
    assert t.loc[2, "frozen first n (best acc)"] == pytest.approx(by_key["frozen:2"].summary["best_val_acc"])
    assert t.loc[2, "copied first n, rest re-init (best acc)"] == pytest.approx(
        by_key["copy:2"].summary["best_val_acc"])
    assert t.loc[5, "copied first n, rest re-init (best acc)"] == t.loc[0, "frozen first n (best acc)"]
    assert (labs.lab_dir(lab["id"]) / "weights" / "pretrained_first2.safetensors").exists()
    assert by_key["copy:2"].summary["weights"] == "user"


def test_yosinski_lab_end_to_end_registers_source_backbone():
    cfg = tiny("yosinski", backbone="test_resnet", per_class=6, source_per_class=20, source_epochs=1,
               depths=[1, 5], val_fraction=0.2)
    res = labs.run_lab(cfg)
    store = RunStore()
    lab = labs.list_labs(lab="yosinski")[0]
    infos = {r["key"]: store.get(r["run_id"]) for r in lab["runs"]}
    assert len(infos) == 2 + 2 * 4
    assert all(i.status == "completed" for i in infos.values()), {k: i.reason for k, i in infos.items()}
    assert res.extra["baseline"] == pytest.approx(infos["baseB"].summary["best_val_acc"])
    assert res.extra["curves"]["AnB+"][5] == pytest.approx(infos["AnB+:5"].summary["best_val_acc"])
    a, b = labs.yosinski_classes(cfg)
    assert infos["baseA"].summary["class_names"] == a and infos["AnB:1"].summary["class_names"] == b
    cat = backbones.catalogue()
    assert {"lab_yosinski_A", "lab_yosinski_B"} <= set(cat)  # the source net is a backbone now
    model, status = backbones.create_model("lab_yosinski_A", num_classes=3)
    assert status.kind == "user" and model.fc.out_features == 3
    assert infos["AnB:5"].summary["trainable_params"] < infos["AnB+:5"].summary["trainable_params"]
    assert "The paper" in res.text


def test_quadrant_lab_end_to_end(tiny_backbone):
    cfg = tiny("quadrant", domains=["faces", "digits8"], sizes=[4, 12], strategies=["feature_extraction", "full"])
    res = labs.run_lab(cfg)
    assert len(res.table) == 4 and len(res.checks) == 4
    store = RunStore()
    lab = labs.list_labs(lab="quadrant")[0]
    acc = {r["key"]: store.get(r["run_id"]).summary["best_val_acc"] for r in lab["runs"]}
    row = res.table.set_index(["domain", "images/class"]).loc[("faces", "4")]
    assert row["full"] == pytest.approx(acc["q:faces:4:full"])
    assert row["measured best"] == max(("feature_extraction", "full"), key=lambda s: acc[f"q:faces:4:{s}"])


def test_bn_lab_end_to_end(tiny_backbone):
    res = labs.run_lab(tiny("bn", freeze_blocks=3, epochs=2))
    t = res.table.set_index("BatchNorm in frozen blocks")
    assert t.loc["frozen", "max frozen-block BN drift"] == 0.0
    assert t.loc["train", "max frozen-block BN drift"] > 0.0
    assert t.loc["frozen", "frozen blocks"] == 3
    assert [c["agrees"] for c in res.checks[:2]] == [True, True]


def test_normalization_lab_end_to_end(tiny_backbone):
    cfg = tiny("normalization")
    res = labs.run_lab(cfg)
    best = _store_best(res)
    assert sorted(best.values()) == pytest.approx(sorted(res.table["best acc"]))
    views = labs.normalization_views(cfg)
    assert views["backbone"]["stats"][0] == (0.5, 0.5, 0.5)
    assert views["wrong"]["stats"][0] != (0.5, 0.5, 0.5)
    assert views["backbone"]["tensor"].shape == (3, 32, 32)


# ------------------------------------------------------------------ the background lab process


def _wait_lab(lab_id: str, timeout: float = 180) -> dict:
    t = time.time()
    while (state := labs.read_state(lab_id))["status"] in labs.ACTIVE:
        assert time.time() - t < timeout, f"lab did not finish: {state}"
        time.sleep(0.3)
    return state


@pytest.mark.slow
def test_background_lab_process_runs_then_stop_cancels_the_rest(tiny_backbone):
    lab_id = labs.launch_lab(tiny("bn", freeze_blocks=3))
    state = _wait_lab(lab_id)
    assert state["status"] == "completed", (state, (labs.lab_dir(lab_id) / labs.LAB_LOG).read_text()[-2000:])
    store = RunStore()
    assert [store.get(r["run_id"]).status for r in state["runs"]] == ["completed", "completed"]
    # the verdict, recomputed from the stored runs: BatchNorm statistics of the frozen blocks fixed with
    # "frozen", drifting with "train"; and whether train cost accuracy (one seed: beyond stats.TOL)
    runs = {r["key"]: r["run_id"] for r in state["runs"]}

    def frozen_drift(run_id):
        trainable = set(store.get(run_id).summary["phases"][0]["trainable"])
        return max((v for m in store.metrics(run_id, "epoch") for b, v in m["bn_stat_drift"].items()
                    if b not in trainable and v is not None), default=0.0)

    best = {k: store.get(r).summary["best_val_acc"] for k, r in runs.items()}
    _assert_shown(labs.result(lab_id), [frozen_drift(runs["bn:frozen"]) < 1e-6, frozen_drift(runs["bn:train"]) > 1e-4,
                                        stats.paired([best["bn:frozen"] - best["bn:train"]]).agrees])

    # stop: the run in progress stops, the waiting ones are cancelled
    lab_id = labs.launch_lab(tiny("race", strategies=["scratch", "feature_extraction", "full"], epochs=50,
                                  per_class=40))
    first = labs.read_state(lab_id)["runs"][0]["run_id"]
    t = time.time()
    while not store.metrics(first, "step"):
        assert time.time() - t < 120, store.get(first).reason
        time.sleep(0.2)
    labs.stop_lab(lab_id)
    state = _wait_lab(lab_id)
    assert state["status"] == "stopped"
    statuses = [store.get(r["run_id"]) for r in state["runs"]]
    assert statuses[0].status == "stopped" and statuses[0].reason == "stopped by request"
    assert [s.status for s in statuses[1:]] == ["stopped", "stopped"]
    assert all(s.reason == "cancelled before it started" for s in statuses[1:])


def test_lab_whose_process_died_is_marked_failed(tiny_backbone):
    import subprocess
    import sys

    state = labs.create_lab(tiny("bn", freeze_blocks=3))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (labs.lab_dir(state["id"]) / "lab.pid").write_text(str(proc.pid))
    assert labs.read_state(state["id"])["status"] == "failed"
    assert labs.list_labs(lab="bn")[0]["reason"] == DIED
    labs.stop_lab(state["id"])  # nothing left waiting: its runs are cancelled
    store = RunStore()
    assert {store.get(r["run_id"]).status for r in state["runs"]} == {"stopped"}


def test_freeze_depth_analysis_when_freezing_some_groups_beats_none():
    rows = [_rec(f"frozen:{n}", [a]) for n, a in ((0, 0.70), (3, 0.85), (5, 0.84), (9, 0.60))]
    res = labs.analyse_freeze_depth(labs.default_config("freeze_depth"), rows, n_groups=9)
    assert res.extra["general_upto"] == 5 and "n = 5" in res.text


# ------------------------------------------------------------------ seeds and intervals


def test_bootstrap_interval_and_verdict_on_hand_made_paired_differences():
    agree = labs.paired([0.05, 0.06, 0.07, 0.055, 0.065])
    assert agree.verdict == "agrees" and agree.agrees is True and 0 < agree.lo <= agree.mean <= agree.hi
    assert agree.mean == pytest.approx(0.06) and agree.n == 5 and not agree.single
    disagree = labs.paired([-0.05, -0.06, -0.04])
    assert disagree.verdict == "disagrees" and disagree.agrees is False and disagree.hi < 0
    noisy = labs.paired([0.10, -0.08, 0.02, -0.05, 0.07])
    assert noisy.verdict == "inconclusive" and noisy.agrees is None and noisy.lo < 0 < noisy.hi
    # deterministic with the generator's seed; another seed draws other resamples
    values = [0.03, -0.01, 0.05, 0.02, 0.00, 0.04, -0.02]
    assert labs.bootstrap_interval(values) == labs.bootstrap_interval(values)
    assert labs.bootstrap_interval(values, seed=1) != labs.bootstrap_interval(values, seed=2)
    lo, hi = labs.bootstrap_interval(values)
    assert min(values) <= lo < sum(values) / len(values) < hi <= max(values)
    wide = labs.bootstrap_interval(values, level=0.99)
    assert wide[0] <= lo and wide[1] >= hi
    # three seeds: only min/max can bound the interval (P(all three resamples = min) = 1/27 > 2.5%)
    assert labs.bootstrap_interval([0.01, 0.02, 0.09]) == pytest.approx((0.01, 0.09))
    # one seed: no interval; the single-seed rule decides (beyond TOL by default)
    assert labs.bootstrap_interval([0.3]) == (0.3, 0.3)
    one = labs.paired([0.03])
    assert one.single and one.verdict == "agrees" and one.describe(lambda d: f"{d:+.2f}") == "+0.03"
    assert labs.paired([0.01]).verdict == "inconclusive" and labs.paired([-0.03]).verdict == "disagrees"
    assert labs.paired([0.01], lambda d: d > 0).verdict == "agrees"
    assert "[95%: +0.05, +0.07]" in labs.paired([0.05, 0.06, 0.07]).describe(lambda d: f"{d:+.2f}")
    assert "bootstrap interval" in labs.VERDICT_RULE and "single seed" in labs.VERDICT_RULE
    with pytest.raises(ValueError):
        labs.paired([])


def test_plan_with_three_seeds_repeats_the_runs_with_paired_seeds():
    one = labs.plan_runs(labs.LabConfig.from_dict({"lab": "bn", "seeds": 1}))
    three = labs.plan_runs(labs.default_config("bn"))
    assert labs.default_config("bn").seeds == 3
    assert [r.key for r in one] == ["bn:frozen", "bn:train"] and [r.cfg.seed for r in one] == [0, 0]
    assert len(three) == 3 * len(one)
    assert [r.cfg.seed for r in three] == [0, 0, 1, 1, 2, 2] == [r.seed for r in three]
    assert [r.key for r in three[2:4]] == ["bn:frozen@s1", "bn:train@s1"]
    assert len({r.key for r in three}) == 6 and three[3].label == "BN train · seed 1"
    assert three[3].to_dict()["seed"] == 1 and [labs.base_key(r.key) for r in three[:2]] == ["bn:frozen", "bn:train"]
    assert [r.stage for r in three] == [0, 0, 1, 1, 2, 2]  # seed after seed
    if labs.plan.SPLIT_SEED in {f.name for f in dataclasses.fields(three[0].cfg)}:
        assert {getattr(r.cfg, labs.plan.SPLIT_SEED) for r in three} == {0}
    # a student's link: seed #1 of 3 only
    only = labs.plan_runs(labs.LabConfig.from_dict({"lab": "bn", "only_seed": 1}))
    assert [(r.key, r.cfg.seed) for r in only] == [("bn:frozen@s1", 1), ("bn:train@s1", 1)]
    # runs that start from another run's network follow their own seed's source and weights folder
    y = labs.plan_runs(labs.LabConfig.from_dict({"lab": "yosinski", "depths": [1], "seeds": 2}), "LAB")
    anb = {r.key: r for r in y}["AnB:1@s1"]
    assert anb.build["source"] == "baseA@s1" and "seed1" in anb.build["path"] and anb.cfg.weights_file == \
        anb.build["path"]
    assert [r.key for r in y[:2]] == ["baseA@s0", "baseB@s0"] and {r.stage for r in y if r.seed == 1} == {2, 3}
    a0 = {r.key: r for r in y}["baseA@s0"].cfg.classes
    assert a0 == {r.key: r for r in y}["baseA@s1"].cfg.classes  # the A/B classes stay fixed


def test_seeds_share_the_split(tiny_backbone):
    from tl_core.training import trainer as training

    runs = labs.plan_runs(tiny("bn", seeds=2))
    if labs.plan.SPLIT_SEED not in {f.name for f in dataclasses.fields(runs[0].cfg)}:
        pytest.skip("TrainConfig has no split_seed yet: the lead adds it (see the labs' report)")
    a, b = training.prepare(runs[0].cfg), training.prepare(runs[-1].cfg)
    assert runs[0].cfg.seed != runs[-1].cfg.seed
    assert torch.equal(a["train_idx"], b["train_idx"]) and torch.equal(a["val_idx"], b["val_idx"])


def test_seeds_in_the_url_and_json_and_their_bounds(monkeypatch):
    c = labs.default_config("race")
    c.seeds, c.only_seed = 5, 2
    q = c.to_query_string()
    assert "seeds=5" in q and "only_seed=2" in q
    assert labs.LabConfig.from_query(q) == c and labs.LabConfig.from_json(c.to_json()) == c
    assert "only_seed=all" in labs.default_config("race").to_query_string()
    assert labs.LabConfig.from_query("lab=bn&seeds=4").seeds == 4
    assert c.run_seeds() == [2] and labs.LabConfig(seed=7, seeds=3).run_seeds() == [7, 8, 9]
    with pytest.raises(ValueError, match="seeds"):
        labs.LabConfig(lab="bn", seeds=0).validate()
    with pytest.raises(ValueError, match="only_seed"):
        labs.LabConfig(lab="bn", seeds=2, only_seed=2).validate()
    with pytest.raises(ValueError, match="seeds must be a whole number from 1 to 100"):
        labs.LabConfig(lab="bn", seeds=101).validate()
    monkeypatch.setenv("TL_LIMIT_MAX_SEEDS", "4")
    with pytest.raises(ValueError, match="from 1 to 4"):
        labs.LabConfig(lab="bn", seeds=5).validate()


def test_a_lab_with_too_many_runs_is_refused_before_anything_is_queued():
    q = labs.default_config("quadrant")
    q.sizes, q.seeds = list(range(1, 501)), 1  # 2 domains × 500 sizes × 3 strategies = 3,000 runs
    with pytest.raises(ValueError) as err:
        labs.plan_runs(q)
    msg = str(err.value)
    assert "3,000 runs" in msg and "max_lab_runs" in msg and "2 domain(s) × 500 size(s)" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="3,000 runs"):
        labs.create_lab(q)
    store = RunStore()
    assert store.list_runs() == [] and labs.list_labs() == []
    race = labs.LabConfig.from_dict({"lab": "race", "seeds": 20})  # 6 strategies × 20 seeds
    with pytest.raises(ValueError, match="120 runs"):
        labs.plan_runs(race)
    assert len(labs.plan_runs(labs.LabConfig.from_dict({"lab": "race", "seeds": 16}))) == 96


def _srec(key, accs, seed, label=None, **kw):
    """A record of one seed, as a lab with several seeds stores it."""
    r = _rec(f"{key}@s{seed}", accs, label=f"{label or key} · seed {seed}", **kw)
    r["seed"] = r["config"]["seed"] = seed
    return r


def _bands(fig) -> int:
    return sum(1 for t in fig.data if getattr(t, "fill", None) == "toself")


def test_analyses_over_three_seeds_give_means_intervals_and_bands():
    norm = labs.default_config("normalization")
    rows = [_srec(k, [a + 0.01 * s], s, label) for s in (0, 1, 2)
            for k, a, label in (("norm:backbone", 0.8, "own mean/std"), ("norm:wrong", 0.5, "wrong mean/std"))]
    res = labs.analyse_normalization(norm, rows)
    assert res.seeds == [0, 1, 2] and res.agrees is True and res.checks[0]["verdict"] == "agrees"
    t = res.table.set_index("normalisation")
    assert t.loc["own mean/std", "best acc"] == pytest.approx(0.81)
    assert t.loc["own mean/std", "best acc 95% interval"] == "80.0–82.0%"
    assert "best acc 95% interval" not in res.percent_columns() and "best acc" in res.percent_columns()
    assert _bands(res.figure) == 2 and "3 seeds" in res.text and "95%" in res.text
    # noisy: the gap changes sign between seeds → inconclusive, not "disagrees"
    noisy = [_srec("norm:backbone", [a], s) for s, a in enumerate((0.8, 0.6, 0.75))]
    noisy += [_srec("norm:wrong", [a], s) for s, a in enumerate((0.7, 0.7, 0.7))]
    n = labs.analyse_normalization(norm, noisy)
    assert n.agrees is None and n.verdict() == "inconclusive" and "interval contains 0" in n.text
    # the other side on every seed → disagrees
    bad = labs.analyse_normalization(norm, [_srec(k, [a - 0.01 * s], s) for s in (0, 1, 2)
                                            for k, a in (("norm:backbone", 0.5), ("norm:wrong", 0.6))])
    assert bad.agrees is False and "**disagrees**" in bad.text


def test_race_over_three_seeds_and_records_pooled_from_one_seed_labs():
    cfg = labs.default_config("race")
    rows = []
    for s in (0, 1, 2):
        rows += [_srec("scratch", [0.2 + s / 100, 0.4, 0.5], s), _srec("full", [0.6, 0.7 + s / 100, 0.8], s)]
    res = labs.analyse_race(cfg, rows)
    assert res.agrees is True and [c["agrees"] for c in res.checks] == [True, True, True]
    t = res.table.set_index("key")
    assert t.loc["full", "best acc"] == pytest.approx(0.8) and t.loc["full", "seeds"] == 3
    assert t.loc["full", "best vs scratch (pts)"] == pytest.approx(30.0)
    assert t.loc["scratch", "start (epoch 1)"] == pytest.approx(0.21)
    assert "best acc 95% interval" in t.columns and _bands(res.figure) == 2 and len(res.figure.data) == 4
    mean_line = next(tr for tr in res.figure.data if tr.name == "full" and tr.fill != "toself")
    assert list(mean_line.y) == pytest.approx([0.6, 0.71, 0.8])
    # three students, each ran one seed (keys without a seed suffix, the seed in the config)
    pooled = [dict(r, key=labs.base_key(r["key"]), seed=None) for r in rows]
    again = labs.analyse_race(cfg, pooled)
    assert again.seeds == [0, 1, 2] and again.table.equals(res.table)


def test_freeze_depth_yosinski_quadrant_and_bn_over_three_seeds():
    rows = [_srec(f"frozen:{n}", [a + 0.01 * s], s) for s in (0, 1, 2) for n, a in ((0, 0.8), (3, 0.82), (6, 0.6))]
    rows += [_srec(f"copy:{n}", [a + 0.01 * s], s) for s in (0, 1, 2) for n, a in ((0, 0.3), (3, 0.6))]
    fd = labs.analyse_freeze_depth(labs.default_config("freeze_depth"), rows, n_groups=6)
    assert fd.agrees is True and fd.extra["general_upto"] == 3 and _bands(fd.figure) == 2
    assert fd.table.set_index("n (groups)").loc[3, "frozen first n (best acc)"] == pytest.approx(0.83)

    y = [_srec("baseA", [0.9], s) for s in (0, 1, 2)] + [_srec("baseB", [0.8 + 0.01 * s], s) for s in (0, 1, 2)]
    for v, accs in {"BnB": [0.8, 0.75, 0.8], "BnB+": [0.8, 0.8, 0.8], "AnB": [0.82, 0.78, 0.6],
                    "AnB+": [0.85, 0.86, 0.84]}.items():
        y += [_srec(f"{v}:{n}", [a + 0.01 * s], s) for s in (0, 1, 2) for n, a in zip((1, 2, 3), accs)]
    ys = labs.analyse_yosinski(labs.default_config("yosinski"), y)
    assert ys.agrees is True and len(ys.checks) == 3 and ys.extra["baseline"] == pytest.approx(0.81)
    assert _bands(ys.figure) == 4 and "AnB+ 95% interval" in ys.table.columns

    q = labs.default_config("quadrant")
    q.sizes, q.domains = [5], ["faces"]
    qr = [_srec(f"q:faces:5:{k}", [a + 0.01 * s], s) for s in (0, 1, 2)
          for k, a in (("feature_extraction", 0.8), ("partial", 0.7), ("full", 0.6))]
    qres = labs.analyse_quadrant(q, qr, similarity={"faces": "near"})
    assert [c["agrees"] for c in qres.checks] == [True] and "3 paired seeds" in qres.text
    assert qres.table.loc[0, "feature_extraction"] == pytest.approx(0.81)

    bn = [_srec(k, [a, a + 0.1 + 0.01 * s], s, phases=[{"trainable": ["head"]}])
          for s in (0, 1, 2) for k, a in (("bn:frozen", 0.7), ("bn:train", 0.5))]
    for r in bn:
        for m in r["epochs"]:
            m["bn_stat_drift"] = {"b0": 0.0 if r["key"].startswith("bn:frozen") else 0.2}
    b = labs.analyse_bn(labs.default_config("bn"), bn)
    assert b.agrees is True and "every one of 3 seeds" in b.text and _bands(b.figure) == 4


def test_a_tiny_lab_with_two_seeds_end_to_end(tiny_backbone):
    res = labs.run_lab(tiny("normalization", seeds=2))
    lab = labs.list_labs(lab="normalization")[0]
    assert [r["seed"] for r in lab["runs"]] == [0, 0, 1, 1]
    store = RunStore()
    infos = [store.get(r["run_id"]) for r in lab["runs"]]
    assert all(i.status == "completed" for i in infos) and [i.config["seed"] for i in infos] == [0, 0, 1, 1]
    assert res.seeds == [0, 1] and "best acc 95% interval" in res.table.columns
    own = [i.summary["best_val_acc"] for i in infos if i.config["normalization"] == "backbone"]
    assert res.table.set_index("normalisation").loc["own mean/std", "best acc"] == pytest.approx(sum(own) / 2)
    # the verdict, recomputed from the stored curves: the seed-paired gap of the best accuracies (own
    # normalisation minus a wrong one), its bootstrap interval on the predicted side or not
    acc = _stored_accs(lab)
    gap = stats.paired([max(acc["norm:backbone", s]) - max(acc["norm:wrong", s]) for s in (0, 1)])
    _assert_shown(res, [gap.agrees])
