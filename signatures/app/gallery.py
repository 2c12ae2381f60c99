"""The Gallery: every view of a stored experiment, with no recomputation and no TensorFlow."""

from __future__ import annotations

import html
import threading
from pathlib import Path

import ipywidgets as W

from ..store import list_experiments, load_experiment
from .common import (
    _damaged_todo, _error_html, _failure_html, _low_priority_thread, _manifest_label, _preheating,
    _query_experiment, _reason, store_root,
)
from .view import ExperimentView, _rebuild_in_background


class GalleryApp:
    """Pick a stored experiment and see every view of it, without recomputing.

    A kernel keeps the views of at most :attr:`KEEP_VIEWS` experiments (the least recently
    chosen ones go, their widgets closed), and a preheated kernel loads only the first
    :attr:`PRELOAD_LIMIT` (the landing page's order) before its visitor comes: a store that
    grows with a class's own experiments does not grow every kernel. Any other experiment
    is read from its ``plots.zip`` when chosen (about 0.1 s).

    Parameters
    ----------
    store : str or Path, optional
        The store folder (see :func:`store_root`).
    renderer : {"widget", "mime"}, optional
        How plots are drawn (default :func:`signatures.plotview.plot_renderer`).
    """

    #: Experiments a preheated kernel loads before its visitor comes.
    PRELOAD_LIMIT = 4
    #: Experiments whose views one kernel keeps (each holds its arrays and figures: 10-20 MiB).
    KEEP_VIEWS = 6

    def __init__(self, store=None, *, renderer=None):
        self.store = store_root(store)
        self.renderer = renderer
        self._views = {}
        self.failed = {}
        self._rebuilding = None
        self._not_selecting = threading.Event()
        self._not_selecting.set()
        self.picker = W.Dropdown(description="Experiment", layout=W.Layout(width="420px"))
        self.refresh_button = W.Button(description="Refresh list", icon="refresh")
        self.message = W.HTML()
        self.body = W.VBox()
        self.refresh_button.on_click(lambda _: self.refresh())
        self.widget = W.VBox([W.HBox([self.picker, self.refresh_button]), self.message, self.body])
        self.refresh()
        self.picker.observe(lambda change: self.select(change["new"]), "value")

    def refresh(self):
        """Re-read the list of complete experiments in the store."""
        manifests = list_experiments(self.store)
        self.manifests = {m["name"]: m for m in manifests}
        options = [(_manifest_label(m), m["name"]) for m in manifests]
        self.picker.options = [("choose an experiment", None)] + options
        if not manifests:
            self.message.value = (
                f"<p>No stored experiments in <code>{html.escape(str(self.store))}</code> yet. Build some with "
                "<code>python -m signatures canonical</code> or the Builder page.</p>")
        return self

    def _view(self, name):
        from ..analysis import load_or_analyze

        folder = Path(self.manifests[name]["path"])
        exp = load_experiment(folder)
        return ExperimentView(exp, analysis=load_or_analyze(exp, folder), renderer=self.renderer, folder=folder)

    def preload(self, names=None):
        """Load experiments and read all their figures from ``plots.zip`` now (building and keeping those
        of an experiment whose file is missing, damaged or stale)."""
        for name in names if names is not None else list(self.manifests):
            self._preload_one(name)
        return self

    def _preload_one(self, name):
        """Load and warm one experiment; one that fails is noted in :attr:`failed` (name -> reason) and
        left for :meth:`select`, which shows why when a visitor asks for it."""
        if name in self.manifests and name not in self._views:
            try:
                self._views.setdefault(name, self._view(name).warm())
            except Exception as exc:  # a preload thread's outermost boundary: one bad experiment skips only itself
                self._views.pop(name, None)
                self.failed[name] = _reason(exc)

    def preload_in_background(self, names=None, *, niceness=10):
        """:meth:`preload` in a thread at lower CPU priority (Voilà's preheated kernels run this).

        A kernel that waits in the pool loads everything before its visitor comes. A kernel
        a visitor already waits for (more visitors than the pool holds) shows the requested
        experiment first: :meth:`select` loads it itself, and the thread waits while it
        does, between experiments. Returns the thread.
        """
        names = list(names if names is not None else list(self.manifests)[:self.PRELOAD_LIMIT])

        def work():
            for name in names:
                self._not_selecting.wait()
                self._preload_one(name)

        self._preloading = _low_priority_thread(work, name="signatures-gallery-preload", niceness=niceness)
        return self._preloading

    def select(self, name):
        """Show experiment ``name`` (loaded once, then kept).

        Returns its :class:`ExperimentView`, or None when it cannot be shown: then the page says
        why and what to do, shows no other experiment's views under its name, and stays usable.
        """
        self.message.value = ""
        if name is None:
            self.body.children = ()
            return None
        if name not in self.manifests:
            known = ", ".join(sorted(self.manifests)) or "none"
            self.message.value = _error_html(f"no stored experiment named {name!r}; stored: {known}")
            return None
        self._not_selecting.clear()  # a background preload waits for this experiment
        try:
            if name not in self._views:
                self._views.setdefault(name, self._view(name))
            view = self._views.pop(name)
            self._views[name] = view  # the most recently chosen last
            self._forget_old(keep=name)
            widget = view.widget
            if self.picker.value != name:
                self.picker.value = name
            self.body.children = (widget,)
            self.failed.pop(name, None)
            preloading = getattr(self, "_preloading", None)
            if view.stored_why and view.folder is not None and not (preloading and preloading.is_alive()):
                # plots.zip could not be used and no preload will rewrite it: the rest is built and kept
                # in the background, for the next kernels
                self._rebuilding = _rebuild_in_background(
                    view.exp, view.folder, view.analysis, view=view) or self._rebuilding
            return view
        except Exception as exc:  # the picker callback's outermost boundary: shown in the page
            self._views.pop(name, None)  # not kept: a repaired experiment is read again
            self.body.children = ()
            self.message.value = _failure_html(f"Experiment {name!r} cannot be shown", exc,
                                               _damaged_todo(exc, self.manifests[name]["path"]))
            return None
        finally:
            self._not_selecting.set()

    def _forget_old(self, keep):
        """Drop the least recently chosen views beyond :attr:`KEEP_VIEWS`, closing their widgets."""
        while len(self._views) > self.KEEP_VIEWS:
            oldest = next(iter(self._views))
            if oldest == keep:
                return
            old = self._views.pop(oldest, None)
            if old is not None and old._widget is not None:
                _close_tree(old._widget)

    def select_from_query(self, query=None):
        """Select the experiment named by ``?experiment=NAME`` in the page's query string.

        Under Voilà with preheated kernels this waits for the page request (Voilà's
        request-info websocket, see ``common._request_query``); elsewhere it reads
        ``$QUERY_STRING``.
        """
        name = _query_experiment(query)
        if name:
            self.refresh()
            return self.select(name)
        return None


def _close_tree(widget):
    """Close ``widget`` and every widget below it (the kernel and the page forget them)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def build_gallery(store=None, *, preload="auto", renderer=None):
    """The gallery app (see :class:`GalleryApp`).

    ``preload="auto"`` loads the first :attr:`GalleryApp.PRELOAD_LIMIT` stored experiments
    and reads their figures when Voilà is preheating the kernel, so a visitor gets them at
    once: in a background thread at low priority (:meth:`GalleryApp.preload_in_background`). ``True`` loads them before
    returning; ``False`` never (each is loaded when selected).
    """
    app = GalleryApp(store, renderer=renderer)
    if preload is True:
        app.preload()
    elif preload == "auto" and _preheating():
        app.preload_in_background()
    return app


