"""The block hierarchy and freeze plans, on a ResNet, a MobileNet/EfficientNet and a ViT."""
import pytest
import torch
import torch.nn.functional as F

from tl_core.models import backbones
from tl_core.models import surgery

MODELS = {"resnet18": 10, "mobilenetv2": 20, "efficientnet_lite0": 19, "vit_tiny": 15,  # toggleable blocks
          "squeezenet1_1": 10}  # not a timm model: torchvision's, with timm's interface (tl_core.models.squeezenet)


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    torch.manual_seed(0)
    model, _ = backbones.create_model(request.param, num_classes=4, weights="random")
    return request.param, model, surgery.hierarchy(model, image_size=64)


def test_hierarchy_covers_every_parameter_once(built):
    key, model, hier = built
    names = [n for b in hier.blocks for n in b.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert sum(b.params for b in hier.blocks) == hier.total_params == sum(p.numel() for p in model.parameters())
    assert len(hier.blocks) == MODELS[key]
    assert hier.blocks[0].kind == "stem" and hier.blocks[-1].kind == "head"
    assert hier.blocks[-1].out_shape == [4]


def test_hierarchy_shapes_and_batchnorm():
    model, _ = backbones.create_model("resnet18", num_classes=4, weights="random")
    hier = surgery.hierarchy(model, image_size=64)
    assert [n.name for n in hier.tree] == ["stem", "stage1", "stage2", "stage3", "stage4", "fc"]
    assert hier.block("stem").out_shape == [64, 16, 16]  # after the max-pool that closes the stem
    assert hier.block("layer4.1").out_shape == [512, 2, 2]
    assert all(b.has_bn for b in hier.blocks[:-1]) and not hier.blocks[-1].has_bn
    assert hier.groups()[1] == ["layer1.0", "layer1.1"]

    vit, _ = backbones.create_model("vit_tiny", num_classes=4, weights="random")
    vh = surgery.hierarchy(vit, image_size=64)
    assert [b.kind for b in vh.blocks] == ["stem"] + ["block"] * 12 + ["neck", "head"]
    assert vh.block("blocks.0").out_shape == [1 + 4 * 4, 192]  # class token + 4x4 patches
    assert not any(b.has_bn for b in vh.blocks)
    assert vh.block("stem").members == ["cls_token", "pos_embed", "patch_embed"]


def _train_steps(model, hier, plan, steps=2):
    surgery.apply_plan(model, hier, plan)
    opt = torch.optim.SGD(surgery.param_groups(model, hier, plan, lr=0.05), momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 4, (4,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("bn_mode", ["frozen", "train"])
def test_freeze_plan_is_real(built, bn_mode):
    key, model, hier = built
    k = len(hier.blocks) // 2
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=k, bn_mode=bn_mode)
    counts = surgery.apply_plan(model, hier, plan)
    assert counts["trainable"] == sum(b.params for b in hier.blocks[k:])
    before = {n: t.clone() for n, t in model.state_dict().items()}
    _train_steps(model, hier, plan)
    after = model.state_dict()
    frozen, trainable = hier.blocks[:k], hier.blocks[k:]
    for b in frozen:  # parameters bit-identical
        assert all(torch.equal(before[n], after[n]) for n in b.param_names), b.name
    assert any(not torch.equal(before[n], after[n]) for b in trainable for n in b.param_names)
    stats = [n for b in frozen for m in b.members for n in after if n.startswith(m + ".") and "running_" in n]
    if hier.blocks[0].has_bn:
        assert stats
        changed = [n for n in stats if not torch.equal(before[n], after[n])]
        assert (changed == []) if bn_mode == "frozen" else (len(changed) == len(stats))
    else:
        assert not stats  # ViT: LayerNorm has no running statistics; SqueezeNet has no normalisation


def test_unfreezing_restores_batchnorm_updates():
    model, _ = backbones.create_model("mobilenetv2", num_classes=4, weights="random")
    hier = surgery.hierarchy(model, image_size=64)
    _train_steps(model, hier, surgery.FreezePlan.for_hierarchy(hier, frozen_upto=5), steps=1)
    before = model.bn1.running_mean.clone()
    _train_steps(model, hier, surgery.FreezePlan.for_hierarchy(hier, frozen_upto=0), steps=1)
    assert not torch.equal(before, model.bn1.running_mean)
    assert model.bn1.weight.requires_grad


def test_plan_json_round_trip_and_checks():
    model, _ = backbones.create_model("resnet18", num_classes=4, weights="random")
    hier = surgery.hierarchy(model, image_size=32)
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=3, bn_mode="train")
    plan.blocks["layer4.1"].lr_mult = 0.5
    again = surgery.FreezePlan.from_json(plan.to_json())
    assert again == plan and again.frozen == ["stem", "layer1.0", "layer1.1"]
    with pytest.raises(ValueError, match="can freeze 0..9 blocks"):
        surgery.FreezePlan.for_hierarchy(hier, frozen_upto=10)
    with pytest.raises(ValueError, match="bn_mode"):
        surgery.BlockSetting(bn_mode="sometimes")
    other = surgery.hierarchy(backbones.create_model("mobilenetv2", weights="random")[0], image_size=32)
    with pytest.raises(ValueError, match="does not match"):
        surgery.apply_plan(model, other, plan)


def test_param_groups_carry_block_learning_rates():
    model, _ = backbones.create_model("resnet18", num_classes=4, weights="random")
    hier = surgery.hierarchy(model, image_size=32)
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=7)
    plan.blocks["layer4.0"].lr_mult = 0.1
    groups = surgery.param_groups(model, hier, plan, lr=0.01)
    assert [g["name"] for g in groups] == ["layer4.0", "layer4.1", "fc"]
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01, 0.01])
    assert sum(p.numel() for g in groups for p in g["params"]) == surgery.apply_plan(model, hier, plan)["trainable"]


