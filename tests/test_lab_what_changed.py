"""The "What changed?" lab: its plan, its pure analysis on hand-made CKA measurements, and one tiny lab
end to end whose CKA is measured on the real pretrained and fine-tuned networks."""
import json

import pytest

from tl_core import labs
from tl_core.labs import what_changed as wc
from tl_core.runs.store import RunStore

from test_labs import tiny, tiny_backbone  # noqa: F401  (tiny_backbone: the fixture)

BLOCKS = ["stem", "b1", "b2", "b3", "b4", "b5", "neck", "head"]  # body: 7 blocks, thirds of 2


def _measured(values, frozen=()):
    return {"cka": dict(zip(BLOCKS, values)), "labels": {b: b.upper() for b in BLOCKS}, "body": BLOCKS[:-1],
            "frozen": list(frozen), "images": 50}


def _rec(key, seed, values, frozen=(), accs=(0.5, 0.6)):
    labels = {"feature_extraction": "Feature extraction", "partial": "Partial fine-tuning",
              "full": "Full fine-tuning"}
    return {"key": f"{key}@s{seed}", "label": f"{labels[key]} · seed {seed}", "run_id": f"id-{key}-{seed}",
            "seed": seed, "status": "completed", "reason": None, "config": {"seed": seed},
            "summary": {"wall_s": 1.0}, "epochs": [{"epoch": i + 1, "val_acc": a} for i, a in enumerate(accs)],
            "cka": _measured(values, frozen)}


def _seed_recs(seed, full=None, fe_frozen_value=1.0):
    d = 0.01 * seed
    return [
        _rec("feature_extraction", seed, [fe_frozen_value] * 7 + [0.4], frozen=BLOCKS[:-1]),
        _rec("partial", seed, [1, 1, 1, 1, 0.8 - d, 0.6 - d, 0.5 - d, 0.3], frozen=BLOCKS[:4]),
        _rec("full", seed, full or [0.99 - d, 0.97, 0.95, 0.9, 0.7, 0.5 - d, 0.45, 0.2]),
    ]


# ------------------------------------------------------------------ plan


def test_plan_runs_the_three_strategies_for_every_seed_with_frozen_batchnorm():
    cfg = labs.default_config("what_changed")
    assert cfg.seeds == 3 and cfg.backbone == "mobilenetv2" and cfg.data == "animal_shapes"
    assert (cfg.per_class, cfg.image_size) == (25, 64)
    runs = labs.plan_runs(cfg)
    assert [(r.key, r.seed) for r in runs] == [(f"{s}@s{seed}", seed) for seed in (0, 1, 2) for s in wc.STRATEGIES]
    assert [r.cfg.strategy for r in runs] == list(wc.STRATEGIES) * 3
    assert all(r.cfg.bn_mode == "frozen" and r.cfg.seed == r.seed for r in runs)
    assert runs[0].cfg.name == "lab what-changed · Feature extraction · seed 0"
    one = labs.plan_runs(labs.LabConfig.from_dict({**cfg.to_dict(), "freeze_blocks": 4, "only_seed": 1}))
    assert [(r.cfg.strategy, r.cfg.freeze_blocks, r.seed) for r in one] == [
        ("feature_extraction", None, 1), ("partial", 4, 1), ("full", None, 1)]
    assert labs.ready_made()["what_changed_default"] == cfg
    assert labs.default_config("what_changed", "gpu").image_size > cfg.image_size


# ------------------------------------------------------------------ pure analysis


def test_analysis_agrees_over_three_seeds_with_one_bar_per_block_per_strategy():
    recs = [r for seed in (0, 1, 2) for r in _seed_recs(seed)]
    res = wc.analyse_what_changed(labs.default_config("what_changed"), recs)
    assert res.agrees is True and res.seeds == [0, 1, 2]
    assert [c["verdict"] for c in res.checks] == ["agrees"] * 3
    assert "every one of 3 seeds" in res.text and "95% interval on the predicted side" in res.text
    t = res.table.set_index("strategy")
    assert list(t.index) == ["Feature extraction", "Partial fine-tuning", "Full fine-tuning"]
    assert t.loc["Partial fine-tuning", "CKA first third"] == 1.0
    assert t.loc["Full fine-tuning", "CKA last third"] == pytest.approx((0.5 - 0.01 + 0.45) / 2, abs=1e-4)
    assert t.loc["Feature extraction", "lowest CKA of a frozen block"] == 1.0
    assert "CKA last third 95% interval" in t.columns
    bars = [tr for tr in res.figure.data if tr.type == "bar"]
    assert [tr.name for tr in bars] == list(t.index)
    assert all(list(tr.x) == [b.upper() for b in BLOCKS] for tr in bars)  # the measurement's short labels
    assert bars[2].y[5] == pytest.approx(0.49)  # the mean over the seeds
    assert bars[2].error_y.arrayminus[5] == pytest.approx(0.01)  # min–max over the seeds
    assert "mean of 3 seeds" in res.figure.layout.title.text


