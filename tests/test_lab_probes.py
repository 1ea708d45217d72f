"""Issue 22, labs 3 and 4: "Which layer to probe" (a linear probe at every block group, near and far target)
and LP-FT (full fine-tuning against linear probe then fine-tune, clean and shifted validation). Their plans,
their pure analyses on hand-made records (every verdict recomputed from the stored numbers), the probe depth
itself (``TrainConfig.probe_depth``: model, validation, saved model), and tiny labs end to end."""
import pytest
import torch

from tl_core import labs
from tl_core.labs import layer_probe, lp_ft, stats
from tl_core.models import arch, surgery
from tl_core.runs.store import RunStore
from tl_core.training import checkpoint
from tl_core.training.config import TrainConfig

from test_labs import tiny, tiny_backbone  # noqa: F401  (tiny_backbone: the fixture)


# ------------------------------------------------------------------ the probe depth


def test_probe_depth_cuts_the_network_and_its_head_reads_that_group():
    full, _ = arch.build_arch("test_resnet", 3)
    hier = surgery.hierarchy(full, 32)
    groups = hier.groups()[:-1]
    widths = [hier.block(g[-1]).out_shape[0] for g in groups]
    for n in (1, 2, len(groups)):
        model, _ = arch.build_arch("test_resnet", 3, probe_depth=n, image_size=32)
        hier = surgery.hierarchy(model, 32)
        assert hier.groups() == [*groups[:n], hier.groups()[-1]]  # later groups gone, a new head
        assert model.get_classifier().in_features == widths[n - 1]
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
        assert arch.block_names("test_resnet", 32, n) == hier.block_names
    with pytest.raises(ValueError, match=f"1..{len(groups)}"):
        surgery.probe_at(full, len(groups) + 1, 3, 32)


def test_probe_depth_is_validated_in_one_line():
    ok = TrainConfig(backbone="test_resnet", weights="random", data="digits8", image_size=32, probe_depth=2)
    assert ok.validate() is ok
    for bad, msg in ((0, "probe_depth must be a whole number >= 1"), (99, "beyond this backbone.*1..5"),
                     ("2", "probe_depth must be of type")):
        with pytest.raises(ValueError, match=msg):
            TrainConfig(backbone="test_resnet", weights="random", data="digits8", image_size=32,
                        probe_depth=bad).validate()
    with pytest.raises(ValueError, match="probe_depth is for image backbones"):
        TrainConfig(backbone="glove_50d", data="fine_food", probe_depth=1).validate()


# ------------------------------------------------------------------ plans


def test_layer_probe_plan_one_feature_extraction_run_per_domain_and_depth():
    cfg = labs.default_config("layer_probe")
    n_groups = len(labs.depth_groups(cfg.backbone, cfg.image_size))
    runs = labs.plan_runs(cfg)
    assert len(runs) == len(cfg.domains) * n_groups * cfg.seeds == 54
    first = [r for r in runs if r.seed == cfg.seed]
    assert [r.key for r in first] == [f"p:{d}:{n}@s{cfg.seed}" for d in cfg.domains for n in range(1, n_groups + 1)]
    assert {(r.cfg.strategy, r.cfg.split_seed, r.cfg.per_class) for r in runs} == {
        ("feature_extraction", cfg.seed, cfg.per_class)}
    assert [r.cfg.probe_depth for r in first][:n_groups] == list(range(1, n_groups + 1))
    cfg.depths = [0, 3]
    with pytest.raises(ValueError, match=f"depths must be 1..{n_groups}"):
        labs.plan_runs(cfg)
    with pytest.raises(ValueError, match="built-in data sets"):
        labs.LabConfig(lab="layer_probe", domains=["animal_shapes", "nope"]).validate()


def test_lp_ft_plan_full_fine_tune_and_two_phases_both_validated_on_the_shift():
    cfg = labs.default_config("lp_ft")
    runs = labs.plan_runs(cfg)
    assert [r.key for r in runs] == [f"{k}@s{s}" for s in cfg.run_seeds() for k in ("ft", "lpft")]
    ft, lpft = runs[0].cfg, runs[1].cfg
    assert (ft.strategy, ft.epochs, ft.lr, ft.ood_shift) == ("full", cfg.epochs, cfg.lr, "invert")
    assert (lpft.strategy, lpft.head_epochs, lpft.epochs) == ("two_phase", cfg.head_epochs, cfg.head_epochs + cfg.epochs)
    assert lpft.lr * lpft.backbone_lr_mult == pytest.approx(ft.lr)  # the backbone fine-tunes at FT's rate
    assert lpft.ood_shift == "invert" and lpft.shift == ft.shift == ""  # trained on clean images
    for shifts, msg in ((["labels"], "input shift"), ([], "pick an input shift")):
        with pytest.raises(ValueError, match=msg):
            labs.LabConfig(lab="lp_ft", shifts=shifts).validate()
    with pytest.raises(ValueError, match="head_epochs \\+ epochs"):
        labs.LabConfig(lab="lp_ft", head_epochs=90, epochs=20).validate()


