"""The frozen-prefix cache on its own (no training): what it decides and what it returns."""
import threading

import pytest
import timm
import torch

from tl_core import data
from tl_core import devices
from tl_core.training import prefix as features
from tl_core.models import arch as models
from tl_core.models import surgery


def _setup(freeze: int):
    model = timm.create_model("test_resnet", num_classes=3).eval()
    hier = surgery.hierarchy(model, 32)
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=freeze)
    surgery.apply_plan(model, hier, plan)
    chain = surgery.sequential_chain(model, 32)
    return model, hier, chain, plan


def test_plan_cache_says_why_not():
    model, hier, chain, plan = _setup(3)
    assert features.plan_cache(model, hier, chain, plan, enabled=False).why == "not cached: cache_features is off"
    assert "augmentation" in features.plan_cache(model, hier, chain, plan, augmented=True).why
    none_frozen = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=0)
    assert not features.plan_cache(model, hier, chain, none_frozen).ok


def test_prefix_features_match_the_prefix_and_respect_the_limit():
    model, hier, chain, plan = _setup(3)
    cache = features.plan_cache(model, hier, chain, plan)
    assert cache.ok and cache.frozen_blocks == 3 and cache.why.startswith("cached the output of")
    ds = data.load_dataset("digits8")
    images = {"train": ds.images[:20], "val": ds.images[20:30]}
    _, eval_tf = data.make_transforms(models.data_config_for("test_resnet", model), 32)
    to_device = devices.device_plan("cpu", channels_last=False).move
    feats, why = features.prefix_features(cache, model, images, eval_tf, to_device)
    assert set(feats) == {"train", "val"} and "30 images" in why
    idx = torch.tensor([3, 0, 7])
    with torch.no_grad():
        expected = cache.prefix(eval_tf(images["train"][idx]))
    torch.testing.assert_close(feats["train"][idx], expected)
    feats, why = features.prefix_features(cache, model, images, eval_tf, to_device, limit=1)
    assert feats is None and why.startswith("not cached: the frozen part's outputs would take")


# --------------------------------------------------------------------------- features shared between runs

import os  # noqa: E402

import pytest  # noqa: E402

from tl_core.training import feature_store as feature_cache  # noqa: E402
from tl_core.training.config import TrainConfig
from tl_core.training.trainer import fit  # noqa: E402


def tiny(**kw) -> TrainConfig:
    base = dict(backbone="test_resnet", weights="random", data="digits8", per_class=8, val_fraction=0.02,
                image_size=32, strategy="partial", freeze_blocks=3, epochs=1, batch_size=16, seed=0)
    return TrainConfig(**{**base, **kw})


class PrefixCounter:
    """Counts the images that reach the network's first conv while the run could run its prefix (from the
    epoch-0 snapshot to the end of training), leaving out the snapshot probes between epochs."""

    def __init__(self):
        self.images, self.counting, self.summary, self.info = 0, False, None, None

    def on(self, event, trainer, **data):
        if event == "before_fit":
            self.info = data["info"]
            first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
            first_conv.register_forward_hook(lambda m, i, o: self._count(len(o)))
        self.counting = event in ("snapshot", "before_phase", "before_epoch", "after_batch") or (
            self.counting and event != "after_epoch")
        if event == "after_fit":
            self.summary = data["summary"]

    def _count(self, n):
        if self.counting:
            self.images += n


def counted_fit(cfg) -> PrefixCounter:
    counter = PrefixCounter()
    fit(cfg, [counter])
    assert counter.summary["status"] == "completed"
    return counter


def test_second_identical_run_sends_no_image_through_the_prefix():
    first = counted_fit(tiny())
    n = len(os.listdir(feature_cache.default_folder()))
    assert first.images == first.info["num_train"] + first.info["num_val"] + 2  # each image once, a shape probe per set
    assert n == 2  # one file per image set
    assert first.summary["cache"][0].endswith("filled during the first epoch, then kept for later runs)")
    feature_cache.MEMORY.clear()  # as a fresh worker process: from disk
    second = counted_fit(tiny())
    assert second.images == 0
    assert second.summary["cache"][0].endswith("features reused from an earlier run)")
    assert second.summary["phases"][0]["cached"]
    for k in ("final_val_loss", "final_val_acc", "confusion"):
        assert second.summary[k] == first.summary[k]
    third = counted_fit(tiny())  # a warm worker: from its memory layer
    assert third.images == 0 and third.summary["final_val_loss"] == first.summary["final_val_loss"]


@pytest.mark.parametrize("change", [dict(normalization="none"), dict(image_size=40), dict(freeze_blocks=2),
                                    dict(classes=["0", "1", "2", "3"]), dict(val_fraction=0.03),
                                    dict(data="animal_shapes")],
                         ids=["normalisation", "image_size", "prefix_depth", "classes", "split", "data"])
