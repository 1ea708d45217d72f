"""Shifts (issue 22): input and label shifts of a data set, applied once and cached, the two TrainConfig fields
that use them (``shift``, ``ood_shift``) and the out-of-distribution metric a run logs each epoch."""
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tl_core import data
from tl_core.training import TrainConfig, fit

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits8")


@pytest.mark.parametrize("shift", data.INPUT_SHIFTS)
def test_an_input_shift_is_deterministic_cached_and_leaves_the_source_alone(digits, shift):
    before = digits.images.clone()
    a = data.shifted(digits, shift, seed=3)
    assert data.shifted(data.load_dataset("digits8"), shift, seed=3) is a  # applied once: the cached set
    assert torch.equal(digits.images, before)  # never to the source data
    assert a.images.dtype == torch.uint8 and a.images.shape == digits.images.shape
    assert torch.equal(a.labels, digits.labels) and a.class_names == digits.class_names
    assert not torch.equal(a.images, digits.images)
    data.shifted.__globals__["_CACHE"].clear()  # recomputed from scratch: the same tensors, bit for bit
    assert torch.equal(data.shifted(digits, shift, seed=3).images, a.images)
    assert data.shifted(digits, "", seed=3) is digits


def test_what_each_input_shift_does(digits):
    x = digits.images.float()
    assert torch.equal(data.shifted(digits, "invert").images, 255 - digits.images)
    blurred = data.shifted(digits, "blur").images.float()
    assert blurred.diff(dim=-1).abs().mean() < 0.7 * x.diff(dim=-1).abs().mean()  # edges softened
    noisy = [data.shifted(digits, "noise", seed=s).images for s in (0, 1)]
    assert not torch.equal(*noisy)  # the noise comes from the seed
    assert (noisy[0].float() - x).std() > 0.25 * 255 * 0.5  # strong noise (clipping at 0 and 255 lowers the std)


def test_labels_are_permuted_by_the_seed_and_every_class_moves(digits):
    perms = [data.label_permutation(10, s) for s in range(4)]
    for p in perms:
        assert sorted(p.tolist()) == list(range(10)) and (p != torch.arange(10)).all()
    assert len({tuple(p.tolist()) for p in perms}) > 1
    moved = data.shifted(digits, "labels", seed=2)
    assert moved.images is digits.images  # the same images
    assert torch.equal(moved.labels, perms[2][digits.labels])
    assert (moved.labels != digits.labels).all()


def test_config_fields_are_validated_and_travel_in_json():
    cfg = TrainConfig(shift="labels", ood_shift="noise")
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    cfg.validate()
    with pytest.raises(ValueError, match=r"^shift must be one of noise, blur, invert, labels, or '' for none; "
                                         r"not 'fog'$"):
        TrainConfig(shift="fog").validate()
    with pytest.raises(ValueError, match="ood_shift must be an input shift.*the label shift changes no image"):
        TrainConfig(ood_shift="labels").validate()
    with pytest.raises(ValueError, match="shifts are for images"):
        TrainConfig(backbone="glove_50d", data="fine_food", shift="noise").validate()


def test_the_estimate_counts_the_ood_pass():
    """A run with an ood_shift costs one more forward pass of its validation images per epoch, through the
    whole model (the prefix cache holds clean images only), whatever the strategy."""
    from tl_core.training import estimate

    base = dict(backbone="mobilenetv2", data="animal_shapes", per_class=20, image_size=64, epochs=3, device="cpu",
                num_threads=2)
    for strategy in ("full", "feature_extraction"):
        plain = estimate.estimate(TrainConfig(**base, strategy=strategy))
        cfg = TrainConfig(**base, strategy=strategy, ood_shift="noise")
        val, act = estimate.image_counts(cfg)[1], estimate.model_size(cfg)[1]
        per_epoch = val * act * estimate.CORE_S_PER_ELEMENT * estimate.FORWARD_SHARE / 2  # 2 threads
        assert estimate.estimate(cfg).seconds - plain.seconds == pytest.approx(3 * per_epoch, rel=1e-9)


class Epochs:
    def __init__(self):
        self.rows = []

    def on(self, event, trainer, **kw):
        if event == "after_epoch":
            self.rows.append(kw["metrics"])


def test_a_run_logs_the_ood_accuracy_each_epoch_on_the_shifted_validation_images():
    """With the same shift on its data and as its ood_shift, the extra pass sees the very images and labels of
    the ordinary validation: the same accuracy (up to rounding in the folded / cached forward)."""
    cb = Epochs()
    cfg = TrainConfig(backbone="test_resnet", weights="random", data="digits8", per_class=12, val_fraction=0.1,
                      image_size=32, epochs=2, batch_size=16, shift="invert", ood_shift="invert")
    summary = fit(cfg, [cb])
    assert len(cb.rows) == 2
    n_val = sum(map(sum, summary["confusion"]))
    for m in cb.rows:
        assert 0 <= m["val_acc_ood"] <= 1 and m["val_loss_ood"] > 0
        assert abs(m["val_acc_ood"] - m["val_acc"]) <= 1.5 / n_val
    assert summary["final_val_acc_ood"] == cb.rows[-1]["val_acc_ood"]
    plain = Epochs()
    fit(TrainConfig(**{**cfg.to_dict(), "shift": "", "ood_shift": ""}), [plain])
    assert "val_acc_ood" not in plain.rows[-1]


