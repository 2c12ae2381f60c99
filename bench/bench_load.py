"""Server capacity without browsers: N visitors open a page at once, at the protocol level.

Run from the repository root::

    python bench/bench_load.py                         # N = 1, 10, 30, 60 on the Gallery
    python bench/bench_load.py --visitors 1 5 --quick  # a short check (no 60 s wait after closing)

Each visitor does what a browser does with a Voilà page (read from the installed Voilà 0.5,
jupyter_server and ipywidgets 8), with no browser:

1. ``GET /voila/render/gallery.ipynb?experiment=NAME``: Voilà hands out a preheated kernel (or
   starts one) and streams the rendered page; the page's ``jupyter-config-data`` names the
   kernel (``kernelId``). A 503 answer is the server's "full" page.
2. ``GET /api/kernels/<id>`` (the frontend's ``KernelAPI.getKernelModel``), then the kernel
   websocket ``/api/kernels/<id>/channels?session_id=...`` (Jupyter's JSON wire format; binary
   frames for messages with buffers) and a ``kernel_info_request``.
3. The widget state as ipywidgets 8's manager asks for it (``_loadFromKernel``): a
   ``comm_open`` of target ``jupyter.widget.control`` and ``{"method": "request_states"}``;
   the kernel answers ``update_states`` with every widget's state. This is the moment the
   visitor "has its widget state": a browser can draw the page from here.
4. One view change: the displayed "Layer" dropdown (found by walking the widget tree from the
   page's widget-view output) gets ``{"method": "update", "state": {"index": 1}}``, and the
   visitor waits until the kernel is idle again after it (all redrawn plots sent).
5. Once every visitor is done (they stay on the page meanwhile), each closes: the websocket
   closes and the page's ``beforeunload`` request ``POST /voila/api/shutdown/<id>`` with the
   ``_xsrf`` cookie's value goes out, as ``navigator.sendBeacon`` sends it.

Per N the bench starts its own server (``python -m signatures serve`` on 127.0.0.1, with
``--class-size C`` when the option exists), waits for its preheated kernels to be ready and
the machine to be quiet, sends the N visitors at once and, after they close, checks every
visited kernel by its id for ``--close-wait`` seconds (60). The server and everything it
started are always stopped. It records: time until each visitor has its widget state, the
view change's time, failures and "full" answers (and how fast they came), peak RSS of the
server's whole process tree (server, page kernels, Dask workers), kernels alive after closing.

The store: the canonical experiments of the default store (``runs/``) when it has them, else two
small scikit-learn digits experiments built into a temporary store. Results go to
``bench/results/load.json``; ``docs/performance-class.md`` describes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote, urlencode

from _common import free_port, other_load, process_kind, say, table, tree_rss_mb, verdict  # noqa: E402  (bench/ on sys.path)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "load.json"
CANONICAL = ("1v7-mlp", "1v3-mlp", "1v7-cnn", "fashion-mlp")

TARGET_N = 30           # visitors at once that must all be served ...
TARGET_STATE_S = 30.0   # ... each with its widget state within this many seconds of the start,
TARGET_RSS_GIB = 8.0    # ... with the server's whole process tree under this peak RSS,
TARGET_FAILURES = 0     # ... and no failure.

VISITOR_TIMEOUT_S = 240.0   # a visitor still not done by then counts as a hang
RESERVE_GIB = 1.5           # stop the run (visitors and server) when the machine's free memory falls below
MAX_VISITORS = 100

#: Voilà's log line when a page's pool of preheated kernels is full.
POOL_FILLED = re.compile(r"Kernel pool of (\S+) is filled with (\d+) kernel")


def now_iso():
    return datetime.now(timezone.utc).isoformat()


# --------------------------------------------------------------------------- the store


def stored_names(store):
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if (p / "manifest.json").is_file() and (p / "arrays.npz").is_file())


def default_store():
    env = os.environ.get("SIGNATURES_STORE")
    return Path(env) if env else REPO / "runs"


def prepare_store(args, tmp):
    """(store folder, experiment names): canonical ones copied from the default store, else two built."""
    if args.store:
        names = stored_names(args.store)
        if not names:
            raise SystemExit(f"error: --store {args.store!r} holds no experiments")
        return Path(args.store), names
    source = default_store()
    canonical = [n for n in CANONICAL if n in stored_names(source)]
    store = Path(tmp) / "store"
    store.mkdir()
    if canonical:
        say(f"copying the canonical experiments {canonical} of {source} (the server only reads its copy)")
        for name in canonical:
            shutil.copytree(source / name, store / name)
        return store, canonical
    say(f"no canonical experiments in {source}: building two small digits experiments in {store}")
    built = []
    for name, digits, unseen in (("digits-1v7", ("1", "7"), ("3", "4")), ("digits-0v8", ("0", "8"), ("6",))):
        cmd = [sys.executable, "-m", "signatures", "run", "--dataset", "digits", "--digits", *digits,
               "--anomalies", *unseen, "--all-unseen", "--hidden", "32", "16", "--epochs", "20", "--seed", "0",
               "--out", str(store / name), "--quiet"]
        t = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if out.returncode != 0:
            raise SystemExit(f"error: building {name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        say(f"built {name} in {time.perf_counter() - t:.0f} s")
        built.append(name)
    return store, built


# --------------------------------------------------------------------------- the server


def serve_options():
    """The options ``python -m signatures serve`` has today (from its --help)."""
    out = subprocess.run([sys.executable, "-m", "signatures", "serve", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    return set(re.findall(r"(--[a-z][a-z-]+)", out.stdout))


class Server:
    """``python -m signatures serve`` on loopback in its own session; :meth:`stop` ends it and all it started."""

    def __init__(self, store, logdir, *, class_size=None, jobs=True, options=frozenset(), extra=()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.log_path = Path(logdir) / f"serve-{self.port}.log"
        self.log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "signatures", "serve", "--port", str(self.port), "--address", "127.0.0.1",
               "--store", str(store)]
        self.flags = []
        if class_size is not None and "--class-size" in options:
            self.flags += ["--class-size", str(class_size)]
        if not jobs and "--no-jobs" in options:
            self.flags.append("--no-jobs")
        self.flags += list(extra)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        env.pop("SIGNATURES_PLOTS", None)  # the site's own renderer
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd + self.flags, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                     start_new_session=True)
        self.seen = set()  # every pid of the tree, so that none outlives the bench

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def pool_fills(self):
        """{notebook: kernels in its pool} as Voilà last logged them."""
        return {Path(nb).name: int(n) for nb, n in POOL_FILLED.findall(self.log_text())}

    def tree(self):
        import psutil

        try:
            procs = [psutil.Process(self.proc.pid)] + psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update(p.pid for p in procs)
        return procs

    def wait_ready(self, *, timeout=600, quiet_s=4.0):
        """Wait for HTTP, the Gallery pool, and the tree to be CPU-quiet ``quiet_s`` (preheated kernels ready)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.base + "signatures/api/experiments", timeout=5).read()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server ended ({self.proc.returncode}); see {self.log_path}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer in {timeout} s; see {self.log_path}") from None
                time.sleep(0.5)
        http_s = time.monotonic() - self.t0
        while "gallery.ipynb" not in self.pool_fills():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Gallery's kernel pool was not filled; see {self.log_path}")
            time.sleep(0.5)
        cpu, quiet_since = {}, None
        while time.monotonic() < deadline:
            kernels, busy = 0.0, False  # CPU seconds in the last second: the kernels together (34 kernels
            for p in self.tree():          # sharing 2 cores each use little), every other process alone (the
                try:                       # server and the Dask scheduler and workers tick while idle)
                    t = sum(p.cpu_times()[:2])
                    kind = process_kind(p)
                except Exception:  # noqa: BLE001  (a process that just ended)
                    continue
                if p.pid in cpu:
                    if kind == "kernel":
                        kernels += t - cpu[p.pid]
                    elif t - cpu[p.pid] > 0.3:
                        busy = True
                cpu[p.pid] = t
            busy = busy or kernels > 0.1
            now = time.monotonic()
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_s:
                break
            time.sleep(1.0)
        return {"http_s": round(http_s, 1), "ready_s": round(time.monotonic() - self.t0, 1),
                "pools": self.pool_fills()}

    def stop(self):
        import psutil

        self.tree()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        time.sleep(1.0)
        # Kernels run in sessions of their own: none may outlive the bench.
        for pid in sorted(self.seen - {self.proc.pid}):
            try:
                p = psutil.Process(pid)
                if p.create_time() <= time.time() and p.ppid() in (1, *self.seen):
                    p.kill()
            except psutil.Error:
                pass
        self.log.close()


