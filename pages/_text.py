"""The Data page for a text backbone: a built-in set, a CSV upload or a folder of .txt files on the server;
its report, classes and samples; the backbone's own tokens of an example. Heavy work lives in tl_core."""
from __future__ import annotations

import streamlit as st

from pages import _backbones, _choices, _classroom, _display, _inputs
from tl_core import data
from tl_core.data import texts as text_data
from tl_core.models.backbones import text_tokenizer
from tl_core.viz import text as text_visuals
from tl_core.data import uploads

UPLOAD, FOLDER = "__text_upload__", "__text_folder__"
TOKEN_CHOICES = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
SPECIAL = {"[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"}
CHIP_CSS = """<style>
.tl-toks {display:flex; flex-wrap:wrap; gap:6px; margin:6px 0 12px 0;}
.tl-tok {display:inline-flex; flex-direction:column; align-items:center; padding:3px 9px; border-radius:7px;
         background:#E8F1FB; border:1px solid #B9D3F0; font-size:1.08rem; line-height:1.25;
         font-family:'DejaVu Sans Mono', monospace;}
.tl-tok small {font-size:0.74rem; color:#555;}
.tl-tok.alt {background:#EFE8F6; border-color:#D4C2E6;}
.tl-tok.special {background:#3F3F46; border-color:#3F3F46; color:#fff;} .tl-tok.special small {color:#ddd;}
.tl-tok.cut {background:#FDECEC; border:1px dashed #D62728; color:#B71C1C;}
.tl-tok.pad {background:#fff; border:1px dashed #999; color:#666;}
.tl-tok.unk {background:#fff; border:1px dashed #aaa; color:#888; text-decoration:line-through;}
</style>"""


# ------------------------------------------------------------------ loading


@st.cache_resource(ttl=60, max_entries=4, show_spinner="Reading the texts…")
def _load(source: str, root: str) -> text_data.TextSet:
    return text_data.load_text_dataset(source, root)