def test_changing_one_key_input_recomputes(change):
    base = dict(classes=["0", "1", "2", "4"]) if "classes" in change else {}
    assert counted_fit(tiny(**base)).images > 0
    again = counted_fit(tiny(**{**base, **change}))
    assert again.images > 0 and "reused" not in again.summary["cache"][0]
    assert len(os.listdir(feature_cache.default_folder())) == 4  # both runs' train and val sets


def test_each_image_set_is_keyed_by_its_own_images():
    counted_fit(tiny())
    fewer = counted_fit(tiny(per_class=6))  # the same validation images, fewer training images
    assert fewer.summary["cache"][0].endswith("val features reused from an earlier run, "
                                              "the rest filled during the first epoch)")
    assert 0 < fewer.images <= 60 + 1  # only the 60 training images (and the shape probe) ran


def _direct(model=None, freeze=3, key=None, images=None):
    """prefix_features with the disk cache on, every image asked for once; (features, why, images run)."""
    model, hier, chain, plan = _setup(freeze) if model is None else model
    cache = features.plan_cache(model, hier, chain, plan)
    ds = data.load_dataset("digits8")
    images = images or {"train": ds.images[:24], "val": ds.images[24:32]}
    _, eval_tf = data.make_transforms(models.data_config_for("test_resnet", model), 32)
    seen = []
    hook = cache.prefix[0].register_forward_hook(lambda m, i, o: seen.append(len(o)))
    feats, why = features.prefix_features(cache, model, images, eval_tf, lambda x: x,
                                          key=key if key is not None else {"data": "digits8"})
    out = {k: f[torch.arange(len(f))].clone() for k, f in feats.items()}
    hook.remove()
    return out, why, sum(seen)


