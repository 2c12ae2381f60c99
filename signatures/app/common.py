"""Helpers shared by the apps: the store they read, error messages, threads, query strings."""

from __future__ import annotations

import html
import logging
import os
import threading
from pathlib import Path

from ..data import DataUnavailableError
from ..store import default_store


_ERROR_STYLE = "color:#b00020;font-size:13px;margin:2px 0 6px 0"

_log = logging.getLogger(__name__)

#: What to do about a stored experiment that cannot be shown.
_DAMAGED_TODO = ("Its files may be damaged or from another version: build it again (the Builder page, or "
                 "python -m signatures run ... --out {folder}) or remove the folder {folder}. "
                 "The other experiments can still be chosen.")


def store_root(store=None):
    """The store folder: ``store``, else :func:`signatures.store.default_store` (``$SIGNATURES_STORE``,
    else ``runs/`` at the checkout's root, the folder the CLI writes to)."""
    return Path(store).expanduser().resolve() if store else default_store()


def _error_html(message):
    return f'<div class="sig-error" style="{_ERROR_STYLE}">{html.escape(message)}</div>' if message else ""


def _reason(exc):
    """``exc`` in words: the project's own errors carry their message; others are named by their type."""
    text = str(exc).strip()
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, DataUnavailableError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failure_html(what, exc, todo):
    """An error shown in the page at a UI callback's boundary: what went wrong, then what to do.

    The traceback goes to this module's logger (debug level), never to the page.
    """
    _log.debug("%s", what, exc_info=exc)
    return _error_html(f"{what}: {_reason(exc).rstrip('.')}. {todo}")


def _damaged_todo(exc, folder):
    """What to do about a stored experiment that cannot be shown. The store's own errors
    (ValueError, FileNotFoundError) name the damaged file and the remedy already."""
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return "The other experiments can still be chosen."
    return _DAMAGED_TODO.format(folder=folder)


def _architecture(config):
    c = config
    if c.arch == "cnn":
        dense = "-".join(map(str, c.hidden)) or "none"
        text = f"CNN filters {'-'.join(map(str, c.filters))}, dense {dense} ({c.activation})"
    else:
        text = f"MLP {'-'.join(map(str, c.hidden))} ({c.activation})"
    rate = getattr(c, "dropout", 0.0)
    return text + (f", dropout {rate:g}" if rate else "")


def _manifest_label(manifest):
    """The picker's label of a stored experiment; a manifest with fields of the wrong kind still gets one."""
    try:
        return (f"{manifest['name']} · {manifest['config']['dataset']} · digits "
                f"{', '.join(map(str, manifest['classes']))} · {float(manifest['metrics']['accuracy']):.1%}")
    except (KeyError, TypeError, ValueError):
        return f"{manifest['name']} · (its manifest is incomplete)"


def _query_experiment(query=None):
    """``NAME`` of ``?experiment=NAME``: from ``query``, else Voilà's request (waiting for it when the
    kernel was preheated), else ``$QUERY_STRING``."""
    from urllib.parse import parse_qs

    if query is None:
        query = _request_query()
    return parse_qs(query or "").get("experiment", [None])[0]


#: Seconds a preheated kernel's request for its page's query string may take to connect.
REQUEST_CONNECT_TIMEOUT_S = 30


def _request_query():
    """The query string of the page request this kernel serves.

    A kernel Voilà preheated runs its notebook before any visitor comes; it learns the
    request it was handed out for over Voilà's websocket ``voila/query/<kernel id>``, which
    sends one JSON object of CGI-style variables (``QUERY_STRING``, ``PATH_INFO``, ...) when
    a visitor takes the kernel. They are put in the environment, as Voilà's
    ``voila.utils.get_query_string`` does. Importing that function loads the whole Jupyter
    server (jsonschema compiles grammars: about 5 s of CPU per kernel, 30 kernels at once
    when a class's pool starts), so the protocol is spoken here with tornado, which every
    kernel has loaded already. Elsewhere ``$QUERY_STRING`` is read as it is.
    """
    env = os.environ
    if not _preheating() or not env.get("VOILA_KERNEL_ID"):
        return env.get("QUERY_STRING")
    import asyncio
    import json

    from tornado.websocket import websocket_connect

    base = env.get("VOILA_WS_BASE_URL", env.get("VOILA_SERVER_URL", "/"))
    url = (f"{env.get('VOILA_WS_PROTOCOL', 'ws')}://{env.get('VOILA_APP_IP', '127.0.0.1')}:"
           f"{env.get('VOILA_APP_PORT', '8866')}{base}voila/query/{env['VOILA_KERNEL_ID']}")
    got = {}

    async def receive():
        conn = await websocket_connect(url, connect_timeout=REQUEST_CONNECT_TIMEOUT_S)
        try:
            return await conn.read_message()
        finally:
            conn.close()

    def run():  # the kernel's own event loop is running this cell: the request waits in a thread of its own
        loop = asyncio.new_event_loop()
        try:
            got["message"] = loop.run_until_complete(receive())
        except Exception as exc:  # no request info: the page shows no experiment preselected, and says nothing
            _log.warning("could not learn the page request from %s: %s", url, exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="signatures-request", daemon=True)
    thread.start()
    thread.join()
    try:
        info = json.loads(got.get("message") or "{}")
    except ValueError:
        info = {}
    if isinstance(info, dict):
        env.update({str(k): str(v) for k, v in info.items()})
    return env.get("QUERY_STRING")


def _preheating():
    return os.environ.get("VOILA_PREHEAT") == "True"


def _low_priority_thread(work, *, name, niceness=10):
    """Start ``work()`` in a daemon thread whose CPU priority is lowered by ``niceness``.

    On Linux a thread has its own niceness, so the rest of the kernel (the visitor's
    requests, on the main thread) keeps its priority; elsewhere the thread runs at normal
    priority.
    """
    def run():
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + int(niceness), 19))
        except (AttributeError, OSError):
            pass  # not Linux, or not allowed
        work()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _findings_html(analysis):
    return ("<ul class='sig-findings'>" + "".join(f"<li>{html.escape(s)}</li>" for s in analysis["findings"])
            + "</ul>")


