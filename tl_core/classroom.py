"""Classroom mode: who is who (a school sign-in, or names with a teacher's password), and the class board's numbers.

Classroom mode is on when ``$TL_TEACHER_PASSWORD`` is set and not empty, or when the app has a school
sign-in (an ``[auth]`` section in Streamlit's secrets: the pages call :func:`use_sign_in`). Runs and
uploads carry their owner's name, and a student sees and stops only their own. Without either, nothing
of this applies: no name is asked, everyone sees every run and anyone can stop any run.

- **Sign-in** (OpenID Connect): the owner name is the verified identity (:func:`identity`: the email,
  else the subject); the teachers are listed in ``$TL_TEACHERS`` (emails or subjects, comma-separated).
- **Password**: a student gives a name, or opens a join link that carries the name and its HMAC
  (:func:`student_link`, :func:`join_name`), keyed by a secret generated once in the runs folder
  (:func:`class_secret`, mode 0600). With ``$TL_CLASS_SIGNED_LINKS=1`` only a signed link admits a name,
  so nobody becomes "Ada" without Ada's link; otherwise a typed name is a label, not a login. The
  teacher unlocks with the password; the page then trades a one-time ticket (:class:`Tickets`) at a
  server route for an expiring signed cookie (:func:`teacher_cookie`), so a reload stays unlocked.

The board (:func:`board_table`) puts everyone's runs in one table, one row per run, and pools the
final validation accuracy per group (strategy, frozen depth or seed) as mean, spread and count, so
a class can split a sweep (each student one freeze depth or one seed) and read the pooled result.
Pure: no streamlit here (``pages/_classroom.py``, ``pages/_routes.py`` and ``pages/board.py`` use it).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import os
import secrets
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode

import pandas as pd

from tl_core.models.strategies import STRATEGIES

PASSWORD_ENV = "TL_TEACHER_PASSWORD"
TEACHERS_ENV = "TL_TEACHERS"  # with a sign-in: the teachers' emails or subjects, comma-separated
SIGNED_LINKS_ENV = "TL_CLASS_SIGNED_LINKS"  # "1": a name is admitted only from a signed join link
SECRET_FILE = "class_secret"  # in the runs folder: the key of join links and of the teacher's cookie
TEACHER_COOKIE = "tl_teacher"
TEACHER_HOURS = 12  # how long the teacher's cookie keeps the board unlocked
MAX_IDENTITY = 254  # an email address's longest
TEACHER = "teacher"  # the owner of the runs a teacher launches without giving a name
MAX_NAME = 40
# group_by key -> the column it groups by (and its heading on the board)
GROUPS = {"strategy": "strategy", "depth": "frozen blocks", "seed": "seed"}
UNKNOWN = "unknown"


# ------------------------------------------------------------------ who is who
_SIGN_IN = {"on": False}


def use_sign_in(on: bool) -> None:
    """Tell this module whether the app has a school sign-in (an ``[auth]`` section in its secrets: a
    process-wide setting, like the secrets). The pages call it before anything here is asked."""
    _SIGN_IN["on"] = bool(on)


def sign_in_mode() -> bool:
    return _SIGN_IN["on"]


def classroom_mode() -> bool:
    """Whether a teacher password is set (``$TL_TEACHER_PASSWORD``, not empty) or the app has a sign-in."""
    return bool(os.environ.get(PASSWORD_ENV, "")) or sign_in_mode()


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


def identity(claims: Mapping) -> str | None:
    """The owner name of a signed-in user (``st.user``'s claims): the email, unless the provider says it is
    not verified; else the subject (``sub``); None when neither is there."""
    email = " ".join(str(claims.get("email") or "").split())
    if email and claims.get("email_verified", True) is not False:
        return email[:MAX_IDENTITY]
    sub = " ".join(str(claims.get("sub") or "").split())
    return sub[:MAX_IDENTITY] or None


def listed_teacher(who: str | None) -> bool:
    """Whether ``who`` (an :func:`identity`) is one of ``$TL_TEACHERS`` (case does not matter)."""
    listed = {t.strip().casefold() for t in os.environ.get(TEACHERS_ENV, "").split(",") if t.strip()}
    return bool(who) and who.casefold() in listed


# ------------------------------------------------------------------ signed join links
def class_secret(runs_dir) -> bytes:
    """The server's secret (32 random bytes): generated once, kept in ``runs_dir/class_secret``, readable
    by its owner only (mode 0600; a looser mode is tightened). It keys the join links and the teacher's
    cookie: deleting the file voids every link handed out."""
    path = Path(runs_dir) / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{SECRET_FILE}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # atomic: a second process that raced us keeps the first secret
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ValueError(f"The class secret {path} is damaged. What to do: delete it; the app makes a new one "
                         "(the join links handed out with the old one stop working).")
    return secret


def _mac(secret: bytes, purpose: str, *parts: str) -> str:
    """A URL-safe HMAC-SHA256 (144 bits) of ``parts`` for one ``purpose`` (a link's MAC is no cookie's)."""
    digest = hmac.new(secret, "\0".join((purpose, *parts)).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def _same(a, b: str) -> bool:
    return hmac.compare_digest(str(a).encode(), b.encode())


def signed_links_required() -> bool:
    """Whether only a signed join link admits a name (``$TL_CLASS_SIGNED_LINKS=1``)."""
    return os.environ.get(SIGNED_LINKS_ENV, "").strip() == "1"


def sign_name(name: str, secret: bytes) -> str:
    """The signature of a student's (cleaned) name, as a join link carries it."""
    return _mac(secret, "join", clean_student_name(name))


def join_name(name, signature, secret: bytes) -> str:
    """The name a student joins with (typed, or from a link with its ``signature``), cleaned. Raises
    ValueError (one line that says what to do) for a bad name, a signature that does not match it (a
    changed link), and a name without a signature while ``$TL_CLASS_SIGNED_LINKS=1``."""
    clean = clean_student_name(name)
    if signature:
        if not _same(signature, sign_name(clean, secret)):
            raise ValueError("This join link was changed: its name and its signature do not match. "
                             "What to do: open the link exactly as your teacher gave it.")
    elif signed_links_required():
        raise ValueError(f"This class joins with personal links only, and the name '{clean}' came without one. "
                         "What to do: open the join link your teacher gave you.")
    return clean


def student_link(base_url: str, name: str, page: str = "", secret: bytes | None = None) -> str:
    """A link that opens the app with ``name`` already given (the teacher hands these out); signed with
    ``secret``, it admits that name when ``$TL_CLASS_SIGNED_LINKS=1``."""
    query = {"student": clean_student_name(name)}
    if secret is not None:
        query["sig"] = sign_name(query["student"], secret)
    return f"{base_url.rstrip('/')}/{page.strip('/')}?{urlencode(query)}"


def join_links(base_url: str, names: str, secret: bytes) -> pd.DataFrame:
    """One signed join link per name (``names``: one per line; blank lines and repeats skipped), as a table
    with the columns name and link. Raises ValueError naming the line of a bad name."""
    rows = {}
    for i, line in enumerate(str(names or "").splitlines(), 1):
        if not line.strip():
            continue
        try:
            name = clean_student_name(line)
        except ValueError as exc:
            raise ValueError(f"Line {i}: {exc}") from None
        rows.setdefault(name.casefold(), {"name": name, "link": student_link(base_url, name, secret=secret)})
    if not rows:
        raise ValueError("No names yet. What to do: type the students' names, one per line.")
    return pd.DataFrame(list(rows.values()), columns=["name", "link"])


def join_links_page(links: pd.DataFrame, title: str = "Transfer Learning Lab: join links") -> str:
    """A printable HTML page of join links (cut along the lines: one slip per student). Names and links
    are escaped: a name is text, never markup."""
    slips = "\n".join(
        f'<div class="slip"><b>{html.escape(r.name)}</b><br><a href="{html.escape(r.link)}">{html.escape(r.link)}</a>'
        "<br><small>Your personal link: open it to join the class. Keep it to yourself.</small></div>"
        for r in links.itertuples())
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>'
            "body{font-family:sans-serif;margin:1cm}.slip{border-bottom:1px dashed #888;padding:.5cm 0;"
            "break-inside:avoid;word-break:break-all}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>\n{slips}\n</body></html>\n")