class MemorySampler(threading.Thread):
    """Samples the RSS of the server's process tree every ``interval`` s; sets ``abort`` on low memory."""

    def __init__(self, pid, *, interval=0.5, reserve_gib=RESERVE_GIB):
        super().__init__(daemon=True)
        self.pid, self.interval, self.reserve = pid, interval, reserve_gib * 2**30
        self.peak = None
        self.samples = []
        self.abort = threading.Event()
        self.low_memory = None
        self._halt = threading.Event()

    def run(self):
        import psutil

        t0 = time.monotonic()
        while not self._halt.is_set():
            rss = tree_rss_mb(self.pid)
            if rss is not None:
                self.samples.append((round(time.monotonic() - t0, 1), rss["total"], rss["n_kernel"]))
                if self.peak is None or rss["total"] > self.peak["total"]:
                    self.peak = rss
            available = psutil.virtual_memory().available
            if available < self.reserve and not self.abort.is_set():
                self.low_memory = round(available / 2**30, 2)
                self.abort.set()
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


# --------------------------------------------------------------------------- one visitor


def _header(msg_type, session):
    return {"msg_id": uuid.uuid4().hex, "username": "bench", "session": session, "msg_type": msg_type,
            "version": "5.3", "date": now_iso()}


def _message(msg_type, content, session, channel="shell"):
    return {"header": _header(msg_type, session), "parent_header": {}, "metadata": {}, "content": content,
            "channel": channel, "buffers": []}