# ------------------------------------------------------------------ pure analyses on hand-made records


def _rec(key, seed, epochs):
    return {"key": f"{key}@s{seed}", "label": f"{key} · seed {seed}", "run_id": f"id-{key}-{seed}", "seed": seed,
            "status": "completed", "reason": None, "config": {"seed": seed}, "summary": {"wall_s": 1.0},
            "epochs": epochs}


def _probe_recs(near, far):
    """Per seed, the curve of best accuracies over depths 1..len for each target (a little seed noise)."""
    out = []
    for s in (0, 1, 2):
        for dom, curve in (("animal_shapes", near), ("mnist", far)):
            out += [_rec(f"p:{dom}:{n}", s, [{"epoch": 1, "val_acc": a + 0.003 * s}])
                    for n, a in enumerate(curve, start=1)]
    return out


def _recomputed(recs) -> str:
    """The prediction's verdict from the stored numbers alone: per seed, each target's best depth and drop."""
    curves = {}
    for r in recs:
        _, dom, n = r["key"].split("@")[0].split(":")
        curves.setdefault(dom, {}).setdefault(r["seed"], {})[int(n)] = max(m["val_acc"] for m in r["epochs"])
    bests = {d: {s: max(c, key=c.get) for s, c in cs.items()} for d, cs in curves.items()}
    drops = {d: {s: max(c.values()) - c[max(c)] for s, c in cs.items()} for d, cs in curves.items()}
    earlier = stats.paired([bests["animal_shapes"][s] - bests["mnist"][s] for s in (0, 1, 2)]).verdict
    larger = stats.paired([drops["mnist"][s] - drops["animal_shapes"][s] for s in (0, 1, 2)]).verdict
    return "agrees" if "agrees" in (earlier, larger) else "disagrees" if (earlier, larger) == ("disagrees",) * 2 \
        else "inconclusive"


@pytest.mark.parametrize("near, far, verdict", [
    ([0.2, 0.4, 0.6, 0.8, 0.9], [0.3, 0.6, 0.8, 0.7, 0.6], "agrees"),  # far peaks at 3 and drops 20 pts
    ([0.2, 0.4, 0.9, 0.7, 0.6], [0.2, 0.4, 0.6, 0.8, 0.9], "disagrees"),  # the other way round
    ([0.2, 0.4, 0.6, 0.8, 0.9], [0.2, 0.4, 0.6, 0.8, 0.9], "inconclusive"),  # the same curve
])
def test_layer_probe_analysis_verdict_from_the_stored_numbers(near, far, verdict):
    cfg = labs.default_config("layer_probe")
    recs = _probe_recs(near, far)
    res = labs.analyse(cfg, recs, {"meta": {"groups": [{"label": f"G{i}", "width": 8 * i} for i in range(1, 6)]}})
    assert res.verdict() == _recomputed(recs) == verdict
    assert res.extra["near"] == "animal_shapes" and res.extra["far"] == "mnist" and res.seeds == [0, 1, 2]
    assert res.extra["best_depth"]["mnist"] == 1 + far.index(max(far))
    assert res.extra["drop"]["mnist"] == pytest.approx(max(far) - far[-1])
    assert list(res.table["n (groups)"]) == [1, 2, 3, 4, 5] and list(res.table["group"])[2] == "G3"
    assert res.table["mnist (best acc)"].tolist() == pytest.approx([a + 0.003 for a in far])
    assert "mnist (best acc) 95% interval" in res.table
    assert ("Why this miniature may differ" in res.text) == (verdict != "agrees")
    assert sum(getattr(t, "fill", None) == "toself" for t in res.figure.data) == 2  # a band per target


def _lpft_recs(ft, lp, lpft):
    """``ft`` / ``lp`` / ``lpft``: [(clean, shifted)] per epoch; LP is LP-FT's phase 1."""
    out = []
    for s in (0, 1, 2):
        d = 0.002 * s
        ep = lambda rows, phase, start=1: [{"epoch": start + i, "phase": phase, "val_acc": a + d,  # noqa: E731
                                            "val_acc_ood": o + d} for i, (a, o) in enumerate(rows)]
        out += [_rec("ft", s, ep(ft, 1)), _rec("lpft", s, ep(lp, 1) + ep(lpft, 2, len(lp) + 1))]
    return out


