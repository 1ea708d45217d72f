"""The frozen-prefix cache on its own (no training): what it decides and what it returns."""
import timm
import torch

from tl_core import data, devices, features, models, surgery


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
