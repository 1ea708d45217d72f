"""The Backbone page's panels: the picked backbone's badges, a weights file of the user's own, and
"Show the code" (the current choices as a plain PyTorch script or notebook)."""
from __future__ import annotations

import streamlit as st

from tl_core.export import codegen
from tl_core.export.notebook import filename, notebook
from tl_core.models import backbones

from pages import _choices, _display, _store


def badges(info: dict, status) -> None:
    """Weights, modality, family and input size of the picked backbone."""
    text = info.get("modality") == "text"
    cols = st.columns([1, 1, 1, 1, 2])
    with cols[0]:
        _display.weights_badge(status.kind)
    with cols[1]:
        st.badge("text" if text else "image", icon=":material/article:" if text else ":material/image:",
                 color="blue" if text else "gray")
    with cols[2]:
        st.badge(info["family"], color="gray")
    with cols[3]:
        st.badge(f"≤ {info['input_size']} tokens" if text and info["input_size"] else "any length" if text
                 else f"{info['input_size']} px", color="gray")
    st.caption(info["description"] + (f" Tokenizer: {info['tokenizer']}. Weights: {info['package']} "
                                      f"({info['licence']})." if text else ""))


def _check_upload(inp: dict, key: str, up) -> None:
    """Store an uploaded weights file and use it when it loads into the architecture; else keep why not."""
    suffix = ".safetensors" if up.name.endswith(".safetensors") else ".pth"
    path = _store.upload_path("weights", suffix)
    path.write_bytes(up.getvalue())
    with st.spinner("Checking that the weights fit the architecture…"):
        try:
            backbones.read_state_dict(path)
            backbones.create_model(key, num_classes=_choices.num_classes(inp), weights="pretrained",
                                   weights_file=path)
        except Exception as exc:  # WeightsError, safetensors header errors, ...
            path.unlink(missing_ok=True)
            st.session_state["weights_upload_error"] = str(exc)
        else:
            st.session_state.pop("weights_upload_error", None)
            inp["weights_file"] = str(path)
            st.session_state["weights_uploaded"] = True
            st.rerun()


def weights_upload(inp: dict, key: str, info: dict) -> None:
    """Image backbones only: a weights file of the user's, checked against the architecture before use."""
    with st.expander("Use your own weights file (.safetensors or .pth state_dict)"):
        up = st.file_uploader("Weights for this architecture", type=["safetensors", "pth", "pt", "bin"],
                              key="weights_upload",
                              help="Loaded safely: safetensors, or torch.load(weights_only=True). Never a pickle.")
        if up is not None and st.session_state.get("weights_upload_done") != up.file_id:
            st.session_state["weights_upload_done"] = up.file_id
            _check_upload(inp, key, up)
        if st.session_state.get("weights_upload_error"):
            st.error(
                f"These weights cannot be used: {_display.plain(st.session_state['weights_upload_error'])}\n\n"
                f"What to do: upload the state_dict of a {info['timm_name']} model (timm key names), saved with "
                "`safetensors.torch.save_file(model.state_dict(), ...)` or `torch.save(model.state_dict(), ...)`."
            )
        if inp.get("weights_file"):
            st.success("Using your uploaded weights for this backbone.")
            if st.button("Stop using my file", key="weights_clear"):
                inp["weights_file"] = None
                st.rerun()


# ------------------------------------------------------------------ show the code


def _code_inputs(inp: dict, text: bool) -> dict:
    """The inputs dict for codegen: a user's text file or folder as the server path the code can read."""
    from tl_core import data
    from tl_core.data import texts as text_data

    if not text or inp["data"] in text_data.TEXT_BUILTIN:
        return inp
    try:
        return {**inp, "data": str(data.resolve_data_path(inp["data"]))}
    except data.DataError:
        return inp


def show_code(inp: dict, key: str, info: dict, hier, phases, lr: float) -> None:
    text = info.get("modality") == "text"
    lib = "transformers" if key == "minilm_l6" else "numpy" if text else "timm"
    with st.expander(f":material/code: Show the code: these choices in plain PyTorch + {lib}"):
        spec = backbones.get_spec(key)
        bb = {**info, "pretrained_tag": spec.pretrained_tag, "torchvision_weights": spec.torchvision_weights,
              "weights_file": spec.weights_file, "num_classes": spec.num_classes}
        code = codegen.generate_code(_code_inputs(inp, text), hier, bb, _choices.num_classes(inp), phases=phases,
                                     lr=lr)
        if text:
            st.download_button(":material/download: Download as a Python script", data=code, on_click="ignore",
                               file_name=f"{key}-{inp['strategy']}.py", mime="text/x-python", key="code_download")
        else:
            st.download_button(":material/download: Download as a Jupyter notebook", on_click="ignore",
                               data=lambda: notebook(inp, hier=hier), file_name=filename(inp),
                               mime="application/x-ipynb+json", key="notebook_download",
                               help="The whole run as a notebook: the same data, split, seed, freeze plan, "
                                    "parameter groups and schedule, in plain PyTorch + timm.")
        st.code(code, language="python")
