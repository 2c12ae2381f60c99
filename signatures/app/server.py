"""The web site: the notebooks in ``notebooks/`` served by Voilà, plus a landing page.

:func:`serve` starts :class:`SignaturesVoila`, which is Voilà with two routes of its own
placed before Voilà's. URLs, below the server's base URL (``/`` by default):

- ``/``: the landing page, what the tool does, links to the apps and one card per stored
  experiment, read from the store on every request;
- ``/signatures/api/experiments``: the same experiments as a JSON list;
- ``/signatures/static/plotly.min.js``: the plotly.js of the installed ``plotly`` package,
  which the apps' plots load once per page (:mod:`signatures.plotview`);
- ``/signatures/report/NAME/report.html``: the stored report of a listed experiment, a
  static file (browsing it starts no kernel); nothing else of the store is served;
- ``/signatures/api/canonical``: POST starts the canonical experiments as jobs on the
  Dask cluster (the empty store's "build" button), GET tells their states;
- ``/voila/render/builder.ipynb``, ``/voila/render/gallery.ipynb?experiment=NAME``: the apps;
- ``/voila/tree``: Voilà's list of the notebooks;
- ``/voila/templates/signatures/static/...``: the template's static files.

Pages use the Voilà template ``signatures`` in ``voila_template/`` (it extends ``lab``).
This module imports no TensorFlow and no UMAP: the server only lists experiments, the
notebooks' kernels and the Dask workers do the work.

Safe to open to a room (see ``docs/teaching.md``):

- off loopback a token is required (Jupyter's own token login, ``Voila.token``): given,
  or generated and printed in the URL; on loopback there is none unless given;
- the ``Host`` header of every request (pages, API, static files, kernel websockets) must
  be an IP address or a name the server answers to (:func:`host_allowed`), so a page on
  another site cannot reach the server through a visitor's browser by DNS rebinding;
- visitors' kernels are capped, per page and in all (:func:`class_limits`); beyond the cap
  a visitor gets "the server is full" at once (HTTP 503); kernels of closed tabs go within
  a minute; kernels talk to the server over IPC sockets, not TCP ports, so 30 starting at
  once cannot race for a port.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import jinja2
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.utils import url_path_join
from tornado import ioloop, web
from tornado.httputil import split_host_and_port
from tornado.routing import Matcher, Rule
from traitlets import Int, List, Unicode, default
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler
from voila.tornado.kernel_websocket_handler import VoilaKernelWebsocketHandler

from ..plotview import PLOTLY_ROUTE, forced_renderer, plotly_js_path
from ..store import scan_store

__all__ = [
    "template_root",
    "notebooks_root",
    "experiment_summaries",
    "render_landing",
    "SignaturesVoila",
    "SiteKernelManager",
    "is_loopback",
    "host_allowed",
    "served_names",
    "class_limits",
    "check_token",
    "voila_args",
    "serve",
]

TEMPLATE = "signatures"
STORE_ENV = "SIGNATURES_STORE"
DATA_DIR_ENV = "SIGNATURES_DATA_DIR"
#: Tag of notebook cells that run in Jupyter but never in the served app.
SKIP_TAG = "skip-voila"
#: Below the base URL: a listed experiment's report, ``REPORT_ROUTE/NAME/report.html``.
REPORT_ROUTE = "signatures/report"
#: Below the base URL: POST builds the canonical experiments as jobs, GET tells their states.
CANONICAL_API = "signatures/api/canonical"
#: Seconds a visitor turned away by a full server is asked to wait (``Retry-After``).
RETRY_AFTER_S = 60
#: Visitors the server is sized for unless told (``--class-size``), and the most it takes.
DEFAULT_CLASS_SIZE = 10
MAX_CLASS_SIZE = 500
#: A kernel no page is connected to is stopped after this many idle seconds (checked
#: every CULL_INTERVAL_S): a closed tab's kernel goes within a minute.
CULL_IDLE_S = 40
CULL_INTERVAL_S = 10
#: Seconds Voilà waits for a cell's output after the cell has run (nbclient's default: 4).
IOPUB_TIMEOUT_S = 60
#: Seconds after a kernel is handed out before its pool's refill starts (while a class arrives).
REFILL_DELAY_S = 20
#: Preheated pools are topped up every POOL_TOPUP_S seconds, POOL_TOPUP_BATCH kernels at most at a time.
POOL_TOPUP_S = 15
POOL_TOPUP_BATCH = 4

_REPO = Path(__file__).resolve().parents[2]

_DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "digits": "scikit-learn digits (8×8)"}


def _repo_folder(name, what):
    path = _REPO / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"the {what} folder {str(path)!r} does not exist: the web site runs from a checkout of the "
            "repository (pip install -e .), which holds notebooks/ and voila_template/ beside signatures/"
        )
    return path


def template_root():
    """The folder to put on ``JUPYTER_PATH`` so that Voilà finds the ``signatures`` template.

    It holds ``voila/templates/signatures/`` (``conf.json``, ``index.html.j2``,
    ``landing.html.j2``, ``static/``).
    """
    return _repo_folder("voila_template", "Voilà template")


def notebooks_root():
    """The folder of the notebooks served as apps (``builder.ipynb``, ``gallery.ipynb``)."""
    return _repo_folder("notebooks", "notebooks")


def _template_dir():
    return template_root() / "voila" / "templates" / TEMPLATE


# ---------------------------------------------------------------------------------------
# Experiments as the site shows them
# ---------------------------------------------------------------------------------------


def _architecture(config):
    arch = str(config.get("arch", "mlp"))
    hidden = "-".join(str(h) for h in config.get("hidden", ()))
    if arch == "cnn":
        filters = "-".join(str(f) for f in config.get("filters", ()))
        text = f"CNN, conv {filters}" + (f", dense {hidden}" if hidden else "")
    else:
        text = f"{arch.upper()} {hidden}"
    activation = config.get("activation")
    return f"{text} ({activation})" if activation else text


def store_contents(root):
    """The stored experiments as JSON-ready summaries, and the damaged folders, never failing on one.

    Parameters
    ----------
    root : str or Path
        The store: a folder of experiment folders (a missing store holds nothing).

    Returns
    -------
    summaries : list of dict
        As :func:`experiment_summaries`.
    damaged : list of dict
        ``{"name": folder name, "problem": what is wrong}`` per folder that is not a
        complete, readable experiment; paths inside the store are given relative to it.
    """
    root = Path(root)
    try:
        manifests, damaged = scan_store(root)
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    prefix = str(root.resolve()) + os.sep
    problems = [{"name": name, "problem": why.replace(prefix, "").replace(str(root) + os.sep, "")}
                for name, why in damaged]
    return [_summary(m) for m in manifests], problems


def experiment_summaries(root):
    """One JSON-ready dict per complete experiment under ``root``, in folder-name order.

    Parameters
    ----------
    root : str or Path
        The store: a folder of experiment folders.

    Returns
    -------
    list of dict
        Keys ``name`` (the experiment's folder name: its identity in the store and in links),
        ``title`` (the free-text name in its config), ``folder`` (same as ``name``), ``dataset``,
        ``digits``, ``anomalies``, ``class_names``, ``arch``, ``hidden``, ``filters``,
        ``activation``, ``epochs``, ``accuracy`` (held-out, or None) and ``created``.
    """
    return store_contents(root)[0]


def _summary(manifest):
    config = manifest["config"]
    accuracy = manifest["metrics"].get("accuracy")
    return {
        "name": Path(manifest["path"]).name,
        "title": str(config.get("name", "")),
        "folder": Path(manifest["path"]).name,
        "dataset": config.get("dataset"),
        "digits": list(config.get("digits", ())),
        "anomalies": list(config.get("anomalies", ())),
        "class_names": list(manifest.get("class_names", ())),
        "arch": config.get("arch"),
        "hidden": list(config.get("hidden", ())),
        "filters": list(config.get("filters", ())),
        "activation": config.get("activation"),
        "epochs": config.get("epochs"),
        "accuracy": float(accuracy) if accuracy is not None else None,
        "created": manifest.get("created"),
    }


def _class_list(classes, names):
    labels = [names[c] if isinstance(c, int) and 0 <= c < len(names) else str(c) for c in classes]
    return ", ".join(labels)


def _card(summary, base_url):
    names = summary["class_names"]
    accuracy = summary["accuracy"]
    created = summary["created"] or ""
    return {
        "name": summary["name"],
        "title": summary.get("title") if summary.get("title") not in (None, "", summary["name"]) else "",
        "href": f"{base_url}voila/render/gallery.ipynb?experiment={quote(summary['name'], safe='')}",
        "report": f"{base_url}{REPORT_ROUTE}/{quote(summary['name'], safe='')}/report.html",
        "dataset": _DATASET_TITLES.get(summary["dataset"], str(summary["dataset"])),
        "trained": _class_list(summary["digits"], names),
        "unseen": _class_list(summary["anomalies"], names) or "none",
        "network": _architecture(summary),
        "accuracy": f"{accuracy:.1%}" if accuracy is not None else "n/a",
        "created": created.replace("T", " ")[:16],
    }


def _environment():
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _static_url(base_url, name):
    path = _template_dir() / "static" / name
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{base_url}voila/templates/{TEMPLATE}/static/{name}?v={version}"


def store_label(store, *, cwd=None):
    """How the site names the store: relative to the working folder when inside it, else its name.

    The landing page never prints the store's absolute path (a visitor has no business
    with the server's file system).

    Parameters
    ----------
    store : str or Path
    cwd : str or Path, optional
        The folder to be relative to (default: the current working folder).

    Returns
    -------
    str
    """
    store = Path(store).expanduser().resolve()
    cwd = Path(cwd if cwd is not None else os.getcwd()).resolve()
    try:
        relative = store.relative_to(cwd)
    except ValueError:
        return store.name or "runs"
    return str(relative) if str(relative) != "." else store.name


def render_landing(experiments, *, base_url="/", store=None, damaged=(), can_build=False, xsrf=""):
    """The landing page as HTML.

    Parameters
    ----------
    experiments : list of dict
        As returned by :func:`experiment_summaries`.
    base_url : str
        The server's base URL (``/`` or ``/prefix/``); every link starts with it.
    store : str or Path, optional
        The store folder, named (by :func:`store_label`, never its absolute path) in the
        empty state.
    damaged : list of dict, optional
        As returned by :func:`store_contents`: folders skipped, listed by name.
    can_build : bool
        The server has a Dask cluster: an empty store offers a button that builds the
        canonical experiments as jobs (``POST <base>signatures/api/canonical``).
    xsrf : str
        The request's XSRF token, sent back by the button's POST.

    Returns
    -------
    str
    """
    if not base_url.endswith("/"):
        base_url += "/"
    template = _environment().get_template("landing.html.j2")
    label = store_label(store) if store is not None else None
    cards = [_card(e, base_url) for e in experiments]
    return template.render(
        base_url=base_url,
        css_url=_static_url(base_url, "signatures.css"),
        experiments=cards,
        gallery_href=cards[0]["href"] if cards else f"{base_url}voila/render/gallery.ipynb",
        damaged=list(damaged),
        store=label,
        store_arg=shlex.quote(label) if label is not None else "runs",
        can_build=bool(can_build),
        build_api=f"{base_url}{CANONICAL_API}",
        xsrf=xsrf,
    )


def render_full(*, base_url="/", page=""):
    """The "server is full" page a visitor gets beyond the kernel caps (sent with HTTP 503)."""
    if not base_url.endswith("/"):
        base_url += "/"
    template = _environment().get_template("full.html.j2")
    return template.render(base_url=base_url, css_url=_static_url(base_url, "signatures.css"), page=page,
                           retry_s=RETRY_AFTER_S)


# ---------------------------------------------------------------------------------------
# Who may connect: loopback, Host names, tokens
# ---------------------------------------------------------------------------------------

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?")
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")


def is_loopback(address):
    """Whether only this machine can reach a server listening on ``address``.

    Loopback: ``localhost`` (and ``localhost.localdomain``, ``ip6-localhost``), every
    address of ``127.0.0.0/8``, ``::1`` and ``::ffff:127.x.y.z``. Not loopback: ``""``,
    ``0.0.0.0`` and ``::`` (every interface), any other address, and any other name (a
    name may resolve to anything, so it is taken as reachable from outside).

    Parameters
    ----------
    address : str

    Returns
    -------
    bool
    """
    if not isinstance(address, str):
        raise ValueError(f"address must be a string such as '127.0.0.1' or '0.0.0.0', got {address!r}")
    text = address.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.rstrip(".") in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_host_name(name):
    """Return ``name`` lower-cased if it can be a ``Host`` header's name, else raise ValueError."""
    if not isinstance(name, str) or not _HOST_NAME.fullmatch(name.strip().lower()) or len(name) > 253:
        raise ValueError(f"--allow-host must be a host name such as 'classroom.example.org' (letters, digits, "
                         f"'-' and '.'), got {name!r}")
    return name.strip().lower().rstrip(".")


def served_names(address, allow_hosts=()):
    """The host names (not addresses) a server on ``address`` answers to, lower-case.

    ``localhost`` always; off loopback also this machine's name and fully qualified name;
    the ``address`` itself when it is a name; and every name in ``allow_hosts``
    (``--allow-host``), as a visitor's browser would send it in the ``Host`` header.
    """
    names = {n for n in _LOOPBACK_NAMES}
    text = str(address).strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        if text:
            names.add(text)
    if not is_loopback(address):
        for name in (socket.gethostname(), socket.getfqdn()):
            if name:
                names.add(name.lower().rstrip("."))
    names.update(check_host_name(n) for n in allow_hosts)
    return frozenset(names)


def host_allowed(host, names):
    """Whether a request's ``Host`` header (``name[:port]``) is one the server answers to.

    An IP address is always allowed: DNS rebinding, the attack this check stops, needs a
    name (the attacker's) that resolves to this server; a page that reaches the server by
    its address has the server's own origin. A name must be in ``names``.

    Parameters
    ----------
    host : str
        The header as received (``"example.org:8866"``, ``"[::1]:8866"``).
    names : collection of str
        As returned by :func:`served_names`.

    Returns
    -------
    bool
    """
    try:
        name, _ = split_host_and_port(str(host).strip().lower())
    except (ValueError, TypeError):
        return False
    name = name.strip("[]").rstrip(".")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in names


def check_token(token):
    """Return ``token`` if it can be a site token (16-256 URL-safe characters), else raise ValueError."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        shown = f"{token[:4]}... ({len(token)} characters)" if isinstance(token, str) else repr(token)
        raise ValueError("--token must be 16 to 256 characters from letters, digits, '-', '_', '.' and '~' "
                         f"(it goes in the URL), got {shown}")
    return token


# ---------------------------------------------------------------------------------------
# Sized for a class
# ---------------------------------------------------------------------------------------


def class_limits(class_size=DEFAULT_CLASS_SIZE):
    """Kernel pools and caps for a class of ``class_size`` visitors at once.

    Returns
    -------
    dict
        ``page_cap``: most live kernels of one page (each visitor holds one per open tab,
        plus a margin for reloads); ``total_cap``: most live visitors' kernels in all
        (two pages per visitor on average); ``gallery_pool``: preheated Gallery kernels, one
        per visitor (a class opens the gallery first, all at once; an idle Gallery kernel
        holds 85-145 MiB); ``pool``: preheated kernels of each other page (1, 2 from 20
        visitors).
    """
    if isinstance(class_size, bool) or not isinstance(class_size, int) or not 1 <= class_size <= MAX_CLASS_SIZE:
        raise ValueError(f"--class-size must be a whole number from 1 to {MAX_CLASS_SIZE}, got {class_size!r}")
    page_cap = class_size + max(2, class_size // 5)
    return {
        "page_cap": page_cap,
        "total_cap": 2 * page_cap,
        "gallery_pool": class_size,
        "pool": 1 if class_size < 20 else 2,
    }


#: The page a visitor's request is rendering, seen by the kernel manager when it starts a kernel.
_PAGE = contextvars.ContextVar("signatures_page", default=None)


class SiteKernelManager(AsyncMappingKernelManager):
    """Jupyter's kernel manager, remembering which page each visitor's kernel serves.

    Voilà wraps it with its pool of preheated kernels; :meth:`in_use` counts the kernels
    visitors hold (live kernels, less those waiting in a pool), in all and per page, for
    the caps of :class:`PageHandler`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.page_of = {}

    async def start_kernel(self, *args, **kwargs):
        kernel_id = await super().start_kernel(*args, **kwargs)
        env = kwargs.get("env") or {}
        visit = _PAGE.get()
        if env.get("VOILA_PREHEAT") != "True":  # a pool's kernels are counted once handed out
            self.page_of[kernel_id] = visit["page"] if visit else None
            if visit:
                visit["release"]()
        return kernel_id

    def in_use(self):
        """Kernels visitors hold: ``(total, {page file name: count})``."""
        live = set(self.list_kernel_ids())
        for kid in [k for k in self.page_of if k not in live]:
            del self.page_of[kid]
        pooled, starting = set(), 0
        for pool in getattr(self, "_pools", {}).values():
            for future in pool:
                if not future.done():
                    starting += 1
                elif not future.cancelled() and future.exception() is None:
                    pooled.add(future.result().get("kernel_id"))
        owner = dict(self.page_of)
        for notebook, data in getattr(self, "notebook_data", {}).items():
            for kid in data.get("kernel_ids", ()):
                owner.setdefault(kid, Path(str(notebook)).name)
        pages = {}
        for kid in live - pooled:
            page = owner.get(kid)
            if page is not None:
                pages[page] = pages.get(page, 0) + 1
        return max(len(live - pooled) - starting, 0), pages


#: The kernel websocket protocol Voilà's pages speak.
KERNEL_PROTOCOL = "v1.kernel.websocket.jupyter.org"


class V1KernelWebsocketHandler(VoilaKernelWebsocketHandler):
    """Voilà's kernel websocket, refusing every protocol but the one its pages speak.

    Voilà 0.5 reads every binary message it sends as the v1 protocol; a client that
    connects with the older JSON protocol (which jupyter_server still accepts) makes it
    build a list as long as a message's first eight bytes say, and the server hangs and
    fills its memory. Such a connection is closed at once (code 1002), naming the protocol.
    """

    def open(self, *args, **kwargs):
        if self.selected_subprotocol != KERNEL_PROTOCOL:
            self.close(1002, f"this server speaks only the {KERNEL_PROTOCOL} protocol")
            return None
        return super().open(*args, **kwargs)


class PageHandler(TornadoVoilaHandler):
    """Voilà's page handler behind the kernel caps.

    Beyond ``page_cap`` live kernels of the page, or ``total_cap`` in all, the visitor gets
    :func:`render_full` with HTTP 503 at once. Every page also sets the ``_xsrf`` cookie,
    which Voilà's tab-close request sends back, so a closed tab frees its kernel at once.
    """

    def initialize(self, **kwargs):
        self.limits = kwargs.pop("limits")
        self.pending = kwargs.pop("pending")
        super().initialize(**kwargs)

    @web.authenticated
    async def get(self, path=None):
        page = Path(path or "").name
        total, pages = self.kernel_manager.in_use()
        pending = self.pending
        busy_page = pages.get(page, 0) + pending.get(page, 0)
        busy_total = total + sum(pending.values())
        if busy_page >= self.limits["page_cap"] or busy_total >= self.limits["total_cap"]:
            self.log.warning("full: %s kernels of %s, %s in all; turned a visitor away", busy_page, page, busy_total)
            self.set_status(503)
            self.set_header("Retry-After", str(RETRY_AFTER_S))
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.set_header("Cache-Control", "no-store")
            self.finish(render_full(base_url=self.base_url, page=page))
            return
        self.xsrf_token  # noqa: B018  (sets the _xsrf cookie for the tab-close request)
        # Until its kernel is live and counted by the kernel manager, the visit counts as pending.
        pending[page] = pending.get(page, 0) + 1
        visit = {"page": page, "pending": True}

        def release():
            if visit["pending"]:
                visit["pending"] = False
                pending[page] -= 1

        visit["release"] = release
        from_pool = any(Path(str(n)).name == page and size > 0 for n, size in self._pool_sizes())
        token = _PAGE.set(visit)
        try:
            async for html in self.get_generator(path=path):
                if from_pool:  # a preheated kernel was handed out before the first chunk
                    release()
                self.write(html)
                self.flush()
        finally:
            _PAGE.reset(token)
            release()

    def _pool_sizes(self):
        pools = getattr(self.kernel_manager, "_pools", {})
        return [(name, len(pool)) for name, pool in pools.items()]


class _RefusedHost(Matcher):
    """Matches the requests whose ``Host`` the server does not answer to."""

    def __init__(self, names):
        self.names = names

    def match(self, request):
        return None if host_allowed(request.host, self.names) else {}


class RefusedHostHandler(web.RequestHandler):
    """403 for a request whose ``Host`` is not a name the server answers to."""

    def initialize(self, names):
        self.names = names

    def prepare(self):
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"403: this server does not answer to the host name {self.request.host!r}. Open it by one of "
                    f"{sorted(self.names)} or by its IP address, or restart it with --allow-host NAME.\n")


