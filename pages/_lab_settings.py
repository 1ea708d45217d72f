"""The Labs page's settings: each lab's configuration in the session and in the page address (a shared
link loads it), the widgets that edit it, and the share / save / load panel."""
from __future__ import annotations

import streamlit as st

from tl_core import data, labs
from tl_core.models import backbones

from pages import _classroom, _display


def config(lab: str) -> labs.LabConfig:
    key = f"labcfg_{lab}"
    if key not in st.session_state:
        st.session_state[key] = labs.default_config(lab).to_dict()
    return labs.LabConfig.from_dict(st.session_state[key])


def _widget_values(cfg: labs.LabConfig) -> dict:
    lab = cfg.lab
    return {
        f"{lab}_gpu": cfg.preset == "gpu",
        f"{lab}_per_class": cfg.per_class or 0,
        f"{lab}_image_size": cfg.image_size,
        f"{lab}_epochs": cfg.epochs,
        f"{lab}_seed": cfg.seed,
        f"{lab}_seeds": cfg.seeds,
        f"{lab}_only_seed": cfg.only_seed,
        f"{lab}_strategies": list(cfg.strategies),
        f"{lab}_depths": labs.encode_value("depths", cfg.depths),
        f"{lab}_sizes": labs.encode_value("sizes", cfg.sizes),
        f"{lab}_source_epochs": cfg.source_epochs,
        f"{lab}_head_epochs": cfg.head_epochs,
        f"{lab}_source_per_class": cfg.source_per_class or 0,
        f"{lab}_shifts": list(cfg.shifts),
        f"{lab}_networks": list(cfg.networks),
        f"{lab}_domains": list(cfg.domains),
        f"{lab}_max_tokens": cfg.max_tokens,
    }


def set_config(cfg: labs.LabConfig, to_url: bool = True) -> None:
    """Store a lab's config, show it in its widgets, and put it in the page address."""
    st.session_state[f"labcfg_{cfg.lab}"] = cfg.to_dict()
    st.session_state.update(_widget_values(cfg))
    if to_url:  # the student's name and its signature stay in the address (a reload keeps them)
        keep = {k: st.query_params[k] for k in _classroom.URL_KEYS if k in st.query_params}
        st.query_params.from_dict({**cfg.to_query(), **keep})
        st.session_state["lab_url_seen"] = cfg.to_query_string()


def load_link() -> str | None:
    """A shared link: the address names a lab and its settings. Load them once (not over later edits) and,
    while the address holds them, say which values the lab could not take and what the form shows instead,
    or that no lab has that name (the first lab opens). Returns the lab the address names, or None."""
    query = st.query_params.to_dict()
    name = query.get("lab")
    if name is None:
        return None
    if name not in labs.LABS:
        names = ", ".join(f"`{k}` ({info.title})" for k, info in labs.LABS.items())
        st.warning(f"This link asks for a lab called '{_display.plain(name[:40])}', but there is no lab called that; "
                   f"the labs are: {names}. The page opened the first lab, {next(iter(labs.LABS.values())).title}, "
                   "with its own settings. What to do: pick a lab's tab below, or ask for a link that names one.")
        return None
    from_url, notes = labs.LabConfig.from_link(query)
    if st.session_state.get("lab_url_seen") != from_url.to_query_string():
        set_config(from_url, to_url=False)
        st.session_state["lab_url_seen"] = from_url.to_query_string()
    if notes:
        lines = [f"- `{n.field}`: the link says {_display.plain(n.given)}; {_display.plain(n.why)}; the form shows "
                 f"{_display.plain(n.now)} instead." for n in notes]
        st.warning(f"**This link asks for settings the {labs.LABS[name].title} lab cannot take.** The form below "
                   "shows, and Run will use, these values instead:\n\n" + "\n".join(lines)
                   + "\n\nWhat to do: check them before you press Run, or ask for a corrected link.")
    return name


def _edit(lab: str, field: str, convert=None) -> None:
    """Widget callback: write one field back, keep the URL in step."""
    cfg = config(lab)
    value = st.session_state[f"{lab}_{field}"]
    try:
        setattr(cfg, field, convert(value) if convert else value)
        if field == "seeds" and cfg.only_seed is not None and cfg.only_seed >= cfg.seeds:
            cfg.only_seed = None  # that seed index is gone: run them all
        cfg.validate()
    except ValueError as exc:
        st.session_state[f"labcfg_err_{lab}"] = str(exc)
        st.session_state.update(_widget_values(config(lab)))  # the form shows again what will run
        return
    st.session_state.pop(f"labcfg_err_{lab}", None)
    set_config(cfg)


def _preset(lab: str) -> None:
    set_config(labs.default_config(lab, "gpu" if st.session_state[f"{lab}_gpu"] else "default"))


