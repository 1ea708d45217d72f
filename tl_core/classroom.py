"""Classroom mode: students with names, a teacher with a password, and the class board's numbers.

Classroom mode is on when ``$TL_TEACHER_PASSWORD`` is set and not empty. Then every student gives
a name once per browser session (or the teacher's link carries it: ``?student=NAME``); runs and
uploads carry that name as their owner, and a student sees and stops only their own. The teacher
unlocks with the password: the class board and "stop any run". Without a password nothing of
this applies: no name is asked, everyone sees every run and anyone can stop any run.

A name is a label, not a login: it keeps a class's runs apart, it does not protect them from a
student who types another's name. The password is what guards the board and "stop any run".

The board (:func:`board_table`) puts everyone's runs in one table, one row per run, and pools the
final validation accuracy per group (strategy, frozen depth or seed) as mean, spread and count, so
a class can split a sweep (each student one freeze depth or one seed) and read the pooled result.
Pure: no streamlit here (``pages/_classroom.py`` and ``pages/board.py`` draw it).
"""
from __future__ import annotations

import hmac
import os
import unicodedata
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urlencode

import pandas as pd

from tl_core.models.strategies import STRATEGIES

PASSWORD_ENV = "TL_TEACHER_PASSWORD"
TEACHER = "teacher"  # the owner of the runs a teacher launches without giving a name
MAX_NAME = 40
# group_by key -> the column it groups by (and its heading on the board)
GROUPS = {"strategy": "strategy", "depth": "frozen blocks", "seed": "seed"}
UNKNOWN = "unknown"


# ------------------------------------------------------------------ who is who
def classroom_mode() -> bool:
    """Whether a teacher password is set (``$TL_TEACHER_PASSWORD``, not empty)."""
    return bool(os.environ.get(PASSWORD_ENV, ""))


def check_teacher(password: str | None) -> bool:
    """Whether ``password`` is the teacher's (a constant-time comparison); False outside classroom mode."""
    secret = os.environ.get(PASSWORD_ENV, "")
    if not secret or not password:
        return False
    return hmac.compare_digest(str(password).encode(), secret.encode())


def clean_student_name(text) -> str:
    """A student's name, trimmed: 1 to 40 characters, no control characters. Raises ValueError with
    one line that says what to do. The name is shown as plain text wherever it appears."""
    name = " ".join(str(text or "").split())  # trim; newlines and runs of spaces become one space
    if not name:
        raise ValueError("Your name is empty. What to do: type your first name (or a nickname).")
    if len(name) > MAX_NAME:
        raise ValueError(f"That name is {len(name)} characters long. What to do: use at most {MAX_NAME}.")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ValueError("That name holds control characters. What to do: type it with letters and digits.")
    if name.casefold() == TEACHER:
        raise ValueError(f"'{TEACHER}' is kept for the teacher. What to do: type your own name.")
    return name


def student_link(base_url: str, name: str, page: str = "") -> str:
    """A link that opens the app with ``name`` already given (the teacher hands these out)."""
    return f"{base_url.rstrip('/')}/{page.strip('/')}?{urlencode({'student': clean_student_name(name)})}"


def may_see(run_owner: str | None, me: str | None, teacher: bool) -> bool:
    """Whether the run of ``run_owner`` is listed for ``me`` by default (everything outside classroom mode)."""
    return not classroom_mode() or teacher or run_owner == me


def may_stop(run_owner: str | None, me: str | None, teacher: bool) -> bool:
    """Whether ``me`` may stop a run of ``run_owner``: outside classroom mode anyone may; in it the
    owner and the teacher (a run without an owner, too, as the store allows)."""
    return not classroom_mode() or teacher or run_owner is None or run_owner == me


def stop_rights(me: str | None, teacher: bool) -> dict:
    """Keyword arguments for ``RunStore.request_stop``: outside classroom mode anyone has the teacher's right."""
    return {"by": me, "teacher": teacher or not classroom_mode()}


# ------------------------------------------------------------------ the class board
class Board(NamedTuple):
    runs: pd.DataFrame  # one row per run
    pooled: pd.DataFrame  # one row per group: mean, std, n, min, max of the final validation accuracy


