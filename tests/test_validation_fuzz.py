"""Issue 11, fuzz: random TrainConfig / LabConfig dictionaries and random lab query strings through
``from_dict`` / ``from_query`` + ``validate`` (which runs the estimate). Each is refused with a ValueError of
one line, or accepted with every field inside ``tl_core.limits``' bounds and a bounded memory and time
estimate; nothing else is raised. The inputs mix valid values with hostile ones, and each fuzzer counts its
acceptances: a validation that refused everything would fail here too. Seeded (``derandomize``): the same
examples every run."""
from __future__ import annotations

import math
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tl_core import labs, limits
from tl_core.labs.registry import LabConfig
from tl_core.models import backbones
from tl_core.models.strategies import STRATEGIES
from tl_core.training import estimate
from tl_core.training.config import TrainConfig

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
MIN_ACCEPTED = 0.2  # share of the generated inputs each fuzzer must see accepted

NUMBERS = st.one_of(st.integers(-10, 10), st.integers(-(10 ** 12), 10 ** 12), st.floats(allow_nan=True),
                    st.sampled_from([0, 1, 2, 16, 32, 64, 96, 100, 512, 1024, 1025, 4096, 5000, 5001, 0.5, 1e-3]))
TEXTS = st.one_of(st.text(max_size=12), st.sampled_from(
    ["mobilenetv2", "test_resnet", "resnet101", "vit_giant_patch14_224", "minilm_l6", "animal_shapes", "mnist",
     "fine_food", "/etc", "../x", "cuda:99", "cuda", "cpu", "auto", "feature_extraction", "full", "two_phase",
     "<unrestricted>", "random", "pretrained", "all", "auto", "\x1b[31mred\n"]))
VALUES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS, st.lists(st.one_of(NUMBERS, TEXTS, st.none()), max_size=4),
                   st.dictionaries(TEXTS, st.booleans(), max_size=2))

TRAIN_FIELDS = [f for f in TrainConfig().to_dict() if f not in ("plan", "snapshot_layers", "allow_download")]
LAB_FIELDS = [f for f in LabConfig().to_dict() if f not in ("lab", "preset")]

# values each field accepts (for an image backbone): hostile values are laid over a few of these
FRACTION = st.floats(0.05, 0.5)
TRAIN_VALID = {
    "name": st.text(max_size=20), "backbone": st.sampled_from(["mobilenetv2", "resnet18"]),
    "weights": st.sampled_from(["pretrained", "random"]),
    "data": st.sampled_from(["animal_shapes", "digits8", "faces"]),
    "per_class": st.one_of(st.none(), st.integers(1, 5000)), "val_fraction": FRACTION,
    "image_size": st.integers(16, 1024), "max_tokens": st.integers(8, 512), "augment": st.just({}),
    "normalization": st.sampled_from(["backbone", "imagenet"]), "strategy": st.sampled_from(sorted(STRATEGIES)),
    "epochs": st.integers(2, 100), "batch_size": st.integers(1, 512), "lr": st.one_of(st.none(), st.floats(1e-5, 1)),
    "optimizer": st.sampled_from(["adamw", "sgd"]), "momentum": st.floats(0, 0.99), "weight_decay": st.floats(0, 0.1),
    "backbone_lr_mult": st.floats(0.01, 1), "lr_decay": st.one_of(st.none(), st.floats(1, 3)),
    "bn_mode": st.sampled_from(["frozen", "train"]), "seed": st.integers(0, 999_999),
    "split_seed": st.one_of(st.none(), st.integers(0, 999_999)), "device": st.sampled_from(["auto", "cpu"]),
    "cache_features": st.booleans(), "num_threads": st.one_of(st.none(), st.integers(1, 8)),
    "schedule": st.sampled_from(["cosine", "constant"]), "channels_last": st.one_of(st.none(), st.booleans()),
}
LAB_VALID = {  # the fields every lab reads, near the presets (a lab's backbone and data stay its own)
    "per_class": st.integers(1, 100), "image_size": st.integers(16, 128), "max_tokens": st.integers(8, 128),
    "epochs": st.integers(2, 8), "batch_size": st.integers(1, 512), "lr": st.one_of(st.none(), st.floats(1e-5, 1)),
    "val_fraction": FRACTION, "seed": st.integers(0, 999_999), "seeds": st.integers(1, 3),
    "only_seed": st.one_of(st.none(), st.just(0)), "device": st.sampled_from(["auto", "cpu"]),
    "source_epochs": st.integers(1, 4), "target_acc": st.one_of(st.none(), st.floats(0.05, 1)),
}


def mixed(valid: dict, fields: list[str], hostile):
    """Valid values for some fields (``valid``: field → strategy), then up to two fields given a ``hostile`` value."""
    bad = st.tuples(st.sampled_from(fields), hostile)
    return st.tuples(st.fixed_dictionaries({}, optional=valid), st.lists(bad, max_size=2)).map(
        lambda gb: {**gb[0], **dict(gb[1])})


