"""ipywidgets apps: the experiment builder and the gallery of stored experiments.

``build_builder()`` and ``build_gallery()`` return app objects whose ``.widget`` a
notebook displays; the notebooks in ``notebooks/`` are nothing more than that wiring.

Importing this module, and everything the gallery does, needs no TensorFlow and no
umap: stored experiments are browsed from their arrays, and every figure a view shows is
built once and cached, so changing the layer, the colouring, the inserted anomaly digits
or the chosen cluster only swaps a cached figure into place. Only the builder's Run
button imports TensorFlow (through :func:`signatures.experiment.run_experiment`).
"""

from __future__ import annotations

import html
import logging
import os
import threading
import time
from pathlib import Path

import ipywidgets as W
import numpy as np
import traitlets

from . import figures as F
from .data import DATASETS, DataUnavailableError
from .experiment import ExperimentConfig
from .paths import path_label
from .plotview import Plot, PlotBox
from .store import check_name, default_store, experiment_path, list_experiments, load_experiment

__all__ = [
    "store_root",
    "ExperimentView",
    "GalleryApp",
    "BuilderApp",
    "build_gallery",
    "build_builder",
    "build_app",
    "LayersApp",
    "build_layers",
    "STAGES",
]

#: The builder's stages, in order, with the share of the progress bar each one ends at.
STAGES = (
    ("loading", 0.05), ("startup", 0.10), ("training", 0.45), ("extraction", 0.50), ("evaluation", 0.52),
    ("clustering", 0.65), ("projection", 0.97), ("saving", 1.0),
)

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
        return f"CNN filters {'-'.join(map(str, c.filters))}, dense {dense} ({c.activation})"
    return f"MLP {'-'.join(map(str, c.hidden))} ({c.activation})"


