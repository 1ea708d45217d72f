"""Launching a run: ``launch(cfg, owner=...)`` = ``check_config`` + ``RunStore.create`` + the ``submit`` of
the executor ``$TL_EXECUTOR`` names (``get_executor``)."""
from __future__ import annotations

import os

from tl_core.runs.executor import Executor, LocalExecutor, ProcessExecutor
from tl_core.runs.store import RunStore

EXECUTORS = ("local", "process", "ray")


def get_executor(runs_dir: str | os.PathLike | None = None) -> Executor:
    """The executor ``$TL_EXECUTOR`` names (``local``, the default: the warm pool; ``process``: one
    process per run; ``ray``: ``tl_core.runs.ray_host``), over the store in ``runs_dir``."""
    kind = (os.environ.get("TL_EXECUTOR") or "local").strip().lower()
    if kind not in EXECUTORS:
        raise ValueError(f"TL_EXECUTOR={kind!r} is not an executor: set it to one of {', '.join(EXECUTORS)} "
                         "(or unset it for the warm local workers)")
    store = RunStore(runs_dir)
    if kind == "ray":
        from tl_core.runs.ray_host import RayExecutor

        return RayExecutor(store)
    return (LocalExecutor if kind == "local" else ProcessExecutor)(store)


def check_config(cfg) -> None:
    """Validate ``cfg`` and that its pretrained weights can be had (WeightsError otherwise): fail
    here, with one clear line, not in a run."""
    if hasattr(cfg, "validate"):
        cfg.validate()
        from tl_core.models import backbones

        if cfg.effective_weights == "pretrained" and cfg.backbone in backbones.catalogue():
            backbones.check_weights(cfg.backbone, cfg.weights_file, cfg.allow_download)


def launch(cfg, runs_dir: str | os.PathLike | None = None, owner: str | None = None) -> str:
    """Validate ``cfg`` (and that its pretrained weights can be had: WeightsError otherwise), create a
    queued run of ``owner`` (None: single-user mode) and hand it to ``get_executor()``: by default a
    warm worker picks it up within a fraction of a second. Returns the run id at once."""
    check_config(cfg)
    ex = get_executor(runs_dir)
    run_id = ex.store.create(cfg, owner=owner)
    ex.submit(run_id)
    return run_id