def fuzz(strategy, make, check):
    """Run ``make(example)`` over the seeded examples: a refusal is one line, an acceptance passes ``check``.
    Returns the share accepted."""
    seen = []

    @FUZZ
    @given(strategy)
    def one(example):
        try:
            cfg = make(example)
        except ValueError as exc:
            text = str(exc)
            assert text and "\n" not in text, repr(text)
            seen.append(False)
            return
        check(cfg)
        seen.append(True)

    one()
    return sum(seen) / len(seen)


def assert_in(name: str, value, lo, hi) -> None:
    assert isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi, (name, value, lo, hi)


def assert_backbone_allowed(name: str) -> None:
    assert name in backbones.catalogue() or name in limits.SMALL_TIMM, name


def assert_bounded(cfg: TrainConfig) -> None:
    lim = limits.current()
    assert_backbone_allowed(cfg.backbone)
    for name, lo, hi in (("image_size", lim.min_image_size, lim.max_image_size), ("epochs", 1, lim.max_epochs),
                         ("max_tokens", lim.min_tokens, lim.max_tokens), ("batch_size", 1, lim.max_batch_size),
                         ("head_epochs", 1, lim.max_epochs), ("seed", 0, lim.max_seed)):
        assert_in(name, getattr(cfg, name), lo, hi)
    if cfg.per_class is not None:
        assert_in("per_class", cfg.per_class, 1, lim.max_per_class)
    assert 0 < cfg.val_fraction < 1 and (cfg.lr is None or (math.isfinite(cfg.lr) and cfg.lr > 0))
    e = estimate.estimate(cfg)
    assert 0 < e.memory_bytes <= estimate.ram_bytes()
    assert math.isfinite(e.seconds) and 0 <= e.seconds <= lim.max_run_minutes * 60


def assert_lab_bounded(cfg: LabConfig) -> None:
    lim = limits.current()
    assert cfg.lab in labs.LABS
    assert_backbone_allowed(cfg.backbone)
    for name, lo, hi in (("image_size", lim.min_image_size, lim.max_image_size), ("epochs", 1, lim.max_epochs),
                         ("source_epochs", 1, lim.max_epochs), ("max_tokens", lim.min_tokens, lim.max_tokens),
                         ("batch_size", 1, lim.max_batch_size), ("seed", 0, lim.max_seed),
                         ("seeds", 1, lim.max_seeds)):
        assert_in(name, getattr(cfg, name), lo, hi)
    for name in ("per_class", "source_per_class"):
        if getattr(cfg, name) is not None:
            assert_in(name, getattr(cfg, name), 1, lim.max_per_class)
    for size in cfg.sizes:
        assert size is None or 1 <= size <= lim.max_per_class, cfg.sizes
    assert cfg.only_seed is None or 0 <= cfg.only_seed < cfg.seeds
    assert 0 < cfg.val_fraction < 1 and (cfg.lr is None or (math.isfinite(cfg.lr) and cfg.lr > 0))
    assert set(cfg.strategies) <= set(STRATEGIES)
    assert len(cfg.run_seeds()) <= lim.max_seeds


def test_random_train_configs_are_refused_in_one_line_or_bounded():
    inputs = mixed(TRAIN_VALID, TRAIN_FIELDS, VALUES)
    accepted = fuzz(inputs, lambda d: TrainConfig.from_dict(d).validate(), assert_bounded)
    assert accepted >= MIN_ACCEPTED, f"only {accepted:.0%} accepted"


def test_random_lab_configs_are_refused_in_one_line_or_bounded():
    inputs = st.tuples(st.sampled_from(sorted(labs.LABS)), mixed(LAB_VALID, LAB_FIELDS, VALUES))
    accepted = fuzz(inputs, lambda ld: LabConfig.from_dict({"lab": ld[0], **ld[1]}).validate(), assert_lab_bounded)
    assert accepted >= MIN_ACCEPTED, f"only {accepted:.0%} accepted"


def test_random_lab_query_strings_are_refused_in_one_line_or_bounded():
    hostile = st.one_of(TEXTS, NUMBERS.map(str), st.lists(NUMBERS.map(str), max_size=3).map(",".join))
    query = mixed({k: v.map(lambda x, k=k: labs.encode_value(k, x)) for k, v in LAB_VALID.items()}, LAB_FIELDS, hostile)
    inputs = st.tuples(st.sampled_from(sorted(labs.LABS)), query)
    accepted = fuzz(inputs, lambda lq: LabConfig.from_query(urlencode({"lab": lq[0], **lq[1]})).validate(),
                    assert_lab_bounded)
    assert accepted >= MIN_ACCEPTED, f"only {accepted:.0%} accepted"


@pytest.mark.parametrize("query", ["?lab=freeze_depth&image_size=1024&epochs=100&batch_size=512",
                                   "lab=race&backbone=resnet50&image_size=224&per_class=all&epochs=100"])
def test_heavy_lab_links_are_refused_with_the_number(query):
    with pytest.raises(ValueError, match=r"(GB of memory|minutes on).*(max_run_minutes|machine.s)"):
        LabConfig.from_query(query).validate()
