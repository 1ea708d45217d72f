"""Your own source task (Yosinski et al. 2014): base nets trained on class halves A and B, then the first
n layers copied (frozen or fine-tuned) into a network for B: BnB, BnB+, AnB, AnB+."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import TOL, paired
from tl_core.labs.analysis import (LabResult, add_band, base_key, best, by_seed, empty, finish_text, legend_below,
                                   mean_of, n_of, pct, pts, put_mean, seeds_note)
from tl_core.labs.config import COMMON_FIELDS, LabInfo, LabSettings
from tl_core.labs.plan import LabRun, blocks_in, completed_model_dir, depth_groups, depths, run_config

INFO = LabInfo(
    "yosinski", "Your own source task (Yosinski 2014)",
    "Split the classes into halves A and B. Does a network trained on A help on B, layer by layer?",
    "Yosinski et al. (2014), Figure 2: **frozen** transfer (AnB) falls off in the higher layers, which "
    "are specific to task A; frozen self-transfer (BnB) dips in the middle (co-adapted layers split "
    "apart); **fine-tuned** transfer (AnB+) matches or beats the baseline at every depth.",
    COMMON_FIELDS + ("source_per_class", "source_epochs", "classes_a", "classes_b", "depths"),
    "a test_resnet-sized CNN at 32 px; A: all its images, 4 epochs; B: 30 images per class, 24 epochs "
    "(5 batches each); 1, 3 and 5 layers copied; 14 runs × 3 seeds",
)

YOSINSKI_PAPER = {
    "AnB": "frozen transfer degrades in the higher layers (n = 6, 7 of 8 in the paper)",
    "BnB": "frozen self-transfer dips in the middle layers (n = 3–5): fragile co-adaptation",
    "AnB+": "fine-tuned transfer matches or beats the baseline at every depth (and generalises better)",
    "BnB+": "fine-tuned self-transfer matches the baseline",
}
VARIANTS = ("BnB", "BnB+", "AnB", "AnB+")


def defaults(c: LabSettings, gpu: bool) -> None:
    c.backbone, c.image_size, c.per_class, c.lr = "test_resnet", 32, 30, 1e-3
    c.epochs, c.source_epochs = (60, 10) if gpu else (24, 4)  # B has 5 batches per epoch
    c.depths = None if gpu else [1, 3, 5]  # every depth is 4 runs: 3 seeds of 14 runs fit in 5 minutes
    c.val_fraction = 0.2
    if gpu:
        c.backbone, c.image_size = "resnet10t", 64


def check(cfg: LabSettings) -> None:
    a, b = yosinski_classes(cfg)
    if set(a) & set(b):
        raise ValueError(f"classes A and B must be disjoint; both have {sorted(set(a) & set(b))}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("classes A and B need at least two classes each")


def yosinski_classes(cfg: LabSettings) -> tuple[list[str], list[str]]:
    """Tasks A and B: disjoint halves of the data set's classes (a seeded split unless given)."""
    import random

    from tl_core import data

    if cfg.classes_a and cfg.classes_b:
        return list(cfg.classes_a), list(cfg.classes_b)
    names = list(data.BUILTIN[cfg.data].class_names) if cfg.data in data.BUILTIN else \
        list(data.load_dataset(cfg.data).class_names)
    order = names[:]
    random.Random(cfg.seed).shuffle(order)
    if cfg.classes_a:
        a = [c for c in names if c in set(cfg.classes_a)]
        return a, [c for c in names if c not in set(a)]
    if cfg.classes_b:
        b = [c for c in names if c in set(cfg.classes_b)]
        return [c for c in names if c not in set(b)], b
    half = set(order[: len(order) // 2])
    return [c for c in names if c in half], [c for c in names if c not in half]


def yosinski_backbone_keys(cfg: LabSettings) -> tuple[str, str]:
    """The catalogue keys the base nets A and B are saved under (``after="register_backbone"``)."""
    return "lab_yosinski_A", "lab_yosinski_B"


def plan(cfg: LabSettings, wdir: Path) -> list[LabRun]:
    """Stage 0: the base nets A and B (saved as backbones); stage 1: for every depth n, XnB and XnB+ built
    from base X's first n groups (X = B, A)."""
    a, b = yosinski_classes(cfg)
    key_a, key_b = yosinski_backbone_keys(cfg)
    groups = depth_groups(cfg.backbone, cfg.image_size)
    base = dict(strategy="scratch", weights="random")
    out = [LabRun("baseA", "base A (source)", run_config(
               cfg, "base A (source)", classes=a, per_class=cfg.source_per_class, epochs=cfg.source_epochs,
               **base), stage=0, after="register_backbone"),
           LabRun("baseB", "base B (baseline)", run_config(cfg, "base B (baseline)", classes=b, **base),
                  stage=0, after="register_backbone")]
    for n in depths(cfg, len(groups), 1):
        k = blocks_in(groups, n)
        for src, key in (("B", key_b), ("A", key_a)):
            path = wdir / f"{src}_first{n}.safetensors"
            build = {"kind": "run_prefix", "source": f"base{src}", "n": n, "path": str(path)}
            for plus in ("", "+"):
                name = f"{src}nB{plus}"
                strat = dict(strategy="full") if plus else dict(strategy="partial", freeze_blocks=k)
                out.append(LabRun(f"{name}:{n}", f"{name} n={n}", run_config(
                    cfg, f"{name} n={n}", backbone=key, weights="pretrained", weights_file=str(path), classes=b,
                    **strat), stage=1, build=build))
    return out


def after_run(run: dict, state: dict, store) -> None:
    """The lab process's step after each run: a base net that completed becomes a catalogue backbone
    (``backbones.save_local_backbone``, under ``yosinski_backbone_keys``) for the transfer runs."""
    from tl_core.models import arch, backbones
    from tl_core.training.checkpoint import load_model

    if run.get("after") != "register_backbone":
        return
    info, model_dir = completed_model_dir(run, store)
    if model_dir is None:
        return
    model, cfg, class_names = load_model(model_dir)
    key_a, key_b = yosinski_backbone_keys(LabSettings(**state["config"]))
    task = "A" if base_key(run["key"]) == "baseA" else "B"
    key = key_a if task == "A" else key_b
    acc = (info.summary or {}).get("best_val_acc")
    cat = backbones.catalogue()
    timm_name = cat[cfg.backbone].timm_name if cfg.backbone in cat else cfg.backbone
    spec = backbones.BackboneSpec(
        key=key, label=f"Lab source net {task} ({cfg.backbone})", family="Lab", timm_name=timm_name,
        num_classes=len(class_names), data_config=arch.jsonable_data_config(arch.data_config_for(cfg.backbone, model)),
        description=(f"Trained by the Yosinski lab {state['id']} from scratch on task {task}: "
                     f"{', '.join(class_names)} ({cfg.data}, {cfg.image_size} px"
                     + (f", {acc:.1%} validation accuracy" if acc is not None else "") + ")."))
    backbones.save_local_backbone(model, spec)
    arch.forget(key)
    print(f"[lab] saved backbone {key}", flush=True)
    state.setdefault("backbones", []).append(key)


# ----------------------------------------------------------------------------- analysis (pure)


Curves = dict[str, dict[int, dict[int, float]]]  # variant → n → seed → best accuracy on task B


def _means(curves: Curves) -> dict[str, dict[int, float]]:
    return {v: {n: mean_of(list(by.values())) for n, by in pts.items()} for v, pts in curves.items()}


def _figure(curves: Curves, base: dict[int, float]) -> go.Figure:
    from tl_core.viz import figures as visuals

    style = {"BnB": (visuals.FROZEN, "circle-open", "dash"), "BnB+": (visuals.TRAINABLE, "circle-open", "dash"),
             "AnB": (visuals.FROZEN, "diamond", "solid"), "AnB+": (visuals.TRAINABLE, "diamond", "solid")}
    fig = go.Figure()
    seeds = sorted(set(base) | {s for pts in curves.values() for by in pts.values() for s in by})
    for v, pts in curves.items():
        if pts:
            xs = sorted(pts)
            colour, symbol, dash = style[v]
            add_band(fig, xs, [[pts[n].get(s) for n in xs] for s in seeds], v, colour,
                     line=dict(width=3, dash=dash), marker=dict(size=11, symbol=symbol))
    b = mean_of(list(base.values()))
    if b is not None:
        err = dict(type="data", symmetric=False, array=[max(base.values()) - b], arrayminus=[b - min(base.values())],
                   color="black") if len(base) > 1 else None
        fig.add_scatter(x=[0], y=[b], mode="markers", name="baseline B (n=0)", error_y=err,
                        marker=dict(size=14, color="white", line=dict(color="black", width=2)))
        fig.add_hline(y=b, line=dict(color=visuals.NEUTRAL, dash="dot", width=1.5))
    fig.update_xaxes(title="n = layers copied from the base network (the rest re-initialised)", dtick=1)
    lo = min([v for pts in curves.values() for by in pts.values() for v in by.values()] + list(base.values()))
    fig.update_yaxes(title="best validation accuracy on task B", tickformat=".0%",
                     range=[max(0.0, lo - 0.1), 1.01])
    visuals.layout(fig, "Yosinski et al. 2014 in miniature: BnB, BnB+, AnB, AnB+" + seeds_note(len(seeds)),
                    height=520)
    return legend_below(fig)


def _per_seed(pts: dict[int, dict[int, float]], base: dict[int, float], fn) -> list[float]:
    """``fn({n: acc}, baseline)`` for every seed that has the baseline and every depth of ``pts``."""
    seeds = set(base).intersection(*(by.keys() for by in pts.values()))
    return [fn({n: pts[n][s] for n in pts}, base[s]) for s in sorted(seeds)]


def _check_anb(a: dict[int, dict[int, float]], base: dict[int, float]) -> dict | None:
    first, last = min(a), max(a)
    diffs = _per_seed(a, base, lambda x, b: max(x[first] - x[last], b - x[last]))
    if not diffs:
        return None
    p = paired(diffs, lambda d: d > TOL)
    m, b = _means({"AnB": a})["AnB"], mean_of(list(base.values()))
    measured = f"AnB n={first}: {pct(m[first])} → n={last}: {pct(m[last])} ({pts(m[last] - m[first])}); " \
               f"baseline {pct(b)}"
    if not p.single:
        measured += f"; fall at n={last} (below n={first} or the baseline, the larger): {p.describe(pts)}"
    return {"claim": "frozen transfer (AnB) falls off in the higher layers", "measured": measured, "agrees": p.agrees}


def _check_anb_plus(ap: dict[int, dict[int, float]], base: dict[int, float]) -> dict | None:
    diffs = _per_seed(ap, base, lambda x, b: min(v - b for v in x.values()) + TOL)  # > 0: within TOL or above
    if not diffs:
        return None
    p = paired(diffs, lambda d: d >= 0)
    gap = {n: mean_of([ap[n][s] - base[s] for s in ap[n] if s in base]) for n in ap}
    worst = min(gap, key=lambda n: gap[n])
    measured = ", ".join(f"n={n} {pts(gap[n])}" for n in sorted(gap)) + \
        f" vs baseline {pct(mean_of(list(base.values())))} (worst n={worst})"
    if not p.single:
        measured += f"; worst depth per seed {p.describe(lambda d: pts(d - TOL))} (matches: above {pts(-TOL)})"
    return {"claim": "fine-tuned transfer (AnB+) matches or beats the baseline at every depth",
            "measured": measured, "agrees": p.agrees}


def _check_bnb(bb: dict[int, dict[int, float]]) -> dict | None:
    m = _means({"BnB": bb})["BnB"]
    inner = sorted(bb)[1:-1]
    if not inner:
        return None
    dip, first, last = min(inner, key=lambda n: m[n]), min(bb), max(bb)
    seeds = set(bb[dip]) & set(bb[first]) & set(bb[last])
    diffs = [min(bb[first][s], bb[last][s]) - bb[dip][s] for s in sorted(seeds)]
    if not diffs:
        return None
    p = paired(diffs, lambda d: True if d > TOL else None)  # one seed: a weak effect is never refuted
    measured = f"lowest middle point n={dip}: {pct(m[dip])} vs ends {pct(min(m[first], m[last]))}"
    if not p.single:
        measured += f"; dip below the lower end per seed: {p.describe(pts)}"
    return {"claim": "frozen self-transfer (BnB) dips in the middle (co-adaptation) — a weaker "
                     "effect, often invisible in small nets", "measured": measured, "agrees": p.agrees}


def _checks(curves: Curves, base: dict[int, float]) -> list[dict]:
    if not base:
        return []
    checks = [_check_anb(curves["AnB"], base) if curves["AnB"] else None,
              _check_anb_plus(curves["AnB+"], base) if curves["AnB+"] else None,
              _check_bnb(curves["BnB"]) if len(curves["BnB"]) >= 3 else None]
    return [c for c in checks if c is not None]


def _headline(cfg: LabSettings, curves: Curves, base: float | None, source: float | None) -> str:
    a, b = yosinski_classes(cfg)
    headline = (f"Task A ({', '.join(a)}) source net: {pct(source)}; baseline B ({', '.join(b)}, "
                f"{cfg.per_class or 'all'} images/class, from scratch): **{pct(base)}**.")
    ap = _means(curves)["AnB+"]
    if ap:
        n_best = max(ap, key=lambda n: ap[n])
        headline += f" Best AnB+: {pct(ap[n_best])} at n={n_best}."
    return headline


def _table(curves: Curves, base: dict[int, float], multi: bool) -> pd.DataFrame:
    rows = []
    for n in sorted({n for pts in curves.values() for n in pts}):
        row = {"n (layers copied)": n}
        for v in curves:
            put_mean(row, v, list(curves[v].get(n, {}).values()), multi)
        put_mean(row, "baseline B", list(base.values()), multi)
        rows.append(row)
    return pd.DataFrame(rows)


def analyse_yosinski(cfg: LabSettings, recs: list[dict]) -> LabResult:
    groups, missing = by_seed(recs)
    base = {s: best(g["baseB"]) for s, g in groups.items() if "baseB" in g}
    source = mean_of([best(g["baseA"]) for g in groups.values() if "baseA" in g])
    curves: Curves = {v: {} for v in VARIANTS}
    for s, g in groups.items():
        for key, r in g.items():
            name = key.split(":")[0]
            if name in curves:
                curves[name].setdefault(n_of(key), {})[s] = best(r)
    if not base and not any(curves.values()):
        return empty("No finished runs yet.")
    checks = _checks(curves, base)
    b = mean_of(list(base.values()))
    text, agrees = finish_text(_headline(cfg, curves, b, source), checks, missing, len(groups))
    text += "\n\n**The paper:** " + "; ".join(f"{k}: {v}" for k, v in YOSINSKI_PAPER.items()) + "."
    return LabResult(_table(curves, base, len(groups) > 1), _figure(curves, base), text, agrees, checks,
                     {"baseline": b, "source": source, "curves": _means(curves), "seeds": list(groups)})


def analyse(cfg: LabSettings, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_yosinski(cfg, recs)
