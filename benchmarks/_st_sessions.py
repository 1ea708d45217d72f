"""Protocol-level browser sessions of a running ``streamlit run app.py`` server, for bench_classroom.

Why: the benchmark measures the Streamlit server's CPU while 30 sessions follow live runs on the Train
page; 30 headless Chromium tabs cannot even load on a 2-core machine, yet the server's work per session
(script and fragment reruns, deltas over the websocket) is the same whoever sends the messages. So each
session sends what Streamlit 1.67's frontend sends (replayed against the frames a real Chromium sent on
the Train page: equal BackMsgs), through the server's own Origin and XSRF checks. Per session:
GET the page, ``/_stcore/health`` and ``/_stcore/host-config`` (the ``_streamlit_xsrf`` cookie); open
``/_stcore/stream`` with that cookie, the page's ``Origin`` and subprotocols ``["streamlit", <cookie>]``;
send ``rerun_script`` {query string, ``page_name`` = URL path, empty widget states, context info}. Each
``auto_rerun`` (``st.fragment(run_every=...)``) starts a timer, like the frontend's ``setInterval``, that
sends ``rerun_script`` {query string, ``page_script_hash`` of the last ``new_session``, ``fragment_id``,
``is_auto_rerun``, every widget's value, the hashes of cached messages}; a full run's ``new_session`` and
``stop_auto_rerun`` clear timers. Widget values are registered as the frontend's widgets do (default, or
the server's ``set_value``; text, number, slider, selectbox and checkbox only); ``cacheable`` messages are
cached by hash, ``ref_hash`` resolved from that cache and the cache aged on ``script_finished`` as the
frontend's ForwardMsgCache does; ``page_info_changed`` updates the query string. No reconnection.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import threading
import urllib.parse
import urllib.request

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

FINISHED_OK, FINISHED_EARLY_FOR_RERUN, FRAGMENT_OK = 0, 2, 3  # ForwardMsg.ScriptFinishedStatus
SELECT_SLIDER, INT = 2, 0  # Slider.Type, NumberInput.DataType


def _widget_state(el) -> WidgetState | None:
    """The value the frontend registers for a new widget element (None: not a widget, or no value)."""
    kind = el.WhichOneof("type")
    w, s = getattr(el, kind), WidgetState()
    if kind in ("text_input", "text_area") and (w.set_value or w.HasField("default")):
        s.string_value = w.value if w.set_value else w.default
    elif kind == "number_input" and (w.set_value or w.HasField("default")):
        v = w.value if w.set_value else w.default
        if w.data_type == INT:
            s.int_value = int(v)
        else:
            s.double_value = v
    elif kind == "checkbox":
        s.bool_value = w.value if w.set_value else w.default
    elif kind == "selectbox" and (w.HasField("raw_value") or w.HasField("default")):
        s.string_value = w.raw_value if w.HasField("raw_value") else w.options[w.default]
    elif kind == "slider" and w.type == SELECT_SLIDER:
        s.string_array_value.data.extend(w.raw_value if w.set_value else [w.options[int(i)] for i in w.default])
    elif kind == "slider":
        s.double_array_value.data.extend(w.value if w.set_value else w.default)
    else:
        return None
    s.id = w.id
    return s


def _has_points(spec: str) -> bool:
    """A plotly figure JSON with a trace whose ``x`` is not empty (a list, or plotly's typed ``bdata``)."""
    xs = [t.get("x") for t in json.loads(spec or "{}").get("data") or []]
    return any(len(x) if isinstance(x, list) else isinstance(x, dict) and bool(x.get("bdata")) for x in xs)


class _Session:
    def __init__(self, base: str, path: str):
        self.base = base.rstrip("/")
        url = urllib.parse.urlsplit(f"{self.base}/{path.lstrip('/')}")
        self.page_url, self.origin = url.geturl(), f"{url.scheme}://{url.netloc}"
        self.context_url = self.origin + url.path
        self.page_name = url.path[len(urllib.parse.urlsplit(self.base).path):].strip("/")
        self.query, self.page_hash, self.max_age, self.ws = url.query, "", 2, None
        self.widgets: dict[str, WidgetState] = {}
        self.seen: set[str] = set()  # widget ids drawn by the current full run
        self.cache: dict[str, list] = {}  # hash -> [run count when last used, fragment id, message]
        self.runs, self.got_new_session = 0, False
        self.timers: dict[str, tuple[float, asyncio.Task]] = {}  # fragment id -> (interval, timer)
        self.stats = dict(connected=False, script_runs=0, full_runs=0, fragment_runs=0, reruns_sent=0, elements=0,
                          exceptions=0, plotly_with_points=False, bytes_received=0, errors=[])

    def _http(self) -> str:
        """GET what the browser gets before its websocket; returns the Cookie header."""
        jar = http.cookiejar.CookieJar()
        get = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(jar))
        for url in (self.page_url, self.base + "/_stcore/health", self.base + "/_stcore/host-config"):
            get.open(url, timeout=30).read()
        return "; ".join(f"{c.name}={c.value}" for c in jar)

    async def run(self) -> None:
        try:
            cookie = await asyncio.to_thread(self._http)
            xsrf = dict(c.split("=", 1) for c in cookie.split("; ") if "=" in c).get("_streamlit_xsrf", "")
            async with connect("ws" + self.base[4:] + "/_stcore/stream", origin=self.origin, proxy=None,
                               subprotocols=["streamlit", xsrf], additional_headers={"Cookie": cookie},
                               max_size=None, ping_interval=None) as ws:
                self.ws, self.stats["connected"] = ws, True
                await self._rerun()
                async for raw in ws:
                    self.stats["bytes_received"] += len(raw)
                    self._handle(ForwardMsg.FromString(raw))
            self.stats["errors"].append(f"closed by the server: {ws.close_code} {ws.close_reason}")
        except Exception as exc:  # refused, closed with an error code, a bad message: the caller reads it
            self.stats["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            self.stats["connected"] = False
            self._stop_timers(self.timers)

    async def _rerun(self, fragment_id: str = "") -> None:
        msg = BackMsg()
        r = msg.rerun_script
        r.query_string, r.fragment_id, r.is_auto_rerun = self.query, fragment_id, bool(fragment_id)
        r.page_script_hash, r.page_name = (self.page_hash, "") if self.page_hash else ("", self.page_name)
        r.widget_states.SetInParent()
        r.widget_states.widgets.extend(self.widgets.values())
        r.cached_message_hashes.extend(self.cache)
        c = r.context_info
        c.timezone, c.timezone_offset, c.locale, c.url = "UTC", 0, "en-US", self.context_url
        c.is_embedded, c.color_scheme = False, "light"
        self.got_new_session = False
        self.stats["reruns_sent"] += 1
        await self.ws.send(msg.SerializeToString())

    async def _every(self, fragment_id: str, interval: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        with contextlib.suppress(ConnectionClosed):  # run() records why it closed
            while True:
                due = max(due + interval, loop.time())
                await asyncio.sleep(due - loop.time())
                await self._rerun(fragment_id)

    def _stop_timers(self, fragment_ids) -> None:
        for f in list(fragment_ids):
            if f in self.timers:
                self.timers.pop(f)[1].cancel()

    def _handle(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "ref_hash":
            if msg.ref_hash not in self.cache:
                raise RuntimeError(f"reference to a message this session never cached: {msg.ref_hash}")
            entry = self.cache[msg.ref_hash]
            entry[0], msg = self.runs, entry[2]
            kind = msg.WhichOneof("type")
        elif msg.metadata.cacheable and msg.hash:
            self.cache.setdefault(msg.hash, [self.runs, msg.delta.fragment_id, msg])[0] = self.runs
        if kind == "new_session":
            self.page_hash, self.got_new_session = msg.new_session.page_script_hash, True
            self.max_age = msg.new_session.config.max_cached_message_age or self.max_age
            if not msg.metadata.run.fragment_ids:  # a full run: the frontend clears its timers
                self._stop_timers(self.timers)
                self.seen = set()
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            self._element(msg.delta.new_element)
        elif kind == "auto_rerun" and msg.auto_rerun.fragment_id:
            frag, interval = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
            if self.timers.get(frag, (None,))[0] != interval:
                self._stop_timers([frag])
                self.timers[frag] = (interval, asyncio.create_task(self._every(frag, interval)))
        elif kind == "stop_auto_rerun":
            self._stop_timers(msg.stop_auto_rerun.fragment_ids)
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "script_finished":
            self._finished(msg.script_finished, msg.metadata)

    def _element(self, el) -> None:
        self.stats["elements"] += 1
        self.stats["exceptions"] += el.WhichOneof("type") == "exception"
        if el.WhichOneof("type") == "plotly_chart" and not self.stats["plotly_with_points"]:
            self.stats["plotly_with_points"] = _has_points(el.plotly_chart.spec)
        state = _widget_state(el)
        if state is not None:  # a widget keeps its value across reruns unless the server sets it
            self.seen.add(state.id)
            if state.id not in self.widgets or getattr(el, el.WhichOneof("type")).set_value:
                self.widgets[state.id] = state

    def _finished(self, status: int, meta) -> None:
        frags = list(meta.run.fragment_ids)
        if status in (FINISHED_OK, FRAGMENT_OK):
            self.stats["script_runs"] += 1
            self.stats["fragment_runs" if frags else "full_runs"] += 1
            if not frags:  # the frontend drops the states of widgets the run did not draw
                self.widgets = {k: v for k, v in self.widgets.items() if k in self.seen}
        if meta.HasField("run") and status != FINISHED_EARLY_FOR_RERUN and self.got_new_session:
            self.runs += 1  # ForwardMsgCache.incrementRunCount
            for h, (used, frag, _) in list(self.cache.items()):
                if (not frags or frag in frags) and self.runs - used > self.max_age:
                    del self.cache[h]


class Sessions:
    """``with Sessions("http://127.0.0.1:8501", ["train?run=ID&student=s1", ...]) as s: ... s.stats()``:
    one protocol-level browser session per path, all in one asyncio loop on a background thread."""

    def __init__(self, url: str, paths: list[str]):
        self._sessions = [_Session(url, p) for p in paths]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="st-sessions", daemon=True)
        self._tasks: list[asyncio.Task] = []

    def __enter__(self) -> Sessions:
        async def start():
            return [asyncio.create_task(s.run()) for s in self._sessions]
        self._thread.start()
        self._tasks = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)
        return self

    def __exit__(self, *exc) -> None:
        async def close():  # closes each websocket, as closing the tab does
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def stats(self) -> list[dict]:
        """Per session: connected, script_runs (= full_runs + fragment_runs), reruns_sent, elements,
        exceptions, plotly_with_points (a plotly chart with points has arrived), bytes_received, errors."""
        return [dict(s.stats, errors=list(s.stats["errors"])) for s in self._sessions]


if __name__ == "__main__":
    import argparse
    import time

    ap = argparse.ArgumentParser(description="Open protocol-level Streamlit sessions; print their stats.")
    ap.add_argument("url", help="e.g. http://127.0.0.1:8501")
    ap.add_argument("paths", nargs="+", help='e.g. "train?run=ID&student=student1"')
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    with Sessions(args.url, args.paths) as sessions:
        t0 = time.monotonic()
        while (left := args.seconds - (time.monotonic() - t0)) > 0:
            time.sleep(min(5.0, left))
            print(f"{time.monotonic() - t0:5.1f} s  script runs:", [s["script_runs"] for s in sessions.stats()])
        for s in sessions.stats():
            print(json.dumps(s))