# ------------------------------------------------------------------ the teacher's cookie
def _password_tag() -> str:
    """Binds a teacher cookie to the password it was earned with: a new password voids the old cookies."""
    return hashlib.sha256(os.environ.get(PASSWORD_ENV, "").encode()).hexdigest()


def teacher_cookie(secret: bytes, now: float | None = None, hours: float = TEACHER_HOURS) -> str:
    """The value of the teacher's cookie: its expiry time and a MAC of it (nothing secret in it)."""
    expires = str(int((time.time() if now is None else now) + hours * 3600))
    return f"{expires}.{_mac(secret, 'teacher', expires, _password_tag())}"


def check_teacher_cookie(value, secret: bytes, now: float | None = None) -> bool:
    """Whether ``value`` is a teacher cookie made with ``secret`` and the current password, not expired."""
    if not value or not os.environ.get(PASSWORD_ENV, ""):
        return False
    expires, _, mac = str(value).partition(".")
    if not expires.isdigit() or int(expires) <= (time.time() if now is None else now):
        return False
    return _same(mac, _mac(secret, "teacher", expires, _password_tag()))


class Tickets:
    """One-time tickets, kept in this process: after the password is checked, the page hands the browser a
    ticket (never the password) to trade at a server route for the teacher's cookie. A ticket is good
    once, for ``ttl`` seconds."""

    def __init__(self, ttl: float = 60.0):
        self.ttl = ttl
        self._open: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        ticket = secrets.token_urlsafe(32)
        with self._lock:
            self._open = {t: exp for t, exp in self._open.items() if exp > now}  # forget expired ones
            self._open[ticket] = now + self.ttl
        return ticket

    def redeem(self, ticket, now: float | None = None) -> bool:
        """True once for a ticket issued here and not expired; False for anything else."""
        with self._lock:
            expires = self._open.pop(str(ticket or ""), None)
        return expires is not None and expires > (time.time() if now is None else now)


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
