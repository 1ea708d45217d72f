"""Runs on a Ray cluster, with the run store staying on the app's host (``TL_EXECUTOR=ray``).

The host (the process that serves the pages) keeps the only queue and the only writer of the run
store. ``RayExecutor.submit(run_id)`` hands a queued run to this process's host thread, which

- **dispatches**: in the queue policy's order (``policy.POLICY``), a run is sent to the cluster
  when ``ray.available_resources()`` has room for what it declares (``num_gpus=1`` and one CPU
  for a CUDA run, ``num_cpus=N`` threads otherwise); Ray picks the node;
- **ships the inputs as bytes** (``ray.put``; no shared filesystem): a user data folder (zipped),
  zip or CSV, a weights file, a lab-built backbone. Each node writes them once into its own folder
  (``$TL_NODE_DIR``, by content digest) and reuses them for later runs;
- **writes every event**: the node runs ``training.fit(cfg, [RemoteCallback])``, which pushes its
  events (steps, epochs, phases, snapshots, the summary) to a small ``Inbox`` actor on the host's
  node; the host drains it a few times a second and applies each event with the same
  ``callback.StoreCallback`` a local worker uses, so the store logic exists once. The final model comes
  back as safetensors bytes in the task's result;
- **forwards stops**: a stop request in the store (from any process) reaches the node as the reply
  to the run's next push, and the node's callback sets ``trainer.should_stop``;
- **records every ending**: a run whose node or worker dies ends as ``failed`` with Ray's reason.

Per node: Ray keeps a node's worker processes between runs (``max_calls=0``), so libraries, the
built-in data sets and the feature cache's memory layer stay warm there; the feature cache files,
decoded data and shipped inputs live in the node's own folder. Nothing of a node is shared with
another node. The code itself travels too (``runtime_env`` py_modules: this ``tl_core``), so nodes
need only the Python packages (``requirements.txt`` + ``requirements-ray.txt``).

The store sees the host process as each run's worker (its pid, and a heartbeat every
``HEARTBEAT_S`` while Ray holds the run), so when the host dies its runs end as failed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import traceback
import types
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as _exc:  # the local executor never imports this module
    raise ImportError("TL_EXECUTOR=ray needs Ray, which is not installed here: run `make install-ray` "
                      "(pip install -r requirements-ray.txt)") from _exc

from tl_core.runs.callback import StoreCallback
from tl_core.runs.policy import POLICY
from tl_core.runs.ray_node import MODEL_FILES, train_remote
from tl_core.runs.store import HEARTBEAT_S, RunInfo, RunStore

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tl_core/, shipped to the cluster
RUNTIME_ENV = {"py_modules": [str(PACKAGE_DIR)], "excludes": ["__pycache__", "*.pyc"]}
TICK_S = 0.2  # the host drains the inbox and checks stops this often
MAX_INPUT_BYTES = 2 * 2**30  # one shipped file (a weights file, a data zip) at most
INPUT_CACHE = 16  # shipped inputs the host keeps in the object store for the next runs
EXECUTOR_NAME = "ray"  # the store's ``executor`` mark of the runs this module holds


# --- what a run asks of the cluster ---------------------------------------------------------------
def cpus_per_run(value: int | None = None) -> int:
    """CPU threads (Ray CPUs) of one CPU run: ``value``, else ``$TL_RAY_CPUS_PER_RUN``, else 1."""
    try:
        return max(1, int(value or os.environ.get("TL_RAY_CPUS_PER_RUN") or 1))
    except ValueError:
        return 1


def run_resources(config: dict, cluster: dict, cpus: int) -> dict:
    """``{"num_cpus", "num_gpus"}`` for a run: a GPU (and one CPU to feed it) for ``device`` cuda,
    or auto on a cluster that has GPUs; ``cpus`` CPUs otherwise."""
    device = str(config.get("device") or "auto").strip().lower()
    if device.startswith("cuda") or (device == "auto" and cluster.get("GPU", 0) >= 1):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": cpus, "num_gpus": 0}


def _as_ray(need: dict) -> dict:
    return {"CPU": need["num_cpus"], "GPU": need["num_gpus"]}


def fits(need: dict, available: dict) -> bool:
    return all(available.get(k, 0) >= v for k, v in _as_ray(need).items() if v)


def node_config(config: dict, need: dict) -> dict:
    """The config the node trains with: its device is the GPU Ray gave it, or CPU with one thread per CPU."""
    if need["num_gpus"]:
        return {**config, "device": "cuda"}  # Ray shows the task only its own GPU: cuda:0
    return {**config, "device": "cpu", "num_threads": config.get("num_threads") or need["num_cpus"]}


# --- inputs travel as bytes -----------------------------------------------------------------------
def _zip_folder(folder: Path) -> bytes:
    """A folder's regular files as a zip (fixed dates: the same files give the same bytes)."""
    from tl_core.data.sources import Caps

    caps, total, buf = Caps(), 0, io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or not path.resolve().is_relative_to(folder):
                continue
            total += path.stat().st_size
            if total > caps.max_total_bytes:
                raise ValueError(f"{folder.name} holds over {caps.max_total_bytes:,} bytes; use a smaller data set")
            zf.writestr(zipfile.ZipInfo(path.relative_to(folder).as_posix(), (1980, 1, 1, 0, 0, 0)), path.read_bytes())
    return buf.getvalue()