# ---------------------------------------------------------------------------------------
# Jobs of the fresh-start button
# ---------------------------------------------------------------------------------------


def _canonical_configs(path=""):
    """The configs the fresh-start button builds: those in the JSON file ``path``, else the canonical ones."""
    from dataclasses import replace

    from ..experiment import ExperimentConfig

    if path:
        rows = json.loads(Path(path).read_text())
        return [ExperimentConfig.from_dict(row).validate() for row in rows]
    from ..canonical import CANONICAL

    return [replace(c, all_unseen=True) for c in CANONICAL]


class CanonicalBuilds:
    """The canonical experiments as jobs on the site's Dask cluster, started once each.

    Parameters
    ----------
    store : Path
    configs : list of ExperimentConfig
    scheduler : str
        The scheduler's address (``$SIGNATURES_SCHEDULER``); empty: no cluster, no jobs.
    """

    def __init__(self, store, configs, scheduler):
        self.store, self.configs, self.scheduler = Path(store), list(configs), scheduler
        self.jobs = {}
        self._client = None
        self._lock = threading.Lock()

    @property
    def available(self):
        return bool(self.scheduler)

    def _jobs(self):
        if self._client is None:
            from .jobs import connect

            self._client = connect(self.scheduler)
        return self._client

    def start(self, only=None):
        """Submit the configs (those named in ``only``) not stored and not under way; returns :meth:`state`."""
        from ..store import list_experiments

        names = [c.name for c in self.configs]
        if only is not None:
            if not isinstance(only, list) or not all(isinstance(n, str) for n in only) or set(only) - set(names):
                raise ValueError(f"only must be a list of names from {names}, got {only!r}")
        with self._lock:
            stored = {Path(m["path"]).name for m in list_experiments(self.store)}
            for config in self.configs:
                if only is not None and config.name not in only:
                    continue
                job = self.jobs.get(config.name)
                if config.name in stored or (job is not None and job.state in ("waiting", "running")):
                    continue
                self.jobs[config.name] = self._jobs().submit(config, self.store)
        return self.state()

    def state(self):
        """``{"jobs": [{name, state, position, stage, fraction, message}], "done": bool}``."""
        rows = []
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            state = job.state
            events = job.events() if state != "waiting" else []
            last = events[-1] if events else {}
            message = job.error() if state == "failed" else last.get("message", "")
            rows.append({"name": job.name, "state": state,
                         "position": job.position() if state == "waiting" else None,
                         "stage": last.get("stage", ""), "fraction": last.get("fraction", 0.0),
                         "message": message or ""})
        done = all(r["state"] in ("finished", "failed", "cancelled") for r in rows)
        return {"jobs": rows, "done": done, "cluster": self.available}


