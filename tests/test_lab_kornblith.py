"""The Kornblith lab (do better ImageNet models transfer better?): the bootstrap rank correlation, the pure
analysis on realistic records (its verdict recomputed from their numbers), the plan (networks × targets ×
seeds, each seed on its own split) and one tiny lab end to end, read back from the run store."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from tl_core import data, labs
from tl_core.runs.store import RunStore

NETS = list(labs.IMAGENET_TOP1)  # ordered by published top-1
TOP1 = [labs.IMAGENET_TOP1[n] for n in NETS]


# ----------------------------------------------------------------------------- stats: rank correlation


def test_rank_correlation_is_spearmans_with_ties_and_zero_without_spread():
    x, y = [58.2, 71.9, 75.1, 76.7, 77.6], [0.7, 0.9, 0.8, 0.8, 0.95]
    assert labs.rank_correlation(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert labs.rank_correlation(x, x[::-1]) == pytest.approx(-1)
    assert labs.rank_correlation(x, [0.5] * 5) == 0.0  # no ordering to agree with
    with pytest.raises(ValueError, match="same length"):
        labs.rank_correlation([1, 2], [1, 2, 3])


def _correct(accs, images, rng, noise=0.15):
    """[networks, images] 0/1: a shared difficulty per image (networks err on the same hard images, as real
    ones do) plus each network's own noise, thresholded at its accuracy."""
    hard = rng.random(images)
    return np.array([(hard + noise * rng.normal(size=images)) < a for a in accs], dtype=float)


@pytest.mark.parametrize("accs, verdict", [([0.55, 0.65, 0.72, 0.8, 0.86], "agrees"),
                                           ([0.86, 0.8, 0.72, 0.65, 0.55], "disagrees"),
                                           ([0.7, 0.7, 0.7, 0.7, 0.7], "inconclusive")])
def test_bootstrap_rank_correlation_verdicts(accs, verdict):
    rng = np.random.default_rng(1)
    mats = [_correct(accs, 300, rng) for _ in range(3)]
    c = labs.bootstrap_rank_correlation(TOP1, mats)
    assert c.verdict == verdict and c.agrees is {"agrees": True, "disagrees": False, "inconclusive": None}[verdict]
    assert c.lo <= c.hi and -1 <= c.lo and c.hi <= 1 and c.seeds == 3 and c.images == (300, 300, 300)
    means = np.mean([m.mean(1) for m in mats], axis=0)  # the point estimate: ρ of the seeds' mean accuracies
    assert c.accuracy == pytest.approx(means) and c.rho == pytest.approx(labs.rank_correlation(TOP1, means))
    assert all(lo <= a <= hi for lo, a, hi in zip(c.acc_lo, c.accuracy, c.acc_hi))
    assert labs.bootstrap_rank_correlation(TOP1, mats) == c  # seeded: the same numbers every time


def test_bootstrap_rank_correlation_resamples_images_and_seeds():
    rng = np.random.default_rng(2)
    accs = [0.6, 0.62, 0.64, 0.66, 0.68]
    few = labs.bootstrap_rank_correlation(TOP1, [_correct(accs, 40, rng)])
    many = labs.bootstrap_rank_correlation(TOP1, [_correct(accs, 2000, rng) for _ in range(3)])
    assert (few.hi - few.lo) > (many.hi - many.lo)  # more images and seeds: a narrower interval
    # one seed ranks the networks clearly, the other does not: pooling their images would still give a clear
    # ranking, but the seeds are resampled too (a draw of the second seed twice), so the interval reaches below 0
    up, flat = _correct([0.5, 0.6, 0.7, 0.8, 0.9], 400, rng), _correct([0.74, 0.73, 0.72, 0.71, 0.7], 400, rng)
    pooled = labs.bootstrap_rank_correlation(TOP1, [np.concatenate([up, flat], axis=1)])
    both = labs.bootstrap_rank_correlation(TOP1, [up, flat])
    assert both.lo < 0 < pooled.lo and both.hi > 0
    with pytest.raises(ValueError, match=r"\[5 items"):
        labs.bootstrap_rank_correlation(TOP1, [np.ones((4, 10))])