#: The kernel websocket protocol JupyterLab's services (and so Voilà's page) speak: binary frames of
#: 8-byte little-endian offsets, the channel, then header, parent header, metadata, content, buffers.
#: (Voilà 0.5's websocket handler reads every binary frame it sends as this protocol, so a client of
#: the legacy JSON protocol that receives a message with buffers sends the server into a loop.)
SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"


def encode_frame(msg):
    """A message dict as a v1 websocket frame (jupyter_server's ``serialize_msg_to_ws_v1``)."""
    parts = [json.dumps(msg[k]).encode("utf8") for k in ("header", "parent_header", "metadata", "content")]
    parts += list(msg.get("buffers", ()))
    channel = msg.get("channel", "shell").encode("utf8")
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(channel))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + channel + b"".join(parts)


def decode_frame(frame):
    """A v1 websocket frame as a message dict (with ``channel`` and ``buffers``)."""
    if isinstance(frame, str):  # the legacy JSON protocol, if the server chose it
        return json.loads(frame)
    n = int.from_bytes(frame[:8], "little")
    if not 3 <= n <= 1024:
        raise ValueError(f"not a v1 kernel websocket frame (offset count {n})")
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(n)]
    channel = frame[offsets[0]:offsets[1]].decode("utf8")
    parts = [frame[offsets[i]:offsets[i + 1]] for i in range(1, n - 1)]
    msg = {k: json.loads(part) for k, part in zip(("header", "parent_header", "metadata", "content"), parts)}
    msg["channel"], msg["buffers"] = channel, parts[4:]
    return msg


def page_config(html):
    """The ``jupyter-config-data`` JSON of a Voilà page, or {}."""
    m = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S)
    if not m:
        return {}
    try:
        return json.loads(m.group(1))
    except ValueError:
        return {}


def view_roots(html):
    """Model ids of the widget views a Voilà page displays."""
    return re.findall(r'widget-view\+json":\s*\{"model_id":\s*"([0-9a-f]+)"', html)


def find_control(states, roots, description="Layer"):
    """(model id, option count) of the displayed dropdown named ``description``, walking from ``roots``."""
    seen, todo, fallback = set(), list(roots), None
    while todo:
        mid = todo.pop(0)
        if mid in seen or mid not in states:
            continue
        seen.add(mid)
        entry = states[mid]
        state = entry.get("state", {})
        if entry.get("model_name") == "DropdownModel":
            n = len(state.get("_options_labels", ()))
            if n >= 2:
                if state.get("description") == description:
                    return mid, n
                fallback = fallback or (mid, n)
        todo.extend(re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state)))
    return fallback or (None, 0)


class Visit:
    """One visitor's outcome; times in seconds from the start of the run."""

    def __init__(self, i):
        self.i = i
        self.outcome = "pending"     # ok, full, failed, timeout
        self.stage = "page"
        self.error = ""
        self.http_status = None
        self.page_s = None
        self.state_s = None
        self.change_ms = None
        self.change_msgs = 0
        self.state_kb = None
        self.kernel_id = None
        self.close_status = None
        self.full_text = False

    def as_dict(self):
        return dict(vars(self))


