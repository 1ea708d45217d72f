"""The labs on a shifted target (issue 22): surgical fine-tuning (Lee et al. 2023) and AdaBN (Li et al. 2016).
Plans, the pure analyses with verdicts recomputed from the stored numbers, and a tiny AdaBN lab end to end."""
import json
from pathlib import Path

import pytest

from tl_core import labs
from tl_core.labs import adabn, surgical
from tl_core.labs.stats import TOL, paired
from tl_core.models.arch import block_names
from tl_core.runs.store import RunStore


def test_surgical_plan_tunes_each_unit_alone_from_the_source_on_each_shift(tmp_path):
    cfg = labs.default_config("surgical")
    cfg.seeds = 2
    runs = labs.plan_runs(cfg, tmp_path)
    per_seed = 1 + len(cfg.shifts) * (surgical.BODY_UNITS + 2)
    assert len(runs) == 2 * per_seed
    names = block_names(cfg.backbone, cfg.image_size)
    units = surgical.units(cfg.backbone, cfg.image_size)
    assert [b for _, blocks in units for b in blocks] == names and units[-1] == ("head", [names[-1]])
    for seed in (0, 1):
        mine = [r for r in runs if r.seed == seed]
        src, targets = mine[0], mine[1:]
        assert src.key == f"source@s{seed}" and src.stage < min(r.stage for r in targets)
        assert (src.cfg.strategy, src.cfg.shift, src.cfg.ood_shift) == ("full", "", "noise")
        assert src.cfg.per_class == cfg.source_per_class and src.cfg.epochs == cfg.source_epochs
        paths = {r.build["path"] for r in targets}
        assert len(paths) == 1 and all(r.cfg.weights_file == r.build["path"] and r.build["kind"] == "run_model"
                                       and r.build["source"] == src.key for r in targets)
        for r in targets:
            shift, unit = r.key.split("@")[0].split(":")
            assert r.cfg.shift == shift and r.cfg.split_seed == cfg.seed
            if unit == "full":
                assert r.cfg.strategy == "full"
            else:
                trains = [n for n, s in r.cfg.plan.items() if not s["frozen"]]
                assert trains == units[int(unit)][1]
    assert Path(paths.pop()).parent == tmp_path / "weights" / "seed1"


def test_adabn_plan_and_the_shift_checks(tmp_path):
    runs = labs.plan_runs(labs.default_config("adabn"), tmp_path)
    assert [r.key for r in runs[:2]] == ["source@s0", "head@s0"] and len(runs) == 6
    src, head = runs[:2]
    assert src.after == "adabn" and src.cfg.ood_shift == "noise" and src.cfg.shift == ""
    assert head.cfg.strategy == "feature_extraction" and head.cfg.shift == "noise" and head.build["kind"] == "run_model"
    for lab, shifts, msg in (("adabn", ["labels"], "input shift"), ("surgical", ["fog"], "not 'fog'"),
                             ("surgical", ["noise", "noise"], "distinct"), ("surgical", [], "at least one")):
        cfg = labs.default_config(lab)
        cfg.shifts = shifts
        with pytest.raises(ValueError, match=msg):
            cfg.validate()


def _rec(key, best, seed, label=None, **extra):
    return {"key": f"{key}@s{seed}", "label": f"{label or key} · seed {seed}", "run_id": f"id-{key}-{seed}",
            "seed": seed, "status": "completed", "reason": None, "config": {"seed": seed, **extra.pop("config", {})},
            "summary": {"wall_s": 1.0}, "epochs": [{"epoch": 1, "val_acc": best - 0.1, **extra},
                                                   {"epoch": 2, "val_acc": best, **extra}]}