def test_reused_features_are_identical_and_weights_are_keyed_by_value_not_name():
    setup = _setup(3)
    model = setup[0]
    first, _, ran = _direct(setup)
    second, why, ran_again = _direct(setup)
    assert ran > 0 and ran_again == 0 and why.endswith("features reused from an earlier run)")
    for k in first:
        assert torch.equal(first[k], second[k])
    with torch.no_grad():  # same model object, same name, new values: the weights' hash notices
        next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight.add_(0.01)
    changed, _, ran = _direct(setup)
    assert ran > 0 and not torch.equal(changed["train"], first["train"])
    rebuilt = _setup(3)  # the same architecture rebuilt with other values under the same name
    torch.manual_seed(1)
    rebuilt[0].load_state_dict(timm.create_model("test_resnet", num_classes=3).state_dict())
    assert _direct(rebuilt)[2] > 0
    assert _direct(setup, key={"data": "digits8", "classes": ["0", "1"]})[2] > 0  # a key input from the config


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupt_entry_is_deleted_and_recomputed(damage):
    setup = _setup(3)
    first, _, _ = _direct(setup)
    store = feature_cache.FeatureStore()
    paths = [p for _, _, p in store.entries()]
    assert len(paths) == 2
    for path in paths:
        raw = bytearray(path.read_bytes())
        if damage == "flip":
            raw[-5] ^= 0xFF  # a value in the data region: safetensors alone would not notice
        path.write_bytes({"flip": bytes(raw), "truncate": bytes(raw[: len(raw) // 2]), "garbage": b"\0" * 64}[damage])
    feature_cache.MEMORY.clear()
    again, why, ran = _direct(setup)
    assert ran > 0 and "reused" not in why
    for k in first:
        assert torch.equal(first[k], again[k])
    assert sorted(p for _, _, p in store.entries()) == sorted(paths)  # rewritten whole
    feature_cache.MEMORY.clear()
    assert _direct(setup)[2] == 0


def test_eviction_keeps_the_folder_under_the_cap_least_recently_used_first(tmp_path):
    entry = torch.arange(2048, dtype=torch.float32)  # 8 KiB of features per entry
    store = feature_cache.FeatureStore(tmp_path, cap_bytes=int(2.5 * entry.nbytes))
    for i, name in enumerate("abc"):
        assert store.store(name, entry + i)
        os.utime(store.path(name), (1000.0 + i, 1000.0 + i))  # written in this order, a second apart
    assert sum(size for _, size, _ in store.entries()) <= store.cap
    assert not store.path("a").exists() and store.load("a") is None  # oldest went first
    assert torch.equal(store.load("b"), entry + 1)  # a read makes b the most recently used
    assert store.store("d", entry + 3)
    assert {p.stem for _, _, p in store.entries()} == {"b", "d"}  # so c went, not b
    assert sum(size for _, size, _ in store.entries()) <= store.cap
    assert not store.store("huge", torch.zeros(4 * 2048))  # alone over the cap: not written
    assert feature_cache.FeatureStore(tmp_path, cap_bytes=0).enabled is False


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    store = feature_cache.FeatureStore(tmp_path, cap_bytes=2**20)
    store.store("k", torch.ones(10, 4))
    store.store("k", torch.ones(10, 4) * 2)  # a second writer of the same entry replaces it whole
    assert sorted(os.listdir(tmp_path)) == ["k.safetensors"]
    feature_cache.MEMORY.clear()
    assert torch.equal(store.load("k"), torch.ones(10, 4) * 2)


def test_keys_of_a_thousand_images_and_a_mobilenet_prefix_are_stable_and_per_split():
    # (their cost is measured by benchmarks/bench_feature_extraction.py --cache-key, not asserted here)
    model = timm.create_model("mobilenetv2_100", num_classes=10).eval()
    hier = surgery.hierarchy(model, 96)
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=len(hier.block_names) - 1)
    surgery.apply_plan(model, hier, plan)
    cache = features.plan_cache(model, hier, surgery.sequential_chain(model, 64), plan)
    _, eval_tf = data.make_transforms(models.data_config_for("mobilenetv2_100", model), 96)
    images = {"train": torch.randint(0, 256, (800, 3, 96, 96), dtype=torch.uint8),
              "val": torch.randint(0, 256, (200, 3, 96, 96), dtype=torch.uint8)}
    keys = features.entry_keys(cache, model, images, eval_tf, {"data": "animal_shapes"})
    assert len(set(keys.values())) == 2 and keys == features.entry_keys(cache, model, images, eval_tf,
                                                                          {"data": "animal_shapes"})


def test_two_runs_filling_one_share_at_once_compute_each_image_once_and_in_parallel():
    model, hier, chain, plan = _setup(3)
    cache = features.plan_cache(model, hier, chain, plan)
    ds = data.load_dataset("digits8")
    images = ds.images[:40]
    _, eval_tf = data.make_transforms(models.data_config_for("test_resnet", model), 32)
    to_device = devices.device_plan("cpu", channels_last=False).move
    both = threading.Barrier(2, timeout=30)
    seen: dict[str, list] = {}

    class Counted(torch.nn.Module):  # the real prefix, recording which thread computed which images
        def forward(self, x):
            name = threading.current_thread().name
            seen.setdefault(name, []).append(len(x))
            if name in "ab" and len(seen[name]) == 1:  # each run's first part: both compute at the same time
                both.wait()
            return cache.prefix(x)

    first = features.PrefixCache(Counted(), model, images, eval_tf, to_device)
    first.CHUNK = 8
    second = features.PrefixCache(Counted(), model, images, eval_tf, to_device, fill=first.fill)
    second.CHUNK = 8
    first.fill.done[:], first.fill.claimed[:] = False, False  # the shape probe of ``first`` computed nothing kept
    seen.clear()
    got = {}

    def run(cache, name):  # identical runs: the same batches in the same order
        got[name] = torch.cat([cache[torch.arange(i, i + 8)] for i in range(0, 40, 8)])

    runs = [threading.Thread(target=run, args=(c, n), name=n) for c, n in ((first, "a"), (second, "b"))]
    for t in runs:
        t.start()
    for t in runs:
        t.join(60)
    assert not both.broken and set(seen) == {"a", "b"}  # b computed the images a had not claimed, meanwhile
    assert sum(sum(v) for v in seen.values()) == 40  # every image once between them
    torch.testing.assert_close(got["a"], got["b"])
    with torch.no_grad():
        torch.testing.assert_close(got["a"], cache.prefix(eval_tf(images)))


def test_images_claimed_by_a_run_that_fails_are_computed_by_the_other():
    model, hier, chain, plan = _setup(3)
    cache = features.plan_cache(model, hier, chain, plan)
    images = data.load_dataset("digits8").images[:16]
    _, eval_tf = data.make_transforms(models.data_config_for("test_resnet", model), 32)
    to_device = devices.device_plan("cpu", channels_last=False).move

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("out of memory")

    good = features.PrefixCache(cache.prefix, model, images, eval_tf, to_device)
    good[torch.arange(1)]  # the share exists (and a run joining it needs no shape probe)
    bad = features.PrefixCache(Broken(), model, images, eval_tf, to_device, fill=good.fill)
    with pytest.raises(RuntimeError, match="out of memory"):
        bad[torch.arange(8)]
    assert not good.fill.claimed[1:].any()  # given back
    with torch.no_grad():
        torch.testing.assert_close(good[torch.arange(16)], cache.prefix(eval_tf(images)))