async def visit(i, base, url, t0, room, *, timeout):
    """One visitor: page, kernel websocket, widget state, one view change; holds until all have answered, closes."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect

    v = Visit(i)
    http = AsyncHTTPClient()
    ws = None
    cookies = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left():
        return max(deadline - loop.time(), 0.1)

    def since():
        return round(time.monotonic() - t0, 3)

    def send(msg):
        ws.write_message(encode_frame(msg), binary=True)

    async def read(predicate, what):
        while True:
            frame = await asyncio.wait_for(ws.read_message(), left())
            if frame is None:
                raise ConnectionError(f"the kernel websocket closed while waiting for {what}")
            msg = decode_frame(frame)
            if predicate(msg):
                return msg, len(frame)

    try:
        resp = await http.fetch(HTTPRequest(url, request_timeout=left(), connect_timeout=min(30.0, left()),
                                            follow_redirects=False), raise_error=False)
        v.http_status = resp.code
        v.page_s = since()
        for line in resp.headers.get_list("Set-Cookie") if resp.headers else []:
            cookie = SimpleCookie()
            cookie.load(line)
            cookies.update({k: m.value for k, m in cookie.items()})
        body = resp.body.decode("utf8", "replace") if resp.body else ""
        if resp.code == 503:
            v.outcome = "full"
            v.full_text = "full" in body.lower()
            return v
        if resp.code == 599:
            raise TimeoutError(f"page: {resp.error}")
        if resp.code != 200:
            raise RuntimeError(f"page answered HTTP {resp.code}")
        kernel_id = page_config(body).get("kernelId")
        roots = view_roots(body)
        if not kernel_id:
            raise RuntimeError("the page names no kernel (kernelId)")
        v.kernel_id = kernel_id
        cookie_header = "; ".join(f"{k}={val}" for k, val in cookies.items())
        headers = {"Cookie": cookie_header} if cookie_header else {}

        v.stage = "kernel model"
        resp = await http.fetch(HTTPRequest(f"{base}api/kernels/{kernel_id}", headers=headers, request_timeout=left()),
                                raise_error=False)
        if resp.code != 200:
            raise RuntimeError(f"GET /api/kernels/<id> answered HTTP {resp.code}")

        v.stage = "websocket"
        session = uuid.uuid4().hex
        ws_url = f"ws{base[4:]}api/kernels/{kernel_id}/channels?session_id={session}"
        ws = await asyncio.wait_for(websocket_connect(HTTPRequest(ws_url, headers=headers), max_message_size=1 << 30,
                                                      subprotocols=[SUBPROTOCOL]), left())
        if ws.selected_subprotocol != SUBPROTOCOL:
            raise RuntimeError(f"the server chose the websocket protocol {ws.selected_subprotocol!r}, not {SUBPROTOCOL}")
        info = _message("kernel_info_request", {}, session)
        send(info)
        await read(lambda m: m.get("parent_header", {}).get("msg_id") == info["header"]["msg_id"]
                   and m["header"]["msg_type"] == "kernel_info_reply", "kernel_info_reply")

        v.stage = "widget state"
        control = uuid.uuid4().hex
        opened = _message("comm_open", {"comm_id": control, "target_name": "jupyter.widget.control", "data": {}},
                          session)
        opened["metadata"] = {"version": "1.0.0"}
        send(opened)
        send(_message("comm_msg", {"comm_id": control, "data": {"method": "request_states"}}, session))
        msg, size = await read(lambda m: m["header"]["msg_type"] == "comm_msg"
                               and m["content"].get("comm_id") == control
                               and m["content"].get("data", {}).get("method") == "update_states", "update_states")
        v.state_s = since()
        v.state_kb = round(size / 1024, 1)
        states = msg["content"]["data"]["states"]
        send(_message("comm_close", {"comm_id": control, "data": {}}, session))

        v.stage = "view change"
        model_id, n_options = find_control(states, roots)
        if model_id is None:
            raise RuntimeError("no dropdown with two options or more is displayed")
        index = 1 if states[model_id]["state"].get("index") != 1 else 0
        change = _message("comm_msg", {"comm_id": model_id,
                                       "data": {"method": "update", "state": {"index": index}, "buffer_paths": []}},
                          session)
        t = time.monotonic()
        send(change)
        counted = [0]

        def idle_after_change(m):
            if m["header"]["msg_type"] == "comm_msg" and m.get("parent_header", {}).get("msg_id") == \
                    change["header"]["msg_id"]:
                counted[0] += 1
            return (m["header"]["msg_type"] == "status" and m["content"].get("execution_state") == "idle"
                    and m.get("parent_header", {}).get("msg_id") == change["header"]["msg_id"])

        await read(idle_after_change, "the kernel's idle after the view change")
        v.change_ms = round((time.monotonic() - t) * 1000, 1)
        v.change_msgs = counted[0]
        v.outcome = "ok"
        v.stage = "done"
    except (asyncio.TimeoutError, TimeoutError) as exc:
        v.outcome, v.error = "timeout", f"{v.stage}: {exc or 'no answer in time'}"
    except asyncio.CancelledError:
        v.outcome, v.error = "failed", f"{v.stage}: cancelled (the run was stopped)"
    except Exception as exc:  # noqa: BLE001  (any failure of one visitor is recorded, the others go on)
        v.outcome, v.error = "failed", f"{v.stage}: {type(exc).__name__}: {exc}"
    finally:
        room.answered()
        if v.kernel_id:
            try:
                await asyncio.wait_for(room.all_done.wait(), max(left(), 5.0))
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            if ws is not None:
                ws.close()
            # The page's beforeunload: navigator.sendBeacon(POST voila/api/shutdown/<id>, FormData(_xsrf)).
            cookie_header = "; ".join(f"{k}={val}" for k, val in cookies.items())
            try:
                resp = await http.fetch(HTTPRequest(
                    f"{base}voila/api/shutdown/{v.kernel_id}", method="POST",
                    body=urlencode({"_xsrf": cookies.get("_xsrf", "")}),
                    headers={"Cookie": cookie_header, "Content-Type": "application/x-www-form-urlencoded"},
                    request_timeout=30), raise_error=False)
                v.close_status = resp.code
            except Exception as exc:  # noqa: BLE001
                v.close_status = f"{type(exc).__name__}"
    return v


async def kernels_alive(base, ids):
    """How many of the kernels ``ids`` the server still has (GET /api/kernels/<id>: 200), or "no answer"."""
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient()

    async def one(kernel_id):
        try:
            return (await http.fetch(f"{base}api/kernels/{kernel_id}", raise_error=False, request_timeout=60)).code
        except Exception:  # noqa: BLE001  (timeout or refused: the server did not answer)
            return None

    codes = await asyncio.gather(*(one(k) for k in ids))
    if any(c is None for c in codes):
        return f"{sum(1 for c in codes if c == 200)} (+{sum(1 for c in codes if c is None)} no answer)"
    return sum(1 for c in codes if c == 200)


class Room:
    """The visitors of one run: each says when it has its answer; all hold their pages until everyone has."""

    def __init__(self, n):
        self.n, self.count = n, 0
        self.all_done = asyncio.Event()

    def answered(self):
        self.count += 1
        if self.count >= self.n:
            self.all_done.set()


async def run_visitors(server, n, experiment, *, timeout, close_wait, abort):
    """N visitors at once; returns (visits, wall seconds until the last answer, kernels alive after closing)."""
    from tornado.httpclient import AsyncHTTPClient

    AsyncHTTPClient.configure(None, max_clients=max(4 * n, 20))
    url = f"{server.base}voila/render/gallery.ipynb?experiment={quote(experiment, safe='')}"
    room = Room(n)
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(visit(i, server.base, url, t0, room, timeout=timeout)) for i in range(n)]

    async def guard():  # low memory on the machine: stop every visitor at once
        while not all(t.done() for t in tasks):
            if abort.is_set():
                room.all_done.set()
                for t in tasks:
                    t.cancel()
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.ensure_future(guard())
    results = await asyncio.gather(*tasks, return_exceptions=True)
    watcher.cancel()
    visits = []
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            v = Visit(i)
            v.outcome, v.error = "failed", f"{type(r).__name__}: {r}"
            visits.append(v)
        else:
            visits.append(r)
    answered = [t for v in visits for t in (v.state_s, v.page_s) if t is not None]
    wall = max(answered) if answered else None
    ids = [v.kernel_id for v in visits if v.kernel_id]
    alive = {}
    if ids:
        closed = time.monotonic()
        for mark in sorted({m for m in (5, 20, close_wait) if 0 < m <= close_wait}):
            await asyncio.sleep(max(closed + mark - time.monotonic(), 0))
            alive[mark] = await kernels_alive(server.base, ids)
    return visits, wall, alive


# --------------------------------------------------------------------------- one run per N


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def one_run(n, store, experiment, logdir, args, options):
    """Start a server, send ``n`` visitors at once, stop it; a JSON-ready dict."""
    load = other_load()
    say(f"N={n}: starting the server (machine: load {load['loadavg']}, {load['available_gib']} GiB free, "
        f"other processes {load['other_cpu_percent']}% CPU)")
    server = Server(store, logdir, class_size=args.class_size, jobs=not args.no_jobs, options=options)
    sampler = None
    try:
        ready = server.wait_ready(timeout=args.ready_timeout)
        idle = tree_rss_mb(server.proc.pid)
        say(f"N={n}: ready after {ready['ready_s']} s, pools {ready['pools']}, RSS {idle['total']:.0f} MiB "
            f"({idle['n_kernel']} kernels, {idle['n_dask']} Dask processes)")
        sampler = MemorySampler(server.proc.pid, reserve_gib=args.reserve_gib)
        sampler.start()
        visits, wall, alive = asyncio.run(run_visitors(server, n, experiment, timeout=args.timeout,
                                                       close_wait=args.close_wait, abort=sampler.abort))
        sampler.stop()
        after = tree_rss_mb(server.proc.pid)
        log = server.log_text()
    finally:
        try:
            if sampler is not None:
                sampler.stop()
        finally:
            server.stop()  # always, whatever failed above
    ok = [v for v in visits if v.outcome == "ok"]
    full = [v for v in visits if v.outcome == "full"]
    bad = [v for v in visits if v.outcome in ("failed", "timeout")]
    state = [v.state_s for v in ok]
    res = {
        "n": n, "experiment": experiment, "server_flags": server.flags, "server_log": str(server.log_path), "load_before": load, "ready": ready,
        "rss_idle_mb": idle, "rss_peak_mb": sampler.peak, "rss_after_close_mb": after,
        "low_memory_abort_gib": sampler.low_memory,
        "ok": len(ok), "full": len(full), "failed": len([v for v in bad if v.outcome == "failed"]),
        "timeouts": len([v for v in bad if v.outcome == "timeout"]),
        "state_s": {"median": percentile(state, 0.5), "p90": percentile(state, 0.9), "max": max(state, default=None),
                    "min": min(state, default=None)},
        "page_s_max": max((v.page_s for v in ok), default=None),
        "change_ms": {"median": percentile([v.change_ms for v in ok], 0.5),
                      "max": max((v.change_ms for v in ok), default=None)},
        "full_answer_s_max": max((v.page_s for v in full), default=None),
        "full_page_says_full": all(v.full_text for v in full) if full else None,
        "last_answer_s": wall,
        "kernels_visited": len([v for v in visits if v.kernel_id]),
        "kernels_alive_after_close": alive,
        "close_status": sorted({str(v.close_status) for v in visits if v.kernel_id}),
        "errors": sorted({v.error for v in bad})[:10],
        "log_port_errors": len(re.findall(r"Address already in use|ZMQError", log)),
        "log_kernel_restarts": len(re.findall(r"restarting kernel|KernelRestarter", log, re.I)),
        "visits": [v.as_dict() for v in visits],
    }
    res["served_all_in_target"] = bool(n == len(ok) and state and max(state) <= TARGET_STATE_S)
    for e in res["errors"]:
        say(f"N={n}: error: {e}")
    say(f"N={n}: ok {len(ok)}, full {len(full)}, failed {res['failed']}, timeouts {res['timeouts']}; widget state "
        f"median {res['state_s']['median']} s, last {res['state_s']['max']} s; peak RSS "
        f"{(sampler.peak or {}).get('total', 0):.0f} MiB; kernels alive after closing {alive}")
    return res


def print_tables(result):
    runs = result["runs"]
    rows = []
    for r in runs:
        peak = r["rss_peak_mb"] or {}
        alive = r["kernels_alive_after_close"]
        rows.append([
            r["n"], r["ok"], r["full"], r["failed"] + r["timeouts"],
            r["state_s"]["median"], r["state_s"]["max"], r["change_ms"]["median"], r["full_answer_s_max"],
            f"{peak.get('total', 0) / 1024:.2f}", f"{peak.get('kernel', 0) / 1024:.2f} ({peak.get('n_kernel', 0)})",
            f"{peak.get('dask', 0) / 1024:.2f}", " ".join(f"{k}s:{v}" for k, v in alive.items()) or "-",
        ])
    table("Visitors opening the Gallery at once (times in s from the start; RSS in GiB)",
          ["N", "ok", "full", "failed", "state med", "state last", "change ms", "full in", "peak RSS",
           "kernels (n)", "dask", "kernels alive after close"], rows)
    checks = []
    for r in runs:
        peak_gib = (r["rss_peak_mb"] or {}).get("total", 0) / 1024
        if r["n"] == TARGET_N:
            checks.append([f"{TARGET_N} visitors all served within {TARGET_STATE_S:.0f} s",
                           r["state_s"]["max"], verdict(r["served_all_in_target"])])
            checks.append([f"{TARGET_N} visitors: failures", r["failed"] + r["timeouts"],
                           verdict(r["failed"] + r["timeouts"] == TARGET_FAILURES)])
            checks.append([f"{TARGET_N} visitors: peak RSS <= {TARGET_RSS_GIB:.0f} GiB", f"{peak_gib:.2f}",
                           verdict(peak_gib <= TARGET_RSS_GIB)])
        if r["n"] > TARGET_N:
            clear = r["full"] > 0 and r["timeouts"] == 0 and r["failed"] == 0 and bool(r["full_page_says_full"])
            checks.append([f"{r['n']} visitors: excess told 'full' (503), no hang",
                           f"{r['full']} full, {r['timeouts']} hung, {r['failed']} failed", verdict(clear)])
        last = max(r["kernels_alive_after_close"].items(), default=(None, None))
        if last[0] is not None:
            checks.append([f"N={r['n']}: visited kernels alive {last[0]} s after closing", last[1],
                           verdict(last[1] == 0)])
    table("Targets", ["target", "measured", "verdict"], checks)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--visitors", type=int, nargs="+", default=[1, 10, 30, 60], help="N per run (default 1 10 30 60)")
    p.add_argument("--store", help="store to serve (default: canonical experiments of runs/, else two built)")
    p.add_argument("--experiment", help="experiment the visitors open (default: the first stored)")
    p.add_argument("--class-size", type=int, default=30, help="--class-size of serve, when it has it (default 30)")
    p.add_argument("--no-jobs", action="store_true", help="serve without its Dask cluster (--no-jobs), if it can")
    p.add_argument("--timeout", type=float, default=VISITOR_TIMEOUT_S, help="seconds a visitor may take")
    p.add_argument("--close-wait", type=float, default=60.0, help="seconds to watch kernels after closing")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--reserve-gib", type=float, default=RESERVE_GIB,
                   help="stop a run when the machine's free memory falls below this")
    p.add_argument("--quick", action="store_true", help="close-wait 20 s")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--logdir", type=Path, help="where the servers' logs go (default: beside --out, load-logs/)")
    args = p.parse_args(argv)

    def on_term(signum, frame):  # SIGTERM (and SIGINT when ignored in the background) stop the run cleanly
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bad = [n for n in args.visitors if not 1 <= n <= MAX_VISITORS]
    if bad:
        p.error(f"--visitors must be whole numbers from 1 to {MAX_VISITORS}, got {bad}")
    if args.quick:
        args.close_wait = min(args.close_wait, 20.0)
    tmp = tempfile.mkdtemp(prefix="bench_load_")
    try:
        store, names = prepare_store(args, tmp)
        experiment = args.experiment or names[0]
        logdir = args.logdir or args.out.parent / "load-logs"
        logdir.mkdir(parents=True, exist_ok=True)
        options = serve_options()
        say(f"store {store}: {names}; visitors open {experiment!r}; serve has "
            f"{sorted(o for o in options if o in ('--class-size', '--no-jobs', '--token', '--workers'))}")
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        result = {"date": now_iso(), "commit": commit, "cores": os.cpu_count(), "store": names,
                  "class_size": args.class_size if "--class-size" in options else None, "runs": []}
        for n in args.visitors:
            result["runs"].append(one_run(n, store, experiment, logdir, args, options))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
        print_tables(result)
        print(f"\nresults: {args.out}; server logs: {logdir}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