# ---------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------


class LandingHandler(JupyterHandler):
    """``GET <base>/``: the landing page, with the experiments stored right now."""

    def initialize(self, store, builds):
        self.store = Path(store)
        self.builds = builds

    @web.authenticated
    def get(self):
        summaries, damaged = store_contents(self.store)
        xsrf = self.xsrf_token.decode("ascii") if isinstance(self.xsrf_token, bytes) else str(self.xsrf_token)
        html = render_landing(summaries, base_url=self.base_url, store=self.store, damaged=damaged,
                              can_build=self.builds.available, xsrf=xsrf)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(html)


class ExperimentsHandler(APIHandler):
    """``GET <base>/signatures/api/experiments``: the stored experiments as a JSON list."""

    def initialize(self, store):
        self.store = Path(store)

    @web.authenticated
    def get(self):
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(experiment_summaries(self.store)))


class ReportHandler(JupyterHandler):
    """``GET <base>/signatures/report/NAME/report.html``: a listed experiment's report, nothing else.

    Served sandboxed (``Content-Security-Policy: sandbox``): its scripts draw the plots but
    run in an origin of their own, with no access to the site's cookies.
    """

    def initialize(self, store):
        self.store = Path(store)

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        reason = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code}: {reason}\n")

    @web.authenticated
    def get(self, name):
        listed = {s["name"] for s in experiment_summaries(self.store)}
        path = self.store / name / "report.html"
        if name not in listed or not path.is_file():
            raise web.HTTPError(404, f"no stored report for experiment {name!r}")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "sandbox allow-scripts allow-popups allow-downloads")
        self.set_header("Cache-Control", "no-cache")
        self.finish(path.read_bytes())