class ExperimentView:
    """Every view of one experiment at once, with controls that swap cached figures.

    Figures are built once per choice of controls and kept, with their encoded spec
    (:class:`signatures.plotview.Plot`); each view is a :class:`~signatures.plotview.PlotBox`
    that a change swaps to the cached spec, drawn once in the browser. A swap is state,
    not a message, so a page that connects later (Voilà's preheated kernels run the
    notebook first) still shows it, and no view ships plotly's 5 MB widget bundle as
    plotly's ``FigureWidget`` would.

    Parameters
    ----------
    exp : Experiment
        Just run, or loaded from the store.
    anomalies : sequence of int, optional
        Unseen classes inserted at first; default ``exp.anomalies``.
    analysis : dict, optional
        :func:`signatures.analysis.analyze` of ``exp``: its findings are shown under the title.
    renderer : {"widget", "mime"}, optional
        How plots are drawn (default :func:`signatures.plotview.plot_renderer`).

    Attributes
    ----------
    widget : ipywidgets.VBox
        Built on first access.
    layer, color_by, inserted, selection : ipywidgets controls
    """

    IMAGES = 40
    VIEWS = ("confusion", "training", "sankey", "umap", "silhouette", "images")

    def __init__(self, exp, *, anomalies=None, analysis=None, renderer=None):
        self.exp = exp
        self.analysis = analysis
        self.renderer = renderer
        self._figures = {}
        self._plots = {}
        self._widget = None
        unseen = exp.unseen
        self._start = tuple(a for a in (exp.anomalies if anomalies is None else anomalies) if a in unseen)

    # ------------------------------------------------------------------ state of the controls

    def _state(self):
        if self._widget is None:
            return self.exp.layers[0], "digit", self._start, None
        return self.layer.value, self.color_by.value, tuple(self.inserted.value), self.selection.value

    def _cached(self, key, build):
        if key not in self._figures:
            self._figures[key] = build()
        return self._figures[key]

    def _rows(self, inserted):
        return self._cached(("rows", inserted), lambda: self.exp.rows_with(inserted))

    # ------------------------------------------------------------------ figures (go.Figure, cached)

    def figure_key(self, view, *, layer=None, color_by=None, inserted=None, selection=None):
        s_layer, s_color, s_inserted, s_selection = self._state()
        layer = layer or s_layer
        color_by = color_by or s_color
        inserted = s_inserted if inserted is None else tuple(inserted)
        selection = s_selection if selection is None else selection
        return {
            "confusion": ("confusion",),
            "training": ("training",),
            "sankey": ("sankey", inserted),
            "umap": ("umap", layer, color_by, inserted),
            "silhouette": ("silhouette", layer),
            "images": ("images", selection, inserted),
        }[view]

    def figure(self, view, **choice):
        """The ``go.Figure`` of ``view`` for the current (or the given) choice of controls."""
        key = self.figure_key(view, **choice)
        if key in self._plots:
            return self._plots[key].figure()
        return self._cached(key, lambda: self._build(key))

    def _build(self, key):
        exp, names = self.exp, self.exp.class_names
        kind = key[0]
        if kind == "confusion":
            return F.confusion_matrix(exp.metrics["confusion"], [names[c] for c in exp.classes])
        if kind == "training":
            return F.training_curves(exp.metrics.get("history") or {})
        if kind == "sankey":
            return F.experiment_sankey(exp, rows=self._rows(key[1]))
        if kind == "umap":
            return F.layer_umap(exp, key[1], color_by=key[2], rows=self._rows(key[3]))
        if kind == "silhouette":
            est = exp.clusterers[key[1]]
            return F.silhouette_curve(est.silhouette_scores_, est.k_, title=f"Silhouette of {key[1]} by K",
                                      note=est.note_ or None)
        return self._images(key[1], self._rows(key[2]))

    def selection_options(self, inserted=None):
        """(label, value) pairs: each layer's clusters, then the most common paths."""
        inserted = self._state()[2] if inserted is None else tuple(inserted)

        def build():
            exp, rows = self.exp, self._rows(inserted)
            options = []
            for j, name in enumerate(exp.layers):
                ids, counts = np.unique(exp.paths[rows, j], return_counts=True)
                for c, n in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0])):
                    options.append((f"{name} · cluster c{c} · {n} inputs", ("cluster", name, c)))
            for row in exp.path_counts(rows=rows)[:15]:
                label = path_label(row["path"], exp.layers, class_names=exp.class_names)
                options.append((f"path {label} · {row['total']} inputs", ("path", row["path"])))
            return options
        return self._cached(("options", inserted), build)

    def _images(self, choice, rows):
        exp = self.exp
        if choice is None:
            return F.image_grid(np.zeros((0, *exp.images.shape[1:]), dtype=np.uint8), title="No selection")
        if choice[0] == "cluster":
            members = np.intersect1d(exp.cluster_members(choice[1], choice[2]), rows)
            title = f"{choice[1]} cluster c{choice[2]}"
        else:
            members = exp.path_members(choice[1], rows=rows)
            title = "path " + path_label(choice[1], exp.layers, class_names=exp.class_names)
        shown = members
        if len(members) > self.IMAGES:
            shown = np.sort(np.random.default_rng(0).choice(members, self.IMAGES, replace=False))
        anomaly = exp.split[shown] == 2
        titles = [exp.class_names[t] for t in exp.labels[shown]]
        colors = ["#d62728" if a else "#333333" for a in anomaly]
        return F.image_grid(exp.images[shown], titles=titles, title_colors=colors,
                            title=f"{title}: {len(shown)} of {len(members)} inputs")

    def plot(self, view, **choice):
        """The :class:`~signatures.plotview.Plot` (encoded figure) of ``view``, built once."""
        key = self.figure_key(view, **choice)
        if key not in self._plots:
            # The encoded plot is what is kept; its go.Figure (several times larger) is dropped.
            fig = self._figures.pop(key) if key in self._figures else self._build(key)
            self._plots[key] = Plot(fig)
        return self._plots[key]

    def warm(self):
        """Build and encode every figure the controls can ask for with the first anomalies, ahead of time."""
        inserted = self._state()[2]
        self.plot("confusion")
        self.plot("training")
        self.plot("sankey", inserted=inserted)
        for name in self.exp.layers:
            self.plot("silhouette", layer=name)
            for c in F.COLOR_BY:
                self.plot("umap", layer=name, color_by=c, inserted=inserted)
        for _, value in self.selection_options(inserted)[:12]:
            self.plot("images", selection=value, inserted=inserted)
        return self

    # ------------------------------------------------------------------ widgets

    @property
    def widget(self):
        if self._widget is None:
            self._build_widget()
        return self._widget

    def _build_widget(self):
        exp, names = self.exp, self.exp.class_names
        unseen = exp.unseen
        self.layer = W.Dropdown(options=list(exp.layers), value=exp.layers[0], description="Layer")
        self.color_by = W.Dropdown(options=list(F.COLOR_BY), value="digit", description="Colour by")
        self.inserted = W.SelectMultiple(
            options=[(f"{a} ({names[a]})" if names[a] != str(a) else str(a), a) for a in unseen],
            value=self._start, description="Anomalies", rows=min(max(len(unseen), 2), 6),
            layout=W.Layout(width="260px"),
        )
        options = self.selection_options(self._start)
        self.selection = W.Dropdown(options=options, value=options[0][1] if options else None,
                                    description="Show", layout=W.Layout(width="640px"))
        self.boxes = {view: PlotBox(self.renderer, lazy=True) for view in self.VIEWS}
        self.message = W.HTML()
        c = exp.config
        ks = ", ".join(f"{n}: K = {e.k_}" for n, e in exp.clusterers.items())
        header = W.HTML(
            f"<h2 class='sig-title'>{html.escape(c.name)}</h2>"
            f"<p class='sig-lede'>{html.escape(c.dataset)} · trained on "
            f"{html.escape(', '.join(names[d] for d in exp.classes))} · {html.escape(_architecture(c))} · "
            f"held-out accuracy <b>{exp.metrics['accuracy']:.2%}</b> · {html.escape(ks)}</p>"
        )
        b = {view: box.widget for view, box in self.boxes.items()}
        findings = W.HTML(_findings_html(self.analysis) if self.analysis else "")
        self._widget = W.VBox([
            header,
            findings,
            self.message,
            W.HBox([W.Box([b["confusion"]], layout=W.Layout(width="50%")),
                    W.Box([b["training"]], layout=W.Layout(width="50%"))]),
            W.HTML("<h3>Cluster paths</h3><p>Inputs flow from each layer's clusters to the predicted class; "
                   "anomaly digits (never trained on) are drawn in warm colours. Choose which to insert.</p>"),
            self.inserted,
            b["sankey"],
            W.HTML("<h3>Layers</h3>"),
            W.HBox([self.layer, self.color_by]),
            W.HBox([W.Box([b["umap"]], layout=W.Layout(width="60%")),
                    W.Box([b["silhouette"]], layout=W.Layout(width="40%"))]),
            W.HTML("<h3>Inputs behind a cluster or path</h3>"),
            self.selection,
            b["images"],
        ], layout=W.Layout(width="100%"))
        for view in self.VIEWS:
            self._show(view)
        self.layer.observe(lambda _: self._shown_or_error(self._show, "umap", "silhouette"), "value")
        self.color_by.observe(lambda _: self._shown_or_error(self._show, "umap"), "value")
        self.inserted.observe(lambda _: self._shown_or_error(self._on_inserted), "value")
        self.selection.observe(lambda _: self._shown_or_error(self._show, "images"), "value")

    def _shown_or_error(self, action, *args):
        """A control's callback: run ``action``; a failure is shown in :attr:`message`, the page stays usable."""
        try:
            action(*args)
        except Exception as exc:  # a callback's outermost boundary: show it in the page, no traceback
            self.message.value = _failure_html(
                "This view cannot be drawn", exc,
                "Choose other values above; if it persists, the experiment's files may be damaged: build it again.")
        else:
            self.message.value = ""

    def _show(self, *views):
        for view in views:
            self.boxes[view].show(self.plot(view))

    def _on_inserted(self):
        options = self.selection_options()
        previous = self.selection.value
        values = [v for _, v in options]
        with self.selection.hold_trait_notifications():
            self.selection.options = options
            self.selection.value = previous if previous in values else (values[0] if values else None)
        self._show("sankey", "umap", "images")

    def shown(self, view):
        """The figure now shown for ``view`` (one of :attr:`VIEWS`), as a ``go.Figure``."""
        return self.boxes[view].figure()


