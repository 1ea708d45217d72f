"""Labs page: one tab per lab. Each lab asks one question, states what theory predicts, runs real
training runs in the background (one lab process, runs recorded like any other) and says what we
measured, in numbers, next to the prediction.

The lab's configuration lives in the page address (``?lab=race&per_class=25...``): a teacher
prepares it, copies the link, and students open exactly the same setup.

In classroom mode a lab belongs to the student who launched it (its runs carry the name): the page
lists the student's own labs, and only they or the teacher may stop one.
"""
import streamlit as st

from pages import _classroom, _ui
from tl_core import classroom
from tl_core import labs
from tl_core import limits

_ui.start_page()
store = _ui.store()
RUNS_DIR = store.runs_dir
REFRESH_S = 1.5

st.title("Labs")
st.markdown(
    "Small, real experiments that put a claim of transfer-learning theory to the test. Each lab runs "
    "several trainings on **the same data and split**, repeated over a few **seeds** (different initialisation "
    "and batch order), then compares what we **measured** with what theory **predicts**, and says so plainly "
    "when they disagree. Every run also appears on the Compare page."
)

ORDER = list(labs.LABS)
TITLES = {k: labs.LABS[k].title for k in ORDER}


# ------------------------------------------------------------------ configuration state (session + URL)


def _cfg(lab: str) -> labs.LabConfig:
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
        f"{lab}_max_tokens": cfg.max_tokens,
    }


def _set_cfg(cfg: labs.LabConfig, to_url: bool = True) -> None:
    """Store a lab's config, show it in its widgets, and put it in the page address."""
    st.session_state[f"labcfg_{cfg.lab}"] = cfg.to_dict()
    st.session_state.update(_widget_values(cfg))
    if to_url:  # the student's name stays in the address (a reload keeps it)
        student = st.query_params.get("student")
        st.query_params.from_dict({**cfg.to_query(), **({"student": student} if student else {})})
        st.session_state["lab_url_seen"] = cfg.to_query_string()


# A shared link: the address names a lab and its settings. Load it once (not over later edits).
_query = st.query_params.to_dict()
url_lab = _query.get("lab") if _query.get("lab") in labs.LABS else None
if url_lab:
    try:
        from_url = labs.LabConfig.from_query(_query)
        if st.session_state.get("lab_url_seen") != from_url.to_query_string():
            _set_cfg(from_url, to_url=False)
            st.session_state["lab_url_seen"] = from_url.to_query_string()
    except ValueError as exc:
        st.error(f"The link's lab settings could not be read: {_ui.plain(exc)}. What to do: fix the link, or use the "
                 "lab's defaults shown instead.")


def _edit(lab: str, field: str, convert=None) -> None:
    """Widget callback: write one field back, keep the URL in step."""
    cfg = _cfg(lab)
    value = st.session_state[f"{lab}_{field}"]
    try:
        setattr(cfg, field, convert(value) if convert else value)
        if field == "seeds" and cfg.only_seed is not None and cfg.only_seed >= cfg.seeds:
            cfg.only_seed = None  # that seed index is gone: run them all
        cfg.validate()
    except ValueError as exc:
        st.session_state[f"labcfg_err_{lab}"] = str(exc)
        return
    st.session_state.pop(f"labcfg_err_{lab}", None)
    _set_cfg(cfg)


def _preset(lab: str) -> None:
    _set_cfg(labs.default_config(lab, "gpu" if st.session_state[f"{lab}_gpu"] else "default"))


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
        st.session_state[f"labcfg_err_{lab}"] = (f"that file is a configuration of the '{TITLES[cfg.lab]}' lab; "
                                                 "it was loaded in its own tab")
    else:
        st.session_state.pop(f"labcfg_err_{lab}", None)
    _set_cfg(cfg)


def _load_ready(lab: str) -> None:
    name = st.session_state.get(f"{lab}_ready")
    cfg = labs.ready_made().get(name)
    if cfg is not None:
        _set_cfg(cfg)


def _launch(lab: str) -> None:
    try:
        cfg = _cfg(lab).validate()
        lab_id = labs.launch_lab(cfg, RUNS_DIR, owner=_classroom.owner())
    except Exception as exc:  # a bad setting or a missing engine feature: say which
        st.session_state[f"lab_launch_err_{lab}"] = f"{type(exc).__name__}: {exc}" if not isinstance(
            exc, ValueError) else str(exc)
        return
    st.session_state.pop(f"lab_launch_err_{lab}", None)
    st.session_state[f"lab_pick_{lab}"] = lab_id
    _set_cfg(cfg)


def _stop(lab: str, lab_id: str) -> None:
    """The Stop button's callback: another student's lab is refused (one line, kept for the page)."""
    try:
        labs.stop_lab(lab_id, RUNS_DIR, **classroom.stop_rights(_classroom.owner(), _classroom.is_teacher()))
        st.session_state.pop(f"lab_stop_err_{lab}", None)
    except (PermissionError, KeyError) as exc:
        st.session_state[f"lab_stop_err_{lab}"] = str(exc).strip("'\"")


def _ints(text: str):
    return labs.decode_value("depths", text)