@st.cache_data(ttl=300, max_entries=8, show_spinner=False)
def _token_lengths(source: str, root: str, backbone: str, sample: int = 400) -> list[int]:
    """Tokens per text (before any cut) of up to ``sample`` texts spread over the set."""
    ds, tok = _load(source, root), text_tokenizer(backbone)
    step = max(1, len(ds) // sample)
    return [tok.count(ds.texts[i]) for i in range(0, len(ds), step)][:sample]


def _label(k: str) -> str:
    if k == UPLOAD:
        return "Upload a CSV file of my own texts…"
    if k == FOLDER:
        return "A folder of .txt files on the server…"
    if k in text_data.TEXT_BUILTIN:
        i = text_data.TEXT_BUILTIN[k]
        return f"{i.name} · {len(i.class_names)} classes · {i.size:,} texts"
    return f"My texts · {_choices.data_label({'data': k})}"


def _mine() -> dict[str, str]:
    """{path: the user's own name} of the text sets this session may use: its stored CSV uploads (its own
    in classroom mode) and the folders it picked."""
    owner = None if _classroom.shows_all() else _classroom.owner()
    stored = {str(u.path): u.name for u in uploads.list_uploads(owner=owner, kind="csv")}
    return {**stored, **st.session_state.setdefault("text_uploads", {})}


def _picker(inp: dict, left) -> str:
    mine = _mine()
    choices = [*text_data.TEXT_BUILTIN, *mine, UPLOAD, FOLDER]
    if inp["data"] not in choices:
        choices.insert(-2, inp["data"])
    if st.session_state.get("text_data_pick_pending") in choices:
        st.session_state["text_data_pick"] = st.session_state.pop("text_data_pick_pending")
    if st.session_state.get("text_data_pick") not in choices:
        st.session_state["text_data_pick"] = inp["data"]
    with left:
        pick = st.selectbox("Dataset", choices, format_func=_label, key="text_data_pick",
                            help="Built-in text sets ship with the lab and work offline. Your own texts: a CSV "
                                 "file (one row per text) or a folder with one sub-folder of .txt files per class.")
    if pick not in (UPLOAD, FOLDER):
        inp["data"] = pick
    return pick


def _chosen(inp: dict, path: str, name: str, num_classes: int) -> None:
    inp["data"] = path
    st.session_state["data_num_classes"] = num_classes
    st.session_state["text_data_pick_pending"] = path
    st.session_state.setdefault("text_uploads", {})[path] = name
    st.rerun()


def _csv_upload(inp: dict) -> None:
    caps = text_data.TextCaps()
    st.markdown("A CSV file with **one row per text**: a text column (named text, review, content, …) and a "
                f"label column (label, class, category, …). Up to {caps.max_rows:,} rows and "
                f"{caps.max_total_bytes / 1e6:.0f} MB, UTF-8; longer texts than {caps.max_chars:,} characters are cut.")
    up = st.file_uploader("CSV file", type=["csv"], key="text_upload")
    if up is None:
        st.info("Upload a CSV file to continue, or pick a built-in text set above.")
        return
    if st.session_state.get("text_upload_done") != up.file_id:
        st.session_state["text_upload_done"] = up.file_id
        st.session_state.pop("text_upload_error", None)
        # checked, then stored under a generated name with its owner, held to the upload quota (as image zips)
        stored, report = uploads.save_text_upload(up, up.name, owner=_classroom.owner(), caps=caps)
        if stored is None:
            st.session_state["text_upload_error"] = "; ".join(report.errors)
        else:
            _chosen(inp, str(stored.path), stored.name, stored.num_classes)
    if st.session_state.get("text_upload_error"):
        st.error(f"This file cannot be used: {_display.plain(st.session_state['text_upload_error'])}\n\n"
                 "What to do: fix the file and upload it again.")


def _folder(inp: dict) -> None:
    root = data.data_root()
    st.markdown(f"A folder inside the lab's data root (`{_display.plain(root)}`) with **one sub-folder of .txt files "
                "per class**, optionally inside `train/` and `val/`.")
    path = st.text_input("Folder, relative to the data root", key="text_folder", placeholder="e.g. my_reviews")
    if not path:
        st.info("Type the folder's name to continue, or pick a built-in text set above.")
        return
    try:
        ds = text_data.load_text_folder(path, root)
    except data.DataError as exc:
        st.error(f"This folder cannot be used: {_display.plain(exc)}\n\nWhat to do: check the name and the layout.")
        return
    _chosen(inp, path, path, ds.num_classes)


# ------------------------------------------------------------------ the chosen set


def _about(ds: text_data.TextSet, inp: dict) -> None:
    info = text_data.TEXT_BUILTIN.get(inp["data"])
    if info:
        st.markdown(f"**{info.name}** · {info.description}")
        st.caption(f"**Origin:** {info.origin}  \n**Licence:** {info.licence}")
        return
    r = ds.report
    st.markdown(f"**{_display.plain(_choices.data_label(inp))}**: {len(ds):,} texts in {ds.num_classes} classes"
                + (" (train/ and val/ folders)" if r and r.has_split else ""))
    if r and r.truncated:
        st.caption(f"{r.truncated:,} texts were longer than {text_data.TextCaps().max_chars:,} characters and were cut.")
    if r and r.skipped:
        with st.expander(f"Validation report: {len(r.skipped)} row(s) or file(s) skipped"):
            st.dataframe([{"where": w, "why skipped": why} for w, why in r.skipped], hide_index=True, width="stretch")
    else:
        st.success("Validation report: every text was usable.")


def _split(ds: text_data.TextSet, inp: dict, left):
    with left:
        c1, c2 = st.columns(2)
        options = [5, 10, 20, 50, 100, 200, 500, 1000]
        if inp.get("per_class") not in options:
            _inputs.set_input("per_class", 500)
        c1.select_slider("Training texts per class", options, help="Transfer learning shines with little data: "
                         "try 20 per class, then 500. Validation texts are set aside first.",
                         **_inputs.bind("per_class"))
        c2.slider("Validation share", 0.1, 0.5, step=0.05, disabled=ds.split_hint is not None,
                  help="Held-out texts, never trained on, that measure accuracy. A set with its own test part "
                       "(fine-food reviews) uses that instead.", **_inputs.bind("val_fraction"))
    try:
        return data.split(ds, float(inp["val_fraction"]), int(inp.get("seed", 0)), int(inp["per_class"]))
    except data.DataError as exc:
        st.error(_display.plain(exc))
        st.stop()


def _samples(ds: text_data.TextSet, train_idx, val_idx) -> None:
    g1, g2 = st.columns([3, 2], gap="large")
    with g1:
        st.subheader("Sample texts per class")
        rows = []
        for c, name in enumerate(ds.class_names):
            picks = [int(i) for i in (ds.labels == c).nonzero().flatten()[:3]]
            rows += [{"class": name, "text": ds.texts[i][:300] + ("…" if len(ds.texts[i]) > 300 else "")}
                     for i in picks]
        st.dataframe(rows, hide_index=True, width="stretch", height=min(480, 42 + 35 * len(rows)),
                     column_config={"text": st.column_config.TextColumn(width="large")})
    with g2:
        st.subheader("Class balance")
        st.plotly_chart(text_visuals.text_counts_figure(data.class_counts(ds, train_idx), data.class_counts(ds, val_idx)),
                        key="text_class_counts", width="stretch")
        st.caption(f"{len(train_idx):,} training and {len(val_idx):,} validation texts.")


# ------------------------------------------------------------------ what the network sees


def token_chips(shown: dict, max_tokens: int) -> str:
    """HTML chips of ``text_data.show_tokens``: each token with its id, [CLS]/[SEP] dark, word pieces of
    one word in one colour, the cut tokens and the padding as dashed chips, unknown words struck out."""
    chips, alt = [], False
    for tok, tid in zip(shown["tokens"], shown["ids"]):
        if tok in SPECIAL:
            kind = "special"
        else:
            alt = alt if tok.startswith("##") else not alt
            kind = "alt" if alt else ""
        chips.append(f"<span class='tl-tok {kind}'>{_display.html_text(tok)}<small>{tid}</small></span>")
    if shown["cut"]:
        cut = f"<span class='tl-tok cut'>✂ {shown['cut']} cut<small>over {max_tokens}</small></span>"
        at = len(chips) - 1 if shown["tokens"] and shown["tokens"][-1] in SPECIAL else len(chips)
        chips.insert(at, cut)
    if shown["padding"]:
        chips.append(f"<span class='tl-tok pad'>[PAD] × {shown['padding']}<small>id 0, masked</small></span>")
    chips += [f"<span class='tl-tok unk'>{_display.html_text(w)}<small>unknown</small></span>"
              for w in list(dict.fromkeys(shown["unknown"]))[:20]]
    return "<div class='tl-toks'>" + "".join(chips) + "</div>"


def _token_stats(inp: dict, bb: dict) -> None:
    lengths = _token_lengths(inp["data"], str(data.data_root()), inp["backbone"])
    if lengths:
        over = sum(n > int(inp["max_tokens"]) for n in lengths) / len(lengths)
        ordered = sorted(lengths)
        st.caption(f"Of {len(lengths)} texts of this set: median {ordered[len(ordered) // 2]} tokens, "
                   f"longest {ordered[-1]}; **{over:.0%} are cut** at {inp['max_tokens']} tokens.")


def network_view(ds: text_data.TextSet, inp: dict) -> None:
    st.subheader("What the network sees", help="A pretrained language model only knows the tokens of its own "
                 "tokenizer: the text must be split exactly as during pretraining, or the embeddings mean nothing.")
    bb = _backbones.describe(inp["backbone"])
    p1, p2 = st.columns([2, 5], gap="large")
    with p1:
        st.markdown(f"**{bb['label']}** reads tokens of its own tokenizer: {bb['tokenizer']}.")
        longest = bb.get("input_size") or TOKEN_CHOICES[-1]
        choices = [t for t in TOKEN_CHOICES if t <= longest]
        if inp.get("max_tokens") not in choices:
            _inputs.set_input("max_tokens", min(choices, key=lambda t: abs(t - int(inp.get("max_tokens") or 64))))
        st.select_slider("Tokens per text (max_tokens)", choices, help="Longer texts are cut, shorter ones padded. "
                         "Fewer tokens = much faster on a CPU; more = less of each text is lost.",
                         **_inputs.bind("max_tokens"))
        _token_stats(inp, bb)
        if not 0 <= st.session_state.get("text_view_index", 0) < len(ds):
            st.session_state["text_view_index"] = 0
        idx = int(st.number_input("Example", 0, len(ds) - 1, key="text_view_index", help="Which text to tokenise."))
    with p2:
        text = ds.texts[idx]
        shown = text_data.show_tokens(text, text_tokenizer(inp["backbone"]), int(inp["max_tokens"]))
        st.markdown(f"**Text** ({_display.plain(ds.class_names[int(ds.labels[idx])])}): "
                    f"{_display.plain(text[:500])}{'…' if len(text) > 500 else ''}")
        st.markdown(CHIP_CSS + token_chips(shown, int(inp["max_tokens"])), unsafe_allow_html=True)
        st.caption(f"{shown['total']} tokens in all; the network gets {len(shown['ids'])} real tokens"
                   + (f", {shown['cut']} cut at {inp['max_tokens']}" if shown["cut"] else "")
                   + (f", then {shown['padding']} padding positions (the attention mask hides them)"
                      if shown["padding"] else "")
                   + (f"; {len(shown['unknown'])} unknown words dropped" if shown["unknown"] else "")
                   + f". Tensor: token ids + attention mask, shape [2, {inp['max_tokens']}].")


def data_page(inp: dict) -> None:
    """The Data page for a text backbone."""
    left, right = st.columns([3, 2], gap="large")
    pick = _picker(inp, left)
    if pick in (UPLOAD, FOLDER):
        with left:
            _csv_upload(inp) if pick == UPLOAD else _folder(inp)
        st.stop()
    try:
        ds = _load(inp["data"], str(data.data_root()))
    except data.DataError as exc:
        st.error(f"{_display.plain(exc)}\n\nWhat to do: pick another text set or upload the file again.")
        st.stop()
    st.session_state["data_num_classes"] = ds.num_classes
    with right:
        _about(ds, inp)
    train_idx, val_idx = _split(ds, inp, left)
    _samples(ds, train_idx, val_idx)
    network_view(ds, inp)
