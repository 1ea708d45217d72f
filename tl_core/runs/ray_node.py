"""The node's side of a run on a Ray cluster (``tl_core.runs.ray_host`` is the host's side).

``train_remote`` is the Ray task of one run. On the node it writes the run's shipped inputs into the
node's own folder (``$TL_NODE_DIR``: once per node, by content digest), points the config at them,
and trains with ``training.fit(cfg, [RemoteCallback])``. The callback pushes the trainer's events to
the host's ``Inbox`` actor, and each push's reply says whether the run was asked to stop
(``trainer.should_stop``). The trained model returns as safetensors bytes in the task's result.

A node's worker processes are kept between runs (``max_calls=0``): torch, timm, the built-in data
sets, the weight files read (``weight_files.keep_weights``) and the feature cache's memory layer stay warm
there; the feature cache files and decoded data live in the node's folder. Nothing here touches the
host's run store.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import ray

PUSH_EVERY_S = 0.2  # a node pushes its buffered batch events (and polls for a stop) this often
MODEL_FILES = ("model.safetensors", "model.json")


def node_dir() -> Path:
    """This node's own folder: shipped inputs, feature cache, decoded data (``$TL_NODE_DIR``)."""
    return Path(os.environ.get("TL_NODE_DIR") or Path(tempfile.gettempdir()) / f"tl-ray-node-{os.getuid()}")


def materialize(inputs: list[dict], config: dict, here: Path) -> dict:
    """Write the shipped inputs into ``here/inputs/<digest>/`` (once per node: later runs find them)
    and point the config (and, for a lab backbone, ``TL_BACKBONES_DIR``) at them."""
    config = dict(config)
    for item in inputs:
        folder = here / "inputs" / item["digest"]
        names = list(item["files"])
        if any(Path(n).name != n or n.startswith(".") for n in names):
            raise ValueError(f"refusing shipped file names {names}")
        if not all((folder / n).is_file() for n in names):
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
            for name, ref in item["files"].items():
                (tmp / name).write_bytes(ray.get(ref))
            try:
                os.replace(tmp, folder)
            except OSError:  # another worker of this node was first
                shutil.rmtree(tmp, ignore_errors=True)
        if item["role"] == "data":
            config.update(data=str(folder / names[0]), data_root=str(here / "inputs"))
        elif item["role"] == "weights":
            config["weights_file"] = str(folder / names[0])
        elif item["role"] == "backbone":
            os.environ["TL_BACKBONES_DIR"] = str(folder)
    return config


def _plain(value):
    """Events as plain data for the wire: numbers, strings, lists, dicts, bytes, numpy arrays."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    if isinstance(value, np.generic):
        return value.item()
    return value


class RemoteCallback:
    """The node's side of ``StoreCallback``: buffers the trainer's events and pushes them to the
    host's inbox (batch events every ``every_s``, the others at once; Ray keeps one caller's pushes
    in order). Each push's reply says whether the run was asked to stop."""

    def __init__(self, run_id: str, inbox, node: dict, every_s: float = PUSH_EVERY_S):
        self.run_id, self.inbox, self.node, self.every_s = run_id, inbox, node, every_s
        self.buffer: list = []
        self.pending: list = []
        self.last = 0.0
        self.stop = False
        self.summary: dict | None = None
        self.model: dict[str, bytes] = {}

    def on(self, event: str, trainer, **data) -> None:
        if event == "before_fit":
            data = {**data, "info": {**(data.get("info") or {}), "node": self.node}}
        elif event == "after_fit":
            self.summary = data.get("summary")
            self.model = self._model_bytes(trainer)
        self.buffer.append((event, _plain(data)))
        self.send(now=event not in ("after_batch", "after_val_batch"))
        if self.stop and not getattr(trainer, "should_stop", None):
            trainer.should_stop = "stopped by request"

    def send(self, now: bool = False) -> None:
        if self.pending:  # replies so far: did the host ask to stop?
            ready, self.pending = ray.wait(self.pending, num_returns=len(self.pending), timeout=0)
            self.stop = any(ray.get(ready)) or self.stop
        if now or time.monotonic() - self.last >= self.every_s:  # an empty push is a poll
            self.pending.append(self.inbox.push.remote(self.run_id, self.buffer))
            self.buffer, self.last = [], time.monotonic()

    def flush(self) -> bool:
        """Push what is left and wait until the host's inbox holds it all; True if asked to stop."""
        self.send(now=True)
        self.stop = any(ray.get(self.pending)) or self.stop
        self.pending = []
        return self.stop

    def _model_bytes(self, trainer) -> dict[str, bytes]:
        """The trained model as ``MODEL_FILES`` bytes (not for a diverged or failed run, like StoreCallback)."""
        if (self.summary or {}).get("status") not in ("completed", "stopped") or getattr(trainer, "model", None) is None:
            return {}
        from tl_core.training.checkpoint import save_model

        with tempfile.TemporaryDirectory(prefix="tl-model-") as tmp:
            save_model(trainer.model, trainer.cfg, trainer.class_names, tmp)
            return {name: (Path(tmp) / name).read_bytes() for name in MODEL_FILES}


def _node_env(here: Path) -> None:
    """This node's folders: the feature cache and lab backbones under ``here``, never the host's."""
    os.environ["TL_RUNS_DIR"] = str(here / "runs")
    os.environ["TL_BACKBONES_DIR"] = str(here / "backbones")
    os.environ.setdefault("TL_CACHE_DIR", str(here / "data-cache"))


@ray.remote(max_retries=0, max_calls=0)
def train_remote(run_id: str, config: dict, inputs: list[dict], inbox) -> dict:
    """One run on a node: ``fit`` with a ``RemoteCallback``. Returns status, reason, summary, the
    model's bytes and where it ran. Every event has reached the host's inbox when this returns."""
    ctx = ray.get_runtime_context()
    node = {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
            "warm": "torch" in sys.modules}
    from tl_core.runs import worker  # the local worker's endings and memory (it imports torch: after "warm")

    callback = RemoteCallback(run_id, inbox, node)
    callback.buffer.append(("started", node))
    status, reason, summary = "failed", None, None
    try:
        if callback.flush():
            status, reason = "stopped", "stopped by request before training started"
            return {"status": status, "reason": reason, "summary": None, "model": {}, "node": node}
        here = node_dir()
        _node_env(here)
        config = materialize(inputs, config, here)
        from tl_core.models import weight_files
        from tl_core.training import trainer as training
        from tl_core.training.config import TrainConfig

        weight_files.keep_weights()  # weight files stay in this warm worker's memory for the next runs
        summary = training.fit(TrainConfig.from_dict(config), [callback])
        status, reason = worker.ending(summary)
    except BaseException as exc:  # record every ending
        traceback.print_exc()
        status, reason = worker.outcome(exc)
        summary = callback.summary
    finally:
        callback.flush()
        worker.free_memory()  # the worker stays warm for the next run; the memory of this one need not
    return {"status": status, "reason": reason, "summary": _plain(summary), "model": callback.model, "node": node}

