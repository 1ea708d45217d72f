"""Issue 11 through the pages (AppTest): a shared lab link that asks for too much is refused with the number
before anything is queued, and a rejected upload leaves nothing behind while a good one shows the user's
own file name, never the generated path."""
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_app import _zip_bytes

from tl_core import data, labs
from tl_core.runs.store import RunStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _env(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATA_ROOT", str(tmp_path / "data"))


def _labs(**query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/labs.py")
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


@pytest.mark.parametrize("query,field", [
    (dict(lab="freeze_depth", image_size="1024"), "image_size"),  # once grew one run to 24 GB
    (dict(lab="race", epochs="1000"), "epochs"),
])
def test_a_shared_link_that_asks_too_much_never_queues_what_it_asks(query, field):
    """The page says so as it opens (not only when Run refuses it), and what Run would take fits the limits."""
    at = _labs(**query)
    assert not at.exception, at.exception
    said = " ".join(w.value for w in at.warning).replace("\\", "")
    assert f"`{field}`" in said and f"the link says '{query[field]}'" in said, said
    cfg = at.session_state[f"labcfg_{query['lab']}"]  # what Run takes: not the link's value, and it fits
    assert str(cfg[field]) != query[field]
    labs.LabConfig.from_dict(cfg).validate()
    assert RunStore().list_runs() == []


def test_a_rejected_upload_leaves_nothing_and_a_good_one_shows_the_users_name():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/data.py").run()
    at.selectbox(key="data_pick").select("__upload__").run()
    at.file_uploader(key="data_upload").upload("empty.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip").run()
    assert not at.exception and at.error
    uploads = data.uploads_dir()
    assert not uploads.exists() or os.listdir(uploads) == []  # nothing kept for later sessions
    at.file_uploader(key="data_upload").upload("my pets.zip", _zip_bytes(), "application/zip").run()
    assert not at.exception, at.exception
    chosen = at.session_state["inputs"]["data"]
    assert Path(chosen).parent == uploads and "pets" not in Path(chosen).name
    assert data.upload_name(chosen) == "my pets.zip"
    shown = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.label for e in at.expander]
    shown += [o for box in at.selectbox for o in box.options]  # what a selectbox shows, not its value
    assert any("my pets.zip" in t.replace("\\", "") for t in shown)
    assert not any(str(uploads) in t for t in shown)
