"""Issue 11, fuzz: random TrainConfig / LabConfig dictionaries and random lab query strings through
``from_dict`` / ``from_query`` + ``validate`` (which runs the estimate). Each is refused with a ValueError of
one line, or accepted with a bounded memory and time estimate; nothing else is raised. Seeded
(``derandomize``): the same examples every run."""
from __future__ import annotations

import math
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tl_core.training import estimate
from tl_core import labs
from tl_core import limits
from tl_core.training.config import TrainConfig
from tl_core.labs.registry import LabConfig

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

NUMBERS = st.one_of(st.integers(-10, 10), st.integers(-(10 ** 12), 10 ** 12), st.floats(allow_nan=True),
                    st.sampled_from([0, 1, 2, 16, 32, 64, 96, 100, 512, 1024, 1025, 4096, 5000, 5001, 0.5, 1e-3]))
TEXTS = st.one_of(st.text(max_size=12), st.sampled_from(
    ["mobilenetv2", "test_resnet", "resnet101", "vit_giant_patch14_224", "minilm_l6", "animal_shapes", "mnist",
     "fine_food", "/etc", "../x", "cuda:99", "cuda", "cpu", "auto", "feature_extraction", "full", "two_phase",
     "<unrestricted>", "random", "pretrained", "all", "auto", "\x1b[31mred\n"]))
VALUES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS, st.lists(st.one_of(NUMBERS, TEXTS, st.none()), max_size=4),
                   st.dictionaries(TEXTS, st.booleans(), max_size=2))


def field_dicts(fields: list[str]):
    return st.dictionaries(st.sampled_from(fields), VALUES, max_size=5)


def accepted_or_one_line(make):
    """make() → a validated config; a ValueError must be one line. Returns the config or None."""
    try:
        return make()
    except ValueError as exc:
        text = str(exc)
        assert text and "\n" not in text, repr(text)
        return None


def assert_bounded(cfg: TrainConfig) -> None:
    e = estimate.estimate(cfg)
    assert 0 < e.memory_bytes <= estimate.ram_bytes()
    assert math.isfinite(e.seconds) and 0 <= e.seconds <= limits.current().max_run_minutes * 60


TRAIN_FIELDS = [f for f in TrainConfig().to_dict() if f not in ("plan", "snapshot_layers", "allow_download")]
LAB_FIELDS = [f for f in LabConfig().to_dict() if f not in ("lab", "preset")]


@FUZZ
@given(field_dicts(TRAIN_FIELDS))
def test_random_train_configs_are_refused_in_one_line_or_bounded(d):
    cfg = accepted_or_one_line(lambda: TrainConfig.from_dict(d).validate())
    if cfg is not None:
        assert_bounded(cfg)


@FUZZ
@given(st.sampled_from(sorted(labs.LABS)), field_dicts(LAB_FIELDS))
def test_random_lab_configs_are_refused_in_one_line(lab, d):
    accepted_or_one_line(lambda: LabConfig.from_dict({"lab": lab, **d}).validate())


@FUZZ
@given(st.sampled_from(sorted(labs.LABS)), st.dictionaries(st.sampled_from(LAB_FIELDS), st.one_of(
    TEXTS, NUMBERS.map(str), st.lists(NUMBERS.map(str), max_size=3).map(",".join)), max_size=4))
def test_random_lab_query_strings_are_refused_in_one_line(lab, q):
    accepted_or_one_line(lambda: LabConfig.from_query(urlencode({"lab": lab, **q})).validate())


@pytest.mark.parametrize("query", ["?lab=freeze_depth&image_size=1024&epochs=100&batch_size=512",
                                   "lab=race&backbone=resnet50&image_size=224&per_class=all&epochs=100"])
def test_heavy_lab_links_are_refused_with_the_number(query):
    with pytest.raises(ValueError, match=r"(GB of memory|minutes on).*(max_run_minutes|machine.s)"):
        LabConfig.from_query(query).validate()
