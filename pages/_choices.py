"""What the session's choices imply: images or texts (and switching between them so that the backbone
and the data always match), the data's classes and name, the input size, the freeze plan and phases."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from tl_core.data import texts as text_data
from tl_core.data.builtin import BUILTIN
from tl_core.data.texts import TEXT_BUILTIN
from tl_core.models import arch as models
from tl_core.models import strategies
from tl_core.models import surgery

from pages import _backbones, _display, _inputs

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
    from tl_core.data.sources import upload_name

    text_upload = st.session_state.get("text_uploads", {}).get(str(inp.get("data")))
    return text_upload or upload_name(str(inp.get("data"))) or Path(str(inp.get("data"))).name


# ------------------------------------------------------------------ images or texts


def _use_defaults(kind: str, fields: tuple[str, ...]) -> None:
    inp = _inputs.inputs()
    for name in fields:
        value = MODALITY_DEFAULTS[kind][name]
        _inputs.set_input(name, dict(value) if isinstance(value, dict) else value)
    inp["lr"], inp["classes"] = None, None
    for key in [k for k in st.session_state if str(k).startswith("aug_") or k in ("data_pick", "text_data_pick")]:
        del st.session_state[key]  # the Data page's pickers and toggles start again from the inputs dict


def fit_data_to_backbone(previous: str) -> None:
    """After the backbone changed from one of modality ``previous``: when the data no longer fits it
    (an image set for a text backbone, or the other way round), switch to the default data set of
    the new modality, and say so once (``modality_note``)."""
    inp = _inputs.inputs()
    kind = modality(inp)
    known = text_data.data_modality(str(inp.get("data")))
    if known == kind or (known is None and kind == previous):
        return
    _use_defaults(kind, tuple(k for k in MODALITY_DEFAULTS[kind] if k != "backbone"))
    st.session_state["modality_note"] = (f"{_backbones.describe(inp['backbone'])['label']} reads {UNIT[kind]}, "
                                         f"so the data switched to {data_label(inp)}.")


def switch_modality(kind: str) -> None:
    """Pick images or texts: the default backbone and data set of that kind (when not already that kind)."""
    inp = _inputs.inputs()
    if kind not in MODALITY_DEFAULTS or modality(inp) == kind:
        return
    _use_defaults(kind, tuple(MODALITY_DEFAULTS[kind]))
    inp["plan"], inp["weights_file"], inp["weights"] = None, None, "pretrained"
    st.session_state["modality_note"] = (f"Switched to {UNIT[kind]}: the backbone is now "
                                         f"{_backbones.describe(inp['backbone'])['label']} and the data "
                                         f"{data_label(inp)}.")


def modality_note() -> None:
    """Show, once, what a modality switch changed."""
    note = st.session_state.pop("modality_note", None)
    if note:
        st.info(_display.plain(note), icon=":material/swap_horiz:")


# ------------------------------------------------------------------ the freeze plan and its phases


def hierarchy_of(inp: dict) -> surgery.Hierarchy:
    """The chosen backbone's hierarchy at the chosen input size, with a head for the chosen data."""
    return _backbones.hierarchy_for(inp["backbone"], sample_size(inp), num_classes(inp))


def strategy_phases(inp: dict, hier: surgery.Hierarchy, with_plan: bool = True) -> list[tuple[str, int, dict]]:
    """(name, epochs, plan dict) per phase for the current inputs (tl_core.models.strategies.schedule).
    ``with_plan=False`` ignores the user's per-block plan: the strategy's own preset."""
    cfg = _inputs.to_config(inp, validate=False, plan=inp.get("plan") if with_plan else None)
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
