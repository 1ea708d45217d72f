"""Class board: everyone's runs in one table and one chart, pooled by strategy, frozen depth or seed.

In classroom mode only the teacher opens it (the password, or a teacher's sign-in); without either it is the
"All runs" page, reached from Home and Compare. It refreshes itself: every 2 s while runs are
queued or running, every 10 s otherwise (so a student's new run appears without a click)."""
import streamlit as st

from pages import _classroom, _display, _inputs, _store
from tl_core import classroom
from tl_core.runs.executor import reap
from tl_core.viz import figures as visuals

ACTIVE_EVERY, IDLE_EVERY = 2.0, 10.0
GROUP_LABELS = {"strategy": "strategy", "depth": "frozen depth", "seed": "seed"}
PERCENT = st.column_config.NumberColumn(format="percent")

_inputs.start_page()
store = _store.store()
CLASS = _classroom.on()
st.title("Class board" if CLASS else "All runs")
if CLASS and not _classroom.is_teacher():
    if _classroom.sign_in():
        st.info("The class board shows every student's runs: it is for the teachers (TL_TEACHERS). What to do: "
                "sign in with a teacher's account.")
    else:
        st.info("The class board shows every student's runs: it is for the teacher. Enter the password to open it.")
        _classroom.teacher_form("board")
    st.stop()
st.markdown("Split a sweep across the class: each student launches one strategy, one frozen depth or one seed, "
            "then read the **pooled** result here. A bar is the mean final validation accuracy of a group's "
            "finished runs, its whisker ± one standard deviation (the spread between runs); each dot is one run.")


def _stop_any(runs) -> None:
    """Stop any queued or running run (the teacher's right; everyone's without a password)."""
    active = {r.id: r for r in runs if r.active}
    if not active:
        return
    pick, go = st.columns([4, 1], vertical_alignment="bottom")
    run_id = pick.selectbox("Stop a run", list(active), key="board_stop_pick", format_func=lambda i: " · ".join(
        x for x in (getattr(active[i], "owner", None), active[i].name, active[i].status, i) if x))
    go.button("Stop", key="board_stop", icon=":material/stop:", on_click=_classroom.stop, args=(run_id,),
              width="stretch")
    _classroom.stop_error()


def board(group_by: str) -> None:
    reap(store)  # runs whose worker died end as failed
    runs = store.list_runs()
    active = any(r.active for r in runs)
    if (REFRESH == ACTIVE_EVERY) != active:
        st.rerun(scope="app")  # the refresh rate is fixed per definition: redefine it
    if not runs:
        st.info("No runs yet: ask students to launch one on the Train page (each can take one strategy, frozen "
                "depth or seed)." if CLASS else "No runs yet: launch one on the Train page.")
        return
    b = classroom.board_table(runs, group_by)
    st.caption(classroom.board_summary(b))
    students = sorted({s for s in b.runs["student"] if s})
    if students:
        st.caption("Students: " + _display.plain(", ".join(students)))
    if b.pooled.empty:
        st.info("No finished run yet: the pooled result appears when the first run ends.")
    else:
        st.plotly_chart(visuals.board_figure(b.runs, b.pooled, GROUP_LABELS[group_by]), key="board_chart",
                        width="stretch")
        st.dataframe(b.pooled, hide_index=True, width="stretch", key="board_pooled",
                     column_config={"mean": PERCENT, "std": PERCENT, "min": PERCENT, "max": PERCENT})
    shown = b.runs.drop(columns=["group"] + ([] if students else ["student"]))
    st.dataframe(shown, hide_index=True, width="stretch", key="board_runs",
                 column_config={"final acc": PERCENT, "best acc": PERCENT})
    _stop_any(runs)


group_by = st.segmented_control("Group by", list(classroom.GROUPS), default="strategy", key="board_group",
                                format_func=GROUP_LABELS.get, required=True,
                                help="Frozen depth: how many blocks were frozen at the start of the run.")
REFRESH = ACTIVE_EVERY if any(r.active for r in store.list_runs()) else IDLE_EVERY
st.fragment(run_every=REFRESH)(board)(group_by or "strategy")
