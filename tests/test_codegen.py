"""tl_core.export.codegen: the generated PyTorch/timm code runs and reproduces the lab's choices exactly."""
import pytest
import timm
import torch

from tl_core.models import backbones
from tl_core.export import codegen
from tl_core.models import surgery

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
            "crop_pct": 0.875}


def _run(src: str) -> dict:
    ns: dict = {}
    exec(compile(src, "<generated>", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    return model, surgery.hierarchy(model, 64)


def _plan(hier, frozen_upto=3):
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto)
    plan.blocks["layer4"].lr_mult = 0.1
    plan.blocks["layer1"].bn_mode = "train"  # frozen, but BatchNorm statistics keep updating
    return plan


def test_generated_code_reproduces_trainable_count_and_param_groups(resnet):
    model, hier = resnet
    plan = _plan(hier)
    expected = surgery.apply_plan(model, hier, plan)
    groups = surgery.param_groups(model, hier, plan, 1e-3, 0.01)
    src = codegen.generate_code({"weights": "random", "plan": plan.to_dict(), "image_size": 64, "weight_decay": 0.01},
                                hier, {"timm_name": "test_resnet", **IMAGENET}, 3, lr=1e-3)
    ns = _run(src)
    assert ns["trainable"] == expected["trainable"] and ns["total"] == expected["total"]
    got = [(g["name"], g["lr"], sum(p.numel() for p in g["params"])) for g in ns["optimizer"].param_groups]
    want = [(g["name"], g["lr"], sum(p.numel() for p in g["params"])) for g in groups]
    assert got == want
    assert isinstance(ns["optimizer"], torch.optim.AdamW)
    assert ns["optimizer"].param_groups[0]["weight_decay"] == 0.01


def test_generated_code_fixes_batchnorm_statistics_in_frozen_blocks(resnet):
    _, hier = resnet
    plan = _plan(hier)
    src = codegen.generate_code({"weights": "random", "plan": plan.to_dict()}, hier,
                                {"timm_name": "test_resnet", **IMAGENET}, 3)
    ns = _run(src)
    model = ns["model"].train()
    stem_bn, layer1_bn = model.bn1, next(m for m in model.layer1.modules() if isinstance(m, torch.nn.BatchNorm2d))
    layer3_bn = next(m for m in model.layer3.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = [bn.running_mean.clone() for bn in (stem_bn, layer1_bn, layer3_bn)]
    model(torch.randn(4, 3, 64, 64))
    after = [bn.running_mean for bn in (stem_bn, layer1_bn, layer3_bn)]
    assert torch.equal(before[0], after[0])  # frozen stem, bn_mode frozen: statistics fixed
    assert not torch.equal(before[1], after[1])  # frozen layer1 with bn_mode train: statistics move
    assert not torch.equal(before[2], after[2])  # trainable block


def test_generated_two_phase_code_unfreezes_and_trains(resnet):
    model, hier = resnet
    p1 = surgery.FreezePlan.for_hierarchy(hier, len(hier.block_names) - 1)
    p2 = surgery.FreezePlan.for_hierarchy(hier, 0)
    for name, s in p2.blocks.items():
        s.lr_mult = 1.0 if name == "fc" else 0.1
    src = codegen.generate_code({"weights": "random", "optimizer": "sgd", "schedule": "cosine"}, hier,
                                {"timm_name": "test_resnet", **IMAGENET}, 3,
                                phases=[("head", 1, p1.to_dict()), ("unfreeze", 1, p2.to_dict())], lr=0.01)
    ns = _run(src)
    assert ns["trainable"] == surgery.apply_plan(model, hier, p1)["trainable"]
    opt = ns["apply_phase"](ns["PHASES"][1])
    assert isinstance(opt, torch.optim.SGD)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == surgery.apply_plan(model, hier, p2)["trainable"]
    assert {g["name"]: g["lr"] for g in opt.param_groups}["layer1"] == pytest.approx(0.001)
    # the training loop, on a tiny loader that notes the weights and what trains as each epoch starts
    net, block_of, seen = ns["model"], ns["block_of"], []

    class Loader(list):
        def __iter__(self):
            if self is train:
                seen.append(({n: p.detach().clone() for n, p in net.named_parameters()},
                             {block_of(n) for n, p in net.named_parameters() if p.requires_grad}))
            return super().__iter__()

    batches = [(torch.randn(4, 3, 64, 64), torch.randint(0, 3, (4,)))]
    train = Loader(batches)
    ns["train"](train, Loader(batches))
    end = {n: p.detach().clone() for n, p in net.named_parameters()}
    (start, phase1), (middle, phase2) = seen  # one epoch per phase
    assert phase1 == set(p1.trainable) == {"fc"} and phase2 == set(p2.trainable) == set(hier.block_names)

    def moved(a, b, block):
        return any(not torch.equal(a[n], b[n]) for n in a if block_of(n) == block)

    for block in hier.block_names:
        assert moved(start, middle, block) == (block == "fc"), block  # phase 1: only the head trains
        assert moved(middle, end, block), block  # phase 2: every block, unfrozen, trains


def test_generated_code_handles_vit_bare_parameters():
    model = timm.create_model("test_vit", num_classes=2)
    hier = surgery.hierarchy(model, 64)
    plan = surgery.FreezePlan.for_hierarchy(hier, 3)
    expected = surgery.apply_plan(model, hier, plan)
    ns = _run(codegen.generate_code({"weights": "random", "plan": plan.to_dict(), "image_size": 64}, hier,
                                    {"timm_name": "test_vit", **IMAGENET}, 2))
    assert ns["trainable"] == expected["trainable"]
    assert not ns["model"].cls_token.requires_grad  # a bare parameter of the stem


def test_generated_code_loads_a_user_weights_file(resnet, tmp_path):
    from safetensors.torch import save_file

    src_model = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src_model.state_dict().items()}, str(path))
    _, hier = resnet
    src = codegen.generate_code({"weights": "pretrained", "weights_file": str(path)}, hier,
                                {"timm_name": "test_resnet", **IMAGENET}, 3)
    ns = _run(src)
    first = next(iter(src_model.state_dict()))
    assert torch.equal(ns["model"].state_dict()[first], src_model.state_dict()[first])
    assert ns["model"].fc.out_features == 3