class GalleryApp:
    """Pick a stored experiment and see every view of it, without recomputing.

    Parameters
    ----------
    store : str or Path, optional
        The store folder (see :func:`store_root`).
    renderer : {"widget", "mime"}, optional
        How plots are drawn (default :func:`signatures.plotview.plot_renderer`).
    """

    def __init__(self, store=None, *, renderer=None):
        self.store = store_root(store)
        self.renderer = renderer
        self._views = {}
        self.failed = {}
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
        from .analysis import load_or_analyze

        folder = Path(self.manifests[name]["path"])
        exp = load_experiment(folder)
        return ExperimentView(exp, analysis=load_or_analyze(exp, folder), renderer=self.renderer)

    def preload(self, names=None):
        """Load experiments and build all their figures now."""
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
        names = list(names if names is not None else self.manifests)

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
            view = self._views[name]
            widget = view.widget
            if self.picker.value != name:
                self.picker.value = name
            self.body.children = (widget,)
            self.failed.pop(name, None)
            return view
        except Exception as exc:  # the picker callback's outermost boundary: shown in the page
            self._views.pop(name, None)  # not kept: a repaired experiment is read again
            self.body.children = ()
            self.message.value = _failure_html(f"Experiment {name!r} cannot be shown", exc,
                                               _damaged_todo(exc, self.manifests[name]["path"]))
            return None
        finally:
            self._not_selecting.set()

    def select_from_query(self, query=None):
        """Select the experiment named by ``?experiment=NAME`` in the page's query string.

        Under Voilà with preheated kernels this waits for the page request
        (``voila.utils.get_query_string``); elsewhere it reads ``$QUERY_STRING``.
        """
        name = _query_experiment(query)
        if name:
            self.refresh()
            return self.select(name)
        return None


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
        try:
            from voila.utils import get_query_string

            query = get_query_string()
        except ImportError:
            query = os.environ.get("QUERY_STRING")
    return parse_qs(query or "").get("experiment", [None])[0]


class _NumberString(traitlets.Unicode):
    """A string trait that also takes a number (kept as its text)."""

    def validate(self, obj, value):
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            value = str(value)
        return super().validate(obj, value)


class NumberText(W.Text):
    """A text box for a whole number that keeps what was typed, so a bad value can be named next to
    it (an ``IntText`` silently reverts one). Set it with text or a number: ``box.value = 4``."""

    value = _NumberString(help="String value").tag(sync=True)


def _int_or_text(text):
    """``text`` as an int when it is a whole number, else the text itself (stripped)."""
    text = str(text).strip()
    try:
        return int(text)
    except ValueError:
        return text


def _toggles(values, selected, description):
    buttons = [W.ToggleButton(value=v in selected, description=str(v), layout=W.Layout(width="38px"))
               for v in values]
    return W.HBox([W.Label(description, layout=W.Layout(width="150px")), *buttons]), buttons


