"""Runs: the ``store`` (SQLite + a folder per run), the queue ``policy`` and liveness, ``executor`` (warm pool,
processes), ``worker``, ``launcher`` (``launch``). ``ray_host``/``ray_node`` (``TL_EXECUTOR=ray``) are
imported only when Ray is used."""
from .store_json import jsonable, dumps, loads, write_atomic
from .policy import (
    STALE_S, NEVER_STARTED_S, DIED, POOL, PACKAGE_ROOT, DEFAULT_CPU_WORKERS, env_int, device_limit, FifoQueue,
    RoundRobinQueue, POLICY, spawn, pid_alive, why_dead,
)
from .repair import RUN_ID, DAMAGE_WORDS, INTERRUPTED, is_damage, read_folder, rebuild
from .store import STATUSES, ACTIVE, HEARTBEAT_S, DB_NAME, STOP_FILE, RECORD, METRICS_LOG, RunInfo, RunStore
from .callback import STEP_EVERY_S, StoreCallback
from .turns import NEW, Turns, TurnCallback
from .executor import (
    Executor, ProcessExecutor, WORKER_POLL_S, WORKER_IDLE_S, ORPHAN_IDLE_S, RESPAWN_S, worker_idle_s, pool_log,
    live_workers, ensure_pool, start_worker, stop_pool, LocalExecutor, reap,
)
from .worker import (
    QUEUE_POLL_S, THREAD_CHECK_S, INTERLEAVE_CPU, HOLD_RAM_FRACTION, DIVERGED_ADVICE, OOM_ADVICE, Terminated,
    Heartbeat, wait_for_slot, ThreadShare, outcome, ending, run, train, free_memory, interleave, lanes, serve,
    main,
)
from .launcher import EXECUTORS, get_executor, check_config, launch

__all__ = sorted(name for name in dir() if not name.startswith("_"))
