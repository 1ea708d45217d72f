"""What every lab's analysis shares: ``LabResult`` and the small pure helpers that turn run records into
numbers, the "what we measured" text and figures. A run record is a plain dict (see ``runner.records``):
key, label, run_id, seed, status, reason, config, summary, epochs (metric rows), started, finished.

Records of several seeds (one lab with ``seeds`` > 1, or the one-seed labs of several students pooled)
are grouped by seed (``by_seed``: the run key without its "@s<seed>" suffix); a lab analyses each seed,
then reports the mean, a band / interval over the seeds and the verdicts of ``stats.paired``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tl_core.labs.stats import Paired, interval_text, paired, spread, verdict_of

# accuracy columns whose names carry no "acc" (yosinski's variants, the race's first epoch)
_ACC_COLUMNS = ("BnB", "BnB+", "AnB", "AnB+", "baseline B", "start (epoch 1)")


@dataclass
class LabResult:
    table: pd.DataFrame
    figure: go.Figure
    text: str  # "what we measured", markdown
    agrees: bool | None  # None: not enough finished runs to say
    checks: list[dict] = field(default_factory=list)  # {claim, measured, agrees}
    extra: dict = field(default_factory=dict)

    def verdict(self) -> str:
        return verdict_of(self.agrees)

    @property
    def seeds(self) -> list[int]:
        """The seeds the result pools (``extra["seeds"]``; [] for an empty result)."""
        return list(self.extra.get("seeds", []))

    def percent_columns(self) -> list[str]:
        """The table's accuracy columns (fractions 0..1), for display as percentages (not the interval
        columns: those are text)."""
        from tl_core.models.strategies import STRATEGIES

        return [c for c in self.table.columns if ("acc" in str(c) or c in _ACC_COLUMNS or c in STRATEGIES)
                and not str(c).endswith(INTERVAL)]


def result_csv(res: LabResult) -> bytes:
    return res.table.to_csv(index=False).encode()


INTERVAL = " 95% interval"  # suffix of a table's interval column (text: "78.0–82.3%")

# ----------------------------------------------------------------------------- records → numbers


def _usable(rec: dict) -> bool:
    return bool(rec.get("epochs")) and rec.get("status") in ("completed", "stopped")


def usable_and_missing(recs: list[dict]) -> tuple[list[dict], list[str]]:
    """The records with finished epochs, and the labels of the others (named in the text)."""
    return [r for r in recs if _usable(r)], [r["label"] for r in recs if not _usable(r)]


def seed_of(rec: dict) -> int:
    """The training seed of a run record (its ``seed``, else its config's; 0 for hand-made records)."""
    seed = rec.get("seed")
    if seed is None:
        seed = (rec.get("config") or {}).get("seed", 0)
    return int(seed)


def base_key(key: str) -> str:
    """A run key without its seed suffix: "scratch@s1" → "scratch"."""
    return key.split("@", 1)[0]


def base_label(label: str) -> str:
    """A run label without its seed suffix: "From scratch · seed 1" → "From scratch"."""
    return label.split(" · seed ", 1)[0]


def by_seed(recs: list[dict]) -> tuple[dict[int, dict[str, dict]], list[str]]:
    """The usable records as {seed: {base key: record}} (seeds in order), and the labels of the others.
    Two records of the same seed and key (pooled from two labs): the later one counts."""
    use, missing = usable_and_missing(recs)
    out: dict[int, dict[str, dict]] = {}
    for r in use:
        out.setdefault(seed_of(r), {})[base_key(r["key"])] = r
    return dict(sorted(out.items())), missing


def runs_by_key(groups: dict[int, dict[str, dict]]) -> dict[str, list[dict]]:
    """``by_seed``'s groups turned around: each run key with its records, one per seed."""
    runs: dict[str, list[dict]] = {}
    for g in groups.values():
        for key, r in g.items():
            runs.setdefault(key, []).append(r)
    return runs


def paired_best(groups: dict[int, dict], better: str, worse: str,
                single_rule=None) -> tuple[Paired, float, float] | None:
    """The claim "run ``better`` reaches a higher best accuracy than run ``worse``", paired over the seeds
    that have both: (``stats.paired`` of the differences, mean best of ``better``, of ``worse``); None
    when no seed has both."""
    both = [g for g in groups.values() if better in g and worse in g]
    if not both:
        return None
    p = paired([best(g[better]) - best(g[worse]) for g in both], single_rule)
    return p, mean_of([best(g[better]) for g in both]), mean_of([best(g[worse]) for g in both])


def mean_of(values: Sequence[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def put_mean(row: dict, name: str, values: Sequence[float] | None, multi: bool, **fmt) -> dict:
    """``row[name]`` = the mean over seeds; with several seeds also ``row[name + INTERVAL]`` (text)."""
    row[name] = mean_of(values)
    if multi:
        row[name + INTERVAL] = interval_text(spread(values or []), **fmt)
    return row


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Epoch by epoch, the mean over the seeds that reached that epoch."""
    n = max((len(c) for c in curves), default=0)
    return [float(np.mean([c[i] for c in curves if len(c) > i])) for i in range(n)]


def accs(rec: dict) -> list[float]:
    return [float(m["val_acc"]) for m in rec.get("epochs", []) if m.get("val_acc") is not None]


def best(rec: dict | None) -> float | None:
    a = accs(rec) if rec else []
    return max(a) if a else None


def n_of(key: str) -> int:
    """The depth n of a run key such as "frozen:3" or "AnB+:2"."""
    return int(key.rsplit(":", 1)[1])


def wall_s(rec: dict) -> float:
    return round(rec["summary"].get("wall_s") or 0, 1)


# ----------------------------------------------------------------------------- text


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def pts(v: float) -> str:
    return f"{v * 100:+.1f} pts"


def _mark(agrees: bool | None, seeds: int, basis: str | None = None) -> str:
    """"✔ agrees (…)": the verdict and what it rests on (``basis``: a check's own, e.g. "every seed")."""
    word = "✔ agrees" if agrees else "– inconclusive" if agrees is None else "✖ **disagrees**"
    if basis is None and seeds <= 1:
        basis = "single seed: the difference is within the noise" if agrees is None else "single seed"
    elif basis is None:
        basis = ("the 95% interval contains 0" if agrees is None else "95% interval on the predicted side"
                 if agrees else "95% interval on the other side")
    return f"{word} ({basis})"


def finish_text(headline: str, checks: list[dict], missing: list[str], seeds: int = 1,
                paired: bool = True) -> tuple[str, bool | None]:
    """The "what we measured" text and the overall verdict (None: no check decided). ``seeds``: how
    many seeds the checks pool (1: single-seed rule; more: bootstrap intervals); ``paired`` False: each
    seed had its own split (``LabRun.paired``), so the seeds are independent repeats, not pairs."""
    lines = [headline, ""] if headline else []
    for c in checks:
        c.setdefault("verdict", verdict_of(c["agrees"]))
        lines.append(f"- {c['claim']}: {c['measured']} → {_mark(c['agrees'], seeds, c.get('basis'))}")
    known = [c["agrees"] for c in checks if c["agrees"] is not None]
    agrees = None if not known else all(known)
    if agrees is False:
        bad = [c["claim"] for c in checks if c["agrees"] is False]
        how = ("This is a small, single-seed experiment: run more seeds (and more images per class or epochs) "
               "before concluding" if seeds <= 1 else f"Over {seeds} {'paired ' if paired else ''}seeds the "
               "interval excludes the prediction: that is a finding of this configuration (data, size, epochs), "
               "worth discussing")
        lines += ["", f"**The measurement disagrees with the prediction** on: {'; '.join(bad)}. {how}; but report "
                      "what was measured, not what was expected."]
    elif agrees:
        lines += ["", "The measurement agrees with the prediction."]
    if seeds > 1 and paired:
        lines += ["", f"Pooled over {seeds} seeds (same split, different initialisation and batch order): means, "
                      "with 95% bootstrap intervals of the paired differences in brackets."]
    elif seeds > 1:
        lines += ["", f"Pooled over {seeds} seeds, each with its own split (training and validation images), "
                      "initialisation and batch order: means, with 95% bootstrap intervals in brackets."]
    if missing:
        lines += ["", f"Not included (no finished epochs): {', '.join(missing)}."]
    return "\n".join(lines), agrees


# ----------------------------------------------------------------------------- figures


def legend_below(fig: go.Figure) -> go.Figure:
    """Many traces: the legend goes under the plot, where it cannot cover the title."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


def accuracy_axes(fig: go.Figure, title: str = "validation accuracy") -> None:
    """Epochs on x, accuracy 0..100% on y."""
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(title=title, range=[0, 1.02], tickformat=".0%")


def _rgba(colour: str | None, alpha: float) -> str:
    c = (colour or "#8A8F98").lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4)) if len(c) == 6 else (138, 143, 152)
    return f"rgba({r},{g},{b},{alpha})"


def add_band(fig: go.Figure, x: Sequence, ys: Sequence[Sequence[float | None]], name: str, colour: str | None,
             row: int | None = None, col: int | None = None, **line_kw) -> go.Figure:
    """The mean over seeds (``ys``: one list per seed, aligned with ``x``; None: no value) as a line and,
    with several seeds, the min–max band behind it. ``line_kw``: passed to ``add_scatter`` (line, marker,
    mode, showlegend, legendgroup...)."""
    cols = [[v[i] for v in ys if i < len(v) and v[i] is not None] for i in range(len(x))]
    points = [(xi, c) for xi, c in zip(x, cols) if c]
    xs = [p[0] for p in points]
    kw = {"mode": "lines+markers", "legendgroup": name, **line_kw}
    if len(ys) > 1 and xs:
        lo, hi = [min(c) for _, c in points], [max(c) for _, c in points]
        fig.add_scatter(x=xs + xs[::-1], y=hi + lo[::-1], mode="lines", fill="toself", fillcolor=_rgba(colour, 0.18),
                        line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=kw["legendgroup"],
                        name=f"{name}: min–max over {len(ys)} seeds", row=row, col=col)
    kw.setdefault("line", {})
    kw["line"] = {"color": colour, **kw["line"]}
    fig.add_scatter(x=xs, y=[float(np.mean(c)) for _, c in points], name=name, row=row, col=col, **kw)
    return fig


def seeds_note(n: int) -> str:
    """For a figure title: "" (one seed) or " · mean of 3 seeds, band: min–max"."""
    return "" if n <= 1 else f" · mean of {n} seeds, band: min–max"


def empty(msg: str) -> LabResult:
    fig = go.Figure()
    fig.add_annotation(text=msg, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return LabResult(pd.DataFrame(), fig, msg, None)
