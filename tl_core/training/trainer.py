"""Training: a small event-driven trainer over plain PyTorch (minGPT / Lightning Fabric style).

``fit(cfg, callbacks)`` sets up data, model and phases, then runs ``train_one_epoch`` / ``validate``
(each returning a dict) for every epoch of every phase. Callbacks see a fixed vocabulary of events
(fastai style):

    before_fit(info) → [before_phase(phase, name, trainable, lrs, cache)
                        → [before_epoch(epoch, phase) → after_batch(...)* → after_epoch(metrics)
                           → snapshot(epoch, maps)]*]* → after_fit(summary, predictions)

``predictions`` are the last validation's, per image (``val_idx``, true ``label``, ``pred``, ``conf``: the
predicted class's probability): exactly the images the summary's confusion matrix counts, or None.

``after_fit`` always runs. A callback stops a run by setting ``trainer.should_stop = "why"``
(checked after every batch) or by raising ``CancelFit``. A NaN/inf loss raises ``Diverged``.

The pieces live next door: ``config`` (TrainConfig), ``devices`` (DevicePlan: AMP, channels_last,
pinned memory), ``prefix`` (a frozen prefix runs once per image and only the rest trains),
``telemetry`` (drift, gradient norms, snapshots, peak memory), ``models.arch`` (build) and
``checkpoint`` (save, load).
"""
from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tl_core import devices
from tl_core.models import arch as models
from tl_core.models import backbones, strategies, surgery
from tl_core.training import prefix as features
from tl_core.training import telemetry
from tl_core.training.config import TrainConfig, default_text_config

EVENTS = ("before_fit", "before_phase", "before_epoch", "after_batch", "after_val_batch", "after_epoch", "snapshot",
          "after_fit")
METRICS = ("epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time", "train_time",
           "images_per_s", "lr", "drift", "grad_norm", "bn_stat_drift", "peak_mem_mb", "cached")  # after_epoch