def test_analysis_disagrees_when_the_change_does_not_grow_or_a_frozen_block_moved():
    cfg = labs.default_config("what_changed")
    upside_down = [0.3, 0.4, 0.5, 0.7, 0.8, 0.95, 0.97, 0.9]
    res = wc.analyse_what_changed(cfg, [r for s in (0, 1, 2) for r in _seed_recs(s, full=upside_down)])
    assert res.agrees is False
    assert [c["verdict"] for c in res.checks] == ["agrees", "agrees", "disagrees"]
    assert "disagrees with the prediction" in res.text
    moved = wc.analyse_what_changed(cfg, _seed_recs(0, fe_frozen_value=0.98))
    assert moved.checks[0]["agrees"] is False and "0.980000" in moved.checks[0]["measured"]
    assert "single seed" in moved.text and len(moved.figure.data) == 3
    assert all(len(tr.y) == len(BLOCKS) for tr in moved.figure.data)


def test_analysis_without_measurements_names_the_runs_and_says_nothing():
    cfg = labs.default_config("what_changed")
    recs = _seed_recs(0)
    bare = {k: v for k, v in recs[2].items() if k != "cka"}
    res = wc.analyse_what_changed(cfg, recs[:2] + [bare])
    assert "No CKA measurement yet" in res.text and "Full fine-tuning · seed 0" in res.text
    assert len(res.table) == 2 and res.agrees is True
    assert wc.analyse_what_changed(cfg, [bare]).agrees is None
    assert wc.analyse(cfg, [bare], state=None).agrees is None  # nothing to look the measurement up in


# ------------------------------------------------------------------ end to end (tiny)


def test_what_changed_lab_end_to_end(tiny_backbone):  # noqa: F811  (the imported fixture)
    cfg = tiny("what_changed", epochs=2, lr=1e-2)
    res = labs.run_lab(cfg)
    state = labs.list_labs(lab="what_changed")[0]
    store = RunStore()
    folders = {r["key"]: store.run_dir(r["run_id"]) for r in state["runs"]}
    assert set(folders) == set(wc.STRATEGIES)
    m = {k: json.loads((f / wc.CKA_FILE).read_text()) for k, f in folders.items()}
    fe, full = m["feature_extraction"], m["full"]
    assert fe["frozen"] == fe["body"] and len(fe["body"]) >= 3 and fe["images"] >= 100
    assert all(abs(fe["cka"][b] - 1.0) < 1e-6 for b in fe["frozen"])  # frozen + BN frozen: unchanged
    assert full["frozen"] == [] and full["cka"][full["body"][-1]] < 1.0 - 1e-6
    assert res.checks[0]["agrees"] is True
    t = res.table.set_index("strategy")
    assert t.loc["Feature extraction", "frozen blocks"] == len(fe["body"])
    assert t.loc["Full fine-tuning", "best acc"] == pytest.approx(
        store.get(state["runs"][2]["run_id"]).summary["best_val_acc"])
    assert [len(tr.y) for tr in res.figure.data] == [len(fe["cka"])] * 3

    # the lab process's step after a run measures it right away (and a saved measurement is reused)
    run = state["runs"][2]
    (folders["full"] / wc.CKA_FILE).unlink()
    wc.after_run(run, state, store)
    again = json.loads((folders["full"] / wc.CKA_FILE).read_text())
    assert again["cka"] == pytest.approx(full["cka"], abs=1e-9)
    assert [c["agrees"] for c in labs.result(state["id"]).checks] == [c["agrees"] for c in res.checks]

    # a torn measurement file is measured again; a network that cannot be read is named, not fatal
    (folders["feature_extraction"] / wc.CKA_FILE).write_text("{not json")
    (folders["partial"] / wc.CKA_FILE).unlink()
    (folders["partial"] / "model.safetensors").write_bytes(b"junk")
    res = labs.result(state["id"])
    assert json.loads((folders["feature_extraction"] / wc.CKA_FILE).read_text())["cka"] == pytest.approx(fe["cka"])
    assert "No CKA measurement yet" in res.text and "Partial fine-tuning (" in res.text
    assert list(res.table["strategy"]) == ["Feature extraction", "Full fine-tuning"]