class CanonicalHandler(APIHandler):
    """``<base>/signatures/api/canonical``: POST starts the canonical experiments as jobs; GET their states.

    The POST needs the token or the page's XSRF token (Jupyter's check); its JSON body may
    name ``{"only": [...]}``. Errors answer ``{"message": ...}`` with 400 or 503.
    """

    def initialize(self, builds):
        self.builds = builds

    def _answer(self, status, body):
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))

    async def _run(self, call, *args):
        if not self.builds.available:
            return self._answer(503, {"message": "this server has no Dask cluster for jobs: start it with "
                                                 "'python -m signatures serve' (without --no-jobs)"})
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, call, *args)
        except ValueError as exc:
            return self._answer(400, {"message": str(exc)})
        except (ConnectionError, OSError) as exc:
            return self._answer(503, {"message": f"the Dask cluster does not answer: {exc}"})
        return self._answer(200, result)

    @web.authenticated
    async def get(self):
        await self._run(self.builds.state)

    @web.authenticated
    async def post(self):
        only = None
        if self.request.body.strip():
            try:
                body = json.loads(self.request.body)
            except ValueError:
                return self._answer(400, {"message": "the request body must be JSON such as {\"only\": [\"1v7-mlp\"]}"})
            if not isinstance(body, dict) or set(body) - {"only"}:
                return self._answer(400, {"message": f"the request body may hold only 'only', got {body!r}"})
            only = body.get("only")
        await self._run(self.builds.start, only)