OOD_METRICS = ("val_loss_ood", "val_acc_ood")  # after_epoch too, in a run with an ood_shift


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class CancelFit(Exception):
    """Raised by a callback (or by the trainer when ``should_stop`` is set) to end a run early."""


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (the same seed gives the same head init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare(cfg: TrainConfig, data_cfg: dict | None = None) -> dict:
    """Load and split the data set (seeded: same seed → same split). Returns a dict with the ImageSet
    ``ds`` (uint8 images in memory), ``train_idx``, ``val_idx``, ``augment`` and, given the backbone's
    ``data_cfg`` (or for a catalogue backbone), the ``train_tf`` / ``eval_tf`` transforms.

    For a text backbone ``ds`` is a tokenised ``text_data.TextSet`` of this run's texts only (training
    first, then validation): ``ds.texts``, and ``ds.images`` = the packed token ids ``[N, 2, max_tokens]``
    made by the backbone's own tokenizer; the transforms are identities and there is no augmentation."""
    from tl_core import data

    if cfg.modality == "text":
        return _prepare_text(cfg)
    ds = data.load_dataset(cfg.data, cfg.data_root)
    if cfg.classes:
        ds = data.subset_classes(ds, cfg.classes)
    train_idx, val_idx = data.split(ds, cfg.val_fraction, cfg.effective_split_seed, cfg.per_class)
    clean, ds = ds, data.shifted(ds, cfg.shift, cfg.effective_split_seed)  # after the split: the same split
    out = {"ds": ds, "train_idx": train_idx, "val_idx": val_idx, "augment": data.Augment(**(cfg.augment or {}))}
    if cfg.ood_shift:  # the clean validation images, shifted, with the run's labels
        out["ood"] = (data.shifted(clean, cfg.ood_shift, cfg.effective_split_seed).images[val_idx], ds.labels[val_idx])
    if data_cfg is None and cfg.backbone in backbones.catalogue():
        data_cfg = backbones.data_config(cfg.backbone)
    if data_cfg is not None:
        out.update(_transforms(cfg, data_cfg, out["augment"]))
    return out


def _prepare_text(cfg: TrainConfig) -> dict:
    """``prepare`` for a text backbone: the split of the image sets, then only its texts are tokenised."""
    from tl_core import data
    from tl_core.data import texts as text_data

    ds = text_data.load_text_dataset(cfg.data, cfg.data_root)
    if cfg.classes:
        ds = text_data.subset_classes(ds, cfg.classes)
    train_idx, val_idx = data.split(ds, cfg.val_fraction, cfg.effective_split_seed, cfg.per_class)
    ds = text_data.tokenized(ds, backbones.text_tokenizer(cfg.backbone), cfg.max_tokens,
                             torch.cat([train_idx, val_idx]))
    n = len(train_idx)
    return {"ds": ds, "train_idx": torch.arange(n), "val_idx": torch.arange(n, len(ds)), "augment": data.Augment(),
            **_transforms(cfg, {"modality": "text"}, None)}


def _transforms(cfg: TrainConfig, data_cfg: dict, augment) -> dict:
    """{"train_tf", "eval_tf"}: ``data.make_transforms`` at the config's image size and normalisation
    (identities for a text backbone: its inputs are token ids already)."""
    from tl_core import data

    if data_cfg.get("modality") == "text":
        return {"train_tf": nn.Identity(), "eval_tf": nn.Identity()}

    train_tf, eval_tf = data.make_transforms(data_cfg, cfg.image_size, augment, cfg.normalization)
    return {"train_tf": train_tf, "eval_tf": eval_tf}


def build_optimizer(cfg: TrainConfig, model: nn.Module, hier: surgery.Hierarchy, plan: surgery.FreezePlan,
                    offset: int, span: int):
    """(optimizer with one param group per trainable block, per-step LR schedule). The cosine runs over
    steps ``offset..span`` (gradual: over the whole run, so each new group does not restart it).
    ``foreach``: one call per group instead of one per tensor, which torch only picks by itself on CUDA;
    on a CPU it gives the same weights, bit for bit, and trains a two-phase MobileNetV2 about 5% faster."""
    groups = surgery.param_groups(model, hier, plan, cfg.effective_lr, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.effective_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              foreach=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.effective_lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.schedule == "constant":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(offset + s, span) / max(span, 1))))


def backward_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler, grads: telemetry.GradNorms) -> None:
    """Backward (scaled for fp16), record the per-block gradient norms (unscaled), optimizer step."""
    opt.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    grads.add()
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


