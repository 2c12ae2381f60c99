"""The view of one stored experiment: every figure built once, cached, and swapped into place."""

from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from .. import figures as F
from ..paths import path_label
from ..plotview import Plot, PlotBox
from .common import _architecture, _failure_html, _findings_html


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