def _read(path: Path) -> bytes:
    from tl_core.data.sources import read_regular

    return read_regular(path, MAX_INPUT_BYTES)


def _stamp(path: Path) -> tuple:
    """What changes when a file or folder changes: sizes and modification times."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in files if p.is_file() for st in [p.stat()])


class InputShipper:
    """The inputs of a run as ``[{"role", "digest", "files": {name: ObjectRef}}]``: each file is put
    into the object store once and kept for the next runs (the last ``INPUT_CACHE`` inputs)."""

    def __init__(self, keep: int = INPUT_CACHE):
        self.keep, self._cache = keep, OrderedDict()

    def inputs(self, config: dict) -> list[dict]:
        from tl_core.models import backbones
        from tl_core import data
        from tl_core.data import texts as text_data

        out = []
        source = config.get("data")
        if source and source not in data.BUILTIN and source not in text_data.TEXT_BUILTIN:
            path = data.resolve_data_path(source, config.get("data_root"), files=(".csv",))
            name = (path.name + ".zip") if path.is_dir() else (data.upload_name(path) or path.name)
            out.append(self._ship("data", path, lambda: {name: _zip_folder(path) if path.is_dir() else _read(path)}))
        if config.get("weights_file"):
            path = Path(config["weights_file"]).expanduser().resolve()
            out.append(self._ship("weights", path, lambda: {path.name: _read(path)}))
        key = config.get("backbone")
        if key not in backbones.CATALOGUE and key in backbones.catalogue():  # built by a lab on this host
            meta = backbones.local_backbones_dir() / f"{key}.json"
            out.append(self._ship("backbone", meta, lambda: {meta.name: _read(meta),
                                                            f"{key}.safetensors": _read(meta.with_suffix(".safetensors"))}))
        return out

    def _ship(self, role: str, path: Path, read) -> dict:
        key = (role, str(path), _stamp(path))
        if key not in self._cache:
            try:
                files = read()
            except (ValueError, OSError) as exc:  # say which input: the reader's message does not
                raise ValueError(f"{role} {path}: {exc}") from None
            digest = hashlib.sha256()
            for name in sorted(files):
                digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
            self._cache[key] = {"role": role, "digest": digest.hexdigest()[:32],
                                "files": {name: ray.put(blob) for name, blob in files.items()}}
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]


# --- the host side --------------------------------------------------------------------------------
@ray.remote
class Inbox:
    """Events from the nodes, held until the host drains them; and the runs asked to stop."""

    def __init__(self):
        self.events: list = []
        self.stops: set[str] = set()

    def push(self, run_id: str, events: list) -> bool:
        self.events.extend((run_id, event, data) for event, data in events)
        return run_id in self.stops

    def drain(self, stops: list[str]) -> list:
        self.stops = set(stops)
        out, self.events = self.events, []
        return out


def ray_failure(exc: BaseException) -> str:
    """The reason recorded for a run that Ray lost: what happened, then Ray's own first line."""
    errors = ray.exceptions
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc))  # a remote traceback comes coloured for a terminal
    first = (plain.strip().splitlines() or [""])[0][:300]
    if isinstance(exc, errors.NodeDiedError):
        why = "the cluster node running it went down"
    elif isinstance(exc, errors.OutOfMemoryError):
        why = "Ray stopped it: its node ran out of memory (try a smaller batch or image size)"
    elif isinstance(exc, (errors.WorkerCrashedError, errors.ActorDiedError)):
        why = "its Ray worker process died (killed, or out of memory)"
    elif isinstance(exc, errors.TaskCancelledError):
        why = "it was cancelled on the cluster"
    else:
        why = "the Ray cluster lost it"
    return f"{why} ({type(exc).__name__}: {first})"