class BuilderApp:
    """Choose an experiment, run it with progress, see the results, save it to the store.

    Parameters
    ----------
    store : str or Path, optional
        Where experiments are saved (see :func:`store_root`).
    data_dir : str, optional
        Folder of IDX files; default ``$SIGNATURES_DATA_DIR`` (see :mod:`signatures.data`).
    renderer : {"widget", "mime"}, optional
        How plots are drawn (default :func:`signatures.plotview.plot_renderer`).
    """

    #: Config field -> the words its control shows, for the controls whose words are a label of their own.
    _LABELS = {"digits": "Train on digits", "anomalies": "Insert anomalies"}

    def __init__(self, store=None, *, data_dir=None, renderer=None):
        self.store = store_root(store)
        self.data_dir = data_dir
        self.renderer = renderer
        self._datasets = {}
        self.experiment = None
        self.view = None
        label = dict(style={"description_width": "150px"}, layout=W.Layout(width="420px"))
        self.dataset = W.Dropdown(options=sorted(DATASETS), value="mnist", description="Dataset", **label)
        digits_box, self.digit_buttons = _toggles(range(10), {1, 7}, self._LABELS["digits"])
        anomaly_box, self.anomaly_buttons = _toggles(range(10), {3, 4}, self._LABELS["anomalies"])
        self.n_per_class = W.Text(value="", placeholder="all", description="Images per digit", **label)
        self.arch = W.ToggleButtons(options=[("MLP", "mlp"), ("CNN", "cnn")], value="mlp",
                                    description="Architecture", style={"description_width": "150px"})
        self.hidden = W.Text(value="64 32", description="Dense hidden sizes", **label)
        self.activation = W.Dropdown(options=["relu", "tanh", "sigmoid", "elu", "gelu"], value="relu",
                                     description="Activation", **label)
        self.filters = W.Text(value="8 16", description="CNN filters", **label)
        self.epochs = W.BoundedIntText(value=5, min=0, max=200, description="Epochs", **label)
        self.k_min = NumberText(value="2", description="K from", **label)
        self.k_max = NumberText(value="10", description="K to", **label)
        self.seed = NumberText(value="0", description="Seed", **label)
        self.name = W.Text(value="my-experiment", description="Experiment name", **label)
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.progress = W.FloatProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="420px"))
        self.status = W.HTML()
        self.error = W.HTML()
        self.results = W.VBox()

        self.errors = {key: W.HTML() for key in (
            "dataset", "digits", "anomalies", "n_per_class", "arch", "hidden", "filters", "activation",
            "epochs", "k_range", "seed", "name", "other")}
        self.filters_row = W.VBox([self.filters, self.errors["filters"]])
        self.arch.observe(lambda _: self._show_arch(), "value")
        self._show_arch()
        self.run_button.on_click(lambda _: self.run())
        controls = {
            "dataset": [self.dataset], "digits": self.digit_buttons, "anomalies": self.anomaly_buttons,
            "n_per_class": [self.n_per_class], "arch": [self.arch], "hidden": [self.hidden],
            "filters": [self.filters], "activation": [self.activation], "epochs": [self.epochs],
            "k_range": [self.k_min, self.k_max], "seed": [self.seed], "name": [self.name],
        }
        for key, widgets in controls.items():
            for widget in widgets:
                widget.observe(lambda _, key=key: self._changed(key), "value")

        e = self.errors
        form = W.VBox([
            self.dataset, e["dataset"],
            digits_box, e["digits"],
            self.n_per_class, e["n_per_class"],
            self.arch, e["arch"],
            self.hidden, e["hidden"],
            self.filters_row,
            self.activation, e["activation"],
            self.epochs, e["epochs"],
            W.HBox([self.k_min, self.k_max]), e["k_range"],
            anomaly_box, e["anomalies"],
            self.seed, e["seed"],
            self.name, e["name"],
            e["other"],
            W.HBox([self.run_button, self.progress]),
            self.status, self.error,
        ])
        self.widget = W.VBox([form, self.results])

    def _show_arch(self):
        self.filters_row.layout.display = "" if self.arch.value == "cnn" else "none"
        if self.arch.value == "cnn" and self.hidden.value.strip() == "64 32":
            self.hidden.value = "32"
        elif self.arch.value == "mlp" and self.hidden.value.strip() == "32":
            self.hidden.value = "64 32"

    def _changed(self, key):
        """A control changed: its old message, and the Run's, no longer apply."""
        related = ("digits", "anomalies") if key in ("digits", "anomalies") else (key,)
        for k in (*related, "other"):
            self.errors[k].value = ""
        self.error.value = ""

    # ------------------------------------------------------------------ inputs

    def words(self):
        """Config field -> the words the page shows for its control; messages start with them."""
        return {
            "dataset": self.dataset.description, **self._LABELS, "n_per_class": self.n_per_class.description,
            "arch": self.arch.description, "hidden": self.hidden.description, "filters": self.filters.description,
            "activation": self.activation.description, "epochs": self.epochs.description,
            "k_min": self.k_min.description, "k_max": self.k_max.description, "k_range": "K range",
            "seed": self.seed.description,
            "name": self.name.description,
        }

    def config(self):
        """The :class:`ExperimentConfig` the controls describe (not yet validated).

        A text box that does not hold a whole number (images per digit, K from, K to, seed)
        gives its text, which :meth:`check` reports next to the control.
        """
        n = self.n_per_class.value.strip()
        return ExperimentConfig(
            name=self.name.value.strip(),
            dataset=self.dataset.value,
            digits=tuple(int(b.description) for b in self.digit_buttons if b.value),
            anomalies=tuple(int(b.description) for b in self.anomaly_buttons if b.value),
            all_unseen=True,
            n_per_class=_int_or_text(n) if n and n.lower() != "all" else None,
            arch=self.arch.value,
            hidden=self.hidden.value,
            activation=self.activation.value,
            filters=self.filters.value if self.arch.value == "cnn" else (8, 16),
            epochs=self.epochs.value,
            k_min=_int_or_text(self.k_min.value),
            k_max=_int_or_text(self.k_max.value),
            umap_points=2000,
            seed=_int_or_text(self.seed.value),
            data_dir=self.data_dir,
        )

    def check(self):
        """Check every control; show each problem next to its control. Returns the problems.

        Messages name each choice with the words on the page (:meth:`words`). A problem of a
        choice the page has no control for is shown under the form (``other``).
        """
        config = self.config()
        problems, counts = {}, None
        if config.dataset in DATASETS:
            try:
                counts = self._dataset(config.dataset).counts()
            except (DataUnavailableError, ValueError) as exc:
                problems["dataset"] = str(exc)
        for key, message in config.problems(words=self.words(), counts=counts).items():
            problems.setdefault(key if key in self.errors else "other", message)
        try:
            check_name(config.name)
            if experiment_path(self.store, config.name).exists():
                problems["name"] = (f"{self.name.description}: an experiment named {config.name!r} exists "
                                    "already in the store; choose another name")
        except ValueError as exc:
            problems["name"] = str(exc)
        for key, widget in self.errors.items():
            widget.value = _error_html(problems.get(key, ""))
        return problems

    def _dataset(self, name):
        if name not in self._datasets:
            from .data import load_dataset

            self._datasets[name] = load_dataset(name, data_dir=self.data_dir)
        return self._datasets[name]

    # ------------------------------------------------------------------ running

    def _progress(self, stage, fraction, message):
        bounds = dict(STAGES)
        names = [s for s, _ in STAGES]
        i = names.index(stage) if stage in names else 0
        low = STAGES[i - 1][1] if i else 0.0
        high = bounds.get(stage, low)
        self.progress.value = low + (high - low) * float(fraction)
        self._lines[stage] = message
        self.status.value = "<div class='sig-status'>" + "".join(
            f"<div><b>{html.escape(s)}</b>: {html.escape(m)}</div>" for s, m in self._lines.items()) + "</div>"

    def run(self):
        """Check the inputs, run the experiment, save it, show it. Returns the Experiment or None.

        Every failure is shown in the page (:attr:`error`), never as a traceback: bad inputs
        next to their controls, a failed run (a TensorFlow error included) with what to do.
        The page stays usable: the previous results stay shown and Run works again.
        """
        self.error.value = ""
        self._saved = None
        try:
            return self._run()
        except Exception as exc:  # the Run button's outermost boundary: shown in the page
            if self._saved is None:
                todo = ("Nothing was saved to the store. Change the values above (fewer images per digit or "
                        "smaller layers need less memory) and run again.")
                self.error.value = _failure_html("The run failed", exc, todo)
            else:
                self.error.value = _failure_html(
                    f"Saved as {self._saved!r} in the store, but the results cannot be shown here", exc,
                    "Open it in the Gallery.")
            return None
        finally:
            self.run_button.disabled = False

    def _run(self):
        if self.check():
            self.error.value = _error_html("Fix the values marked above, then run again.")
            return None
        config = self.config().validate(words=self.words(), counts=self._dataset(self.dataset.value).counts())
        self.run_button.disabled = True
        self._wait_for_warm_up()
        self._lines = {}
        self.progress.value = 0.0
        start = time.perf_counter()
        from .experiment import run_experiment
        from .store import save_experiment

        exp = run_experiment(config, progress=self._progress, dataset=self._dataset(config.dataset),
                             words=self.words())
        self._progress("saving", 0.0, f"saving to the store as {config.name!r}")
        save_experiment(exp, experiment_path(self.store, config.name))
        self._saved = config.name
        exp.timings["saving"] = round(time.perf_counter() - start - sum(exp.timings.values()), 3)
        self._progress("saving", 1.0, f"saved as {config.name!r} in {time.perf_counter() - start:.1f} s")
        view = ExperimentView(exp, renderer=self.renderer)
        self.results.children = (view.widget,)
        self.experiment, self.view = exp, view
        return exp

    @staticmethod
    def warm_up():
        """Import TensorFlow and compile UMAP's numba kernels (~30-45 s once per kernel)."""
        from . import models  # noqa: F401  (TensorFlow)
        from .projection import warm_up

        return warm_up()

    def warm_up_in_background(self, *, niceness=10):
        """Run :meth:`warm_up` in a thread at lower CPU priority; :meth:`run` waits for it.

        A server that replaces a Builder kernel a visitor just took warms the new one while
        that visitor's experiment runs; at ``niceness`` 10 the warm-up takes only the CPU
        the run leaves. The thread's priority does not pass to the visitor's run, which
        happens on the kernel's main thread. Returns the thread.
        """
        def work():
            start = time.perf_counter()
            try:
                self.warm_up()
            finally:
                self.warm_seconds = round(time.perf_counter() - start, 2)

        self._warming = _low_priority_thread(work, name="signatures-builder-warm-up", niceness=niceness)
        return self._warming

    def _wait_for_warm_up(self):
        thread = getattr(self, "_warming", None)
        if thread is not None and thread.is_alive():
            self.status.value = ("<div class='sig-status'>Finishing this server's warm-up (TensorFlow and UMAP) "
                                 "before the run…</div>")
            thread.join()


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
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(niceness))
        except (AttributeError, OSError):
            pass  # not Linux, or not allowed
        work()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def build_gallery(store=None, *, preload="auto", renderer=None):
    """The gallery app (see :class:`GalleryApp`).

    ``preload="auto"`` loads every stored experiment and builds its figures when Voilà
    is preheating the kernel, so a visitor gets them at once: in a background thread at
    low priority (:meth:`GalleryApp.preload_in_background`). ``True`` loads them before
    returning; ``False`` never (each is loaded when selected).
    """
    app = GalleryApp(store, renderer=renderer)
    if preload is True:
        app.preload()
    elif preload == "auto" and _preheating():
        app.preload_in_background()
    return app