def _load_json(lab: str) -> None:
    up = st.session_state.get(f"{lab}_json")
    if up is None:
        return
    try:
        cfg = labs.LabConfig.from_json(up.getvalue().decode("utf-8", errors="replace")).validate()
    except ValueError as exc:
        st.session_state[f"labcfg_err_{lab}"] = f"that file is not a usable lab configuration: {exc}"
        return
    if cfg.lab != lab:
        st.session_state[f"labcfg_err_{lab}"] = (f"that file is a configuration of the '{labs.LABS[cfg.lab].title}' "
                                                 "lab; it was loaded in its own tab")
    else:
        st.session_state.pop(f"labcfg_err_{lab}", None)
    set_config(cfg)


def _load_ready(lab: str) -> None:
    name = st.session_state.get(f"{lab}_ready")
    cfg = labs.ready_made().get(name)
    if cfg is not None:
        set_config(cfg)


def _ints(text: str):
    return labs.decode_value("depths", text)


def _sizes(text: str):
    return labs.decode_value("sizes", text)


# ------------------------------------------------------------------ the settings form


def settings(lab: str) -> labs.LabConfig:
    info = labs.LABS[lab]
    cfg = config(lab)
    for k, v in _widget_values(cfg).items():
        st.session_state.setdefault(k, v)
    bounds = {name: (lo, hi) for name, (_, lo, hi, _) in cfg.int_ranges().items()}  # what validate accepts
    top = st.columns([2, 3], vertical_alignment="center")
    top[0].toggle("Bigger configuration (GPU)", key=f"{lab}_gpu", on_change=_preset, args=(lab,),
                  help="More images, larger inputs, more epochs: minutes on a GPU, far longer on a laptop CPU.")
    top[1].caption(f"Default: sized for about 5 minutes or less on an idle 2-core CPU — {info.timing}."
                   if cfg.preset == "default" else "GPU configuration: expect it to take much longer on a CPU.")
    c = st.columns(5)
    text = lab == "text_race"
    if lab != "quadrant":
        c[0].number_input(("Reviews" if text else "Images") + " per class" + (" (task B)" if lab == "yosinski" else ""),
                          min_value=0, max_value=bounds["per_class"][1], step=5, key=f"{lab}_per_class",
                          on_change=_edit, args=(lab, "per_class", lambda v: v or None),
                          help="Training images per class (0 = all). Transfer effects show with few: 20–30.")
    else:
        c[0].text_input("Images per class (sizes)", key=f"{lab}_sizes", on_change=_edit, args=(lab, "sizes", _sizes),
                        help="Comma-separated, 'all' for every image, e.g. 5,20,100,all")
    if not text:
        sizes = _options((32, 48, 64, 96, 128, 160, 224), bounds["image_size"], cfg.image_size)
        c[1].selectbox("Image size (px)", sizes, key=f"{lab}_image_size", on_change=_edit, args=(lab, "image_size"))
    else:
        c[1].selectbox("Tokens per text", _options((16, 32, 48, 64, 128), bounds["max_tokens"], cfg.max_tokens),
                       key=f"{lab}_max_tokens", on_change=_edit, args=(lab, "max_tokens"),
                       help="Longer texts are cut to this many tokens.")
    c[2].number_input("Epochs" + (" (transfer runs)" if lab == "yosinski" else ""), *bounds["epochs"],
                      key=f"{lab}_epochs", on_change=_edit, args=(lab, "epochs"))
    c[3].number_input("Seed", *bounds["seed"], key=f"{lab}_seed", on_change=_edit, args=(lab, "seed"),
                      help="The data split's seed (the same for every run of the lab) and the first training seed."
                      if info.paired else "The first seed: each seed splits the data and trains with its own seed.")
    c[4].number_input("Seeds", *bounds["seeds"], key=f"{lab}_seeds", on_change=_edit,
                      args=(lab, "seeds"), help="How many times the lab runs, with seeds seed, seed+1, …: "
                      + ("same split, different initialisation and batch order" if info.paired else
                         "each seed with its own split of the data, its own initialisation and batch order")
                      + ". Two or more give a 95% interval.")
    only_seed(lab, cfg)
    if lab in ("race", "quadrant", "text_race"):
        from tl_core.models.strategies import STRATEGIES

        st.multiselect("Strategies", list(STRATEGIES), key=f"{lab}_strategies", on_change=_edit,
                       args=(lab, "strategies"), format_func=lambda s: STRATEGIES[s].label)
    if "depths" in info.fields:
        st.text_input("Depths n to sweep (block groups)", key=f"{lab}_depths", on_change=_edit,
                      args=(lab, "depths", _ints), help="Comma-separated group counts, or 'auto' for every depth.")
    if "networks" in info.fields:
        pick(lab, cfg, "networks", "Pretrained networks compared", labs.default_config(lab).networks,
             "The lab ranks these networks (at least two) by their published ImageNet top-1.",
             lambda k: backbones.CATALOGUE[k].label if k in backbones.CATALOGUE else k)
    if "domains" in info.fields:
        pick(lab, cfg, "domains", "Target data sets", list(data.BUILTIN),
             "; ".join(f"**{d.name}**: {d.similarity} to ImageNet" for d in data.BUILTIN.values()),
             lambda k: f"{data.BUILTIN[k].name} ({data.BUILTIN[k].similarity})" if k in data.BUILTIN else k)
    if "shifts" in info.fields:
        shifts(lab, cfg)
    if "head_epochs" in info.fields:
        st.number_input("Epochs of the head alone first (the linear probe)", *bounds["head_epochs"],
                        key=f"{lab}_head_epochs", on_change=_edit, args=(lab, "head_epochs"))
    if "source_epochs" in info.fields:
        source = "the base networks A and B" if lab == "yosinski" else "the source network"
        cols = st.columns(2)
        cols[0].number_input(f"Epochs of {source}", *bounds["source_epochs"], key=f"{lab}_source_epochs",
                             on_change=_edit, args=(lab, "source_epochs"))
        if "source_per_class" in info.fields:
            cols[1].number_input(f"Images per class of {source}", min_value=0, step=10,
                                 max_value=bounds["source_per_class"][1], key=f"{lab}_source_per_class",
                                 on_change=_edit, args=(lab, "source_per_class", lambda v: v or None),
                                 help="0 = all.")
    if st.session_state.get(f"labcfg_err_{lab}"):
        st.error(f"Setting not applied: {_display.plain(st.session_state[f'labcfg_err_{lab}'])}. The form shows the "
                 "settings in use.")
    share(lab, cfg)
    return cfg


