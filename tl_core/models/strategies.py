"""Transfer-learning strategies: each is a preset over the freeze plan plus a phase schedule.

A strategy turns a config and a model's block hierarchy into a list of phases. Each phase is a
number of epochs and a ``FreezePlan`` (which blocks train, with which learning-rate multiplier and
BatchNorm mode). The trainer applies one plan per phase and builds one optimiser param group per
trainable block, so every choice made here is visible in the run record.

- scratch            random init, everything trains (the baseline)
- feature_extraction backbone frozen, new head trained
- partial            first K blocks frozen (``freeze_blocks``), the rest train
- full               everything trains, from pretrained weights
- two_phase          head alone for ``head_epochs``, then unfreeze with a lower backbone LR
                     (fastai ``fine_tune``, the Keras guide, LP-FT)
- gradual            ULMFiT: one more block group unfrozen each epoch, top down

Discriminative learning rates (``lr_decay``, e.g. 2.6) combine with any strategy: the multiplier
of a block group is divided by ``lr_decay`` per group below the head.
"""
from __future__ import annotations

from dataclasses import dataclass

from tl_core.models.surgery import BlockSetting, FreezePlan, Hierarchy


@dataclass(frozen=True)
class StrategyInfo:
    key: str
    label: str
    summary: str
    default_lr: float  # AdamW learning rate used when cfg.lr is None (SGD gets 10x)
    uses: tuple[str, ...] = ()  # config fields that matter for this strategy (the app shows them)
    phases: str = ""  # one line describing the schedule
    short: str = ""  # a button-sized label

    def __post_init__(self):
        if not self.short:
            object.__setattr__(self, "short", self.label)


STRATEGIES: dict[str, StrategyInfo] = {
    s.key: s
    for s in [
        StrategyInfo("scratch", "From scratch", "Random initial weights, every block trains: the baseline "
                     "that shows what pretraining buys.", 1e-3, (), "one phase, all blocks trainable, random init"),
        StrategyInfo("feature_extraction", "Feature extraction", "The pretrained backbone is frozen; only the new "
                     "head learns. Fast, and hard to overfit.", 3e-3, (), "one phase, head only"),
        StrategyInfo("partial", "Partial fine-tuning", "The first K blocks stay frozen (generic early features), "
                     "the later blocks adapt.", 1e-3, ("freeze_blocks",), "one phase, blocks after K trainable", "Partial fine-tune"),
        StrategyInfo("full", "Full fine-tuning", "Start from the pretrained weights and let every block learn.",
                     3e-4, (), "one phase, all blocks trainable", "Full fine-tune"),
        StrategyInfo("two_phase", "Two phases (head, then unfreeze)", "Train the head alone first so its random "
                     "weights do not disturb the backbone, then unfreeze with a lower backbone learning rate.",
                     3e-3, ("head_epochs", "backbone_lr_mult", "freeze_blocks"),
                     "phase 1: head only for head_epochs; phase 2: unfreeze (after freeze_blocks) at lr x backbone_lr_mult",
                     "Two-phase"),
        StrategyInfo("gradual", "Gradual unfreezing (ULMFiT)", "Start with the head; each epoch one more block "
                     "group, from the top down, joins training.", 1e-3, ("freeze_blocks",),
                     "one phase per epoch, one more group each time", "Gradual unfreezing"),
    ]
}


@dataclass
class Phase:
    name: str
    epochs: int
    plan: FreezePlan
    note: str = ""  # for people: what changes in this phase


# Transformers fine-tune at far lower learning rates than CNNs (BERT: 2e-5..1e-4), while a head on frozen
# sentence vectors wants a higher one; "text" runs (TrainConfig.modality) use these.
TEXT_LRS = {"scratch": 5e-4, "feature_extraction": 1e-2, "partial": 1e-4, "full": 1e-4, "two_phase": 1e-3,
            "gradual": 3e-4}


def default_lr(strategy: str, optimizer: str = "adamw", modality: str = "image") -> float:
    """The AdamW learning rate of ``strategy`` for an image or a text backbone (SGD gets 10x)."""
    lr = TEXT_LRS[strategy] if modality == "text" else STRATEGIES[strategy].default_lr
    return lr * 10 if optimizer == "sgd" else lr


