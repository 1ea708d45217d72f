"""Device decisions in one place: which device, mixed precision, channels_last, pinned memory, CPU threads.

``device_plan(device, conv=...)`` returns a frozen ``DevicePlan``; the trainer only asks it questions
(``plan.move(x)``, ``plan.autocast()``, ``plan.grad_scaler``) and never tests the device kind itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str = "auto") -> str:
    """auto → cuda if available, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA GPU is available; use device auto or cpu")
    if name == "mps" and not _mps_available():
        raise ValueError("device mps was asked for but Apple MPS is not available; use device auto or cpu")
    return name


def device_key(name: str | None) -> str:
    """The device a run will use as the run store's concurrency key: ``cpu``, ``cuda:N`` or ``mps`` (never raises)."""
    name = (name or "auto").strip().lower()
    name = resolve_device(name) if name == "auto" else name
    return "cuda:0" if name == "cuda" else name


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def use_threads(device: str, threads: int | None) -> None:
    """On CPU, run torch on ``threads`` threads (None: every available core), and cap the BLAS
    libraries loaded beside it (numpy's OpenBLAS) at the same count: their own idle worker threads
    otherwise compete with torch's for the cores (measured on 2 cores: text runs 2.5-5x slower)."""
    if device == "cpu":
        n = threads or cores()
        torch.set_num_threads(n)
        from threadpoolctl import threadpool_limits

        threadpool_limits(n, "blas")


@dataclass(frozen=True)
class DevicePlan:
    """How to run on a device: every device-specific decision in one place."""

    device: str
    amp_dtype: torch.dtype | None  # autocast dtype, None: full fp32
    grad_scaler: bool  # fp16 needs loss scaling
    channels_last: bool
    pin_memory: bool  # pinned host memory + non_blocking copies

    def to_dict(self) -> dict:
        return {"device": self.device, "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
                "grad_scaler": self.grad_scaler, "channels_last": self.channels_last, "pin_memory": self.pin_memory}

    def move(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch on the device, in the memory format the model expects."""
        x = x.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) on the device."""
        return self.move(x), y.to(self.device, non_blocking=self.pin_memory)

    def autocast(self):
        """The mixed-precision context for forward passes (a no-op in fp32)."""
        return torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device (channels_last where planned); returns it."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def scaler(self) -> torch.amp.GradScaler | None:
        """A fresh GradScaler for fp16 on this plan's device kind, else None."""
        return torch.amp.GradScaler(self.device.split(":")[0]) if self.grad_scaler else None


def device_plan(device: str, conv: bool = True, channels_last: bool | None = None,
                bf16_supported: bool | None = None) -> DevicePlan:
    """The decisions for ``device``: CUDA gets AMP (bf16 where supported, else fp16 with a GradScaler),
    channels_last for conv nets and pinned memory; MPS and CPU run fp32 (CPU uses channels_last for conv
    nets too: it is faster there). ``bf16_supported`` overrides the CUDA query (for tests)."""
    kind = device.split(":")[0]
    cl = conv if channels_last is None else channels_last
    if kind == "cuda":
        bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return DevicePlan(device, torch.bfloat16 if bf16 else torch.float16, not bf16, cl, True)
    if kind == "mps":
        return DevicePlan(device, None, False, False if channels_last is None else channels_last, False)
    return DevicePlan(device, None, False, cl, False)


def is_conv_net(model: torch.nn.Module) -> bool:
    """More than one Conv2d (a ViT has just its patch embedding): channels_last pays off."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1