@pytest.mark.parametrize("key", ["mobilenetv2", "efficientnet_lite0", "resnet18", "squeezenet1_1"])
def test_catalogue_code_compiles_with_the_right_weights_source(key):
    model, _ = backbones.create_model(key, num_classes=4, weights="random")
    hier = surgery.hierarchy(model, 64)
    spec = backbones.get_spec(key)
    bb = {**backbones.describe(key), "pretrained_tag": spec.pretrained_tag,
          "torchvision_weights": spec.torchvision_weights}
    for norm in ("backbone", "imagenet", "none", "wrong"):
        src = codegen.generate_code({"weights": "pretrained", "normalization": norm}, hier, bb, 4)
        compile(src, "<generated>", "exec")
    if key == "mobilenetv2":
        assert "torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1')" in src
    elif key == "squeezenet1_1":  # not a timm model: the class itself, and the lab's safetensors copy of the pickle
        assert "class SqueezeNet(nn.Module):" in src and "model = SqueezeNet(num_classes=1000)" in src
        assert f"WEIGHTS = {str(backbones.converted_dir() / 'squeezenet1_1.safetensors')!r}" in src
    else:
        assert f"timm.create_model({spec.pretrained_tag!r}, pretrained=True" in src
    own = codegen.generate_code({"weights": "pretrained"}, hier, bb, 4)
    assert f"MEAN, STD = {list(round(m, 6) for m in bb['mean'])}".replace("(", "[") in own.replace("(", "[")


def test_squeezenet_code_runs_with_the_labs_weights_and_freeze_plan():
    """SqueezeNet is not in timm: the script defines the lab's class, loads the converted weights and
    reproduces the feature-extraction plan (only the 1x1 convolution of the head trains)."""
    torch.manual_seed(0)
    model, _ = backbones.create_model("squeezenet1_1", num_classes=3)
    hier = surgery.hierarchy(model, 64)
    plan = surgery.FreezePlan.for_hierarchy(hier, len(hier.block_names) - 1)
    expected = surgery.apply_plan(model, hier, plan)
    torch.manual_seed(0)
    ns = _run(codegen.generate_code({"weights": "pretrained", "plan": plan.to_dict(), "image_size": 64}, hier,
                                    backbones.describe("squeezenet1_1"), 3))
    assert (ns["trainable"], ns["total"]) == (expected["trainable"], expected["total"]) == (512 * 3 + 3, 724_035)
    for name, tensor in model.state_dict().items():  # the same weights, the fresh head included (same seed)
        torch.testing.assert_close(ns["model"].state_dict()[name], tensor, msg=name)


# ------------------------------------------------------------------ text runs: plain PyTorch + transformers


def _reviews_csv(path, n_per_class=20):
    """The first ``n_per_class`` fine-food reviews of each class as a user CSV (review, score)."""
    import csv

    from tl_core.data import texts as text_data

    ds = text_data.load_text_dataset("fine_food")
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["review", "score"])
        for c, name in enumerate(ds.class_names):
            for i in (ds.labels == c).nonzero().flatten()[:n_per_class].tolist():
                out.writerow([ds.texts[i], name])
    return str(path)


