"""Runs: the ``store`` (SQLite + a folder per run), the queue ``policy`` and liveness, ``executor`` (warm pool,
processes), ``worker``, ``launcher`` (``launch``). ``ray_host``/``ray_node`` (``TL_EXECUTOR=ray``) are
imported only when Ray is used. Listed here: the names of these modules that other packages, pages and tests
use; the rest through their module."""
from .policy import DIED, DEFAULT_CPU_WORKERS, device_limit, FifoQueue, RoundRobinQueue, POLICY, pid_alive, why_dead
from .store import ACTIVE, HEARTBEAT_S, DB_NAME, RunStore
from .turns import NEW, Turns
from .executor import Executor, ProcessExecutor, pool_log, live_workers, stop_pool, LocalExecutor, reap
from .worker import Terminated, Heartbeat, ThreadShare, run
from .launcher import get_executor, check_config, launch

__all__ = sorted(name for name in dir() if not name.startswith("_"))
