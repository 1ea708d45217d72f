"""The script sections that image (``codegen``) and text runs (``codegen_text``) share: the blocks and the freeze
plan (``BLOCKS``, ``PHASES``), ``apply_phase`` with its parameter groups, the LR schedule and the training loop."""
from __future__ import annotations

import pprint
from collections.abc import Mapping, Sequence

OPTIMIZERS = {
    "adamw": "torch.optim.AdamW(param_groups, lr=LR, weight_decay=WEIGHT_DECAY)",
    "adam": "torch.optim.Adam(param_groups, lr=LR, weight_decay=WEIGHT_DECAY)",
    "sgd": "torch.optim.SGD(param_groups, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)",
}

Section = tuple[str, str]  # (title, code): one concept of the generated script, one notebook cell
Phases = Sequence[tuple[str, int, Mapping[str, Mapping]]]  # (name, epochs, plan dict) per phase


def block_members(hier) -> dict[str, list[str]]:
    """block name -> module (or bare parameter) names, in forward order."""
    if isinstance(hier, Mapping):
        out = {}

        def rec(nodes):
            for n in nodes:
                if n["children"]:
                    rec(n["children"])
                else:
                    out[n["name"]] = list(n["members"])

        rec(hier["tree"])
        return out
    return {n.name: list(n.members) for n in hier.blocks}


def phase_entry(name: str, epochs: int, plan: Mapping[str, Mapping]) -> dict:
    """One phase of ``PHASES``: its frozen blocks, the LR multipliers that are not 1 and the BN blocks that train."""
    return {
        "name": name,
        "epochs": int(epochs),
        "frozen": [b for b, s in plan.items() if s.get("frozen")],
        "lr_mult": {b: float(s.get("lr_mult", 1.0)) for b, s in plan.items()
                    if not s.get("frozen") and float(s.get("lr_mult", 1.0)) != 1.0},
        "bn_train": [b for b, s in plan.items() if s.get("frozen") and s.get("bn_mode") == "train"],
    }


_FREEZE_HELPERS = '''\
def block_of(param_name):
    for block, mods in BLOCKS.items():
        if any(param_name == m or param_name.startswith(m + ".") for m in mods):
            return block
    raise KeyError(param_name)


_bn_hooks = []


def keep_bn_statistics(module, inputs):
    # Plain requires_grad=False does NOT stop BatchNorm from updating its running mean/var
    # in model.train() mode. Switching the layer to eval mode before each forward does.
    module.eval()'''


def freeze_plan_code(members: Mapping[str, list[str]], phase_list: list[dict]) -> str:
    blocks_src = pprint.pformat(members, width=110, sort_dicts=False)
    phases_src = pprint.pformat(phase_list, width=110, sort_dicts=False)
    return f'''\
# The blocks you can freeze, in forward order: block -> the modules (or parameters) it holds.
BLOCKS = {blocks_src}

# Your plan. Each phase freezes some blocks; the others learn at LR x their multiplier.
# "bn_train": frozen blocks whose BatchNorm statistics may still update (otherwise they are fixed).
PHASES = {phases_src}


{_FREEZE_HELPERS}'''


_APPLY_PHASE = '''\
def apply_phase(phase):
    """Freeze/unfreeze the blocks of one phase and build its optimizer (one param group per block)."""
    frozen = set(phase["frozen"])
    for name, p in model.named_parameters():
        p.requires_grad = block_of(name) not in frozen
    while _bn_hooks:
        _bn_hooks.pop().remove()
    for block in frozen - set(phase["bn_train"]):
        for mod_name in BLOCKS[block]:
            try:
                module = model.get_submodule(mod_name)
            except AttributeError:  # a bare parameter, e.g. a ViT's cls_token
                continue
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    _bn_hooks.append(m.register_forward_pre_hook(keep_bn_statistics))
    params = dict(model.named_parameters())
    param_groups = []
    for block, mods in BLOCKS.items():
        mult = phase["lr_mult"].get(block, 1.0)
        if block in frozen or mult == 0:
            continue
        group = [p for n, p in params.items() if block_of(n) == block]
        param_groups.append({"params": group, "lr": LR * mult, "name": block})
    return OPTIMIZER


optimizer = apply_phase(PHASES[0])
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
total = sum(p.numel() for p in model.parameters())
print(f"trainable parameters: {trainable:,} / {total:,} ({trainable / total:.1%})")'''


def optimizer_code(optimizer: str) -> str:
    return _APPLY_PHASE.replace("return OPTIMIZER", "return " + OPTIMIZERS.get(optimizer, OPTIMIZERS["adamw"]))


SCHEDULE_CODE = '''\
def make_scheduler(optimizer, steps):
    if SCHEDULE == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))'''

TRAIN_LOOP_CODE = '''\
def train(train_loader, val_loader, device="cpu"):
    """Train phase by phase: each phase re-applies its freeze plan and rebuilds the optimizer."""
    global optimizer
    model.to(device)
    loss_fn = nn.CrossEntropyLoss()
    for phase in PHASES:
        optimizer = apply_phase(phase)
        scheduler = make_scheduler(optimizer, max(1, phase["epochs"] * len(train_loader)))
        for epoch in range(phase["epochs"]):
            model.train()
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
            model.eval()
            correct = seen = 0
            with torch.no_grad():
                for x, y in val_loader:
                    correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
                    seen += len(y)
            print(f"{phase['name']} epoch {epoch + 1}: val acc {correct / max(seen, 1):.1%}")'''