# ----------------------------------------------------------------------------- analysis (pure) on records


def _records(accs_by_target: dict[str, list[float]], seeds=(0, 1, 2), images=240, with_correct=True):
    """Realistic records of the lab: per target, network and seed, a run whose final validation accuracy is
    the mean of its per-image correctness on that seed's own validation images."""
    rng = np.random.default_rng(0)
    recs = []
    for dom, accs in accs_by_target.items():
        for s in seeds:
            val_idx = sorted(rng.choice(5000, images, replace=False).tolist())  # each seed: its own images
            for net, row in zip(NETS, _correct(accs, images, rng)):
                rec = {"key": f"k:{dom}:{net}@s{s}", "label": f"{dom} · {net} · seed {s}",
                       "run_id": f"{dom}-{net}-{s}", "seed": s, "status": "completed", "reason": None,
                       "config": {"seed": s, "split_seed": s},
                       "summary": {"wall_s": 1.0 + NETS.index(net), "total_params": 1_000_000 * (1 + NETS.index(net))},
                       "epochs": [{"epoch": 1, "val_acc": 0.3}, {"epoch": 2, "val_acc": float(row.mean())}]}
                if with_correct:
                    rec.update(val_idx=val_idx, correct=row.astype(int).tolist())
                recs.append(rec)
    return recs


def test_analysis_verdict_per_target_recomputed_from_the_records():
    cfg = labs.default_config("kornblith")
    cfg.networks = NETS
    recs = _records({"animal_shapes": [0.6, 0.68, 0.74, 0.8, 0.85], "mnist": [0.9, 0.85, 0.8, 0.75, 0.7]})
    res = labs.analyse(cfg, recs)
    near, far = res.checks
    for check, dom in ((near, "animal_shapes"), (far, "mnist")):
        mats = [np.array([r["correct"] for r in recs if r["key"].startswith(f"k:{dom}:") and r["seed"] == s])
                for s in (0, 1, 2)]
        c = labs.bootstrap_rank_correlation(TOP1, mats)  # the verdict, recomputed from the stored numbers
        assert res.extra["rho"][dom] == pytest.approx((c.rho, c.lo, c.hi))
        assert check["agrees"] is c.agrees and f"{c.rho:+.2f} [95%: {c.lo:+.2f}, {c.hi:+.2f}]" in check["measured"]
        rows = res.table[res.table["target"].str.startswith(dom)]
        assert list(rows["network"]) == NETS and rows["transfer acc"].to_numpy() == pytest.approx(c.accuracy)
    assert near["agrees"] is True and far["agrees"] is False and res.agrees is False
    assert res.seeds == [0, 1, 2] and "each with its own split" in res.text and "paired seeds" not in res.text
    assert {"ImageNet top-1 (%)", "params (M)", "time per run (s)", "transfer acc 95% interval"} <= set(res.table)
    assert "ranks 1 of 5" in res.text  # the headline: where the fastest network lands (mnist: first)
    assert len(res.figure.data) == 4 and res.figure.data[0].error_y.array is not None


def test_analysis_inconclusive_and_without_per_image_results():
    cfg = labs.default_config("kornblith")
    res = labs.analyse(cfg, _records({"mnist": [0.7] * 5}))
    assert res.checks[0]["agrees"] is None and res.agrees is None and "contains 0" in res.text
    bare = labs.analyse(cfg, _records({"mnist": [0.6, 0.68, 0.74, 0.8, 0.85]}, with_correct=False))
    assert bare.checks[0]["agrees"] is None and "per-image results are missing" in bare.text
    assert "Spearman ρ = +1.00" in bare.checks[0]["measured"]  # the point estimate still shows
    assert labs.analyse(cfg, []).agrees is None


# ----------------------------------------------------------------------------- plan and check


