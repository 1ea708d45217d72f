"""Labs: config round trips, the pure analyses on hand-made metric rows, and every lab end to end on
a tiny configuration (numbers read back from the runs, never constants).

Tiny means: digits8 / faces, a few images per class, 32 px, 1-2 epochs and a test_resnet-sized
"pretrained" backbone saved as a lab backbone (``backbones.save_local_backbone``) so that every
pretrained path (weights file, freezing, caching) runs without the 2M-parameter MobileNetV2.
"""
import time

import pytest
import timm
import torch

from tl_core import backbones, labs
from tl_core.runs import RunStore

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
    backbones._data_config.cache_clear()
    yield TINY_KEY
    backbones._data_config.cache_clear()


def tiny(lab: str, **kw) -> labs.LabConfig:
    c = labs.default_config(lab)
    c.backbone, c.data, c.per_class, c.image_size, c.epochs, c.batch_size = TINY_KEY, "digits8", 4, 32, 1, 16
    c.val_fraction = 0.1
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def _store_best(res: labs.LabResult) -> dict:
    store = RunStore()
    try:
        return {rid: store.get(rid).summary["best_val_acc"] for rid in res.table["run"]}
    finally:
        store.close()


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
    assert res.agrees is not None and len(res.checks) == 3
    assert f"{best[t.loc['scratch', 'run']]:.1%}" in res.text
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
    assert labs.result(lab_id).agrees is not None

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
    assert labs.list_labs(lab="bn")[0]["reason"] == labs.runs_mod.DIED
    labs.stop_lab(state["id"])  # nothing left waiting: its runs are cancelled
    store = RunStore()
    assert {store.get(r["run_id"]).status for r in state["runs"]} == {"stopped"}


def test_freeze_depth_analysis_when_freezing_some_groups_beats_none():
    rows = [_rec(f"frozen:{n}", [a]) for n, a in ((0, 0.70), (3, 0.85), (5, 0.84), (9, 0.60))]
    res = labs.analyse_freeze_depth(labs.default_config("freeze_depth"), rows, n_groups=9)
    assert res.extra["general_upto"] == 5 and "n = 5" in res.text