def _surgical_recs(noise: list[float], labels: list[float], seeds=(0, 1, 2)) -> list[dict]:
    """noise / labels: the best accuracy of units 1..5 (5 = head) and of full fine-tuning, seed 0 (+1 pt per seed)."""
    names = ["stem … blocks.1", "blocks.2 … blocks.3", "blocks.4 … blocks.5", "blocks.6 … neck", "head"]
    out = []
    for s in seeds:
        out.append(_rec("source", 0.9, s, "source (clean)", config={"ood_shift": "noise"}, val_acc_ood=0.3))
        for shift, accs in (("noise", noise), ("labels", labels)):
            for u, a in enumerate(accs[:-1]):
                out.append(_rec(f"{shift}:{u}", a + 0.01 * s, s, f"{shift} · tune {names[u]}"))
            out.append(_rec(f"{shift}:full", accs[-1] + 0.01 * s, s, f"{shift} · tune all"))
    return out


def test_surgical_analysis_agrees_and_its_verdicts_follow_from_the_numbers():
    cfg = labs.default_config("surgical")
    res = labs.analyse(cfg, _surgical_recs([0.8, 0.7, 0.6, 0.5, 0.4, 0.75], [0.2, 0.3, 0.4, 0.6, 0.7, 0.65]))
    assert res.agrees is True and res.seeds == [0, 1, 2]
    noise, lab = res.checks
    assert noise["best_unit"] == 0 and lab["best_unit"] == 4
    assert "best single unit 1 (81.0%)" in noise["measured"] and "best single unit 5 " in lab["measured"]  # 1-based
    table = res.table.set_index("tuned unit")
    assert table.loc["1: stem … blocks.1", "noise acc"] == pytest.approx(0.81)  # mean of 0.80, 0.81, 0.82
    # recomputed from the table's numbers: early (units 1-2) minus the best other, seed by seed
    diffs = [max(0.8, 0.7) - max(0.6, 0.5, 0.4)] * 3
    assert paired(diffs).describe(labs.analysis.pts) in noise["measured"]
    assert len(res.figure.data) >= 2 and "untuned on noise: 30.0%" in res.text
    assert "miniature" in res.text and "head is kept" in res.text


def test_surgical_analysis_disagrees_when_a_late_unit_wins_the_input_shift():
    res = labs.analyse(labs.default_config("surgical"),
                       _surgical_recs([0.4, 0.5, 0.6, 0.8, 0.7, 0.75], [0.7, 0.3, 0.4, 0.5, 0.6, 0.65]))
    assert [c["agrees"] for c in res.checks] == [False, False] and res.agrees is False
    assert "disagrees" in res.text


def _adabn_recs(before, after, head, weight_change=0.0, seeds=(0, 1, 2)):
    out = []
    for s in seeds:
        r = _rec("source", 0.9, s, "source (clean)")
        r["adabn"] = {"shift": "noise", "before": before + 0.01 * s, "after": after + 0.01 * s, "adapt_images": 300,
                      "val_images": 100, "bn_layers": 52, "bn_stat_change": 0.4, "max_weight_change": weight_change}
        out += [r, _rec("head", head + 0.01 * s, s, "noise · fine-tune the head")]
    return out


def test_adabn_analysis_recomputes_its_verdicts():
    cfg = labs.default_config("adabn")
    res = labs.analyse(cfg, _adabn_recs(0.3, 0.6, 0.55))
    assert res.agrees is True and [c["agrees"] for c in res.checks] == [True, True, True]
    assert paired([0.3] * 3).describe(labs.analysis.pts) in res.checks[0]["measured"]
    table = res.table.set_index("model")
    assert table.loc["AdaBN on noise (no labels)", "accuracy"] == pytest.approx(0.61)
    worse = labs.analyse(cfg, _adabn_recs(0.6, 0.3, 0.8, weight_change=1e-3))
    assert [c["agrees"] for c in worse.checks] == [False, False, False]
    assert paired([0.3 - 0.8 + TOL] * 3, lambda d: d >= 0).agrees is False


