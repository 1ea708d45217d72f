"""How things look: the page style, badges, the frozen/trainable meter, labels and times, user text made
safe for markdown or HTML, and figures built once per version."""
from __future__ import annotations

import re
import unicodedata

import streamlit as st

from tl_core.models.strategies import STRATEGIES
from tl_core.viz.figures import FROZEN, TRAINABLE

WEIGHT_BADGE = {"user": ("user file", "violet"), "bundled": ("bundled · offline", "green"),
                "cached": ("in local cache", "green"), "download": ("needs a download", "yellow"),
                "random": ("random init only", "gray")}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&\"'=^@%;?/,])")


def setup_page() -> None:
    """Projector-friendly type sizes; called by app.py once per run."""
    st.markdown(
        """<style>
        html, body, [data-testid="stMarkdownContainer"] p, [data-testid="stMarkdownContainer"] li {font-size: 1.08rem;}
        [data-testid="stMetricValue"] p {font-size: 2.3rem !important; line-height: 1.2;}
        [data-testid="stMainBlockContainer"] {padding-top: 3.2rem;}
        .tl-meter {display:flex; height:26px; border-radius:6px; overflow:hidden; margin:4px 0 6px 0;}
        .tl-legend span {display:inline-block; padding:2px 10px; border-radius:6px; color:white; font-weight:600;
                         margin-right:6px;}
        </style>""",
        unsafe_allow_html=True,
    )


# ------------------------------------------------------------------ badges and the meter


def weights_badge(kind: str, label: str | None = None) -> None:
    text, colour = WEIGHT_BADGE.get(kind, (kind, "gray"))
    st.badge(label or text, color=colour)


def legend() -> None:
    st.markdown(
        f"<div class='tl-legend'><span style='background:{FROZEN}'>❄ frozen</span>"
        f"<span style='background:{TRAINABLE}'>⚡ trainable</span></div>",
        unsafe_allow_html=True,
    )


def meter(trainable: int, total: int, note: str = "") -> None:
    """A bar split in the frozen / trainable colours: the live trainable-parameter meter."""
    frac = trainable / total if total else 0.0
    st.markdown(
        f"<div class='tl-meter'><div style='width:{frac * 100:.2f}%; background:{TRAINABLE}'></div>"
        f"<div style='flex:1; background:{FROZEN}'></div></div>"
        f"<div style='font-size:1.05rem'><b>{frac:.1%}</b> trainable{' · ' + note if note else ''}</div>",
        unsafe_allow_html=True,
    )


def status_badge(status: str) -> str:
    """Markdown for a coloured status badge, e.g. ``:green-badge[✔ completed]``."""
    colour = {"queued": "gray", "running": "violet", "completed": "green", "stopped": "gray",
              "failed": "red", "diverged": "red"}.get(status, "gray")
    icon = {"queued": "…", "running": "▶", "completed": "✔", "stopped": "■", "failed": "✖", "diverged": "✖"}
    return f":{colour}-badge[{icon.get(status, '')} {status}]"


# ------------------------------------------------------------------ labels and user text


def strategy_label(key: str | None) -> str:
    return STRATEGIES[key].short if key in STRATEGIES else (key or "")


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def plain(text) -> str:
    """User text (a run, student or file name, a ``?run=`` value, an error that quotes one) made safe
    to put inside markdown: every ASCII punctuation mark is backslash-escaped, so no link, emphasis,
    colour directive, HTML or formula can appear; control characters and newlines become spaces."""
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in str(text))
    return _MD_SPECIAL.sub(r"\\\1", text)


def html_text(text) -> str:
    """User text made safe to put inside HTML that goes through ``st.markdown(unsafe_allow_html=True)``:
    every ASCII punctuation mark becomes a numeric character reference (so no tag, entity, markdown or
    formula can appear) and control characters become spaces."""
    return "".join(" " if unicodedata.category(ch).startswith("C") else
                   f"&#{ord(ch)};" if ch.isascii() and not ch.isalnum() and ch != " " else ch for ch in str(text))


def figure_once(name: str, version, build):
    """The figure ``build()`` makes, built again only when ``version`` changes. A page that refreshes every
    second re-sends (or updates in place) the figure it already has instead of building it again: building
    the Train page's curves takes about 40 ms, and a class of 30 following their runs would spend a core
    on it."""
    figures = st.session_state.setdefault("_figures", {})
    if name not in figures or figures[name][0] != version:
        figures.pop(name, None)
        figures[name] = (version, build())
        while len(figures) > 8:  # a session that looks at many runs keeps the latest figures only
            figures.pop(next(iter(figures)))
    return figures[name][1]