@pytest.mark.parametrize("ft, lpft, verdicts", [
    ([(0.7, 0.3), (0.85, 0.35)], [(0.8, 0.5), (0.84, 0.45)], ["agrees", "agrees"]),
    ([(0.7, 0.3), (0.85, 0.55)], [(0.7, 0.5), (0.72, 0.40)], ["disagrees", "disagrees"]),
])
def test_lp_ft_analysis_reads_each_run_at_its_best_clean_epoch(ft, lpft, verdicts):
    cfg = labs.default_config("lp_ft")
    recs = _lpft_recs(ft, [(0.6, 0.4), (0.65, 0.42)], lpft)
    res = labs.analyse(cfg, recs)
    pick = lambda rows: max(rows, key=lambda r: r[0])  # noqa: E731
    (fi, fo), (li, lo) = pick(ft), pick(lpft)
    assert [c["verdict"] for c in res.checks] == verdicts
    assert stats.paired([li - (0.65 + fi) / 2] * 3).verdict == verdicts[0]  # the stored numbers say the same
    assert stats.paired([lo - fo] * 3).verdict == verdicts[1]
    p = res.extra["points"][0]
    assert p["LP"] == (0.65, 0.42) and p["FT"] == (fi, fo) and p["LP-FT"] == (li, lo)
    assert list(res.table["method"]) == ["LP", "FT", "LP-FT"]
    assert res.table.loc[2, "OOD acc (invert)"] == pytest.approx(lo + 0.002)
    assert ("Why this miniature may differ" in res.text) == (verdicts != ["agrees", "agrees"])


def test_lp_ft_analysis_without_a_difference_is_inconclusive():
    cfg = labs.default_config("lp_ft")
    recs = _lpft_recs([(0.8, 0.4)], [(0.6, 0.3)], [(0.8, 0.4)])
    recs[0]["epochs"][0]["val_acc_ood"] = 0.41  # seed 0: FT a point better OOD, the others equal
    res = labs.analyse(cfg, recs)
    assert res.checks[0]["verdict"] == "agrees" and res.checks[1]["verdict"] == "inconclusive"  # keeps all its gain
    assert res.verdict() == "inconclusive" and "**inconclusive** at this scale" in res.text  # the OOD gap decides
    assert "[95%:" in res.checks[1]["measured"] and "Why this miniature may differ" in res.text


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_tiny_layer_probe_lab_end_to_end(tiny_backbone):
    cfg = tiny("layer_probe", domains=["faces", "digits8"], depths=[1, 2, 5], epochs=2, lr=1e-2, per_class=8)
    res = labs.run_lab(cfg)
    store = RunStore()
    try:
        runs = {r.name.split(" · ", 1)[1]: r for r in store.list_runs()}
        assert len(runs) == 6 and {r.status for r in runs.values()} == {"completed"}
        for dom in cfg.domains:
            col = res.table[f"{dom} (best acc)"].tolist()
            stored = [runs[f"{dom} · linear probe after {n} group{'s' if n > 1 else ''}"] for n in (1, 2, 5)]
            assert col == pytest.approx([r.summary["best_val_acc"] for r in stored])
            assert all("cached the output" in r.summary["cache"][0] for r in stored)  # only the head trained
            model, saved, _ = checkpoint.load_model(store.model_dir(stored[0].id))
            assert saved.probe_depth == 1 and model.get_classifier().in_features == res.table["features"][0]
        assert res.verdict() in ("agrees", "disagrees", "inconclusive") and res.checks
        assert res.extra["near"] == "faces" and res.extra["far"] == "digits8"
    finally:
        store.close()


@pytest.mark.slow
def test_tiny_lp_ft_lab_end_to_end_reads_both_phases_and_the_shifted_validation(tiny_backbone):
    cfg = tiny("lp_ft", head_epochs=2, epochs=1, shifts=["invert"])
    res = labs.run_lab(cfg)
    store = RunStore()
    try:
        runs = {r.name.split(" · ")[1]: r for r in store.list_runs()}
        lpft = store.metrics(runs["LP-FT (2 head epochs)"].id, "epoch")
        ft = store.metrics(runs["full fine-tuning"].id, "epoch")
        assert [m["phase"] for m in lpft] == [1, 1, 2] and len(ft) == 1
        p = res.extra["points"][cfg.seed]
        assert p["FT"] == (ft[0]["val_acc"], ft[0]["val_acc_ood"])
        assert p["LP-FT"] == (lpft[2]["val_acc"], lpft[2]["val_acc_ood"])
        assert p["LP"] == max(((m["val_acc"], m["val_acc_ood"]) for m in lpft[:2]), key=lambda v: v[0])
        assert list(res.table["method"]) == ["LP", "FT", "LP-FT"] and len(res.checks) == 2
    finally:
        store.close()