class PlotlyJsHandler(web.StaticFileHandler):
    """``GET <base>/signatures/static/plotly.min.js``: revalidated by ETag on each visit."""

    def set_extra_headers(self, path):
        self.set_header("Cache-Control", "no-cache")


class PoolKeeper:
    """Keeps each page's pool of preheated kernels within the caps, and tops it up while quiet.

    Voilà refills a pool to its full size a second after it hands a kernel out, so a class of
    30 taking 30 pooled kernels would start 30 more at once, on the cores the class is using.
    Here a pool grows only while the page's kernels (visitors' and pooled) stay within its
    cap: once a class holds its kernels, at most the cap's margin is started, and only
    :data:`REFILL_DELAY_S` seconds later. Every
    ``interval`` seconds the pools are topped up again (after a class has left), at most
    ``batch`` kernels at a time, none while ``batch`` are still starting.
    """

    def __init__(self, kernel_manager, limits, *, interval=POOL_TOPUP_S, batch=POOL_TOPUP_BATCH):
        self.km = kernel_manager
        self.limits = limits
        self.batch = batch
        self._voila_fill = kernel_manager.fill_if_needed
        kernel_manager.fill_if_needed = self.fill
        self.timer = ioloop.PeriodicCallback(self.top_up, interval * 1000)

    def room(self, notebook_name):
        """Kernels the page ``notebook_name`` may still hold, pooled ones included."""
        total, pages = self.km.in_use()
        page = Path(str(notebook_name)).name
        return max(min(self.limits["page_cap"] - pages.get(page, 0), self.limits["total_cap"] - total), 0)

    def fill(self, delay=None, notebook_name=None, *, most=None, **kwargs):
        """Voilà's refill, up to the pool's size but no further than the page's cap allows.

        A refill after a hand-out (``delay`` None) starts :data:`REFILL_DELAY_S` seconds later,
        not Voilà's one second: the kernels starting would slow the class's first view changes.
        """
        if delay is None:
            delay = REFILL_DELAY_S
        config = self.km.kernel_pools_config
        own = dict(config.get(notebook_name, config.get("default", {})))
        want = min(int(own.get("pool_size", 1)), self.room(notebook_name))
        if most is not None:
            want = min(want, len(self.km._pools.get(notebook_name, ())) + most)
        self.km.kernel_pools_config = {**config, notebook_name: {**own, "pool_size": want}}
        try:
            self._voila_fill(delay=delay, notebook_name=notebook_name, **kwargs)
        finally:
            self.km.kernel_pools_config = config

    def starting(self):
        """Pooled kernels still starting."""
        return sum(not task.done() for pool in self.km._pools.values() for task in pool)

    def top_up(self):
        """Start up to ``batch`` missing pool kernels, when fewer than ``batch`` are starting."""
        for name in list(self.km._pools):
            budget = self.batch - self.starting()
            if budget <= 0:
                return
            self.fill(delay=0, notebook_name=name, most=budget)