def test_sequential_chain_splits_cnns_and_refuses_vits():
    model, _ = backbones.create_model("mobilenetv2", num_classes=4, weights="random")
    chain = surgery.sequential_chain(model)
    assert chain is not None
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        mid = x
        for _, m in chain[:6]:
            mid = m(mid)
        out = mid
        for _, m in chain[6:]:
            out = m(out)
        torch.testing.assert_close(out, model(x))
    vit, _ = backbones.create_model("vit_tiny", num_classes=4, weights="random")
    assert surgery.sequential_chain(vit) is None


def _vary_batchnorm(model: torch.nn.Module) -> None:
    """Running statistics and affine parameters far from a fresh BatchNorm's, so folding them matters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


@pytest.mark.parametrize("key", list(MODELS))
@torch.no_grad()
def test_fold_batchnorm_gives_the_same_outputs_without_batchnorm(key):
    torch.manual_seed(0)
    model, _ = backbones.create_model(key, num_classes=4, weights="random")
    _vary_batchnorm(model)
    model.train()
    x = surgery.dummy_input(model, 64, batch=4, generator=torch.Generator().manual_seed(1))
    folded = surgery.fold_batchnorm(model, x[:2])
    assert model.training  # the model's own mode is given back
    if key in ("vit_tiny", "squeezenet1_1"):  # LayerNorm only, or no normalisation at all: nothing to fold
        assert folded is model
        return
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    model.eval()
    ref = model(x)
    assert torch.allclose(folded(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the model is untouched


@torch.no_grad()
def test_fold_batchnorm_keeps_the_module_when_the_copy_differs():
    class Tap(torch.nn.Module):  # the convolution's output is used twice: folding would change it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    tap = Tap()
    _vary_batchnorm(tap)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert surgery.fold_batchnorm(tap, x) is tap
    linear = torch.nn.Linear(4, 2)
    assert surgery.fold_batchnorm(linear, torch.zeros(1, 4)) is linear
    assert surgery.fold_batchnorm(F.relu, x) is F.relu