def test_the_data_page_previews_a_shift(app_env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/data.py").run()
    at.selectbox(key="shift_preview").select("labels").run()
    assert not at.exception, at.exception
    shown = [i.caption for img in at.get("image") for i in img.proto.imgs]
    assert any("trained as" in c for c in shown), shown


# ----------------------------------------------------------------------------- export: a shifted run's code

def _setup_ns() -> dict:
    ns: dict = {}
    exec("import math\nimport torch\nfrom torchvision.transforms import v2", ns)
    return ns


@pytest.mark.parametrize("shift", list(data.SHIFTS))
def test_show_the_code_reproduces_the_shift_bit_for_bit(digits, shift):
    from tl_core.export import codegen

    ood = "blur" if shift != "blur" else "noise"
    code = codegen.shift_code({"shift": shift, "ood_shift": ood, "seed": 9, "split_seed": 4}, digits.num_classes)
    ns = _setup_ns()
    exec(compile(code, "<shift>", "exec"), ns)
    images, labels = ns["shift_data"](digits.images, digits.labels)
    want = data.shifted(digits, shift, seed=4)  # the split seed, as in a run
    assert torch.equal(images, want.images) and torch.equal(labels, want.labels)
    assert torch.equal(ns["shift_images"](digits.images, ns["OOD_SHIFT"]), data.shifted(digits, ood, seed=4).images)
    assert codegen.shift_code({"seed": 1}, 10) is None  # an unshifted run: no section


def test_show_the_code_of_a_shifted_run_runs():
    from tl_core.export import codegen
    from tl_core.models import surgery
    import timm

    model = timm.create_model("test_resnet", num_classes=3)
    hier = surgery.hierarchy(model, 32)
    bb = {"timm_name": "test_resnet", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    plain = codegen.generate_code({"weights": "random", "image_size": 32}, hier, bb, 3)
    src = codegen.generate_code({"weights": "random", "image_size": 32, "shift": "labels", "seed": 2}, hier, bb, 3)
    assert "shift_data" not in plain and "LABEL_PERMUTATION = torch.tensor(" in src
    ns: dict = {}
    exec(compile(src, "<generated>", "exec"), ns)
    labels = torch.tensor([0, 1, 2])
    assert torch.equal(ns["shift_data"](torch.zeros(3, 1, 8, 8, dtype=torch.uint8), labels)[1],
                       data.label_permutation(3, 2)[labels])


def test_the_notebook_of_a_shifted_run_reproduces_its_accuracies():
    """A label-shifted run with an out-of-distribution pass on noise: the notebook's cells, run here, reach the
    lab's final accuracy and its out-of-distribution accuracy (within one validation image: see
    test_notebook's tolerance note)."""
    from tl_core.export import notebook

    threads = torch.get_num_threads()
    cfg = TrainConfig(backbone="mobilenetv2", data="animal_shapes", classes=["bird", "elephant", "giraffe"],
                      per_class=12, val_fraction=0.05, image_size=48, epochs=2, batch_size=12, seed=3, split_seed=1,
                      num_threads=1, strategy="feature_extraction", shift="labels", ood_shift="noise")
    try:
        cells = notebook.cells(cfg)
        assert any(md.startswith("**Distribution shift.**") for md, _ in cells)
        ns: dict = {}
        for _, code in cells[:-1]:  # all but the curves (fig.show)
            exec(compile(code, "<notebook>", "exec"), ns)
        summary = fit(cfg)
    finally:
        torch.set_num_threads(threads)
    clean = data.subset_classes(data.load_dataset("animal_shapes"), cfg.classes)
    assert torch.equal(ns["dataset"].labels, data.shifted(clean, "labels", seed=1).labels)  # the split seed's
    assert torch.equal(ns["ood_images"], data.shifted(clean, "noise", seed=1).images[ns["val_idx"]])
    n_val = len(ns["val_idx"])
    assert abs(ns["history"][-1]["val_acc"] - summary["final_val_acc"]) <= 1 / n_val + 1e-6
    assert abs(ns["ood_acc"] - summary["final_val_acc_ood"]) <= 1 / n_val + 1e-6
    assert ns["history"][-1]["val_loss"] == pytest.approx(summary["final_val_loss"], rel=1e-2)
