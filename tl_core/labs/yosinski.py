"""Your own source task (Yosinski et al. 2014): base nets trained on class halves A and B, then the first
n layers copied (frozen or fine-tuned) into a network for B: BnB, BnB+, AnB, AnB+."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from .analysis import TOL, LabResult, _best, _empty, _finish_text, _legend_below, _n_of, _pct, _pts, \
    usable_and_missing
from .config import COMMON_FIELDS, LabConfig, LabInfo
from .plan import LabRun, _blocks_in, _depths, depth_groups, run_config

INFO = LabInfo(
    "yosinski", "Your own source task (Yosinski 2014)",
    "Split the classes into halves A and B. Does a network trained on A help on B, layer by layer?",
    "Yosinski et al. (2014), Figure 2: **frozen** transfer (AnB) falls off in the higher layers, which "
    "are specific to task A; frozen self-transfer (BnB) dips in the middle (co-adapted layers split "
    "apart); **fine-tuned** transfer (AnB+) matches or beats the baseline at every depth.",
    COMMON_FIELDS + ("source_per_class", "source_epochs", "classes_a", "classes_b", "depths"),
    "a test_resnet-sized CNN at 32 px; A: all its images, 4 epochs; B: 30 images per class, 30 epochs "
    "(5 batches each); 22 runs",
)

YOSINSKI_PAPER = {
    "AnB": "frozen transfer degrades in the higher layers (n = 6, 7 of 8 in the paper)",
    "BnB": "frozen self-transfer dips in the middle layers (n = 3–5): fragile co-adaptation",
    "AnB+": "fine-tuned transfer matches or beats the baseline at every depth (and generalises better)",
    "BnB+": "fine-tuned self-transfer matches the baseline",
}
VARIANTS = ("BnB", "BnB+", "AnB", "AnB+")


def defaults(c: LabConfig, gpu: bool) -> None:
    c.backbone, c.image_size, c.per_class, c.lr = "test_resnet", 32, 30, 1e-3
    c.epochs, c.source_epochs = (60, 10) if gpu else (30, 4)  # B has 5 batches per epoch: cheap
    c.val_fraction = 0.2
    if gpu:
        c.backbone, c.image_size = "resnet10t", 64


def check(cfg: LabConfig) -> None:
    a, b = yosinski_classes(cfg)
    if set(a) & set(b):
        raise ValueError(f"classes A and B must be disjoint; both have {sorted(set(a) & set(b))}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("classes A and B need at least two classes each")


def yosinski_classes(cfg: LabConfig) -> tuple[list[str], list[str]]:
    """Tasks A and B: disjoint halves of the data set's classes (a seeded split unless given)."""
    import random

    from .. import data

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


def yosinski_backbone_keys(cfg: LabConfig) -> tuple[str, str]:
    """The catalogue keys the base nets A and B are saved under (``after="register_backbone"``)."""
    return "lab_yosinski_A", "lab_yosinski_B"


def plan(cfg: LabConfig, wdir: Path) -> list[LabRun]:
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
    for n in _depths(cfg, len(groups), 1):
        k = _blocks_in(groups, n)
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


# ----------------------------------------------------------------------------- analysis (pure)


def _figure(curves: dict[str, dict[int, float]], base: float | None) -> go.Figure:
    from .. import visuals

    style = {"BnB": (visuals.FROZEN, "circle-open", "dash"), "BnB+": (visuals.TRAINABLE, "circle-open", "dash"),
             "AnB": (visuals.FROZEN, "diamond", "solid"), "AnB+": (visuals.TRAINABLE, "diamond", "solid")}
    fig = go.Figure()
    for v, pts in curves.items():
        if pts:
            xs = sorted(pts)
            colour, symbol, dash = style[v]
            fig.add_scatter(x=xs, y=[pts[n] for n in xs], mode="lines+markers", name=v,
                            line=dict(color=colour, width=3, dash=dash), marker=dict(size=11, symbol=symbol))
    if base is not None:
        fig.add_scatter(x=[0], y=[base], mode="markers", name="baseline B (n=0)",
                        marker=dict(size=14, color="white", line=dict(color="black", width=2)))
        fig.add_hline(y=base, line=dict(color=visuals.NEUTRAL, dash="dot", width=1.5))
    fig.update_xaxes(title="n = layers copied from the base network (the rest re-initialised)", dtick=1)
    lo = min([v for c in curves.values() for v in c.values()] + ([base] if base is not None else []))
    fig.update_yaxes(title="best validation accuracy on task B", tickformat=".0%",
                     range=[max(0.0, lo - 0.1), 1.01])
    visuals._layout(fig, "Yosinski et al. 2014 in miniature: BnB, BnB+, AnB, AnB+", height=520)
    return _legend_below(fig)


