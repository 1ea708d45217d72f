"""What every lab's analysis shares: ``LabResult`` and the small pure helpers that turn run records into
numbers, the "what we measured" text and figures. A run record is a plain dict (see ``runner.records``):
key, label, run_id, status, reason, config, summary, epochs (metric rows), started, finished.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

TOL = 0.02  # accuracy differences below 2 points count as "similar" (a few validation images)

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
        return "agrees" if self.agrees else "unknown" if self.agrees is None else "disagrees"

    def percent_columns(self) -> list[str]:
        """The table's accuracy columns (fractions 0..1), for display as percentages."""
        from ..strategies import STRATEGIES

        return [c for c in self.table.columns if "acc" in str(c) or c in _ACC_COLUMNS or c in STRATEGIES]


def result_csv(res: LabResult) -> bytes:
    return res.table.to_csv(index=False).encode()


# ----------------------------------------------------------------------------- records → numbers


def _usable(rec: dict) -> bool:
    return bool(rec.get("epochs")) and rec.get("status") in ("completed", "stopped")


def usable_and_missing(recs: list[dict]) -> tuple[list[dict], list[str]]:
    """The records with finished epochs, and the labels of the others (named in the text)."""
    return [r for r in recs if _usable(r)], [r["label"] for r in recs if not _usable(r)]


def usable_by_key(recs: list[dict]) -> tuple[dict[str, dict], list[str]]:
    """``usable_and_missing`` with the usable records by run key."""
    use, missing = usable_and_missing(recs)
    return {r["key"]: r for r in use}, missing


def _accs(rec: dict) -> list[float]:
    return [float(m["val_acc"]) for m in rec.get("epochs", []) if m.get("val_acc") is not None]


def _best(rec: dict | None) -> float | None:
    a = _accs(rec) if rec else []
    return max(a) if a else None


def _n_of(key: str) -> int:
    """The depth n of a run key such as "frozen:3" or "AnB+:2"."""
    return int(key.rsplit(":", 1)[1])


def _wall_s(rec: dict) -> float:
    return round(rec["summary"].get("wall_s") or 0, 1)


# ----------------------------------------------------------------------------- text


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def _pts(v: float) -> str:
    return f"{v * 100:+.1f} pts"


def _finish_text(headline: str, checks: list[dict], missing: list[str]) -> tuple[str, bool | None]:
    lines = [headline, ""] if headline else []
    for c in checks:
        mark = ("✔ agrees" if c["agrees"] else "– inconclusive (the difference is within the noise)"
                if c["agrees"] is None else "✖ **disagrees**")
        lines.append(f"- {c['claim']}: {c['measured']} → {mark}")
    known = [c["agrees"] for c in checks if c["agrees"] is not None]
    agrees = None if not known else all(known)
    if agrees is False:
        bad = [c["claim"] for c in checks if c["agrees"] is False]
        lines += ["", f"**The measurement disagrees with the prediction** on: {'; '.join(bad)}. This is a small, "
                      "single-seed experiment: try more images per class, more epochs or another seed before "
                      "concluding; but report what was measured, not what was expected."]
    elif agrees:
        lines += ["", "The measurement agrees with the prediction."]
    if missing:
        lines += ["", f"Not included (no finished epochs): {', '.join(missing)}."]
    return "\n".join(lines), agrees


# ----------------------------------------------------------------------------- figures


def _legend_below(fig: go.Figure) -> go.Figure:
    """Many traces: the legend goes under the plot, where it cannot cover the title."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


def _accuracy_axes(fig: go.Figure, title: str = "validation accuracy") -> None:
    """Epochs on x, accuracy 0..100% on y."""
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(title=title, range=[0, 1.02], tickformat=".0%")


def _empty(msg: str) -> LabResult:
    fig = go.Figure()
    fig.add_annotation(text=msg, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return LabResult(pd.DataFrame(), fig, msg, None)