def frozen_depth(config: Mapping) -> int | None:
    """How many blocks a run froze at its start: its per-block plan, else ``freeze_blocks``, else 0 for
    the strategies that freeze nothing; None when the config alone cannot tell (e.g. a CLI feature
    extraction run: everything but the head, however many blocks that is)."""
    plan = config.get("plan")
    if isinstance(plan, Mapping) and plan:
        return sum(bool(s.get("frozen")) for s in plan.values() if isinstance(s, Mapping))
    if config.get("freeze_blocks") is not None:
        return int(config["freeze_blocks"])
    return 0 if config.get("strategy") in ("scratch", "full") else None


def _group(config: Mapping, group_by: str) -> tuple[tuple, str]:
    """(sort key, label) of a run's group."""
    if group_by == "strategy":
        key = config.get("strategy")
        order = list(STRATEGIES).index(key) if key in STRATEGIES else len(STRATEGIES)
        return (order, str(key)), STRATEGIES[key].short if key in STRATEGIES else str(key or UNKNOWN)
    value = frozen_depth(config) if group_by == "depth" else config.get("seed")
    if value is None:
        return (1, 0), UNKNOWN
    return (0, int(value)), str(int(value))


def board_table(runs: Iterable, group_by: str = "strategy") -> Board:
    """Everyone's runs (``RunInfo`` objects) for the class board, grouped by ``group_by`` (a key of
    ``GROUPS``: strategy, depth = frozen blocks at the start, or seed).

    ``runs``: one row per run (student, run, status, group, accuracy, ...), in group order. ``pooled``:
    one row per group that has runs with a final validation accuracy: mean, std (sample, ddof=1;
    NaN for a single run), n, min and max. Runs still training, or without an accuracy, are listed
    in ``runs`` but not pooled."""
    if group_by not in GROUPS:
        raise ValueError(f"unknown grouping {group_by!r}. What to do: use one of {', '.join(GROUPS)}.")
    from tl_core.training.config import TrainConfig

    defaults = TrainConfig().to_dict()  # a stored config may leave out fields at their defaults
    rows = []
    for r in runs:
        cfg, s = {**defaults, **(r.config or {})}, r.summary or {}
        order, label = _group(cfg, group_by)
        acc = s.get("final_val_acc")
        rows.append({
            "group": label, "student": getattr(r, "owner", None) or "", "run": r.name, "status": r.status,
            "final acc": float(acc) if acc is not None else float("nan"), "best acc": s.get("best_val_acc"),
            "strategy": _group(cfg, "strategy")[1], "frozen blocks": frozen_depth(cfg), "seed": cfg.get("seed"),
            "backbone": cfg.get("backbone"), "time (s)": round(s["wall_s"], 1) if s.get("wall_s") else None,
            "id": r.id, "_order": order,
        })
    columns = ["group", "student", "run", "status", "final acc", "best acc", "strategy", "frozen blocks", "seed",
               "backbone", "time (s)", "id"]
    if not rows:
        return Board(pd.DataFrame(columns=columns), pd.DataFrame(columns=["group", "mean", "std", "n", "min", "max"]))
    table = pd.DataFrame(rows).sort_values(["_order", "student", "run"], kind="stable")
    order = list(dict.fromkeys(table["group"]))
    done = table.dropna(subset=["final acc"])
    pooled = (done.groupby("group", sort=False)["final acc"].agg(["mean", "std", "count", "min", "max"])
              .rename(columns={"count": "n"}).reindex([g for g in order if g in set(done["group"])]).reset_index())
    pooled["n"] = pooled["n"].astype(int)
    return Board(table[columns].reset_index(drop=True), pooled)


def board_summary(board: Board) -> str:
    """One line for the board: how many runs, by how many students, and how many have finished."""
    t = board.runs
    students = sorted({s for s in t["student"] if s})
    done = int(t["final acc"].notna().sum())
    who = f" by {len(students)} student{'s' if len(students) != 1 else ''}" if students else ""
    return f"{len(t)} run{'s' if len(t) != 1 else ''}{who}; {done} of {len(t)} finished with an accuracy."