def _check_anb(a: dict[int, float], base: float) -> dict:
    first, last = min(a), max(a)
    fall = a[first] - a[last]
    return {"claim": "frozen transfer (AnB) falls off in the higher layers",
            "measured": f"AnB n={first}: {_pct(a[first])} → n={last}: {_pct(a[last])} ({_pts(-fall)}); "
                        f"baseline {_pct(base)}",
            "agrees": fall > TOL or a[last] < base - TOL}


def _check_anb_plus(ap: dict[int, float], base: float) -> dict:
    worst = min(ap, key=lambda n: ap[n])
    return {"claim": "fine-tuned transfer (AnB+) matches or beats the baseline at every depth",
            "measured": ", ".join(f"n={n} {_pts(ap[n] - base)}" for n in sorted(ap))
                        + f" vs baseline {_pct(base)} (worst n={worst})",
            "agrees": all(v >= base - TOL for v in ap.values())}


def _check_bnb(bb: dict[int, float]) -> dict | None:
    inner = sorted(bb)[1:-1]
    if not inner:
        return None
    dip = min(inner, key=lambda n: bb[n])
    ends = min(bb[min(bb)], bb[max(bb)])
    return {"claim": "frozen self-transfer (BnB) dips in the middle (co-adaptation) — a weaker "
                     "effect, often invisible in small nets",
            "measured": f"lowest middle point n={dip}: {_pct(bb[dip])} vs ends {_pct(ends)}",
            "agrees": None if bb[dip] >= ends - TOL else True}


def _checks(curves: dict[str, dict[int, float]], base: float | None) -> list[dict]:
    if base is None:
        return []
    checks = []
    if curves["AnB"]:
        checks.append(_check_anb(curves["AnB"], base))
    if curves["AnB+"]:
        checks.append(_check_anb_plus(curves["AnB+"], base))
    if len(curves["BnB"]) >= 3:
        bnb = _check_bnb(curves["BnB"])
        if bnb is not None:
            checks.append(bnb)
    return checks


def _headline(cfg: LabConfig, curves: dict[str, dict[int, float]], base: float | None,
              source: float | None) -> str:
    a, b = yosinski_classes(cfg)
    headline = (f"Task A ({', '.join(a)}) source net: {_pct(source)}; baseline B ({', '.join(b)}, "
                f"{cfg.per_class or 'all'} images/class, from scratch): **{_pct(base)}**.")
    if curves["AnB+"]:
        n_best = max(curves["AnB+"], key=lambda n: curves["AnB+"][n])
        headline += f" Best AnB+: {_pct(curves['AnB+'][n_best])} at n={n_best}."
    return headline


def analyse_yosinski(cfg: LabConfig, recs: list[dict]) -> LabResult:
    use, missing = usable_and_missing(recs)
    by = {r["key"]: r for r in use}
    base = _best(by.get("baseB"))
    source = _best(by.get("baseA"))
    curves: dict[str, dict[int, float]] = {v: {} for v in VARIANTS}
    for r in use:
        name = r["key"].split(":")[0]
        if name in curves:
            curves[name][_n_of(r["key"])] = _best(r)
    if base is None and not any(curves.values()):
        return _empty("No finished runs yet.")
    ns = sorted({n for c in curves.values() for n in c})
    table = pd.DataFrame([{"n (layers copied)": n, **{v: curves[v].get(n) for v in curves}, "baseline B": base}
                          for n in ns])
    checks = _checks(curves, base)
    text, agrees = _finish_text(_headline(cfg, curves, base, source), checks, missing)
    text += "\n\n**The paper:** " + "; ".join(f"{k}: {v}" for k, v in YOSINSKI_PAPER.items()) + "."
    return LabResult(table, _figure(curves, base), text, agrees, checks,
                     {"baseline": base, "source": source, "curves": curves})


def analyse(cfg: LabConfig, recs: list[dict], state: dict | None = None) -> LabResult:
    return analyse_yosinski(cfg, recs)