@dataclass
class Flight:
    """A run the cluster holds."""
    run_id: str
    ref: object  # the ObjectRef of train_remote's result
    need: dict
    config: dict
    callback: StoreCallback
    stub: types.SimpleNamespace = field(default_factory=lambda: types.SimpleNamespace(
        should_stop=None, model=None, cfg=None, class_names=[]))
    node: dict | None = None  # from the node's "started" event


class Host:
    """One per process and run store: the queue, the dispatcher and the single writer of the store."""

    def __init__(self, runs_dir: Path, cpus: int):
        self.store, self.cpus = RunStore(runs_dir), cpus
        here = ray.get_runtime_context().get_node_id()
        self.inbox = Inbox.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self.shipper = InputShipper()
        self.queue: dict[str, RunInfo] = {}  # submitted, not yet sent to the cluster (oldest first)
        self.flights: dict[str, Flight] = {}
        self._lock, self._wake, self._closed = threading.Lock(), threading.Event(), threading.Event()
        self._beat_at = 0.0
        self.thread = threading.Thread(target=self._loop, name="tl-ray-host", daemon=True)
        self.thread.start()

    def add(self, run_id: str) -> None:
        self.store.assign(run_id, EXECUTOR_NAME)
        self.store.attach_worker(run_id, os.getpid())  # the host holds the run for the reaper
        self.log(run_id, "queued on the host for the Ray cluster")
        with self._lock:
            self.queue[run_id] = self.store.get(run_id)
        self._wake.set()

    def log(self, run_id: str, line: str) -> None:
        with open(self.store.log_path(run_id), "a") as fh:
            fh.write(f"[ray host {time.strftime('%H:%M:%S')}] {line}\n")

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._dispatch()
                self._collect()
                if time.monotonic() - self._beat_at >= HEARTBEAT_S:
                    self._beat()
            except Exception:  # a busy database, a cluster hiccup: try again next tick
                traceback.print_exc()
            self._wake.wait(TICK_S)
            self._wake.clear()

    # --- sending runs
    def _dispatch(self) -> None:
        """Send queued runs, in the queue policy's order, while the cluster has room for them. A run
        that does not fit holds back the later runs of its kind (CPU or GPU), not those of the other.
        No store reads while the cluster is full; a run cancelled meanwhile is dropped when its turn comes."""
        with self._lock:
            queued = dict(self.queue)
        if not queued:
            return
        cluster, blocked = ray.cluster_resources(), set()
        available = self._available(cluster)
        if available.get("CPU", 0) < 1 and available.get("GPU", 0) < 1:
            return
        for run_id in POLICY.order([(r.id, r.owner) for r in queued.values()]):
            need = run_resources(queued[run_id].config, cluster, self.cpus)
            kind = "GPU" if need["num_gpus"] else "CPU"
            if kind not in blocked and fits(need, available):
                if self._send(run_id, queued[run_id].config, need):
                    for k, v in _as_ray(need).items():
                        available[k] = available.get(k, 0) - v
                with self._lock:
                    self.queue.pop(run_id, None)
            else:
                blocked.add(kind)

    def _available(self, cluster: dict) -> dict:
        """What the cluster can take now: Ray's view, but never more than the total less this host's
        runs (Ray's view lags a task's start by up to a second)."""
        available = dict(ray.available_resources())
        for k in ("CPU", "GPU"):
            mine = sum(_as_ray(f.need)[k] for f in self.flights.values())
            available[k] = min(available.get(k, 0), cluster.get(k, 0) - mine)
        return available

    def _send(self, run_id: str, config: dict, need: dict) -> bool:
        """Claim the run (queued → running) and hand it to Ray. False if it was cancelled meanwhile
        or its inputs cannot be read (it then ends as failed, with the reason)."""
        if self.store.get(run_id).status != "queued":
            return False
        try:
            inputs = self.shipper.inputs(config)
        except (ValueError, OSError) as exc:  # DataError is a ValueError
            self.store.finish(run_id, "failed", f"its inputs could not be sent to the cluster: {exc}")
            return False
        if not self.store.claim(run_id, "sent to the Ray cluster: waiting for a node"):
            return False
        ref = train_remote.options(**need).remote(run_id, node_config(config, need), inputs, self.inbox)
        self.flights[run_id] = Flight(run_id, ref, need, config, StoreCallback(self.store, run_id))
        self.log(run_id, f"sent to the cluster with {need}; inputs: {[i['role'] for i in inputs] or 'none'}")
        return True

    # --- events and endings
    def _collect(self) -> None:
        stops = [r for r in self.flights if self.store.stop_requested(r)]
        self._apply(ray.get(self.inbox.drain.remote(stops)))
        refs = {f.ref: f for f in self.flights.values()}
        if not refs:
            return
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        if done:  # a finished run pushed all its events before returning: take them first
            self._apply(ray.get(self.inbox.drain.remote(stops)))
            for ref in done:
                self._finish(refs[ref])

    def _apply(self, events: list) -> None:
        """Write one drain's events (every run's) in one transaction, each with its run's StoreCallback."""
        if events:
            self.store.exclusive(lambda: [self._apply_one(*e) for e in events])

    def _apply_one(self, run_id: str, event: str, data: dict) -> None:
        f = self.flights.get(run_id)
        if f is None:  # ended meanwhile (its node died): nothing more is written
            return
        try:
            if event == "started":
                f.node = data
                where = f"Ray node {data['node_ip']} ({data['node_id'][:8]}, pid {data['pid']}, {'warm' if data['warm'] else 'cold'})"
                self.store.set_reason(run_id, f"starting on {where}: loading libraries, data and model")
                self.log(run_id, f"started on {where}")
            else:
                f.callback.on(event, f.stub, **data)
                if event == "before_fit" and f.node:  # set_info cleared the line: say where it trains
                    self.store.set_reason(run_id, f"training on Ray node {f.node['node_ip']} ({f.node['node_id'][:8]})")
        except Exception:  # one bad event must not cost the others theirs
            traceback.print_exc()

    def _finish(self, f: Flight) -> None:
        del self.flights[f.run_id]
        try:
            result = ray.get(f.ref)
            status, reason, summary = result["status"], result["reason"], result["summary"]
            self._save_model(f, result.get("model") or {})
        except ray.exceptions.RayError as exc:
            status, reason, summary = "failed", ray_failure(exc), f.callback.summary
        self.store.finish(f.run_id, status, reason, summary)
        self.log(f.run_id, f"{status}: {reason or ''}")

    def _save_model(self, f: Flight, files: dict[str, bytes]) -> None:
        """The node's model files into the run folder; model.json keeps the host's config (not node paths)."""
        if set(files) != set(MODEL_FILES):
            return
        meta = json.loads(files["model.json"])
        meta["config"] = f.config
        files = {**files, "model.json": json.dumps(meta, indent=2).encode()}
        folder = self.store.run_dir(f.run_id)
        for name in MODEL_FILES:
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(files[name])
            os.replace(tmp, folder / name)

    def _beat(self) -> None:
        self._beat_at = time.monotonic()
        with self._lock:
            held = [*self.queue, *self.flights]
        if held:  # one write transaction for every run this host holds
            self.store.exclusive(lambda: [self.store.heartbeat(r) for r in held])

    def close(self, reason: str = "the app's host stopped following it") -> None:
        """Stop the thread; runs still held end as failed (their tasks are cancelled)."""
        self._closed.set()
        self._wake.set()
        self.thread.join(timeout=10)
        for f in list(self.flights.values()):
            ray.cancel(f.ref, force=True)
            self.store.finish(f.run_id, "failed", reason)
        for run_id in self.queue:
            self.store.finish(run_id, "failed", reason)
        self.flights, self.queue = {}, {}
        ray.kill(self.inbox)
        self.store.close()


