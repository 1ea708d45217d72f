"""Transfer Learning Lab: the app server (``st.App``), the router (st.navigation) and the home page.

``streamlit run app.py`` finds ``app = st.App(...)`` below, imports this file as a module and serves that App:
its lifespan warms the server at its start (``pages/_server.py``). For every page of every session Streamlit
runs this same file as ``__main__``: ``main()``, the router."""
import streamlit as st


# each page's step of the first experiment on the home page
STEPS = {
    "pages/backbone.py":
        "**Backbone**: keep *MobileNetV2* and click the **Feature extraction** preset: only the head trains.",
    "pages/data.py": "**Data**: pick *Animal shapes*; look at the samples and what the network really sees.",
    "pages/train.py": "**Train**: press **Launch** and watch the live curves, weight drift and feature maps.",
    "pages/compare.py":
        "Go back, click **From scratch**, launch again; then **Compare** the two runs: does transfer give a higher "
        "start, slope or asymptote?",
    "pages/inspect.py": "**Inspect** a finished run: confusion matrix, mistakes, feature maps before/after.",
    "pages/labs.py": "Ready for more? The **Labs** run small real experiments that test a claim of theory.",
}


def _input_label(row: dict) -> str:
    if row.get("modality") == "text":
        return f"≤ {row['input_size']} tokens" if row.get("input_size") else "any length"
    return f"{row['input_size']} px"


def home() -> None:
    import torch

    from pages import _backbones, _classroom, _display, _router
    from tl_core.viz import figures as visuals

    st.title("Transfer Learning Lab")
    _warming()
    st.markdown(
        "**Transfer learning** reuses a network trained on millions of photos (ImageNet) for a new task. "
        "Its early layers detect edges and textures, useful for almost any image; its late layers detect "
        "ImageNet-specific parts. So we keep (**freeze** ❄) what is general, adapt (**train** ⚡) what is "
        "specific, and swap the last layer for a new **head** with our own classes. With little data this "
        "beats training from scratch: a *higher start*, a *higher slope*, often a *higher asymptote*."
    )
    _display.legend()

    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("Your first experiment (about 2 minutes)")
        for i, (path, title, icon) in enumerate(_router.PAGES, 1):
            st.markdown(f"{i}. {STEPS[path]}")
            st.page_link(path, label=f"Open {title}", icon=icon)
    with right:
        st.subheader("This machine")
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            mem = torch.cuda.get_device_properties(0).total_memory / 2**30
            st.success(f"GPU: **{name}** ({mem:.0f} GiB) · {torch.get_num_threads()} CPU threads")
        else:
            st.info(f"CPU only · {torch.get_num_threads()} threads. The defaults finish a first run in under "
                    "a minute.")
        rows = _backbones.catalogue_rows()
        st.dataframe(
            [{"Backbone": r["label"], "Params": visuals.fmt_count(r["params"]),
              "Weights": ("✔ " if r["weights"] in ("bundled", "cached", "user") else "⬇ " if r["weights"] ==
                          "download" else "✖ ") + _display.WEIGHT_BADGE[r["weights"]][0],
              "Input": _input_label(r)} for r in rows],
            hide_index=True, width="stretch",
        )
        usable = [r["label"] for r in rows if r["weights"] in ("bundled", "cached", "user")]
        st.caption("Usable offline with pretrained weights: " + (", ".join(usable) or "none") +
                   ". The others train from random weights unless you upload a weights file.")
        runs = _classroom.visible_runs()
        if runs:
            active = sum(r.status in ("queued", "running") for r in runs)
            st.caption(f"{len(runs)} runs recorded, {active} queued or running.")
        if not _classroom.on() or _classroom.is_teacher():
            st.page_link("pages/board.py", label="All runs, pooled by strategy, frozen depth or seed",
                         icon=":material/groups:")


@st.fragment(run_every=1.0)
def _warming() -> None:
    """While the server still loads what a first run needs: a progress bar, redrawn every second (the page
    works meanwhile; a run launched now starts once the warm worker is ready)."""
    from pages import _server

    warming = _server.warming()
    if warming is None:
        if st.session_state.pop("warming_shown", False):
            st.rerun()  # warm now: the Home page drops the bar (and this fragment)
        return
    st.session_state["warming_shown"] = True
    done, now = warming
    st.progress(done, text=f"The server is warming up: loading {now}. The first run starts as soon as it is "
                           "ready; every page works meanwhile.")


def main() -> None:
    st.set_page_config(page_title="Transfer Learning Lab", page_icon=":material/ac_unit:", layout="wide")
    from pages import _classroom, _display, _inputs, _router, _store

    _display.setup_page()
    _inputs.inputs()  # the session's inputs dict exists from the first page on
    if _store.store().recovered:  # a damaged runs.sqlite was moved aside and rebuilt: say so, in one line
        st.warning(_display.plain(_store.store().recovered), icon=":material/build:")
    _router.route(home, gate=_classroom.gate)


if __name__ == "__main__":  # a session's script run: the router and its page
    main()
else:  # `streamlit run app.py` imports this module and serves this App (at its start: pages/_server.lifespan)
    from pages import _routes, _server

    app = st.App(__file__, lifespan=_server.lifespan, routes=_routes.ROUTES)  # routes: the teacher's cookie