class SignaturesVoila(Voila):
    """Voilà with the site's landing page at the root URL, its APIs, host check and kernel caps.

    Voilà's own routes are unchanged (``/voila/render/...``, ``/voila/tree``, ...), except
    that the exact root URL shows the landing page instead of the notebook tree and that
    pages are rendered by :class:`PageHandler`.
    """

    description = Unicode("Serve the signatures web site: landing page and notebook apps.")

    store = Unicode(config=True, help="Folder of stored experiments listed by the landing page.")
    class_size = Int(DEFAULT_CLASS_SIZE, config=True, help="Visitors at once the kernel caps are sized for.")
    allow_hosts = List(Unicode(), config=True, help="Host names answered to besides this machine's.")
    canonical_file = Unicode("", config=True,
                             help="JSON list of experiment configs the fresh-start button builds "
                                  "(default: the canonical experiments, all_unseen).")
    scheduler = Unicode(config=True, help="Dask scheduler of the jobs (default $SIGNATURES_SCHEDULER).")
    page_cap = Int(-1, config=True, help="Most live kernels of one page (default from class_size).")
    total_cap = Int(-1, config=True, help="Most live visitors' kernels in all (default from class_size).")

    @default("store")
    def _default_store(self):
        return os.environ.get(STORE_ENV, "runs")

    @default("scheduler")
    def _default_scheduler(self):
        from .jobs import SCHEDULER_ENV

        return os.environ.get(SCHEDULER_ENV, "")

    def init_handlers(self):
        handlers = super().init_handlers()
        store = Path(self.store).resolve()
        limits = class_limits(self.class_size)
        if self.page_cap >= 0:
            limits["page_cap"] = self.page_cap
        if self.total_cap >= 0:
            limits["total_cap"] = self.total_cap
        builds = CanonicalBuilds(store, _canonical_configs(self.canonical_file), self.scheduler)
        pending = {}
        for i, spec in enumerate(handlers):
            if len(spec) > 1 and spec[1] is TornadoVoilaHandler:
                handlers[i] = (spec[0], PageHandler, {**spec[2], "limits": limits, "pending": pending})
            elif len(spec) > 1 and spec[1] is VoilaKernelWebsocketHandler:
                handlers[i] = (spec[0], V1KernelWebsocketHandler, *spec[2:])
        ours = [
            (self.server_url, LandingHandler, {"store": store, "builds": builds}),
            (url_path_join(self.server_url, "signatures/api/experiments"), ExperimentsHandler, {"store": store}),
            (url_path_join(self.server_url, CANONICAL_API), CanonicalHandler, {"builds": builds}),
            (url_path_join(self.server_url, REPORT_ROUTE, r"([^/]+)/report\.html"), ReportHandler, {"store": store}),
            (url_path_join(self.server_url, PLOTLY_ROUTE.rsplit("/", 1)[0], r"(plotly\.min\.js)"), PlotlyJsHandler,
             {"path": str(plotly_js_path().parent)}),
        ]
        if self.server_url.rstrip("/"):
            ours.append((self.server_url.rstrip("/"), web.RedirectHandler, {"url": self.base_url}))
        # Every request, Voilà's too, first passes the Host check: a refused name matches this rule.
        if hasattr(self.kernel_manager, "fill_if_needed"):  # preheated pools
            self.pool_keeper = PoolKeeper(self.kernel_manager, limits)
            self.pool_keeper.timer.start()
        names = served_names(self.ip, self.allow_hosts)
        router = self.app.default_router
        router.rules.insert(0, router.process_rule(Rule(_RefusedHost(names), RefusedHostHandler, {"names": names})))
        # Tornado takes the first pattern that matches, so ours come first.
        return ours + handlers


def _url_host(address):
    """``address`` as it goes in a URL (IPv6 in brackets), with loopback for 'all interfaces'."""
    if address in ("", "0.0.0.0", "::", "localhost"):
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return f"[{ip}]" if ip.version == 6 else str(ip)


_REFRESH = ("import sys\nfrom signatures.app.view import refresh_store\n"
            "refresh_store(sys.argv[1], say=lambda m: print(m, file=sys.stderr, flush=True))")