def default_freeze_blocks(strategy: str, hier: Hierarchy) -> int:
    """How many leading blocks a strategy freezes when ``freeze_blocks`` is None."""
    n = len(hier.block_names)
    return {"feature_extraction": n - 1, "partial": n // 2}.get(strategy, 0)


def group_decay(hier: Hierarchy, lr_decay: float | None) -> dict[str, float]:
    """Discriminative LR multipliers: 1 for the head's group, 1/lr_decay for the group below, and so on."""
    mult = {}
    groups = hier.groups()
    for depth, group in enumerate(reversed(groups)):
        for name in group:
            mult[name] = (1.0 / lr_decay) ** depth if lr_decay else 1.0
    return mult


def _plan(hier: Hierarchy, frozen: set[str], bn_mode: str, base: FreezePlan | None,
          mults: dict[str, float]) -> FreezePlan:
    blocks = {}
    for name in hier.block_names:
        s = base.blocks[name] if base else BlockSetting(bn_mode=bn_mode)
        blocks[name] = BlockSetting(frozen=name in frozen, lr_mult=s.lr_mult * mults.get(name, 1.0), bn_mode=s.bn_mode)
    return FreezePlan(blocks)


def schedule(cfg, hier: Hierarchy) -> list[Phase]:
    """The phases of ``cfg.strategy`` for this hierarchy. ``cfg.epochs`` is the total over all phases,
    so strategies compare at the same budget. ``cfg.plan`` (the app's per-block toggles) replaces the
    first phase's plan; later phases unfreeze what the strategy unfreezes, keeping the user's
    per-block LR multipliers and BatchNorm modes."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    names = hier.block_names
    head = names[-1]
    user = FreezePlan.from_dict(cfg.plan) if cfg.plan else None
    if user:
        user.check(hier)
    k = cfg.freeze_blocks if cfg.freeze_blocks is not None else default_freeze_blocks(cfg.strategy, hier)
    if not 0 <= k < len(names):
        raise ValueError(f"freeze_blocks must be 0..{len(names) - 1} for this backbone ({len(names)} blocks), not {k}")
    decay = group_decay(hier, cfg.lr_decay)
    all_but_head = set(names[:-1])

    def first(frozen: set[str], mults: dict[str, float] | None = None) -> FreezePlan:
        if user:  # the user's toggles win; discriminative decay still applies on top
            return _plan(hier, set(user.frozen), cfg.bn_mode, user, decay)
        return _plan(hier, frozen, cfg.bn_mode, None, mults or decay)

    s, E = cfg.strategy, cfg.epochs
    if s in ("scratch", "full"):
        return [Phase(s, E, first(set()), "every block trains")]
    if s in ("feature_extraction", "partial"):
        frozen = set(names[:k])
        note = "backbone frozen, head trains" if s == "feature_extraction" else f"first {k} blocks frozen"
        return [Phase(s, E, first(frozen), note)]
    if s == "two_phase":
        e1 = cfg.head_epochs
        p1 = first(all_but_head)
        backbone = {n: decay[n] * (1.0 if n == head else cfg.backbone_lr_mult) for n in names}
        p2 = _plan(hier, set(names[:k]), cfg.bn_mode, user, backbone)
        return [Phase("head", e1, p1, "head only"),
                Phase("unfreeze", E - e1, p2, f"unfreeze {'all blocks' if k == 0 else f'blocks after {k}'}, "
                      f"backbone lr x {cfg.backbone_lr_mult:g}")]
    if s == "gradual":
        groups = hier.groups()
        floor = set(names[:k])  # never unfreeze below freeze_blocks
        phases: list[Phase] = []
        for epoch in range(E):
            open_groups = groups[len(groups) - 1 - epoch:] if epoch < len(groups) else groups
            trainable = {n for g in open_groups for n in g} - floor
            frozen = set(names) - trainable
            plan = first(frozen) if epoch == 0 else _plan(hier, frozen, cfg.bn_mode, user, decay)
            if phases and phases[-1].plan.frozen == plan.frozen:
                phases[-1].epochs += 1
                continue
            top = open_groups[0]
            phases.append(Phase(f"unfreeze {top[0]}" + (f"..{top[-1]}" if len(top) > 1 else ""), 1, plan,
                                f"{len(plan.trainable)} of {len(names)} blocks trainable"))
        phases[0].name = "head" if phases[0].plan.trainable == [head] else phases[0].name
        return phases
    raise AssertionError(s)
