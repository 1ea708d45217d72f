"""Shared test set-up: no network, two threads, and every file a test writes lands in tmp_path."""
import os

os.environ["TL_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TL_PREWARM_TEXT", "0")  # the many short-lived test workers skip the 3 s text preload

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Runs, lab backbones and caches of a test never touch the checkout or the user's home."""
    base = tmp_path_factory.mktemp("tl")
    monkeypatch.setenv("TL_RUNS_DIR", str(base / "runs"))
    monkeypatch.setenv("TL_BACKBONES_DIR", str(base / "backbones"))
    monkeypatch.setenv("TORCH_HOME", str(base / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(base / "hf"))
    monkeypatch.setenv("TL_WORKER_IDLE_S", "20")  # warm workers a test starts do not outlive it for long
    yield


@pytest.fixture(scope="session", autouse=True)
def _shared_data_cache(tmp_path_factory):
    """Decoded built-in datasets are cached once per test session, outside the user's home."""
    os.environ["TL_CACHE_DIR"] = str(tmp_path_factory.mktemp("data-cache"))
    yield


@pytest.fixture
def app_env(monkeypatch):
    """AppTest set-up: run from the checkout, and no st.cache_* left over from another test."""
    import streamlit as st

    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()
