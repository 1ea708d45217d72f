"""Small shared UI helpers for the pages: the session "inputs dict", cached resources, badges.

The inputs dict (``st.session_state["inputs"]``) holds plain TrainConfig fields, like
traingenerator's inputs: every page reads and writes it, the Train page turns it into a
TrainConfig. Everything heavy lives in tl_core; these helpers only glue it to Streamlit.
"""
from __future__ import annotations

import os
import re
import unicodedata
import uuid
from pathlib import Path

import streamlit as st

from tl_core.models import backbones
from tl_core.models import arch as models
from tl_core.models import strategies
from tl_core.models import surgery
from tl_core.data import texts as text_data
from tl_core.viz import figures as visuals
from tl_core.data.builtin import BUILTIN
from tl_core.data.texts import TEXT_BUILTIN
from tl_core.models.strategies import STRATEGIES

from pages import _router
from pages._models import (  # noqa: F401  (re-exported: they used to live here)
    first_conv_weight, initial_model, layer_maps, predictions, run_data, run_model,
)

FROZEN, TRAINABLE = visuals.FROZEN, visuals.TRAINABLE
WEIGHT_BADGE = {"user": ("user file", "violet"), "bundled": ("bundled · offline", "green"),
                "cached": ("in local cache", "green"), "download": ("needs a download", "yellow"),
                "random": ("random init only", "gray")}


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


# ------------------------------------------------------------------ the inputs dict


def default_inputs() -> dict:
    from tl_core.training.config import TrainConfig

    return TrainConfig().to_dict()


def start_page() -> dict:
    """Call first in every page; returns the inputs dict. A page that runs without app.py's router
    (a deep link as a fresh server's first request) hands over to it first (``_router.ensure_routed``)."""
    _router.ensure_routed()
    return inputs()


def inputs() -> dict:
    """The session's inputs dict (TrainConfig fields), created with the defaults on first use."""
    if "inputs" not in st.session_state:
        st.session_state["inputs"] = default_inputs()
    return st.session_state["inputs"]


def to_config(inp: dict, validate: bool = True, **override):
    """inputs dict (+ overrides) -> TrainConfig; validated, it raises ValueError with one clear line."""
    from tl_core.training.config import TrainConfig

    fields = set(TrainConfig().to_dict())
    cfg = TrainConfig.from_dict({**{k: v for k, v in inp.items() if k in fields}, **override})
    return cfg.validate() if validate else cfg


# ------------------------------------------------------------------ folders and stores


def runs_dir() -> Path:
    return Path(os.environ.get("TL_RUNS_DIR") or "runs").resolve()


def upload_path(kind: str, suffix: str) -> Path:
    """A fresh server-side path with a generated name (never the uploader's file name)."""
    if kind == "data":
        from tl_core.data.sources import data_root

        folder = data_root() / "uploads"
    else:
        folder = runs_dir() / "uploads" / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{uuid.uuid4().hex[:12]}{suffix}"


@st.cache_resource(show_spinner=False)
def _store(path: str):
    from tl_core.runs.store import RunStore

    return RunStore(path)


def store():
    """The process-wide RunStore for $TL_RUNS_DIR (thread-safe, shared by all sessions)."""
    return _store(str(runs_dir()))


# ------------------------------------------------------------------ backbones


@st.cache_data(show_spinner=False)
def describe(key: str) -> dict:
    return backbones.describe(key)


@st.cache_data(show_spinner=False, ttl=30)
def catalogue_rows() -> list[dict]:
    return [describe(k) for k in backbones.catalogue()]


@st.cache_resource(show_spinner="Reading the backbone's layers…", max_entries=8)
def hierarchy_for(key: str, image_size: int, num_classes: int) -> surgery.Hierarchy:
    """Block hierarchy of a backbone (random weights are enough: the structure is the same)."""
    model, _ = backbones.create_model(key, num_classes=num_classes, weights="random")
    return surgery.hierarchy(model, image_size=image_size)


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


def num_classes(inp: dict) -> int:
    """Classes of the chosen data (for the head size); 10 when it cannot be known yet."""
    if inp.get("data") in BUILTIN:
        return BUILTIN[inp["data"]].num_classes
    if inp.get("data") in TEXT_BUILTIN:
        return len(TEXT_BUILTIN[inp["data"]].class_names)
    return int(st.session_state.get("data_num_classes", 10))


def data_label(inp: dict) -> str:
    """A data set's name to show: the built-in's title, an upload's own file name, else the folder name."""
    if inp.get("data") in BUILTIN:
        return BUILTIN[inp["data"]].name
    if inp.get("data") in TEXT_BUILTIN:
        return TEXT_BUILTIN[inp["data"]].name
    from tl_core.data import uploads

    text_upload = st.session_state.get("text_uploads", {}).get(str(inp.get("data")))
    return text_upload or uploads.upload_name(str(inp.get("data"))) or Path(str(inp.get("data"))).name


# ------------------------------------------------------------------ images or texts

# what a switch to each modality sets, so that the backbone and the data always match
MODALITY_DEFAULTS = {
    "image": {"backbone": "mobilenetv2", "data": "animal_shapes", "per_class": 100},
    "text": {"backbone": "minilm_l6", "data": "fine_food", "per_class": 500, "max_tokens": 64, "augment": {}},
}
UNIT = {"image": "images", "text": "texts"}


def modality(inp: dict) -> str:
    """"text" when the chosen backbone reads texts, else "image"."""
    return models.modality(inp.get("backbone", "mobilenetv2"))


def sample_size(inp: dict) -> int:
    """The size of one input: max_tokens for a text backbone, image_size for an image backbone."""
    return int(inp["max_tokens"] if modality(inp) == "text" else inp["image_size"])