def build_builder(store=None, *, data_dir=None, warm="auto", renderer=None):
    """The experiment builder app (see :class:`BuilderApp`).

    ``warm="auto"`` imports TensorFlow and compiles UMAP when Voilà is preheating the
    kernel, so that cost never lands in a visitor's request: in a background thread at low
    CPU priority (:meth:`BuilderApp.warm_up_in_background`), which a Run waits for.
    ``True`` warms up at once, before returning; ``False`` never.
    """
    app = BuilderApp(store, data_dir=data_dir, renderer=renderer)
    if warm is True:
        app.warm_seconds = app.warm_up()
    elif warm == "auto" and _preheating():
        app.warm_up_in_background()
    return app


def build_app(kind, **kwargs):
    """``build_app("builder")`` or ``build_app("gallery")``."""
    apps = {"builder": build_builder, "gallery": build_gallery, "layers": build_layers}
    if kind not in apps:
        raise ValueError(f"app must be one of {sorted(apps)}, got {kind!r}")
    return apps[kind](**kwargs)


class LayersApp:
    """"Layers and neurons": the three questions answered for a stored experiment.

    Findings first, then from which layer the classes separate (metrics per layer, CKA
    between layers), which neurons fire for which class (heatmap per layer, signature
    neurons of a class, a cluster or an unseen class, and the images that fire the best
    of them most), and how well unseen inputs are told apart (AUROC, exit layers). The
    analysis is computed once per experiment and kept in its folder
    (:func:`signatures.analysis.load_or_analyze`); no TensorFlow, no umap. Stability
    across retrained models is an explicit action (it trains models).

    Parameters
    ----------
    store : str or Path, optional
    renderer : {"widget", "mime"}, optional
        How plots are drawn (default :func:`signatures.plotview.plot_renderer`).
    """

    def __init__(self, store=None, *, renderer=None):
        self.store = store_root(store)
        self.experiment = None
        self.analysis = None
        self.picker = W.Dropdown(description="Experiment", layout=W.Layout(width="420px"))
        self.message = W.HTML()
        self.findings = W.HTML()
        self.layer = W.Dropdown(description="Layer")
        self.subject = W.Dropdown(description="Neurons of", layout=W.Layout(width="420px"))
        self.retrain_button = W.Button(description="Stability across retrained models", icon="refresh",
                                       layout=W.Layout(width="300px"))
        self.retrain_progress = W.FloatProgress(min=0, max=1, layout=W.Layout(width="300px"))
        self.retrain_result = W.HTML()
        self.boxes = {v: PlotBox(renderer, lazy=True) for v in (
            "separation", "cka", "heatmap", "images", "auroc", "exits", "crossovers")}
        self.signature_table = W.HTML()
        self.separation_reason = W.HTML()
        b = {v: box.widget for v, box in self.boxes.items()}
        self.body = W.VBox([
            self.findings,
            W.HTML("<h3>From which layer do the classes separate</h3>"), self.separation_reason,
            W.HBox([W.Box([b["separation"]], layout=W.Layout(width="55%")),
                    W.Box([b["cka"]], layout=W.Layout(width="45%"))]),
            W.HTML("<h3>Which neurons fire for which class</h3>"),
            W.HBox([self.layer, self.subject]),
            W.HBox([W.Box([b["heatmap"]], layout=W.Layout(width="50%")),
                    W.VBox([self.signature_table, b["images"]], layout=W.Layout(width="50%"))]),
            W.HTML("<h3>Does each class leave a characteristic signature</h3>"), b["crossovers"],
            W.HTML("<h3>Unseen inputs, calibrated</h3>"),
            W.HBox([W.Box([b["auroc"]], layout=W.Layout(width="50%")),
                    W.Box([b["exits"]], layout=W.Layout(width="50%"))]),
            W.HTML("<h3>Are the clusters stable across retrained models?</h3><p>Trains the same network again "
                   "with two other seeds on the same images and compares each layer's clusters (matched by "
                   "their members). It takes a minute or more.</p>"),
            W.HBox([self.retrain_button, self.retrain_progress]), self.retrain_result,
        ])
        self.widget = W.VBox([self.picker, self.message, self.body])
        self._quiet = False
        self.refresh()
        self.picker.observe(lambda change: self._quiet or self.select(change["new"]), "value")
        self.layer.observe(lambda _: self._quiet or self._shown_or_error(self._show_layer), "value")
        self.subject.observe(lambda _: self._quiet or self._shown_or_error(self._show_subject), "value")
        self.retrain_button.on_click(lambda _: self.retrain())

    def _shown_or_error(self, action):
        """A control's callback: run ``action``; a failure is shown in :attr:`message`, the page stays usable."""
        if self.experiment is None:
            return
        try:
            action()
        except Exception as exc:  # a callback's outermost boundary: show it in the page, no traceback
            self.message.value = _failure_html(
                "This view cannot be drawn", exc,
                "Choose another layer or subject; if it persists, the experiment's files may be damaged: "
                "build it again.")
        else:
            self.message.value = ""

    def _set(self, control, **values):
        """Set a control's traits without running its observers."""
        self._quiet = True
        try:
            for key, value in values.items():
                setattr(control, key, value)
        finally:
            self._quiet = False

    def refresh(self):
        self.manifests = {m["name"]: m for m in list_experiments(self.store)}
        self.picker.options = [("choose an experiment", None)] + [(n, n) for n in self.manifests]
        if not self.manifests:
            self.message.value = (f"<p>No stored experiments in <code>{html.escape(str(self.store))}</code> yet; "
                                  "build some with <code>python -m signatures canonical</code>.</p>")
        return self

    def select(self, name):
        """Show the answers for stored experiment ``name`` (analysed once, then read from its folder).

        Returns the analysis, or None when the experiment cannot be shown: then the page says why
        and what to do, hides the previous experiment's answers, and stays usable.
        """
        self.message.value = ""
        if name is None:
            return None
        if name not in self.manifests:
            self.message.value = _error_html(f"no stored experiment named {name!r}; stored: "
                                             f"{', '.join(sorted(self.manifests)) or 'none'}")
            return None
        folder = Path(self.manifests[name]["path"])
        try:
            return self._select(name, folder)
        except Exception as exc:  # the picker callback's outermost boundary: shown in the page
            self.experiment = self.analysis = None
            self.body.layout.display = "none"
            self.message.value = _failure_html(f"Experiment {name!r} cannot be shown", exc,
                                               _damaged_todo(exc, folder))
            return None

    def _select(self, name, folder):
        from .analysis import load_or_analyze

        exp = load_experiment(folder)
        self.analysis = load_or_analyze(exp, folder)
        self.experiment = exp
        self._set(self.picker, value=name)
        a = self.analysis
        self.findings.value = "<h2 class='sig-title'>Findings</h2>" + _findings_html(a)
        sep = a["separation"]
        self.separation_reason.value = f"<p>{html.escape(sep['reason'])}</p>"
        self.boxes["separation"].show(F.separation_panel(sep["table"], separating=sep["first_layer"]))
        self.boxes["cka"].show(F.cka_heatmap(sep["cka"], exp.layers))
        self.boxes["crossovers"].show(_crossover_grid(exp, a))
        an = a.get("anomaly")
        if an and an.get("auroc"):
            au = an["auroc"]["auroc"]
            focus = an.get("unseen_set") or list(exp.unseen)
            unseen = ", ".join(str(exp.class_names[int(c)]) for c in focus)
            trained = ", ".join(str(exp.class_names[int(c)]) for c in exp.classes)
            self.boxes["auroc"].show(F.auroc_bars(
                {"distance p-value": au["pvalue"], "path rarity": au["path_rarity"],
                 "max softmax (baseline)": au["msp"]},
                title=f"Telling unseen {unseen} from held-out {trained} (AUROC)"))
            counts = {exp.class_names[int(c)]: {(None if k == "never" else k): v for k, v in e["shares"].items()}
                      for c, e in an["exit_summary"]["unseen"].items()}
            self.boxes["exits"].show(F.exit_layers(counts, exp.layers))
        self._set(self.layer, options=list(exp.layers), value=exp.layers[-1])
        self._show_layer()
        self.body.layout.display = ""
        return a

    def select_from_query(self, query=None):
        """Select ``?experiment=NAME`` from the page's query string (see :meth:`GalleryApp.select_from_query`)."""
        name = _query_experiment(query)
        if name:
            self.refresh()
            return self.select(name)
        return None

    def _show_layer(self):
        exp, s = self.experiment, self.analysis["neurons"][self.layer.value]
        self.boxes["heatmap"].show(F.neuron_heatmap(
            s["means"], s["class_names"], order=s["order"], dead=s["dead"],
            title=f"{self.layer.value}: mean activation per neuron and class"))
        j = exp.layers.index(self.layer.value)
        options = [(f"class {exp.class_names[int(c)]}", ("class", int(c))) for c in s["signatures"]]
        for c in np.unique(exp.paths[exp.rows("train"), j]).tolist():
            options.append((f"cluster c{c} of {self.layer.value}", ("cluster", c)))
        options += [(f"unseen class {exp.class_names[int(u)]}", ("unseen", int(u))) for u in s.get("anomalies", {})]
        self._set(self.subject, options=options, value=options[0][1])
        self._show_subject()

    def _show_subject(self):
        from .neurons import signature_neurons, top_activating

        exp, layer, choice = self.experiment, self.layer.value, self.subject.value
        if choice is None:
            return
        X = exp.hidden[layer]
        known = exp.rows("train", "test")
        if choice[0] == "class":
            neurons = self.analysis["neurons"][layer]["signatures"][str(choice[1])]
            what = f"the {exp.class_names[choice[1]]}s against the other trained classes"
        elif choice[0] == "cluster":
            mask = exp.paths[known, exp.layers.index(layer)] == choice[1]
            neurons = signature_neurons(X[known], mask, top=10)
            what = f"cluster c{choice[1]} against the rest of {layer}"
        else:
            neurons = self.analysis["neurons"][layer]["anomalies"][str(choice[1])]["signature"]
            what = f"unseen {exp.class_names[choice[1]]}s against the trained classes"
        rows = "".join(f"<tr><td>n{n['neuron']}</td><td>{n['auroc']:.3f}</td><td>{n['cohens_d']:.2f}</td>"
                       f"<td>{n['mean_in']:.3f}</td><td>{n['mean_out']:.3f}</td></tr>" for n in neurons[:8])
        self.signature_table.value = (
            f"<p>Signature neurons of {html.escape(what)} (AUROC 1: fires for them; 0: silent for them)</p>"
            "<table class='sig-table'><tr><th>neuron</th><th>AUROC</th><th>Cohen's d</th><th>mean in</th>"
            f"<th>mean out</th></tr>{rows}</table>")
        if neurons:
            best = neurons[0]["neuron"]
            top = top_activating(X, best, k=20, rows=np.arange(exp.n_rows))
            titles = [exp.class_names[t] for t in exp.labels[top]]
            colors = ["#d62728" if s == 2 else "#333333" for s in exp.split[top]]
            self.boxes["images"].show(F.image_grid(
                exp.images[top], titles=titles, title_colors=colors,
                title=f"Inputs that fire n{best} of {layer} most"))

    def retrain(self, *, seeds=(1, 2)):
        """Retrain with other seeds and compare clusters (explicit; trains models). Returns the summary."""
        from .characteristic import retrained_stability

        if self.experiment is None:
            self.retrain_result.value = _error_html("choose an experiment first")
            return None
        self.retrain_button.disabled = True
        self.retrain_result.value = ""
        try:
            out = retrained_stability(self.experiment.config, seeds=seeds, reference=self.experiment,
                                      progress=lambda stage, frac, msg: setattr(self.retrain_progress, "value", frac))
        except (ValueError, FileNotFoundError, DataUnavailableError) as exc:
            self.retrain_result.value = _error_html(f"could not retrain: {exc}")
            return None
        except Exception as exc:  # the button's outermost boundary (TensorFlow errors included)
            self.retrain_result.value = _failure_html("Could not retrain", exc,
                                                      "Nothing was changed; try again, or on a machine with more memory.")
            return None
        finally:
            self.retrain_button.disabled = False
        summary = out["summary"]
        rows = "".join(f"<tr><td>{html.escape(layer)}</td><td>{summary[layer]['ari_mean']:.3f}</td>"
                       f"<td>{summary[layer]['ari_min']:.3f}</td></tr>" for layer in self.experiment.layers)
        self.retrain_result.value = (
            "<table class='sig-table'><tr><th>layer</th><th>ARI mean</th><th>ARI min</th></tr>" + rows + "</table>"
            f"<p>Paths agree for {summary['path_agreement_mean']:.1%} of the inputs after matching clusters.</p>")
        return summary


def _crossover_grid(exp, analysis, *, limit=30):
    """Image grid of the inputs that take another class's dominant path."""
    from .analysis import format_share

    cross = analysis["signatures"]["crossovers"]
    rows, towards = cross["rows"][:limit], cross["dominant_class"][:limit]
    names = exp.class_names
    titles = [f"{names[exp.labels[r]]} on {names[int(c)]}'s path" for r, c in zip(rows, towards)]
    return F.image_grid(exp.images[rows] if rows else np.zeros((0, *exp.images.shape[1:]), dtype=np.uint8),
                        titles=titles, ncols=10,
                        title=f"Inputs on another class's dominant path: {len(cross['rows'])} "
                              f"({format_share(analysis['signatures']['overall_purity'])} of paths are pure)")


def _findings_html(analysis):
    return ("<ul class='sig-findings'>" + "".join(f"<li>{html.escape(s)}</li>" for s in analysis["findings"])
            + "</ul>")


def build_layers(store=None, *, renderer=None):
    """The "Layers and neurons" app (see :class:`LayersApp`)."""
    return LayersApp(store, renderer=renderer)
