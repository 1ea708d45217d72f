"""The trainer on tiny real timm models and small slices of real data (no mocks).

Each run trains a few hundred 32 px images for 1-3 epochs; the whole file stays around a minute
on two CPU cores."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from tl_core import devices
from tl_core.models import surgery
from tl_core.training.trainer import CancelFit, Trainer, fit, prepare
from tl_core.training.config import TrainConfig
from tl_core.devices import device_plan
from tl_core.training.checkpoint import load_model, save_model


def tiny(**kw) -> TrainConfig:
    base = dict(backbone="test_resnet", weights="random", data="digits8", per_class=12, val_fraction=0.1,
                image_size=32, epochs=2, batch_size=16, seed=0)
    return TrainConfig(**{**base, **kw})


class Recorder:
    """Keeps every event, and what the model looked like when it happened."""

    def __init__(self):
        self.events = []
        self.requires_grad = {}  # epoch -> {block: trainable?}
        self.lrs = {}  # epoch -> {group name: lr} of the live optimiser
        self.start = None  # state_dict copy at before_fit

    def on(self, event, trainer, **data):
        self.events.append((event, data))
        if event == "before_fit":
            self.start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        if event == "before_epoch":
            params = dict(trainer.model.named_parameters())
            self.requires_grad[data["epoch"]] = {
                b.name: all(params[p].requires_grad for p in b.param_names) for b in trainer.hier.blocks}
            self.lrs[data["epoch"]] = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}

    def of(self, name):
        return [d for e, d in self.events if e == name]


def run(cfg, *callbacks):
    rec = Recorder()
    trainer = Trainer(cfg, [rec, *callbacks])
    summary = trainer.fit()
    return trainer, rec, summary


def block_tensors(state, hier, name, buffers=False):
    node = hier.block(name)
    keys = [k for k in state if any(k == m or k.startswith(m + ".") for m in node.members)]
    return {k: state[k] for k in keys if buffers or not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


# --------------------------------------------------------------------------- freezing and BatchNorm


@pytest.mark.parametrize("bn_mode", ["frozen", "train"])
def test_frozen_blocks_are_bit_identical_and_bn_follows_mode(bn_mode):
    cfg = tiny(strategy="partial", freeze_blocks=3, bn_mode=bn_mode, cache_features=False, epochs=1)
    trainer, rec, summary = run(cfg)
    assert summary["status"] == "completed"
    hier, end = trainer.hier, trainer.model.state_dict()
    frozen, trainable = hier.block_names[:3], hier.block_names[3:]
    metrics = rec.of("after_epoch")[-1]["metrics"]
    for name in frozen:
        for k, v in block_tensors(end, hier, name).items():
            assert torch.equal(v, rec.start[k]), f"{k} changed although {name} is frozen"
        assert metrics["drift"][name] == 0.0 and metrics["grad_norm"][name] == 0.0
        stats_same = all(torch.equal(end[k], rec.start[k]) for k in block_tensors(end, hier, name, buffers=True)
                         if k.endswith(("running_mean", "running_var")))
        if bn_mode == "frozen":
            assert stats_same and metrics["bn_stat_drift"][name] == 0.0
        else:  # statistics follow the data even though the weights are frozen
            assert not stats_same and metrics["bn_stat_drift"][name] > 0.0
    for name in trainable:
        assert metrics["drift"][name] > 0 and metrics["grad_norm"][name] > 0
    assert "not cached" in summary["cache"][0]


def test_bn_train_mode_in_frozen_prefix_disables_the_cache():
    _, _, summary = run(tiny(strategy="feature_extraction", bn_mode="train", epochs=1))
    assert summary["cache"][0].startswith("not cached: BatchNorm statistics")


# --------------------------------------------------------------------------- phases and learning rates


def test_two_phase_unfreezes_at_the_right_epoch():
    cfg = tiny(backbone="test_efficientnet", strategy="two_phase", epochs=3, head_epochs=1, freeze_blocks=4,
               lr=1e-3, backbone_lr_mult=0.1)
    trainer, rec, summary = run(cfg)
    names = trainer.hier.block_names
    phases = rec.of("before_phase")
    assert [(p["phase"], p["trainable"]) for p in phases] == [(1, ["classifier"]), (2, names[4:])]
    assert phases[0]["cached"] and phases[1]["cached"]  # both phases keep a frozen prefix
    assert phases[1]["lrs"] == pytest.approx({n: 1e-4 for n in names[4:-1]} | {"classifier": 1e-3})
    assert [n for n, t in rec.requires_grad[1].items() if t] == ["classifier"]
    for epoch in (2, 3):
        assert [n for n, t in rec.requires_grad[epoch].items() if t] == names[4:]
    assert set(rec.lrs[2]) == set(names[4:])  # one param group per trainable block
    assert [p["trainable"] for p in summary["phases"]] == [["classifier"], names[4:]]


def test_gradual_unfreezing_with_discriminative_lrs():
    cfg = tiny(backbone="test_efficientnet", strategy="gradual", epochs=3, lr=1e-3, lr_decay=2.6, schedule="constant")
    trainer, rec, _ = run(cfg)
    groups = trainer.hier.groups()
    opened = [[n for n, t in rec.requires_grad[e].items() if t] for e in (1, 2, 3)]
    assert opened == [[n for g in groups[len(groups) - e:] for n in g] for e in (1, 2, 3)]
    assert [p["name"] for p in rec.of("before_phase")][1:] == ["unfreeze neck", "unfreeze blocks.4"]
    # live optimiser: head at lr, each group below divided by 2.6
    assert rec.lrs[3] == pytest.approx({"classifier": 1e-3, "neck": 1e-3 / 2.6, "blocks.4": 1e-3 / 2.6 ** 2})


# --------------------------------------------------------------------------- caching


@pytest.mark.parametrize("backbone,strategy", [("test_resnet", "partial"), ("test_vit", "feature_extraction")])
def test_cached_and_uncached_paths_agree(backbone, strategy):
    results = {}
    for cache in (True, False):
        trainer, rec, summary = run(tiny(backbone=backbone, strategy=strategy, cache_features=cache, epochs=2))
        results[cache] = (summary, rec.of("after_epoch")[-1]["metrics"], trainer.model.state_dict())
    (s1, m1, w1), (s0, m0, w0) = results[True], results[False]
    assert s1["cache"][0].startswith("cached") and s0["cache"][0].startswith("not cached")
    assert m1["val_loss"] == pytest.approx(m0["val_loss"], abs=1e-4)
    assert m1["train_loss"] == pytest.approx(m0["train_loss"], abs=1e-4)
    assert m1["val_acc"] == m0["val_acc"]
    for k in w1:
        torch.testing.assert_close(w1[k], w0[k], atol=1e-4, rtol=1e-4)


def test_frozen_prefix_runs_once_per_image_and_training_starts_at_once():
    """The cache fills during epoch 1 (each image through the frozen prefix exactly once, the first
    loss after one batch); later epochs never run the prefix."""

    class StemCounter:
        def __init__(self):
            self.images, self.counting, self.first_batch_seen = {}, None, None

        def on(self, event, trainer, **data):
            if event == "before_fit":
                first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
                first_conv.register_forward_hook(lambda m, i, o: self._count(len(o)))
            elif event == "before_epoch":
                self.counting = data["epoch"]
                self.images[self.counting] = 0
            elif event == "after_batch" and self.first_batch_seen is None:
                self.first_batch_seen = self.images[data["epoch"]]
            elif event == "after_epoch":
                self.counting = None

        def _count(self, n):
            if self.counting is not None:
                self.images[self.counting] += n

    counter = StemCounter()
    trainer, rec, summary = run(tiny(strategy="feature_extraction", epochs=3), counter)
    info = rec.of("before_fit")[0]["info"]
    assert summary["cache"][0].startswith("cached")
    assert counter.images == {1: info["num_train"] + info["num_val"], 2: 0, 3: 0}
    assert counter.first_batch_seen == trainer.cfg.batch_size  # one batch, not the whole data set


# --------------------------------------------------------------------------- ending a run


def test_nan_loss_ends_as_diverged():
    _, rec, summary = run(tiny(strategy="full", optimizer="sgd", lr=1e6, epochs=2, cache_features=False))
    assert summary["status"] == "diverged"
    assert "lower the learning rate" in summary["reason"] and "epoch 1" in summary["reason"]
    assert rec.of("after_fit")[0]["summary"]["status"] == "diverged"


class StopAt:
    def __init__(self, step, how="flag"):
        self.step, self.how = step, how

    def on(self, event, trainer, **data):
        if event == "after_batch" and data["step"] == self.step:
            if self.how == "flag":
                trainer.should_stop = "stop button"
            else:
                raise CancelFit("cancelled by callback")


@pytest.mark.parametrize("how", ["flag", "raise"])
def test_stop_ends_within_one_batch_and_after_fit_runs(how):
    _, rec, summary = run(tiny(strategy="full", epochs=3, cache_features=False), StopAt(2, how))
    assert [d["step"] for d in rec.of("after_batch")] == [1, 2]
    assert rec.of("after_epoch") == []
    assert summary["status"] == "stopped"
    assert summary["reason"] == ("stop button" if how == "flag" else "cancelled by callback")
    assert [e for e, _ in rec.events][-1] == "after_fit"


# --------------------------------------------------------------------------- what a run records


def test_run_records_metrics_snapshots_and_summary():
    _, rec, summary = run(tiny(backbone="test_vit", strategy="partial", epochs=2))
    info = rec.of("before_fit")[0]["info"]
    assert info["device"] == "cpu" and info["num_train"] == 120 and info["total_epochs"] == 2
    assert rec.of("after_batch")[0].keys() >= {"step", "epoch", "batch", "loss", "lr", "images"}
    m = rec.of("after_epoch")[-1]["metrics"]
    assert m.keys() >= {"epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time",
                        "images_per_s", "lr", "drift", "grad_norm", "bn_stat_drift", "peak_mem_mb"}
    snaps = rec.of("snapshot")
    assert [s["epoch"] for s in snaps] == [0, 1, 2]
    for s in snaps:
        assert len(s["maps"]) == 3
        for layer, a in s["maps"].items():  # ViT tokens come back as a 2-D grid
            assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[0] <= 8 and max(a.shape[1:]) <= 32
    C = len(summary["class_names"])
    conf = np.array(summary["confusion"])
    assert conf.shape == (C, C) and conf.sum() == info["num_val"]
    assert summary["final_val_acc"] == pytest.approx(np.trace(conf) / conf.sum())
    assert len(summary["per_class_acc"]) == C


def test_same_seed_same_split_and_run():
    a, b = prepare(tiny()), prepare(tiny())
    assert torch.equal(a["train_idx"], b["train_idx"]) and torch.equal(a["val_idx"], b["val_idx"])
    s1 = fit(tiny(strategy="feature_extraction", epochs=1))
    s2 = fit(tiny(strategy="feature_extraction", epochs=1))
    assert s1["final_val_loss"] == s2["final_val_loss"]


def test_classes_restrict_the_task():
    d = prepare(tiny(classes=["7", "1"]))
    assert d["ds"].class_names == ["7", "1"]
    assert sorted(set(d["ds"].labels[d["train_idx"]].tolist())) == [0, 1]
    assert len(d["train_idx"]) == 2 * 12


def test_save_and_load_give_identical_predictions(tmp_path):
    trainer, _, _ = run(tiny(backbone="test_efficientnet", strategy="partial", epochs=1))
    save_model(trainer.model, trainer.cfg, trainer.class_names, tmp_path)
    model, cfg, names = load_model(tmp_path)
    assert cfg == trainer.cfg and names == trainer.class_names
    x = torch.randn(4, 3, 32, 32)
    trainer.model.eval()
    with torch.no_grad():
        a, b = model(x), trainer.model(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # the live model is channels_last: same maths, other order
    assert torch.equal(a.argmax(1), b.argmax(1))



def test_validation_folds_batchnorm_and_reports_what_the_model_does(monkeypatch):
    trainer, _, _ = run(tiny(backbone="test_efficientnet", strategy="full", epochs=1))
    loaders = trainer._start_phase(0, trainer.phases[0])  # every block trains: validation runs the whole model
    real, used = surgery.fold_batchnorm, []
    monkeypatch.setattr(surgery, "fold_batchnorm", lambda module, x: used.append(real(module, x)) or used[-1])
    folded = trainer.validate(loaders)
    folded_confusion = trainer.confusion.clone()
    assert used[0] is not trainer.model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in used[0].modules())
    monkeypatch.setattr(surgery, "fold_batchnorm", lambda module, x: module)
    plain = trainer.validate(loaders)
    assert folded["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-5)
    assert folded["val_acc"] == plain["val_acc"] and torch.equal(folded_confusion, trainer.confusion)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.model.modules())  # the model keeps its own



@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_optimizer_steps_foreach_with_the_weights_of_one_tensor_at_a_time(optimizer, monkeypatch):
    cfg = tiny(strategy="full", optimizer=optimizer, epochs=1, cache_features=False)
    foreach, _, _ = run(cfg)
    assert foreach.optimizer.defaults["foreach"] is True
    real = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    monkeypatch.setattr(torch.optim, real.__name__, lambda *a, **kw: real(*a, **{**kw, "foreach": False}))
    single, _, _ = run(cfg)
    assert single.optimizer.defaults["foreach"] is False
    got, want = foreach.model.state_dict(), single.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


# --------------------------------------------------------------------------- devices


def test_device_plan_decisions():
    bf16 = device_plan("cuda", bf16_supported=True)
    assert bf16.amp_dtype == torch.bfloat16 and not bf16.grad_scaler and bf16.channels_last and bf16.pin_memory
    fp16 = device_plan("cuda:1", bf16_supported=False)
    assert fp16.amp_dtype == torch.float16 and fp16.grad_scaler
    assert not device_plan("cuda", conv=False, bf16_supported=True).channels_last  # a ViT
    cpu = device_plan("cpu")
    assert cpu.amp_dtype is None and not cpu.grad_scaler and not cpu.pin_memory and cpu.channels_last
    assert not device_plan("cpu", channels_last=False).channels_last
    mps = device_plan("mps")
    assert mps.amp_dtype is None and not mps.channels_last


def test_cpu_run_with_channels_last():
    trainer, rec, summary = run(tiny(strategy="full", epochs=1, channels_last=True))
    assert rec.of("before_fit")[0]["info"]["channels_last"] is True
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert summary["status"] == "completed" and summary["device"] == "cpu"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # fp16 skips its 1st step
def test_the_gpu_mixed_precision_path_trains_on_the_cpu(dtype, monkeypatch):
    """The plan a CUDA GPU gets (bf16 autocast; or fp16 autocast with a GradScaler), moved to the CPU: the
    forward passes run in ``dtype``, the scaled backward, the unscaling before the gradient norms, the
    scaler's step and update all run for real. The same run in fp32 is the reference: the weights change, the
    loss stays finite and the gradient norms are those of the fp32 run up to rounding (not 65,536x them)."""
    cfg = tiny(strategy="full", epochs=1, per_class=6, val_fraction=0.015)  # fp16 on a CPU is slow: 3 steps
    _, fp32, _ = run(cfg)
    gpu_plan = devices.device_plan

    def gpu_plan_on_the_cpu(device, conv=True, channels_last=None, bf16_supported=None):
        plan = gpu_plan("cuda", conv, channels_last, bf16_supported=dtype == torch.bfloat16)
        return dataclasses.replace(plan, device=device, pin_memory=False)  # pinned memory is for a GPU

    monkeypatch.setattr(devices, "device_plan", gpu_plan_on_the_cpu)
    seen = []

    class ConvDtypes:
        def on(self, event, trainer, **data):
            if event == "before_fit":
                conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
                conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype) if m.training else None)

    trainer, rec, summary = run(cfg, ConvDtypes())
    info = rec.of("before_fit")[0]["info"]
    assert summary["status"] == "completed" and info["device"] == "cpu"
    assert info["amp"] == str(dtype).removeprefix("torch.") and info["grad_scaler"] == (dtype == torch.float16)
    assert seen and set(seen) == {dtype}  # every training forward ran under autocast in dtype
    if dtype == torch.float16:  # a real CPU GradScaler: its first scale (2**16) overflowed, so it skipped a step
        assert trainer.scaler.is_enabled() and 1 < trainer.scaler.get_scale() < 2**16
    m, ref = rec.of("after_epoch")[0]["metrics"], fp32.of("after_epoch")[0]["metrics"]
    assert math.isfinite(m["train_loss"]) and abs(m["train_loss"] - ref["train_loss"]) < 0.1
    end = trainer.model.state_dict()
    assert all(not torch.equal(end[k], v) for k, v in rec.start.items() if k.endswith("weight"))
    for block, norm in ref["grad_norm"].items():  # unscaled before they were measured
        assert 0.5 < m["grad_norm"][block] / norm < 2, (block, m["grad_norm"][block], norm)


# --------------------------------------------------------------------------- transfer actually helps


def test_pretrained_feature_extraction_beats_scratch():
    """Bundled ImageNet MobileNetV2, frozen, on 20 animal silhouettes per class, against the same run
    from random weights. Measured (seeds 0, 1): 0.67-0.71 val acc pretrained, 0.10-0.12 random."""
    common = dict(backbone="mobilenetv2", data="animal_shapes", per_class=20, val_fraction=0.03, image_size=64,
                  epochs=3, batch_size=32, seed=0, strategy="feature_extraction")
    pre = fit(TrainConfig(**common))
    scratch = fit(TrainConfig(**common, weights="random"))
    assert pre["weights"] == "bundled" and scratch["weights"] == "random"
    assert pre["final_val_acc"] >= scratch["final_val_acc"] + 0.3, (pre["final_val_acc"], scratch["final_val_acc"])


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("kw,words", [
    (dict(backbone="resnet9000"), "unknown backbone"),
    (dict(strategy="yolo"), "unknown strategy"),
    (dict(epochs=0), "epochs"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(lr=-1e-3), "lr must be > 0"),
    (dict(freeze_blocks=99), "beyond"),
    (dict(strategy="two_phase", epochs=2, head_epochs=2), "epochs > head_epochs"),
    (dict(bn_mode="sometimes"), "bn_mode"),
    (dict(optimizer="lion"), "optimizer"),
    (dict(augment={"mixup": True}), "augmentation"),
    (dict(device="tpu"), "device"),
    (dict(plan={"stem": {"frozen": True}}), "plan"),
    (dict(snapshot_layers=["nowhere"]), "snapshot layer"),
    (dict(classes=["cat"]), "at least two distinct"),
])
def test_validate_rejects_bad_config(kw, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**{**dict(backbone="mobilenetv2"), **kw}).validate()


def test_config_json_round_trip_and_scratch_forces_random():
    cfg = TrainConfig(strategy="scratch", lr_decay=2.6, augment={"flip": True})
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert cfg.effective_weights == "random"
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({"epochz": 3})
    assert tiny().validate() is not None  # a timm architecture works with random weights (tests only)
    with pytest.raises(ValueError, match="only weights='random'"):
        tiny(weights="pretrained").validate()
    assert surgery.BN_MODES == ("frozen", "train")


def test_the_download_snippet_rebuilds_a_vit_a_linear_probe_and_a_cnn_in_a_fresh_python(tmp_path):
    """The Inspect page's "Download the model" code (``checkpoint.load_code``), run as a user would: the two
    downloaded files beside it, a fresh Python. A ViT trained at 32 px needs its dynamic image size; a linear
    probe cut after two block groups is no timm model (``load_model`` builds it)."""
    import json
    import shutil
    import subprocess
    import sys

    from tl_core.models import arch
    from tl_core.training.checkpoint import load_code

    cases = {"vit": ("vit_tiny", None), "probe": ("test_resnet", 2), "cnn": ("mobilenetv2", None)}
    script, expected = ["import torch"], {}
    for name, (backbone, depth) in cases.items():
        cfg = TrainConfig(backbone=backbone, weights="random", data="digits8", image_size=32, probe_depth=depth)
        torch.manual_seed(0)
        model, _ = arch.build_arch(backbone, 3, "random", probe_depth=depth, image_size=32)
        folder = save_model(model, cfg, ["a", "b", "c"], tmp_path / "runs" / name)
        for ext in ("json", "safetensors"):  # as the two download buttons name them
            shutil.copy(folder / f"model.{ext}", tmp_path / f"{name}.{ext}")
        shutil.copytree(folder, tmp_path / name)  # the folder load_model's snippet asks for
        code = load_code(name, json.loads((folder / "model.json").read_text()))
        assert ("load_model" in code) == (depth is not None) and ("dynamic_img_size=True" in code) == (name == "vit")
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected[name] = model.eval()(x)
        script += [code, "x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))",
                   f"torch.save(model(x).detach(), '{name}.out.pt')"]
    done = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, out in expected.items():
        torch.testing.assert_close(torch.load(tmp_path / f"{name}.out.pt", weights_only=True), out)