_HOSTS: dict[Path, Host] = {}
_HOSTS_LOCK = threading.Lock()


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` (else ``$RAY_ADDRESS``, else a cluster started on this machine
    with ``ray start --head``), sending this ``tl_core`` to the nodes with the job (``RUNTIME_ENV``).
    One clear line when there is none."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, runtime_env=RUNTIME_ENV, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RuntimeError(f"TL_EXECUTOR=ray: no Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one "
                           "with `ray start --head` on this machine or set RAY_ADDRESS=HEAD_IP:6379") from None


class RayExecutor:
    """``executor.Executor`` on a Ray cluster: ``submit(run_id)`` queues a run of the store on this
    process's host thread, which sends it to the cluster when a slot is free; ``stop(run_id)``
    cancels a queued run or stops a running one within a batch or two. ``store`` is a ``RunStore``
    or its folder (None: ``$TL_RUNS_DIR``); ``address`` the cluster's (None: ``$RAY_ADDRESS``);
    ``cpus`` the CPUs of one CPU run (None: ``$TL_RAY_CPUS_PER_RUN``, else 1)."""

    def __init__(self, store=None, address: str | None = None, cpus: int | None = None):
        self.store = store if isinstance(store, RunStore) else RunStore(store)
        self.runs_dir = self.store.runs_dir
        self.address, self.cpus = address, cpus_per_run(cpus)

    @property
    def host(self) -> Host:
        connect(self.address)
        with _HOSTS_LOCK:
            if self.runs_dir not in _HOSTS:
                _HOSTS[self.runs_dir] = Host(self.runs_dir, self.cpus)
            return _HOSTS[self.runs_dir]

    def submit(self, run_id: str) -> None:
        self.host.add(run_id)

    def stop(self, run_id: str, **rights) -> str:
        """``rights``: ``by`` (the owner asking) and ``teacher``, as ``RunStore.request_stop`` takes them."""
        status = self.store.request_stop(run_id, **rights)
        with _HOSTS_LOCK:
            host = _HOSTS.get(self.runs_dir)
        if host is not None:
            host._wake.set()  # forwarded to the node at the next tick
        return status

    def close(self) -> None:
        """End this store's host thread (runs it still holds end as failed)."""
        with _HOSTS_LOCK:
            host = _HOSTS.pop(self.runs_dir, None)
        if host is not None:
            host.close()


def shutdown() -> None:
    """Close every host thread of this process and leave the cluster."""
    with _HOSTS_LOCK:
        hosts = list(_HOSTS.values())
        _HOSTS.clear()
    for host in hosts:
        host.close()
    if ray.is_initialized():
        ray.shutdown()