def hierarchy_of(inp: dict) -> surgery.Hierarchy:
    """The chosen backbone's hierarchy at the chosen input size, with a head for the chosen data."""
    return hierarchy_for(inp["backbone"], sample_size(inp), num_classes(inp))


def _use_defaults(kind: str, fields: tuple[str, ...]) -> None:
    inp = inputs()
    for name in fields:
        value = MODALITY_DEFAULTS[kind][name]
        set_input(name, dict(value) if isinstance(value, dict) else value)
    inp["lr"], inp["classes"] = None, None
    for key in [k for k in st.session_state if str(k).startswith("aug_") or k in ("data_pick", "text_data_pick")]:
        del st.session_state[key]  # the Data page's pickers and toggles start again from the inputs dict


def fit_data_to_backbone(previous: str) -> None:
    """After the backbone changed from one of modality ``previous``: when the data no longer fits it
    (an image set for a text backbone, or the other way round), switch to the default data set of
    the new modality, and say so once (``modality_note``)."""
    inp = inputs()
    kind = modality(inp)
    known = text_data.data_modality(str(inp.get("data")))
    if known == kind or (known is None and kind == previous):
        return
    _use_defaults(kind, tuple(k for k in MODALITY_DEFAULTS[kind] if k != "backbone"))
    st.session_state["modality_note"] = (f"{describe(inp['backbone'])['label']} reads {UNIT[kind]}, so the data "
                                         f"switched to {data_label(inp)}.")


def switch_modality(kind: str) -> None:
    """Pick images or texts: the default backbone and data set of that kind (when not already that kind)."""
    inp = inputs()
    if kind not in MODALITY_DEFAULTS or modality(inp) == kind:
        return
    _use_defaults(kind, tuple(MODALITY_DEFAULTS[kind]))
    inp["plan"], inp["weights_file"], inp["weights"] = None, None, "pretrained"
    st.session_state["modality_note"] = (f"Switched to {UNIT[kind]}: the backbone is now "
                                         f"{describe(inp['backbone'])['label']} and the data {data_label(inp)}.")


def modality_note() -> None:
    """Show, once, what a modality switch changed."""
    note = st.session_state.pop("modality_note", None)
    if note:
        st.info(plain(note), icon=":material/swap_horiz:")


def config_problem(inp: dict) -> str | None:
    """Why the current choices cannot be launched (config.validate's one line), or None."""
    try:
        to_config(inp)
    except (ValueError, KeyError) as exc:
        return str(exc)
    return None


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


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&\"'=^@%;?/,])")


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


# ------------------------------------------------------------------ strategies and plans


def strategy_phases(inp: dict, hier: surgery.Hierarchy, with_plan: bool = True) -> list[tuple[str, int, dict]]:
    """(name, epochs, plan dict) per phase for the current inputs (tl_core.models.strategies.schedule).
    ``with_plan=False`` ignores the user's per-block plan: the strategy's own preset."""
    cfg = to_config(inp, validate=False, plan=inp.get("plan") if with_plan else None)
    return [(p.name, int(p.epochs), p.plan.to_dict()) for p in strategies.schedule(cfg, hier)]


def current_plan(inp: dict, hier: surgery.Hierarchy) -> dict:
    """The first-phase freeze plan (inputs["plan"]), rebuilt from the strategy when missing or stale."""
    plan = inp.get("plan")
    if plan:
        try:
            surgery.FreezePlan.from_dict(plan).check(hier)
            return plan
        except (ValueError, TypeError):
            pass
    plan = strategy_phases(inp, hier, with_plan=False)[0][2]
    inp["plan"] = plan
    return plan


def run_label(info) -> str:
    return f"{info.name} · {info.status}"


def status_badge(status: str) -> str:
    """Markdown for a coloured status badge, e.g. ``:green-badge[✔ completed]``."""
    colour = {"queued": "gray", "running": "violet", "completed": "green", "stopped": "gray",
              "failed": "red", "diverged": "red"}.get(status, "gray")
    icon = {"queued": "…", "running": "▶", "completed": "✔", "stopped": "■", "failed": "✖", "diverged": "✖"}
    return f":{colour}-badge[{icon.get(status, '')} {status}]"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


# ------------------------------------------------------------------ widgets bound to the inputs dict


def _write_back(field: str, key: str, convert=None) -> None:
    value = st.session_state[key]
    inputs()[field] = convert(value) if convert else value


def bind(field: str, key: str | None = None, convert=None, on_change=None) -> dict:
    """Keyword arguments that bind a widget to ``inputs()[field]``: ``st.slider("x", **bind("epochs"))``.

    Streamlit forgets a widget's value when its page is left; the inputs dict does not, so the
    widget is re-initialised from it on every visit and writes back through its callback."""
    key = key or f"in_{field}"
    if key not in st.session_state:
        st.session_state[key] = inputs().get(field)

    def changed():
        _write_back(field, key, convert)
        if on_change:
            on_change()

    return {"key": key, "on_change": changed}


@st.cache_data(ttl=60, show_spinner=False)
def online() -> bool:
    """Whether pretrained weights could be downloaded now (asked at most once a minute)."""
    from tl_core.models import backbones

    return backbones.is_online()


def strategy_label(key: str | None) -> str:
    return STRATEGIES[key].short if key in STRATEGIES else (key or "")


def set_input(field: str, value, key: str | None = None) -> None:
    """Change an input from code (a callback): the bound widget shows the new value too."""
    inputs()[field] = value
    st.session_state[key or f"in_{field}"] = value