def _sizes(text: str):
    return labs.decode_value("sizes", text)


# ------------------------------------------------------------------ one tab


def settings(lab: str) -> labs.LabConfig:
    info = labs.LABS[lab]
    cfg = _cfg(lab)
    for k, v in _widget_values(cfg).items():
        st.session_state.setdefault(k, v)
    top = st.columns([2, 3], vertical_alignment="center")
    top[0].toggle("Bigger configuration (GPU)", key=f"{lab}_gpu", on_change=_preset, args=(lab,),
                  help="More images, larger inputs, more epochs: minutes on a GPU, far longer on a laptop CPU.")
    top[1].caption(f"Default: sized for about 5 minutes or less on an idle 2-core CPU — {info.timing}."
                   if cfg.preset == "default" else "GPU configuration: expect it to take much longer on a CPU.")
    c = st.columns(5)
    text = lab == "text_race"
    if lab != "quadrant":
        c[0].number_input(("Reviews" if text else "Images") + " per class" + (" (task B)" if lab == "yosinski" else ""),
                          min_value=0,
                          max_value=100_000, step=5, key=f"{lab}_per_class", on_change=_edit,
                          args=(lab, "per_class", lambda v: v or None),
                          help="Training images per class (0 = all). Transfer effects show with few: 20–30.")
    else:
        c[0].text_input("Images per class (sizes)", key=f"{lab}_sizes", on_change=_edit, args=(lab, "sizes", _sizes),
                        help="Comma-separated, 'all' for every image, e.g. 5,20,100,all")
    if not text:
        c[1].selectbox("Image size (px)", sorted({32, 48, 64, 96, 128, 160, 224, cfg.image_size}),
                       key=f"{lab}_image_size", on_change=_edit, args=(lab, "image_size"))
    else:
        c[1].selectbox("Tokens per text", sorted({16, 32, 48, 64, 128, cfg.max_tokens}), key=f"{lab}_max_tokens",
                       on_change=_edit, args=(lab, "max_tokens"), help="Longer texts are cut to this many tokens.")
    c[2].number_input("Epochs" + (" (transfer runs)" if lab == "yosinski" else ""), min_value=1, max_value=100,
                      key=f"{lab}_epochs", on_change=_edit, args=(lab, "epochs"))
    c[3].number_input("Seed", min_value=0, max_value=10_000, key=f"{lab}_seed", on_change=_edit, args=(lab, "seed"),
                      help="The data split's seed (the same for every run of the lab) and the first training seed.")
    c[4].number_input("Seeds", min_value=1, max_value=limits.current().max_seeds, key=f"{lab}_seeds", on_change=_edit,
                      args=(lab, "seeds"), help="How many times the lab runs, with training seeds seed, seed+1, …: "
                      "same split, different initialisation and batch order. Two or more give a 95% interval.")
    only_seed(lab, cfg)
    if lab in ("race", "quadrant", "text_race"):
        from tl_core.models.strategies import STRATEGIES

        st.multiselect("Strategies", list(STRATEGIES), key=f"{lab}_strategies", on_change=_edit,
                       args=(lab, "strategies"), format_func=lambda s: STRATEGIES[s].label)
    if lab in ("freeze_depth", "yosinski"):
        st.text_input("Depths n to sweep (block groups)", key=f"{lab}_depths", on_change=_edit,
                      args=(lab, "depths", _ints), help="Comma-separated group counts, or 'auto' for every depth.")
    if lab == "yosinski":
        st.number_input("Epochs of the base networks A and B", min_value=1, max_value=100,
                        key=f"{lab}_source_epochs", on_change=_edit, args=(lab, "source_epochs"))
    if st.session_state.get(f"labcfg_err_{lab}"):
        st.error(f"Setting not applied: {_ui.plain(st.session_state[f'labcfg_err_{lab}'])}")
    share(lab, cfg)
    return cfg


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
            st.markdown("**One seed per student** (student *i* runs seed *i* only; same split for all):")
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


def normalization_inputs(cfg: labs.LabConfig) -> None:
    """The same sample as the network gets it, with its own and with the wrong mean/std."""
    try:
        views = labs.normalization_views(cfg)
    except Exception as exc:
        st.caption(f"(Input preview unavailable: {exc})")
        return
    cols = st.columns(2)
    for col, mode, title in ((cols[0], "backbone", "own mean/std"), (cols[1], "wrong", "wrong mean/std")):
        v = views[mode]
        mean, std = v["stats"]
        col.image(v["picture"], caption=f"{title}: mean {tuple(round(m, 3) for m in mean)}, "
                  f"std {tuple(round(s, 3) for s in std)}", width=220)
        col.caption(f"Input tensor: mean {v['mean']:+.2f}, std {v['std']:.2f}, "
                    f"range {float(v['tensor'].min()):+.2f}…{float(v['tensor'].max()):+.2f} "
                    "(shown de-normalised with the backbone's own statistics: what it perceives)")