def test_adapt_bn_sets_each_batchnorm_to_the_target_images_statistics():
    """AdaBN's statistics are the target's own: the first BatchNorm's running mean and (unbiased) variance equal
    its input's per-channel mean and variance over the images, averaged over equal batches; weights stay."""
    import timm
    import torch

    model = timm.create_model("resnet10t", num_classes=3).eval()
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)
    transform = lambda x: x.float() / 255 * 4 - 1  # noqa: E731 (a shifted input: values in [-1, 3])
    seen = []
    first = adabn.bn_layers(model)[0]
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    adabn.adapt_bn(model, images, transform, batch_size=16)
    hook.remove()
    assert len(seen) == 3 and not model.training
    means = torch.stack([x.mean((0, 2, 3)) for x in seen]).mean(0)
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in seen]).mean(0)
    torch.testing.assert_close(first.running_mean, means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.running_var, variances, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # no weight moved
    assert first.momentum == 0.1  # the layer's own momentum is back


def test_a_tiny_adabn_lab_changes_bn_statistics_and_no_weight():
    """End to end, one seed: the source trains, AdaBN re-estimates its statistics (saved as adabn.json), the
    head fine-tune starts from the source network; the accuracy before AdaBN is the source's own ood metric."""
    cfg = labs.default_config("adabn")
    cfg.data, cfg.image_size, cfg.per_class, cfg.source_per_class, cfg.seeds = "digits8", 32, 3, 6, 1
    cfg.epochs = cfg.source_epochs = 1
    res = labs.runner.run_lab(cfg)
    (check_bn,) = [c for c in res.checks if "no weight" in c["claim"]]
    assert check_bn["agrees"] is True
    store = RunStore()
    try:
        src = next(r for r in store.list_runs() if "source" in r.name)
        m = json.loads((store.model_dir(src.id) / adabn.ADABN_FILE).read_text())
        ood = store.metrics(src.id, "epoch")[-1]["val_acc_ood"]
    finally:
        store.close()
    assert m["max_weight_change"] == 0 and m["bn_stat_change"] > 1e-3 and m["bn_layers"] > 10
    assert abs(m["before"] - ood) <= 1.5 / m["val_images"]  # the same network on the same shifted images
    assert m["adapt_images"] == 60 and set(res.table["model"]) >= {"AdaBN on noise (no labels)"}


@pytest.mark.usefixtures("app_env")
def test_the_labs_page_picks_the_shifts_of_the_labs_that_use_them():
    from streamlit.testing.v1 import AppTest

    from tl_core import data

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120).run()
    at.switch_page("pages/labs.py")
    at.query_params["lab"] = "surgical"
    at.run()
    assert not at.exception, at.exception
    users = {lab for lab, info in labs.LABS.items() if "shifts" in info.fields}
    assert {"surgical", "adabn"} <= users
    assert {w.key.removesuffix("_shifts") for w in at.multiselect if w.key.endswith("_shifts")} == users
    assert {"race", "bn"}.isdisjoint(w.key.removesuffix("_shifts") for w in at.multiselect)
    surgical_w, adabn_w = at.multiselect(key="surgical_shifts"), at.multiselect(key="adabn_shifts")
    assert surgical_w.options == list(data.SHIFTS) and surgical_w.value == ["noise", "labels"]
    assert adabn_w.options == list(data.INPUT_SHIFTS)  # AdaBN adapts to an input shift only
    assert all(data.SHIFTS[s] in surgical_w.help for s in data.SHIFTS)  # the descriptions
    surgical_w.set_value(["blur", "labels"]).run()
    assert not at.exception, at.exception
    assert at.session_state["labcfg_surgical"]["shifts"] == ["blur", "labels"]
    q = {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert q["lab"] == "surgical" and q["shifts"] == "blur,labels"
    at.multiselect(key="surgical_shifts").set_value([]).run()  # refused: the form shows what runs
    assert any("Setting not applied" in e.value and "at least one" in e.value for e in at.error)
    assert at.multiselect(key="surgical_shifts").value == ["blur", "labels"]