class Trainer:
    """One training run. ``fit()`` returns the summary dict; see the module docstring for events.
    Exposes ``.cfg``, ``.model``, ``.hier``, ``.class_names``, ``.optimizer`` (of the current phase),
    ``.history`` (after_epoch metrics) and ``.should_stop``. ``runs_dir``: the runs folder of the run store
    the run belongs to, where its frozen-prefix features are shared (None: ``paths.default_runs_dir()``)."""

    def __init__(self, cfg: TrainConfig, callbacks=(), runs_dir=None):
        self.cfg = cfg.validate(trusted=True)  # admitted at launch (pages refuse outside paths there)
        self.callbacks = list(callbacks)
        self.runs_dir = runs_dir
        self.should_stop: str | None = None
        self.model: nn.Module | None = None
        self.hier: surgery.Hierarchy | None = None
        self.device: str | None = None
        self.weights_status = None
        self.class_names: list[str] = []
        self.phases: list[strategies.Phase] = []
        self.history: list[dict] = []
        self.phase_log: list[dict] = []
        self.info: dict = {}
        self.epoch = self.step = 0
        self.confusion: torch.Tensor | None = None  # of the last validation
        self.val_predictions: dict | None = None  # of the last validation, per image: val_idx, label, pred, conf
        self.optimizer: torch.optim.Optimizer | None = None  # of the current phase: one param group per block
        self.scheduler = None

    def emit(self, event: str, **data) -> None:
        assert event in EVENTS, event
        for cb in self.callbacks:
            cb.on(event, self, **data)

    def _check_stop(self) -> None:
        if self.should_stop:
            raise CancelFit(self.should_stop)

    # --- setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = devices.resolve_device(cfg.device)
        devices.use_threads(self.device, cfg.num_threads)
        self.data = prepare(cfg)
        ds = self.data["ds"]
        seed_everything(cfg.seed)  # right before the model: same seed → same head init
        model, self.weights_status = models.build_arch(cfg.backbone, len(ds.class_names), cfg.effective_weights,
                                                       cfg.weights_file, cfg.allow_download, cfg.probe_depth,
                                                       cfg.sample_size)
        self.data_cfg = models.data_config_for(cfg.backbone, model)
        self.data.update(_transforms(cfg, self.data_cfg, self.data["augment"]))
        self.class_names = list(ds.class_names)
        self.hier = surgery.hierarchy(model, cfg.sample_size)
        self.phases = strategies.schedule(cfg, self.hier)
        self.chain = surgery.sequential_chain(model, min(cfg.sample_size, 16 if self.text else 64))
        self.dev = devices.device_plan(self.device, conv=devices.is_conv_net(model), channels_last=cfg.channels_last)
        self.model = self.dev.prepare_model(model)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # batch order
        self.scaler = self.dev.scaler()
        telemetry.reset_peak_mem(self.device)
        self.drift = telemetry.Drift(model, self.hier)  # drift is measured against the weights and statistics now
        self.snapshots = self._snapshots(model)
        self.steps_per_epoch = math.ceil(len(self.data["train_idx"]) / cfg.batch_size)
        self.info = run_info(self)
        surgery.apply_plan(model, self.hier, self.phases[0].plan)
        self.info["trainable_params"] = surgery.count_params(model)["trainable"]

    @property
    def text(self) -> bool:
        """A text run (the inputs are token ids; the snapshots are attention maps)."""
        return self.cfg.modality == "text"

    def _snapshots(self, model: nn.Module):
        """Feature maps of the first validation image at the snapshot layers or, for a text run, the
        attention maps of a short validation text (``self.probe``: its text and tokens)."""
        cfg, ds, val = self.cfg, self.data["ds"], self.data["val_idx"]
        layers = cfg.snapshot_layers or telemetry.default_snapshot_layers(self.hier, text=self.text)
        if self.text:
            from tl_core.data import texts as text_data

            x, self.probe = text_data.probe_text(ds, val, backbones.text_tokenizer(cfg.backbone),
                                                 telemetry.SNAPSHOT_SIZE)
            return telemetry.AttentionSnapshots(model, self.hier, x, layers)
        probe = self.data["eval_tf"](ds.images[val[:1]]).to(self.device)
        return telemetry.Snapshots(model, self.hier, probe, layers, self.dev.autocast)

    def _cache_plan(self, plan: surgery.FreezePlan) -> features.CachePlan:
        return features.plan_cache(self.model, self.hier, self.chain, plan, enabled=self.cfg.cache_features,
                                   augmented=self.data["augment"].any)

    # --- one phase, one epoch
    def _start_phase(self, pi: int, phase: strategies.Phase) -> dict:
        """Apply the phase's freeze plan, build its loaders and optimizer, emit ``before_phase``."""
        cfg = self.cfg
        if pi:
            surgery.apply_plan(self.model, self.hier, phase.plan)
        loaders = features.phase_loaders(self.model, self._cache_plan(phase.plan), self.data, self.dev,
                                         cfg.batch_size, self.gen, key=features.key_inputs(cfg),
                                         runs_dir=self.runs_dir)
        gradual = cfg.strategy == "gradual"
        span = self.steps_per_epoch * (cfg.epochs if gradual else phase.epochs)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model, self.hier, phase.plan,
                                                         self.step if gradual else 0, span)
        record = {"phase": pi + 1, "name": phase.name, "epochs": phase.epochs, "trainable": phase.plan.trainable,
                  "lrs": {g["name"]: g["lr"] for g in self.optimizer.param_groups}, "cache": loaders["why"],
                  "cached": loaders["cached"], "trainable_params": surgery.count_params(self.model)["trainable"]}
        self.phase_log.append(record)
        self.emit("before_phase", **record)
        return loaders

    def _run_epoch(self, phase: int, loaders: dict) -> None:
        self.epoch += 1
        self.emit("before_epoch", epoch=self.epoch, phase=phase)
        t0 = time.perf_counter()
        tr = self.train_one_epoch(loaders, self.optimizer, self.scheduler)
        va = self.validate(loaders)
        ood = self.validate_ood() if "ood" in self.data else {}
        metrics = {"epoch": self.epoch, "phase": phase, **va, **tr, "epoch_time": time.perf_counter() - t0,
                   "drift": self.drift.weights(), "bn_stat_drift": self.drift.bn_stats(),
                   "peak_mem_mb": telemetry.peak_mem_mb(self.device), "cached": loaders["cached"]}
        metrics = {**{k: metrics[k] for k in METRICS}, **ood}
        self.history.append(metrics)
        self.emit("after_epoch", metrics=metrics)
        self.emit("snapshot", epoch=self.epoch, maps=self.snapshots())

    def train_one_epoch(self, loaders: dict, opt, sched) -> dict:
        forward, dev = loaders["forward"], self.dev
        self.model.train()
        grads = self.drift.grad_norms(self.device)
        loss_sum, correct, seen = torch.zeros((), device=self.device), torch.zeros((), device=self.device), 0
        t0 = time.perf_counter()
        for b, batch in enumerate(loaders["train"]):
            x, y = dev.batch(*batch)
            with dev.autocast():
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            self.step += 1
            loss_val = loss.item()
            if not math.isfinite(loss_val):
                raise Diverged(f"loss became {'NaN' if math.isnan(loss_val) else 'inf'} at epoch {self.epoch} "
                               f"step {self.step} — lower the learning rate (try 10× smaller)")
            backward_step(loss, opt, self.scaler, grads)
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            self.emit("after_batch", step=self.step, epoch=self.epoch, batch=b + 1, loss=loss_val,
                      lr=opt.param_groups[-1]["lr"], images=len(y))
            self._check_stop()
        dt = time.perf_counter() - t0
        return {"train_loss": (loss_sum / max(seen, 1)).item(), "train_acc": (correct / max(seen, 1)).item(),
                "train_time": dt, "images_per_s": seen / dt if dt > 0 else 0.0, "lr": opt.param_groups[-1]["lr"],
                "grad_norm": grads.rms()}

    @torch.no_grad()
    def validate(self, loaders: dict) -> dict:
        model, forward, dev = self.model, loaders["forward"], self.dev
        was = model.training
        model.eval()
        preds, confs, ys, loss_sum = [], [], [], 0.0
        try:
            for b, batch in enumerate(loaders["val"]):
                x, y = dev.batch(*batch)
                if b == 0:  # the same outputs up to rounding, in about 25% less time
                    forward = surgery.fold_batchnorm(forward, x[:2])
                with dev.autocast():
                    logits = forward(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                pred = logits.argmax(1)
                preds.append(pred.cpu())
                confs.append(logits.softmax(1).gather(1, pred[:, None])[:, 0].cpu())
                ys.append(y.cpu())
                self.emit("after_val_batch", epoch=self.epoch, batch=b + 1)
                self._check_stop()
        finally:
            model.train(was)
        p, y = torch.cat(preds), torch.cat(ys)
        C = len(self.class_names)
        self.confusion = torch.bincount(y * C + p, minlength=C * C).reshape(C, C)
        # the images each cell counts (the Inspect page shows them): the validation set in loader order
        self.val_predictions = {"val_idx": self.data["val_idx"], "label": y, "pred": p, "conf": torch.cat(confs)}
        return {"val_loss": loss_sum / len(y), "val_acc": (p == y).float().mean().item()}

    @torch.no_grad()
    def validate_ood(self) -> dict:
        """{"val_loss_ood", "val_acc_ood"} on the clean validation images shifted by ``cfg.ood_shift``
        (``prepare``'s "ood"), through the whole model: the prefix cache holds the unshifted images only."""
        (images, labels), model, n = self.data["ood"], self.model, 2 * self.cfg.batch_size
        was = model.training
        model.eval()
        loss_sum, correct = 0.0, 0
        try:
            for b in range(0, len(labels), n):
                x, y = self.dev.batch(self.data["eval_tf"](images[b:b + n]), labels[b:b + n])
                with self.dev.autocast():
                    logits = model(x).float()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                self.emit("after_val_batch", epoch=self.epoch, batch=b // n + 1)
                self._check_stop()
        finally:
            model.train(was)
        return {"val_loss_ood": loss_sum / len(labels), "val_acc_ood": correct / len(labels)}

    # --- the run
    def fit(self) -> dict:
        t_start = time.time()
        status, reason, error = "completed", "", None
        try:
            self.setup()
            self.emit("before_fit", info=self.info)
            self.emit("snapshot", epoch=0, maps=self.snapshots())
            for pi, phase in enumerate(self.phases):
                loaders = self._start_phase(pi, phase)
                for _ in range(phase.epochs):
                    self._check_stop()
                    self._run_epoch(pi + 1, loaders)
                    self._check_stop()
        except BaseException as exc:  # a bug or bad data ends as failed, then propagates
            status, reason, error = outcome(exc, self.cfg)
        finally:
            self.summary = summarize(self, status, reason, time.time() - t_start)
            self.emit("after_fit", summary=self.summary, predictions=self.val_predictions)
        if error is not None:
            raise error
        return self.summary


def run_info(t: Trainer) -> dict:
    """The ``before_fit`` info of trainer ``t`` after its setup."""
    cfg, ws = t.cfg, t.weights_status
    return {
        "device": t.device, **t.dev.to_dict(),
        "threads": torch.get_num_threads() if t.device == "cpu" else None,
        "backbone": cfg.backbone, "weights": ws.kind, "weights_label": ws.label, "trainable_params": None,
        "total_params": t.hier.total_params, "classes": t.class_names, "num_classes": len(t.class_names),
        "num_train": len(t.data["train_idx"]), "num_val": len(t.data["val_idx"]),
        "steps_per_epoch": t.steps_per_epoch, "total_epochs": cfg.epochs, "lr": cfg.effective_lr,
        "strategy": cfg.strategy,
        "phases": [{"name": p.name, "epochs": p.epochs, "trainable": p.plan.trainable, "note": p.note}
                   for p in t.phases],
        "cache": t._cache_plan(t.phases[0].plan).why, "snapshot_layers": t.snapshots.layers,
        "data_config": models.jsonable_data_config(t.data_cfg),
        "modality": cfg.modality, "unit": "texts" if t.text else "images",
        **({"max_tokens": cfg.max_tokens, "snapshot_probe": t.probe} if t.text else {}),
    }


def outcome(exc: BaseException, cfg: TrainConfig | None = None) -> tuple[str, str, BaseException | None]:
    """(status, reason, the exception to re-raise or None) for what ended a run: stopped, diverged, out of GPU
    memory (the advice names ``cfg``'s sizes when given) or failed with another error (to re-raise)."""
    if isinstance(exc, CancelFit):
        return "stopped", str(exc) or "stopped", None
    if isinstance(exc, Diverged):
        return "diverged", str(exc), None
    if isinstance(exc, torch.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        size = ("a smaller input size" if cfg is None else f"fewer tokens (max_tokens now {cfg.max_tokens})"
                if cfg.modality == "text" else f"a smaller image size (now {cfg.image_size})")
        batch = "" if cfg is None else f" (now {cfg.batch_size})"
        return "failed", (f"out of GPU memory ({str(exc).splitlines()[0] if str(exc) else ''}) — try a smaller "
                          f"batch size{batch} or {size}"), None
    return "failed", f"{type(exc).__name__}: {exc}", exc


def summarize(t: Trainer, status: str, reason: str, wall: float) -> dict:
    """The ``after_fit`` summary of trainer ``t`` (whatever stage it reached)."""
    h, conf = t.history, t.confusion
    per_class = (conf.diag().float() / conf.sum(1).clamp_min(1)).tolist() if conf is not None else []
    counts = surgery.count_params(t.model) if t.model is not None else {"trainable": 0, "total": 0}
    train_time = sum(m["train_time"] for m in h)
    return {
        "status": status, "reason": reason, "epochs_done": len(h),
        "best_val_acc": max((m["val_acc"] for m in h), default=None),
        "final_val_acc": h[-1]["val_acc"] if h else None,
        "final_val_loss": h[-1]["val_loss"] if h else None,
        **({"final_val_acc_ood": h[-1]["val_acc_ood"]} if h and "val_acc_ood" in h[-1] else {}),
        "wall_s": wall,
        "images_per_s": (sum(m["images_per_s"] * m["train_time"] for m in h) / train_time) if train_time else None,
        "trainable_params": counts["trainable"], "total_params": counts["total"],
        "device": t.device, "weights": getattr(t.weights_status, "kind", None),
        "confusion": conf.tolist() if conf is not None else [],
        "per_class_acc": per_class, "class_names": t.class_names,
        "cache": [p["cache"] for p in t.phase_log] or ([t.info["cache"]] if t.info else []),
        "phases": [{k: p[k] for k in ("phase", "name", "epochs", "trainable", "lrs", "cached")} for p in t.phase_log],
        "peak_mem_mb": telemetry.peak_mem_mb(t.device) if t.device is not None else None,
    }


def fit(cfg: TrainConfig, callbacks=(), runs_dir=None) -> dict:
    """Train per ``cfg``; returns the summary (status completed | stopped | diverged | failed).
    Raises ValueError for a bad config (before any event); any unexpected error is re-raised
    after ``after_fit`` has run with status failed. ``runs_dir``: see ``Trainer``."""
    return Trainer(cfg, callbacks, runs_dir).fit()


def prewarm(backbone: str | None = None, data: str | None = None, max_tokens: int | None = None) -> dict:
    """The warm worker's head start: load what the default text run (or the given backbone, built-in text set
    and token length) needs: BERT's modules, the tokenizer, the pretrained weights, the texts (tokenised into
    the tokenizer's memo) and one forward pass. Returns seconds per step; errors propagate."""
    from tl_core.data import texts as text_data
    from tl_core.models import text as text_models

    cfg = default_text_config()
    backbone, data, max_tokens = backbone or cfg.backbone, data or cfg.data, max_tokens or cfg.max_tokens
    took, t0 = {}, time.perf_counter()

    def lap(step: str) -> None:
        nonlocal t0
        took[step], t0 = round(time.perf_counter() - t0, 3), time.perf_counter()

    if backbone == "minilm_l6":
        text_models.bert_classes()
    lap("import")
    tok = backbones.text_tokenizer(backbone)
    lap("tokenizer")
    model = backbones.create_text_model(backbone, 2)
    lap("weights")
    if data in text_data.TEXT_BUILTIN:
        text_data.tokenize(text_data.load_text_builtin(data), tok, max_tokens)
    lap("texts")
    with torch.no_grad():
        model.eval()(model.dummy_input(max_tokens, batch=2))
    lap("forward")
    return took