def refresh_stored(store):
    """Run :func:`signatures.app.view.refresh_store` in a process of its own before the pages start.

    It imports scikit-learn only when an analysis is stale, and the server never holds it.
    A failure is said and serving goes on (each page then computes what it lacks).
    """
    import subprocess

    if not Path(store).is_dir():
        return
    try:
        done = subprocess.run([sys.executable, "-c", _REFRESH, str(store)], timeout=3600)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"could not bring the stored experiments up to date ({exc}); the pages will compute what they lack",
              file=sys.stderr, flush=True)
        return
    if done.returncode != 0:
        print(f"bringing the stored experiments up to date ended with status {done.returncode}; the pages will "
              "compute what they lack", file=sys.stderr, flush=True)


#: Resident memory of an idle page kernel: 85 MiB empty, 120-145 MiB with the four canonical
#: experiments loaded (bench_load: 4.2 GiB for 34 kernels).
PAGE_KERNEL_MIB = 125


def _class_pools(limits, pool_size=None, gallery_pool_size=None):
    """``(pool_size, gallery_pool_size)``: the class's sizes (:func:`class_limits`) unless ``pool_size`` is given."""
    if pool_size is None:
        return limits["pool"], limits["gallery_pool"] if gallery_pool_size is None else gallery_pool_size
    return pool_size, gallery_pool_size


def pool_note(class_size=DEFAULT_CLASS_SIZE, pool_size=None, gallery_pool_size=None, preheat=True):
    """One line for the console: the preheated kernels kept ready and the memory they hold."""
    limits = class_limits(class_size)
    pool_size, gallery_pool_size = _class_pools(limits, pool_size, gallery_pool_size)
    sizes = pool_sizes(pool_size, gallery_pool_size)
    gallery, other = sizes["gallery.ipynb"]["pool_size"], sizes["default"]["pool_size"]
    if not preheat or pool_size <= 0:
        return f"no preheated kernels: each visitor waits for a kernel to start (class of {class_size})"
    kernels = gallery + 2 * other
    return (f"class of {class_size}: {gallery} Gallery, {other} Layers and {other} Builder kernels kept ready "
            f"(about {kernels * PAGE_KERNEL_MIB / 1024:.1f} GiB); at most {limits['page_cap']} visitors per page")


def pool_sizes(pool_size=1, gallery_pool_size=None):
    """Preheated kernels kept per notebook: ``pool_size`` each, ``gallery_pool_size`` for the gallery.

    A class opens the gallery first, so by default the gallery keeps twice ``pool_size``.
    """
    pool_size = max(int(pool_size), 0)
    gallery = 2 * pool_size if gallery_pool_size is None else max(int(gallery_pool_size), 0)
    return {"default": {"pool_size": pool_size}, "gallery.ipynb": {"pool_size": gallery}}


#: Longest path of a Unix socket (``sockaddr_un.sun_path``, less its final NUL).
_SOCKET_PATH_MAX = 107


def ipc_connection_root(candidates=None):
    """A folder short enough for the kernels' IPC sockets, or None (then kernels use TCP).

    Voilà puts each kernel's sockets at ``ROOT/voila_XXXXXXXX/kernel-<uuid>-ipc-N``, and a
    Unix socket's path must fit in 107 characters. The system's temporary folder is tried
    first, then ``/tmp``.
    """
    import tempfile

    tail = len("/voila_XXXXXXXX/kernel-") + 36 + len("-ipc-99")
    for root in candidates if candidates is not None else (tempfile.gettempdir(), "/tmp"):
        if len(str(root)) + tail <= _SOCKET_PATH_MAX and os.path.isdir(root) and os.access(root, os.W_OK):
            return str(root)
    return None


def voila_args(*, port=8866, address="127.0.0.1", class_size=DEFAULT_CLASS_SIZE, pool_size=None,
               gallery_pool_size=None, preheat=True, token=None, allow_hosts=(), open_browser=False, extra_args=()):
    """The command line :func:`serve` gives :class:`SignaturesVoila`.

    Parameters
    ----------
    port : int
    address : str
        Interface to listen on; the default is loopback only.
    class_size : int
        Visitors at once: sets the pools and caps (:func:`class_limits`).
    pool_size : int, optional
        Preheated kernels kept ready per notebook (default from ``class_size``).
    gallery_pool_size : int, optional
        Preheated kernels kept for the gallery page (default from ``class_size``; twice
        ``pool_size`` when only that is given; see :func:`pool_sizes`).
    preheat : bool
        Keep preheated kernels at all (off when ``pool_size`` is 0).
    token : str, optional
        Required of every visitor (Jupyter's token login); None: no token.
    allow_hosts : sequence of str
        Host names answered to besides this machine's (:func:`served_names`).
    open_browser : bool
    extra_args : sequence of str
        Further Voilà options, last so that they win.

    Returns
    -------
    list of str
    """
    limits = class_limits(class_size)
    pool_size, gallery_pool_size = _class_pools(limits, pool_size, gallery_pool_size)
    pool_size = max(int(pool_size), 0)
    preheat = bool(preheat) and pool_size > 0
    args = [
        str(notebooks_root()),
        f"--template={TEMPLATE}",
        f"--Voila.ip={address}",
        f"--port={int(port)}",
        # Preheated kernels are told the port before the server listens: never drift to another one.
        "--Voila.port_retries=0",
        "--show_tracebacks=False",
        "--VoilaConfiguration.allow_template_override=NO",
        f"--TagRemovePreprocessor.remove_cell_tags={SKIP_TAG}",
        f"--preheat_kernel={preheat}",
        f"--pool_size={pool_size if preheat else 0}",
        f"--SignaturesVoila.class_size={int(class_size)}",
        "--VoilaConfiguration.multi_kernel_manager_class=signatures.app.server.SiteKernelManager",
        # Kernels no page is connected to (closed tabs whose close request was lost) go within a
        # minute; connected pages and the preheated pool are kept.
        f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_S}",
        f"--MappingKernelManager.cull_interval={CULL_INTERVAL_S}",
        "--MappingKernelManager.cull_connected=False",
        # A cell's output (the app's widget) may reach the server seconds after the cell ends
        # while a class's pool starts: wait for it rather than render a page without it.
        f"--VoilaExecutor.iopub_timeout={IOPUB_TIMEOUT_S}",
    ]
    ipc_root = ipc_connection_root()
    if ipc_root is not None:
        # Kernels and server talk over IPC sockets in the connection folder: no TCP port to race for.
        args += ["--KernelManager.transport=ipc", f"--Voila.connection_dir_root={ipc_root}"]
    for name in allow_hosts:
        args.append(f"--SignaturesVoila.allow_hosts={check_host_name(name)}")
    if token is not None:
        args.append(f"--Voila.token={check_token(token)}")
    if preheat:
        args.append(
            f"--VoilaKernelManager.kernel_pools_config={json.dumps(pool_sizes(pool_size, gallery_pool_size))}")
    if forced_renderer() != "mime":
        # The apps draw with their own plot widget (signatures.plotview): plotly's mime renderer
        # would only add its 4.8 MB of JavaScript to every page.
        args.append("--VoilaConfiguration.extension_denylist=jupyterlab-plotly")
    if not open_browser:
        args.append("--no-browser")
    args.extend(str(a) for a in extra_args)
    return args