def _pick_instance(lab: str, instances: list[dict]) -> str:
    """The lab run to show: the one picked (a select box when there are several), else the newest."""
    ids = [s["id"] for s in instances]
    pick = st.session_state.get(f"lab_pick_{lab}")
    if pick not in ids:
        pick = ids[0]
    if len(ids) > 1:
        st.session_state[f"lab_pick_{lab}"] = pick
        by_id = {s["id"]: s for s in instances}
        st.selectbox("Lab run", ids, key=f"lab_pick_{lab}",  # a teacher who shows all sees whose lab it is
                     format_func=lambda i: " · ".join([i, by_id[i]["status"], *filter(None, [by_id[i].get("owner")])]))
        pick = st.session_state[f"lab_pick_{lab}"]
    return pick


def results(lab: str) -> None:
    instances = labs.list_labs(RUNS_DIR, lab, owner=None if _classroom.shows_all() else _classroom.owner())
    if not instances:
        st.info("Not run yet. Press **Run this lab**: its runs queue up and train one after another in the "
                "background; you can leave this page and come back.")
        return
    pick = _pick_instance(lab, instances)
    if st.session_state.get(f"lab_stop_err_{lab}"):
        st.error(f"Cannot stop that lab: {_ui.plain(st.session_state.pop(f'lab_stop_err_{lab}'))}.")
    state = next(s for s in instances if s["id"] == pick)
    active = state["status"] in labs.ACTIVE

    @st.fragment(run_every=REFRESH_S if active else None)
    def live() -> None:
        state = labs.read_state(pick, RUNS_DIR)
        if active and state["status"] not in labs.ACTIVE:
            st.rerun(scope="app")  # finished: one full rerun stops the timer
        cfg = labs.LabConfig.from_dict(state["config"])
        p = labs.progress(state, store)
        if state["status"] in labs.ACTIVE:
            cols = st.columns([5, 1], vertical_alignment="center")
            text = (f"{p['done']} of {p['total']} runs done" + (f" · now: {p['current']}" if p["current"] else
                                                                  " · waiting for a free slot")
                    + f" · {_ui.fmt_seconds(p['elapsed'])}")
            cols[0].progress(min(1.0, p["fraction"]), text=text)
            cols[1].button("Stop lab", key=f"stop_lab_{lab}_{pick}", icon=":material/stop:", width="stretch",
                           on_click=_stop, args=(lab, pick),
                           help="Stops the current run and cancels the runs still waiting.")
        else:
            st.caption(f"Lab {pick}: {state['status']}" + (f" ({_ui.plain(state['reason'])})" if state.get("reason")
                                                           else "")
                       + f" · {p['total']} runs · took {_ui.fmt_seconds(p['elapsed'])}")
        res = labs.analyse(cfg, labs.records(state, store), state)
        st.plotly_chart(res.figure, key=f"labfig_{lab}_{pick}", width="stretch",
                        config={"toImageButtonOptions": {"format": "png", "filename": f"lab_{lab}_{pick}",
                                                         "scale": 2}})
        st.caption("To save the chart as PNG, use the camera button in the chart's toolbar (top right).")
        if state["status"] not in labs.ACTIVE:
            box = st.success if res.agrees else st.warning if res.agrees is False else st.info
            box("**What we measured**\n\n" + res.text)
        if not res.table.empty:
            st.dataframe(res.table, hide_index=True, width="stretch", key=f"labtable_{lab}_{pick}",
                         column_config={c: st.column_config.NumberColumn(format="percent")
                                        for c in res.percent_columns()})
            st.download_button("Download results (CSV)", labs.result_csv(res), file_name=f"lab_{lab}_{pick}.csv",
                               mime="text/csv", key=f"labcsv_{lab}_{pick}", icon=":material/download:")
        failed = [r for r in state["runs"] if p["statuses"].get(r["key"]) in ("failed", "diverged")]
        if failed:
            with st.expander(f"{len(failed)} run(s) failed"):
                for r in failed:
                    st.write(f"**{r['label']}** ({r['run_id']}): {_ui.plain(store.get(r['run_id']).reason)}")

    live()


def tab(lab: str) -> None:
    info = labs.LABS[lab]
    st.subheader(info.title)
    st.markdown(f"**Question.** {info.question}")
    st.markdown(f"**Theory predicts.** {info.prediction}")
    st.caption(labs.VERDICT_RULE)
    with st.container(border=True):
        cfg = settings(lab)
    if lab == "normalization":
        normalization_inputs(cfg)
    st.button("Run this lab", type="primary", key=f"launch_{lab}", on_click=_launch, args=(lab,),
              icon=":material/play_arrow:",
              help="Queues the lab's runs; one background process trains them one after another.")
    if st.session_state.get(f"lab_launch_err_{lab}"):
        why = _ui.plain(st.session_state[f"lab_launch_err_{lab}"]).replace("\\_", "_")  # setting names as typed
        st.error(f"Cannot start the lab: {why}. What to do: change that "
                 "setting and try again.")
    results(lab)


tabs = st.tabs([TITLES[k] for k in ORDER], default=TITLES[url_lab] if url_lab else None)
for t, lab in zip(tabs, ORDER):
    with t:
        tab(lab)

st.caption("Each tab's settings travel in the page address; 'Save configuration' writes the same as JSON. "
           "Ready-made configurations live in the repository's labs/ folder.")
