"""Labs page: one tab per lab. Each lab asks one question, states what theory predicts, runs real
training runs in the background (one lab process, runs recorded like any other) and says what we
measured, in numbers, next to the prediction.

The lab's configuration lives in the page address (``?lab=race&per_class=25...``): a teacher
prepares it, copies the link, and students open exactly the same setup.

In classroom mode a lab belongs to the student who launched it (its runs carry the name): the page
lists the student's own labs, and only they or the teacher may stop one.
"""
import streamlit as st

from pages import _classroom, _display, _inputs, _lab_settings, _store
from tl_core import classroom
from tl_core import labs
from tl_core.runs.executor import reap

_inputs.start_page()
store = _store.store()
RUNS_DIR = store.runs_dir
REFRESH_S = 1.5

st.title("Labs")
st.markdown(
    "Small, real experiments that put a claim of transfer-learning theory to the test. Each lab runs "
    "several trainings on **the same data and split**, repeated over a few **seeds** (different initialisation "
    "and batch order; a lab whose seeds each split the data their own way says so), then compares what we "
    "**measured** with what theory **predicts**, and says so plainly when they disagree. Every run also appears on the Compare page."
)

ORDER = list(labs.LABS)
TITLES = {k: labs.LABS[k].title for k in ORDER}
url_lab = _lab_settings.load_link()


# ------------------------------------------------------------------ one tab


def _launch(lab: str) -> None:
    try:
        cfg = _lab_settings.config(lab).validate()
        lab_id = labs.launch_lab(cfg, RUNS_DIR, owner=_classroom.owner())
    except Exception as exc:  # a bad setting or a missing engine feature: say which
        st.session_state[f"lab_launch_err_{lab}"] = f"{type(exc).__name__}: {exc}" if not isinstance(
            exc, ValueError) else str(exc)
        return
    st.session_state.pop(f"lab_launch_err_{lab}", None)
    st.session_state[f"lab_pick_{lab}"] = lab_id
    _lab_settings.set_config(cfg)


def _stop(lab: str, lab_id: str) -> None:
    """The Stop button's callback: another student's lab is refused (one line, kept for the page)."""
    try:
        labs.stop_lab(lab_id, RUNS_DIR, **classroom.stop_rights(_classroom.owner(), _classroom.is_teacher()))
        st.session_state.pop(f"lab_stop_err_{lab}", None)
    except (PermissionError, KeyError) as exc:
        st.session_state[f"lab_stop_err_{lab}"] = str(exc).strip("'\"")


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


def _measured(lab: str, pick: str, state: dict, p: dict, cfg: labs.LabConfig) -> None:
    """The lab's chart, its verdict once finished, the results table and the runs that failed."""
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
                st.write(f"**{r['label']}** ({r['run_id']}): {_display.plain(store.get(r['run_id']).reason)}")


def results(lab: str) -> None:
    instances = labs.list_labs(RUNS_DIR, lab, owner=None if _classroom.shows_all() else _classroom.owner())
    if not instances:
        st.info("Not run yet. Press **Run this lab**: its runs queue up and train one after another in the "
                "background; you can leave this page and come back.")
        return
    pick = _pick_instance(lab, instances)
    if st.session_state.get(f"lab_stop_err_{lab}"):
        st.error(f"Cannot stop that lab: {_display.plain(st.session_state.pop(f'lab_stop_err_{lab}'))}.")
    state = next(s for s in instances if s["id"] == pick)
    active = state["status"] in labs.ACTIVE

    @st.fragment(run_every=REFRESH_S if active else None)
    def live() -> None:
        reap(store)  # runs whose worker died end as failed
        state = labs.read_state(pick, RUNS_DIR)
        if active and state["status"] not in labs.ACTIVE:
            st.rerun(scope="app")  # finished: one full rerun stops the timer
        cfg = labs.LabConfig.from_dict(state["config"])
        p = labs.progress(state, store)
        if state["status"] in labs.ACTIVE:
            cols = st.columns([5, 1], vertical_alignment="center")
            text = (f"{p['done']} of {p['total']} runs done" + (f" · now: {p['current']}" if p["current"] else
                                                                  " · waiting for a free slot")
                    + f" · {_display.fmt_seconds(p['elapsed'])}")
            cols[0].progress(min(1.0, p["fraction"]), text=text)
            cols[1].button("Stop lab", key=f"stop_lab_{lab}_{pick}", icon=":material/stop:", width="stretch",
                           on_click=_stop, args=(lab, pick),
                           help="Stops the current run and cancels the runs still waiting.")
        else:
            st.caption(f"Lab {pick}: {state['status']}" + (f" ({_display.plain(state['reason'])})" if state.get("reason")
                                                           else "")
                       + f" · {p['total']} runs · took {_display.fmt_seconds(p['elapsed'])}")
        _measured(lab, pick, state, p, cfg)

    live()


def tab(lab: str) -> None:
    info = labs.LABS[lab]
    st.subheader(info.title)
    st.markdown(f"**Question.** {info.question}")
    st.markdown(f"**Theory predicts.** {info.prediction}")
    st.caption(labs.VERDICT_RULE if info.paired else labs.UNPAIRED_VERDICT_RULE)
    with st.container(border=True):
        cfg = _lab_settings.settings(lab)
    if lab == "normalization":
        normalization_inputs(cfg)
    st.button("Run this lab", type="primary", key=f"launch_{lab}", on_click=_launch, args=(lab,),
              icon=":material/play_arrow:",
              help="Queues the lab's runs; one background process trains them one after another.")
    if st.session_state.get(f"lab_launch_err_{lab}"):
        why = _display.plain(st.session_state[f"lab_launch_err_{lab}"]).replace("\\_", "_")  # setting names as typed
        st.error(f"Cannot start the lab: {why}. What to do: change that "
                 "setting and try again.")
    results(lab)


def _tab_changed() -> None:
    """A click on a tab: the page address follows it (lab and settings), so the address shares the lab on screen."""
    lab = next(k for k in ORDER if TITLES[k] == st.session_state["labs_tab"])
    _lab_settings.set_config(_lab_settings.config(lab))


tabs = st.tabs([TITLES[k] for k in ORDER], default=TITLES[url_lab] if url_lab else None, key="labs_tab",
               on_change=_tab_changed)
for t, lab in zip(tabs, ORDER):
    with t:
        tab(lab)

st.caption("Each tab's settings travel in the page address; 'Save configuration' writes the same as JSON. "
           "Ready-made configurations live in the repository's labs/ folder.")