def site_url(address, port, token=None, base_url="/"):
    """The URL to open, with ``?token=`` when there is one (as Jupyter prints it)."""
    host = socket.gethostname() if address in ("", "0.0.0.0", "::") else _url_host(address)
    return f"http://{host}:{int(port)}{base_url}" + (f"?token={token}" if token else "")


def serve(*, port=8866, address="127.0.0.1", store="runs", data_dir=None, class_size=DEFAULT_CLASS_SIZE,
          pool_size=None, gallery_pool_size=None, preheat=True, token=None, allow_hosts=(), workers=1,
          scheduler=None, jobs=True, warm=True, open_browser=False, extra_args=()):
    """Serve the web site until interrupted (Ctrl-C or SIGTERM stop it, its kernels and its cluster).

    Starts a Dask ``LocalCluster`` for the experiments run as jobs (or joins ``scheduler``)
    before Voilà, and sets, for this process and the kernels it starts: ``JUPYTER_PATH``
    (``voila_template`` first), ``SIGNATURES_STORE`` (the absolute store path),
    ``SIGNATURES_SCHEDULER`` (the scheduler's address, for the Builder's jobs),
    ``SIGNATURES_DATA_DIR`` (when ``data_dir`` is given) and ``VOILA_APP_IP`` (where a
    preheated kernel reaches the server to learn its request). Parameters are those of
    :func:`voila_args`, plus:

    Parameters
    ----------
    store : str or Path
        Folder of stored experiments (created by ``python -m signatures run --out STORE/NAME``).
    data_dir : str, Path or list, optional
        Folder(s) of IDX files for the jobs (a string may join several with ``os.pathsep``).
    token : str, optional
        Off loopback (:func:`is_loopback`) one is generated when none is given; on loopback
        there is none unless given. The URL to open, with it, is printed.
    workers : int
        Worker processes of the local cluster: experiments that run at once.
    scheduler : str, optional
        Address of a running Dask scheduler to use instead of a local cluster (its workers
        must see the same store folder: a shared file system).
    jobs : bool
        Start or join a cluster at all (without one, the Builder cannot run experiments).
    warm : bool
        Local workers import TensorFlow and compile UMAP once at start.
    """
    limits_args = dict(class_size=class_size, pool_size=pool_size, gallery_pool_size=gallery_pool_size)
    if token is None and not is_loopback(address):
        token = secrets.token_urlsafe(24)
    args = voila_args(port=port, address=address, preheat=preheat, token=token, allow_hosts=allow_hosts,
                      open_browser=open_browser, extra_args=extra_args, **limits_args)
    from .jobs import SCHEDULER_ENV

    if jobs and scheduler:
        from .jobs import connect

        # Before anything is set or started: answers, or ConnectionError naming the address.
        connect(scheduler, warm=warm, timeout=10).client.close()
    paths = [str(template_root())] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ[STORE_ENV] = str(Path(store).expanduser().resolve())
    if data_dir is not None:
        folders = data_dir if isinstance(data_dir, (list, tuple)) else str(data_dir).split(os.pathsep)
        os.environ[DATA_DIR_ENV] = os.pathsep.join(str(Path(d).expanduser().resolve()) for d in folders if d)
    os.environ["VOILA_APP_IP"] = _url_host(address)
    cluster = None
    if jobs and scheduler:
        os.environ[SCHEDULER_ENV] = scheduler
    elif jobs:
        from .jobs import start_cluster

        cluster = start_cluster(n_workers=workers, warm=warm)
        os.environ[SCHEDULER_ENV] = cluster.address
    else:
        os.environ.pop(SCHEDULER_ENV, None)
    refresh_stored(os.environ[STORE_ENV])
    print(f"open {site_url(address, port, token)}", file=sys.stderr, flush=True)
    print(pool_note(class_size, pool_size, gallery_pool_size, preheat), file=sys.stderr, flush=True)
    if cluster is not None:
        print(f"jobs run on the Dask scheduler {cluster.address}; 'python -m signatures run --scheduler "
              f"{cluster.address} ...' runs an experiment on its warm workers", file=sys.stderr, flush=True)
    if not is_loopback(address):
        print("the token is required of every visitor; anyone with this URL can use the site", file=sys.stderr,
              flush=True)
    try:
        SignaturesVoila.launch_instance(args)
    finally:
        if cluster is not None:
            cluster.close()
