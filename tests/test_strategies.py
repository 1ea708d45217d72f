"""Strategy presets: which blocks are frozen in which phase, and with which learning rates.
Real (tiny) timm models; no training here (see test_training.py for that)."""
import math

import pytest
import timm

from tl_core.models import strategies
from tl_core.models import surgery
from tl_core.training.config import TrainConfig


@pytest.fixture(scope="module")
def effnet():
    model = timm.create_model("test_efficientnet", num_classes=3)
    return model, surgery.hierarchy(model, 32)


def cfg(**kw):
    return TrainConfig(backbone="test_efficientnet", weights="random", image_size=32, **kw)


def test_every_strategy_is_described():
    assert set(strategies.STRATEGIES) == {"scratch", "feature_extraction", "partial", "full", "two_phase", "gradual"}
    for key, info in strategies.STRATEGIES.items():
        assert info.key == key and info.label and info.summary and info.default_lr > 0


def test_single_phase_presets(effnet):
    _, hier = effnet
    names = hier.block_names  # stem, blocks.0..4, neck, classifier
    for strat, frozen in [("scratch", []), ("full", []), ("feature_extraction", names[:-1]),
                          ("partial", names[: len(names) // 2])]:
        phases = strategies.schedule(cfg(strategy=strat, epochs=4), hier)
        assert len(phases) == 1 and phases[0].epochs == 4
        assert phases[0].plan.frozen == frozen, strat
    phases = strategies.schedule(cfg(strategy="partial", freeze_blocks=3, epochs=2), hier)
    assert phases[0].plan.frozen == names[:3]


def test_two_phase_unfreezes_after_head_epochs(effnet):
    _, hier = effnet
    names = hier.block_names
    p1, p2 = strategies.schedule(cfg(strategy="two_phase", epochs=5, head_epochs=2, backbone_lr_mult=0.1), hier)
    assert (p1.epochs, p2.epochs) == (2, 3)
    assert p1.plan.trainable == ["classifier"]
    assert p2.plan.trainable == names  # freeze_blocks None: everything
    assert p2.plan.blocks["classifier"].lr_mult == 1.0
    assert all(p2.plan.blocks[n].lr_mult == pytest.approx(0.1) for n in names[:-1])
    _, p2 = strategies.schedule(cfg(strategy="two_phase", epochs=3, freeze_blocks=4), hier)
    assert p2.plan.frozen == names[:4] and p2.plan.trainable == names[4:]


def test_gradual_opens_one_group_per_epoch_top_down(effnet):
    _, hier = effnet
    groups = hier.groups()
    phases = strategies.schedule(cfg(strategy="gradual", epochs=4), hier)
    assert [p.epochs for p in phases] == [1, 1, 1, 1]
    for i, p in enumerate(phases):
        assert p.plan.trainable == [n for g in groups[len(groups) - 1 - i:] for n in g]
    # More epochs than groups: the last phase (everything open) takes the rest.
    phases = strategies.schedule(cfg(strategy="gradual", epochs=len(groups) + 3), hier)
    assert len(phases) == len(groups) and phases[-1].epochs == 4 and phases[-1].plan.frozen == []
    # freeze_blocks is a floor: blocks below it never open.
    phases = strategies.schedule(cfg(strategy="gradual", epochs=20, freeze_blocks=5), hier)
    assert phases[-1].plan.frozen == hier.block_names[:5]


def test_discriminative_lrs_shrink_toward_the_input(effnet):
    model, hier = effnet
    groups = hier.groups()
    mult = strategies.group_decay(hier, 2.6)
    for depth, g in enumerate(reversed(groups)):
        for n in g:
            assert mult[n] == pytest.approx(2.6 ** -depth)
    plan = strategies.schedule(cfg(strategy="full", lr_decay=2.6), hier)[0].plan
    pg = surgery.param_groups(model, hier, plan, lr=1e-3)
    lrs = {g["name"]: g["lr"] for g in pg}
    assert lrs["classifier"] == pytest.approx(1e-3)
    assert lrs["neck"] == pytest.approx(1e-3 / 2.6)
    assert lrs["stem"] == pytest.approx(1e-3 / 2.6 ** (len(groups) - 1))
    assert all(lrs[a] < lrs[b] for a, b in zip(hier.block_names, hier.block_names[1:]))
    # decay combines with two_phase's backbone multiplier
    _, p2 = strategies.schedule(cfg(strategy="two_phase", epochs=2, lr_decay=2.0, backbone_lr_mult=0.5), hier)
    assert p2.plan.blocks["neck"].lr_mult == pytest.approx(0.5 / 2.0)
    assert p2.plan.blocks["classifier"].lr_mult == 1.0


def test_bn_mode_reaches_every_block(effnet):
    _, hier = effnet
    for strat in strategies.STRATEGIES:
        for phase in strategies.schedule(cfg(strategy=strat, bn_mode="train", epochs=3), hier):
            assert {s.bn_mode for s in phase.plan.blocks.values()} == {"train"}


def test_user_plan_overrides_first_phase(effnet):
    _, hier = effnet
    plan = surgery.FreezePlan.for_hierarchy(hier, frozen_upto=0)
    plan.blocks["blocks.1"].frozen = True
    plan.blocks["neck"].lr_mult = 0.5
    phases = strategies.schedule(cfg(strategy="two_phase", epochs=3, plan=plan.to_dict()), hier)
    assert phases[0].plan.frozen == ["blocks.1"]
    assert phases[0].plan.blocks["neck"].lr_mult == 0.5
    assert phases[1].plan.frozen == [] and phases[1].plan.blocks["neck"].lr_mult == pytest.approx(0.05)
    assert math.isclose(strategies.default_lr("full", "sgd"), 10 * strategies.default_lr("full"))
