"""The backbones' facts, cached for the pages: catalogue rows, block hierarchies, whether downloads work."""
from __future__ import annotations

import streamlit as st

from tl_core.models import backbones
from tl_core.models import surgery


@st.cache_data(show_spinner=False)
def describe(key: str) -> dict:
    return backbones.describe(key)


@st.cache_data(show_spinner=False, ttl=30)
def catalogue_rows() -> list[dict]:
    return [describe(k) for k in backbones.catalogue()]


@st.cache_resource(show_spinner="Reading the backbone's layers…", max_entries=8)
def hierarchy_for(key: str, image_size: int, num_classes: int) -> surgery.Hierarchy:
    """Block hierarchy of a backbone (random weights are enough: the structure is the same)."""
    model, _ = backbones.create_model(key, num_classes=num_classes, weights="random")
    return surgery.hierarchy(model, image_size=image_size)


@st.cache_data(ttl=60, show_spinner=False)
def online() -> bool:
    """Whether pretrained weights could be downloaded now (asked at most once a minute)."""
    return backbones.is_online()
