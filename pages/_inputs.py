"""The session's inputs dict (``st.session_state["inputs"]``): plain TrainConfig fields, like traingenerator's
inputs. Every page reads and writes it (widgets bind to it), the Train page turns it into a TrainConfig."""
from __future__ import annotations

import streamlit as st

from pages import _router


def start_page() -> dict:
    """Call first in every page; returns the inputs dict. A page that runs without app.py's router
    (a deep link as a fresh server's first request) hands over to it first (``_router.ensure_routed``)."""
    _router.ensure_routed()
    return inputs()


def inputs() -> dict:
    """The session's inputs dict (TrainConfig fields), created with the defaults on first use."""
    if "inputs" not in st.session_state:
        from tl_core.training.config import TrainConfig

        st.session_state["inputs"] = TrainConfig().to_dict()
    return st.session_state["inputs"]


def to_config(inp: dict, validate: bool = True, **override):
    """inputs dict (+ overrides) -> TrainConfig; validated, it raises ValueError with one clear line."""
    from tl_core.training.config import TrainConfig

    fields = set(TrainConfig().to_dict())
    cfg = TrainConfig.from_dict({**{k: v for k, v in inp.items() if k in fields}, **override})
    return cfg.validate() if validate else cfg


def config_problem(inp: dict) -> str | None:
    """Why the current choices cannot be launched (config.validate's one line), or None."""
    try:
        to_config(inp)
    except (ValueError, KeyError) as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------ widgets bound to the inputs dict


def bind(field: str, key: str | None = None, convert=None, on_change=None) -> dict:
    """Keyword arguments that bind a widget to ``inputs()[field]``: ``st.slider("x", **bind("epochs"))``.

    Streamlit forgets a widget's value when its page is left; the inputs dict does not, so the
    widget is re-initialised from it on every visit and writes back through its callback."""
    key = key or f"in_{field}"
    if key not in st.session_state:
        st.session_state[key] = inputs().get(field)

    def changed():
        value = st.session_state[key]
        inputs()[field] = convert(value) if convert else value
        if on_change:
            on_change()

    return {"key": key, "on_change": changed}


def set_input(field: str, value, key: str | None = None) -> None:
    """Change an input from code (a callback): the bound widget shows the new value too."""
    inputs()[field] = value
    st.session_state[key or f"in_{field}"] = value
