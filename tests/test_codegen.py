"""tl_core.codegen: the generated PyTorch/timm code runs and reproduces the lab's choices exactly."""
import pytest
import timm
import torch

from tl_core import backbones, codegen, surgery

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
    # the training loop runs end to end on a tiny loader
    data = [(torch.randn(4, 3, 64, 64), torch.randint(0, 3, (4,)))]
    ns["train"](data, data)


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


@pytest.mark.parametrize("key", ["mobilenetv2", "efficientnet_lite0", "resnet18"])
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
    else:
        assert f"timm.create_model({spec.pretrained_tag!r}, pretrained=True" in src
    own = codegen.generate_code({"weights": "pretrained"}, hier, bb, 4)
    assert f"MEAN, STD = {list(round(m, 4) for m in bb['mean'])}".replace("(", "[") in own.replace("(", "[")