def _text_code(key, tmp_path, **changes):
    """(generated source, lab model, hierarchy, phases, config) of a text config, as the Backbone page makes them:
    40 fine-food reviews in a CSV (30 train, 10 validation), 16 tokens, 1 epoch, feature extraction."""
    from tl_core.training import config
    from tl_core.models import strategies

    fields = dict(backbone=key, data=_reviews_csv(tmp_path / "reviews.csv"), data_root=str(tmp_path), per_class=None,
                  val_fraction=0.25,
                  max_tokens=16, epochs=1, strategy="feature_extraction")
    cfg = config.TrainConfig(**{**fields, **changes}).validate()
    model, _ = backbones.create_model(key, num_classes=2, weights=cfg.effective_weights)
    hier = surgery.hierarchy(model, cfg.max_tokens)
    phases = [(p.name, p.epochs, p.plan.to_dict()) for p in strategies.schedule(cfg, hier)]
    src = codegen.generate_code(cfg.to_dict(), hier, backbones.describe(key), 2, phases=phases, lr=cfg.effective_lr)
    return src, model, hier, phases, cfg


def test_text_code_reproduces_the_freeze_plan_and_param_groups(tmp_path):
    src, model, hier, phases, cfg = _text_code("minilm_l6", tmp_path, strategy="partial", weights="random",
                                               lr_decay=2.6)
    plan = surgery.FreezePlan.from_dict(phases[0][2])
    expected = surgery.apply_plan(model, hier, plan)
    ns = _run(src)
    assert (ns["trainable"], ns["total"]) == (expected["trainable"], expected["total"])
    got = [(g["name"], g["lr"], sum(p.numel() for p in g["params"])) for g in ns["optimizer"].param_groups]
    want = [(g["name"], g["lr"], sum(p.numel() for p in g["params"]))
            for g in surgery.param_groups(model, hier, plan, cfg.effective_lr, 0.0)]
    assert got == want and len({g[1] for g in got}) > 1  # discriminative: one LR per layer group
    assert "from transformers import" in src and "import timm" not in src
    assert (len(ns["train_rows"]), len(ns["val_rows"])) == (30, 10)


def test_text_code_trains_the_real_minilm_offline_frozen_encoder_unchanged(tmp_path):
    from safetensors.torch import load_file

    from tl_core.models import text as text_models

    src, *_ = _text_code("minilm_l6", tmp_path)
    ns = _run(src)
    assert ns["trainable"] == 384 * 2 + 2  # feature extraction: the head only
    head = ns["model"].head.weight.detach().clone()
    ns["train"](ns["train_loader"], ns["val_loader"])  # 30 reviews, 16 tokens, 1 epoch: to completion
    assert not torch.equal(head, ns["model"].head.weight)
    pretrained = load_file(str(text_models.minilm_path() / "model.safetensors"))
    name = "encoder.layer.5.output.dense.weight"
    assert torch.equal(ns["model"].encoder.state_dict()[name], pretrained[name])  # frozen: still the pretrained


@pytest.mark.parametrize("strategy", ["feature_extraction", "full"])
def test_text_code_glove_freezes_or_fine_tunes_the_word_vectors(tmp_path, strategy):
    src, model, hier, phases, _ = _text_code("glove_50d", tmp_path, strategy=strategy)
    ns = _run(src)
    assert ns["trainable"] == surgery.apply_plan(model, hier, surgery.FreezePlan.from_dict(phases[0][2]))["trainable"]
    assert torch.equal(ns["model"].embeddings.weight, model.embeddings.weight)  # the same GloVe rows
    before = ns["model"].embeddings.weight.detach().clone()
    ns["train"](ns["train_loader"], ns["val_loader"])
    assert torch.equal(before, ns["model"].embeddings.weight) == (strategy == "feature_extraction")


def test_text_code_for_every_text_source_compiles(tmp_path):
    model, _ = backbones.create_model("glove_50d", num_classes=2, weights="random")
    hier = surgery.hierarchy(model, 16)
    for key in ("minilm_l6", "glove_50d"):
        for data in ("fine_food", "bbc_news", "my_texts", "my_texts.zip", str(tmp_path / "x.csv")):
            for weights in ("pretrained", "random"):
                src = codegen.generate_code({"backbone": key, "data": data, "weights": weights, "classes": ["a", "b"]},
                                            hier, backbones.describe(key), 2)
                compile(src, "<generated>", "exec")
    fine_food = codegen.generate_code({"data": "fine_food", "per_class": 20}, hier, backbones.describe("glove_50d"), 2)
    ns = _run(fine_food)  # the built-in reviews: the set's own 1,000 test reviews validate
    assert (len(ns["train_rows"]), len(ns["val_rows"])) == (40, 1000)
    for part, n in (("train", 6), ("val", 2)):  # a folder of .txt files per class, inside train/ and val/
        for c in ("good", "bad"):
            (tmp_path / "texts" / part / c).mkdir(parents=True)
            for i in range(n):
                (tmp_path / "texts" / part / c / f"{i}.txt").write_text(f"a {c} text number {i}")
    ns = _run(codegen.generate_code({"data": str(tmp_path / "texts")}, hier, backbones.describe("glove_50d"), 2))
    assert ns["CLASSES"] == ["bad", "good"] and (len(ns["train_rows"]), len(ns["val_rows"])) == (12, 4)