def _options(common, bounds: tuple[int, int], value: int) -> list[int]:
    """A selectbox's choices: the common ones this server's limits allow, and the current value."""
    return sorted({v for v in common if bounds[0] <= v <= bounds[1]} | {value})


def shifts(lab: str, cfg: labs.LabConfig) -> None:
    """The shifts of the target (``data.SHIFTS``): only those this lab takes (AdaBN and LP-FT: input shifts)."""
    def takes(shift: str) -> bool:
        try:
            labs.LabConfig.from_dict({**cfg.to_dict(), "shifts": [shift]}).validate()
        except ValueError:
            return False
        return True

    options = [s for s in data.SHIFTS if takes(s)]
    pick(lab, cfg, "shifts", "Shifts of the target", options, "What changes between the source data and the "
         "target: " + "; ".join(f"**{s}**: {data.SHIFTS[s]}" for s in options) + ". A lab that studies one shift "
         "takes the first.")
    st.caption(" · ".join(f"**{s}**: {data.SHIFTS[s]}" for s in cfg.shifts))


def pick(lab: str, cfg: labs.LabConfig, field: str, label: str, options, help: str, name=str) -> None:
    """A list field's multiselect: the options, and whatever the config holds (a link or a file may name
    others). A choice the lab cannot take is refused by ``_edit`` with its reason."""
    st.multiselect(label, list(dict.fromkeys([*options, *getattr(cfg, field)])), key=f"{lab}_{field}",
                   on_change=_edit, args=(lab, field), format_func=name, help=help)


def only_seed(lab: str, cfg: labs.LabConfig) -> None:
    """Run all the seeds, or (a classroom: one student per seed) only one of them."""
    options = [None, *range(cfg.seeds)]
    if st.session_state.get(f"{lab}_only_seed") not in options:
        st.session_state[f"{lab}_only_seed"] = None
    st.selectbox("Seeds to run", options, key=f"{lab}_only_seed", on_change=_edit, args=(lab, "only_seed"),
                 format_func=lambda i: f"all {cfg.seeds}" if i is None else f"only seed #{i} (training seed "
                                                                            f"{cfg.seed + i})",
                 placeholder=f"all {cfg.seeds}",  # the None option: a selectbox at None shows its placeholder
                 help="A class can share the work: each student runs one seed of the same lab (see the student "
                      "links under 'Share').")


def share(lab: str, cfg: labs.LabConfig) -> None:
    with st.expander("Share, save or load this configuration"):
        st.markdown("**Link for students** (append to the app's address; it opens this lab with these settings):")
        st.code("labs?" + cfg.to_query_string(), language=None)
        if cfg.seeds > 1:
            st.markdown("**One seed per student** (student *i* runs seed *i* only; "
                        + ("same split for all):" if labs.LABS[lab].paired else "each seed its own split):"))
            one = [labs.LabConfig.from_dict({**cfg.to_dict(), "only_seed": i}) for i in range(cfg.seeds)]
            st.code("\n".join("labs?" + c.to_query_string() for c in one), language=None)
        st.download_button("Save configuration (JSON)", cfg.to_json(), file_name=f"{lab}.json",
                           mime="application/json", key=f"{lab}_save", icon=":material/download:")
        st.file_uploader("Load a configuration (JSON)", type=["json"], key=f"{lab}_json", on_change=_load_json,
                         args=(lab,), max_upload_size=1)
        ready = {n: c for n, c in labs.ready_made().items() if c.lab == lab}
        if ready:
            cols = st.columns([3, 1], vertical_alignment="bottom")
            cols[0].selectbox("Ready-made configurations (labs/*.json)", list(ready), key=f"{lab}_ready")
            cols[1].button("Load", key=f"{lab}_ready_load", on_click=_load_ready, args=(lab,))
        st.json(cfg.to_dict(), expanded=False)