def test_plan_networks_by_targets_by_seeds_each_seed_its_own_split():
    cfg = labs.default_config("kornblith")
    assert cfg.networks == NETS and cfg.domains == ["animal_shapes", "mnist"] and cfg.seeds == 3
    runs = labs.plan_runs(cfg)
    assert len(runs) == len(NETS) * 2 * 3
    assert {r.key for r in runs} == {f"k:{d}:{n}@s{s}" for d in cfg.domains for n in NETS for s in (0, 1, 2)}
    for r in runs:
        assert r.cfg.seed == r.seed and r.cfg.split_seed == r.seed  # split seed = seed: not the paired split
        assert r.cfg.strategy == "feature_extraction" and r.cfg.cache_features
        assert f"k:{r.cfg.data}:{r.cfg.backbone}@s{r.seed}" == r.key
    ds = data.load_dataset("animal_shapes")
    (t0, v0), (t1, v1) = (data.split(ds, cfg.val_fraction, s, cfg.per_class) for s in (0, 1))
    assert not np.array_equal(t0, t1) and not np.array_equal(v0, v1)
    race = labs.plan_runs(labs.default_config("race"))  # the other labs keep their paired split
    assert {r.cfg.split_seed for r in race} == {0} and {r.seed for r in race} == {0, 1, 2}


@pytest.mark.parametrize("change, message", [
    ({"networks": ["mobilenetv2"]}, "at least two different networks"),
    ({"networks": ["mobilenetv2", "mobilenetv2"]}, "at least two different networks"),
    ({"networks": ["resnet18", "mobilenetv2"]}, "published ImageNet top-1"),
    ({"domains": ["bbc_news"]}, "built-in image data sets"),
    ({"domains": []}, "built-in image data sets"),
    ({"image_size": 1024, "per_class": None, "epochs": 100}, "minutes|GB"),
])
def test_check_refuses_in_one_line(change, message):
    with pytest.raises(ValueError, match=message) as exc:
        labs.LabConfig.from_dict({"lab": "kornblith", **change}).validate()
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- end to end


def test_tiny_lab_end_to_end_reads_per_image_results_from_the_store():
    cfg = labs.default_config("kornblith")
    cfg.networks, cfg.domains = ["mobilenetv2", "efficientnet_lite0"], ["digits8"]
    cfg.per_class, cfg.image_size, cfg.epochs, cfg.batch_size, cfg.seeds = 5, 32, 2, 16, 2
    res = labs.run_lab(cfg)
    assert res.extra["status"] == "completed" and res.seeds == [0, 1]
    state = labs.read_state(res.extra["lab_id"])
    store = RunStore()
    try:
        preds = {r["key"]: store.predictions(r["run_id"]) for r in state["runs"]}
        for r in state["runs"]:  # each seed its own split; the stored predictions are the final validation's
            assert r["config"]["split_seed"] == r["seed"]
            p = preds[r["key"]]
            final = store.metrics(r["run_id"], "epoch")[-1]["val_acc"]
            assert np.mean(p["pred"] == p["label"]) == pytest.approx(final)
    finally:
        store.close()
    first, second = preds["k:digits8:mobilenetv2@s0"], preds["k:digits8:mobilenetv2@s1"]
    assert not np.array_equal(np.sort(first["val_idx"]), np.sort(second["val_idx"]))
    mats = []
    for s in (0, 1):
        ps = [preds[f"k:digits8:{n}@s{s}"] for n in cfg.networks]
        assert all(np.array_equal(np.sort(p["val_idx"]), np.sort(ps[0]["val_idx"])) for p in ps)  # same images
        mats.append(np.array([(p["pred"] == p["label"])[np.argsort(p["val_idx"])] for p in ps], dtype=float))
    c = labs.bootstrap_rank_correlation([labs.IMAGENET_TOP1[n] for n in cfg.networks], mats)
    assert res.extra["rho"]["digits8"] == pytest.approx((c.rho, c.lo, c.hi))
    assert res.checks[0]["agrees"] is c.agrees and len(res.table) == 2
