"""Layers and neurons: the three questions answered, measured, per layer."""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as W
import numpy as np

from .. import figures as F
from ..data import DataUnavailableError
from ..plotview import Plot, PlotBox
from ..store import list_experiments, load_experiment
from .common import (
    _damaged_todo, _error_html, _failure_html, _findings_html, _query_experiment, store_root,
)


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
        self._stored = {}
        self.stored_why = ""
        self._rebuilding = None
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
            "separation", "cka", "heatmap", "images", "auroc", "exits", "crossovers", "crossover-maps", "roc")}
        self.detector_table = W.HTML()
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
            W.HTML("<p>Why a crossover takes another class's path: beside each input, the pixels that push the "
                   "network to its prediction, and those that hold it in its cluster at each layer (red) or pull "
                   "it towards another (blue).</p>"), b["crossover-maps"],
            W.HTML("<h3>Unseen inputs, calibrated</h3>"),
            W.HBox([W.Box([b["auroc"]], layout=W.Layout(width="50%")),
                    W.Box([b["exits"]], layout=W.Layout(width="50%"))]),
            W.HTML("<h3>The field's detectors and the signature score</h3>"),
            W.HBox([W.Box([self.detector_table], layout=W.Layout(width="55%")),
                    W.Box([b["roc"]], layout=W.Layout(width="45%"))]),
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
        from ..analysis import load_or_analyze
        from .view import read_plots

        exp = load_experiment(folder)
        self.analysis = load_or_analyze(exp, folder)
        stored, self.stored_why = read_plots(folder)
        self._stored = {k: p for k, p in (stored or {}).items() if k[0] == "layers"}
        self.experiment = exp
        self._set(self.picker, value=name)
        a = self.analysis
        self.findings.value = "<h2 class='sig-title'>Findings</h2>" + _findings_html(a)
        sep = a["separation"]
        self.separation_reason.value = f"<p>{html.escape(sep['reason'])}</p>"
        for view in ("separation", "cka", "crossovers"):
            self.boxes[view].show(self._plot(("layers", view)))
        self.boxes["crossover-maps"].show(crossover_explanations(exp, a, folder))
        an = a.get("anomaly")
        if an and an.get("auroc"):
            self.boxes["auroc"].show(self._plot(("layers", "auroc")))
            self.boxes["exits"].show(self._plot(("layers", "exits")))
        det = a.get("detectors")
        if det:
            from ..report import detector_table_html

            self.detector_table.value = detector_table_html(det, exp.class_names)
            self.boxes["roc"].show(self._plot(("layers", "roc")))
        else:
            self.detector_table.value = "<p>No unseen inputs are stored with this experiment.</p>"
        self._set(self.layer, options=list(exp.layers), value=exp.layers[-1])
        self._show_layer()
        self.body.layout.display = ""
        if stored is None:
            self._rebuild_plots(exp, folder, a)
        return a

    def _plot(self, key):
        """The Plot of ``key``: read from ``plots.zip``, else built now."""
        if key in self._stored:
            return self._stored[key]
        return Plot(_layers_figure(self.experiment, self.analysis, key))

    def _rebuild_plots(self, exp, folder, analysis):
        """Rewrite the experiment's unusable ``plots.zip`` in a background thread at low priority."""
        from .view import _rebuild_in_background

        self._rebuilding = _rebuild_in_background(exp, folder, analysis)

    def select_from_query(self, query=None):
        """Select ``?experiment=NAME`` from the page's query string (see :meth:`GalleryApp.select_from_query`)."""
        name = _query_experiment(query)
        if name:
            self.refresh()
            return self.select(name)
        return None

    def _show_layer(self):
        exp, layer = self.experiment, self.layer.value
        self.boxes["heatmap"].show(self._plot(("layers", "heatmap", layer)))
        options = _subject_options(exp, self.analysis, layer)
        self._set(self.subject, options=options, value=options[0][1])
        self._show_subject()

    def _show_subject(self):
        exp, layer, choice = self.experiment, self.layer.value, self.subject.value
        if choice is None:
            return
        neurons, what = _subject_neurons(exp, self.analysis, layer, choice)
        rows = "".join(f"<tr><td>n{n['neuron']}</td><td>{n['auroc']:.3f}</td><td>{n['cohens_d']:.2f}</td>"
                       f"<td>{n['mean_in']:.3f}</td><td>{n['mean_out']:.3f}</td></tr>" for n in neurons[:8])
        self.signature_table.value = (
            f"<p>Signature neurons of {html.escape(what)} (AUROC 1: fires for them; 0: silent for them)</p>"
            "<table class='sig-table'><tr><th>neuron</th><th>AUROC</th><th>Cohen's d</th><th>mean in</th>"
            f"<th>mean out</th></tr>{rows}</table>")
        if neurons:
            self.boxes["images"].show(self._plot(("layers", "images", layer, choice)))

    def retrain(self, *, seeds=(1, 2)):
        """Retrain with other seeds and compare clusters (explicit; trains models). Returns the summary."""
        from ..characteristic import retrained_stability

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


def _subject_options(exp, analysis, layer):
    """The "Neurons of" choices for ``layer``: its classes, its clusters, the unseen classes."""
    s = analysis["neurons"][layer]
    j = exp.layers.index(layer)
    options = [(f"class {exp.class_names[int(c)]}", ("class", int(c))) for c in s["signatures"]]
    for c in np.unique(exp.paths[exp.rows("train"), j]).tolist():
        options.append((f"cluster c{c} of {layer}", ("cluster", c)))
    options += [(f"unseen class {exp.class_names[int(u)]}", ("unseen", int(u))) for u in s.get("anomalies", {})]
    return options


def _subject_neurons(exp, analysis, layer, choice):
    """The signature neurons of a "Neurons of" choice (list of dicts, best first) and the words for it."""
    from ..neurons import layer_signature_neurons

    if choice[0] == "class":
        neurons = analysis["neurons"][layer]["signatures"][str(choice[1])]
        what = f"the {exp.class_names[choice[1]]}s against the other trained classes"
    elif choice[0] == "cluster":
        known = exp.rows("train", "test")
        mask = exp.paths[known, exp.layers.index(layer)] == choice[1]
        neurons = layer_signature_neurons(exp.hidden[layer], known, mask, top=10)
        what = f"cluster c{choice[1]} against the rest of {layer}"
    else:
        neurons = analysis["neurons"][layer]["anomalies"][str(choice[1])]["signature"]
        what = f"unseen {exp.class_names[choice[1]]}s against the trained classes"
    return neurons, what


def _layers_figure(exp, analysis, key):
    """The ``go.Figure`` of a Layers page key (``("layers", view, ...)``)."""
    from ..neurons import top_activating

    view = key[1]
    sep, an = analysis["separation"], analysis.get("anomaly")
    if view == "separation":
        return F.separation_panel(sep["table"], separating=sep["first_layer"])
    if view == "cka":
        return F.cka_heatmap(sep["cka"], exp.layers)
    if view == "crossovers":
        return _crossover_grid(exp, analysis)
    if view == "auroc":
        au = an["auroc"]["auroc"]
        focus = an.get("unseen_set") or list(exp.unseen)
        unseen = ", ".join(str(exp.class_names[int(c)]) for c in focus)
        trained = ", ".join(str(exp.class_names[int(c)]) for c in exp.classes)
        return F.auroc_bars({"distance p-value": au["pvalue"], "path rarity": au["path_rarity"],
                             "max softmax (baseline)": au["msp"]},
                            title=f"Telling unseen {unseen} from held-out {trained} (AUROC)")
    if view == "exits":
        counts = {exp.class_names[int(c)]: {(None if k == "never" else k): v for k, v in e["shares"].items()}
                  for c, e in an["exit_summary"]["unseen"].items()}
        return F.exit_layers(counts, exp.layers)
    if view == "roc":
        from ..detectors import SHOWN, TITLES

        roc = analysis["detectors"]["roc"]
        return F.roc_curves({n: roc[n] for n in SHOWN if n in roc}, titles=TITLES)
    if view == "heatmap":
        s = analysis["neurons"][key[2]]
        return F.neuron_heatmap(s["means"], s["class_names"], order=s["order"], dead=s["dead"],
                                title=f"{key[2]}: mean activation per neuron and class")
    if view == "images":
        layer = key[2]
        neurons, _ = _subject_neurons(exp, analysis, layer, key[3])
        best = neurons[0]["neuron"]
        top = top_activating(exp.hidden[layer], best, k=20, rows=np.arange(exp.n_rows))
        titles = [exp.class_names[t] for t in exp.labels[top]]
        colors = ["#d62728" if s == 2 else "#333333" for s in exp.split[top]]
        return F.image_grid(exp.images[top], titles=titles, title_colors=colors,
                            title=f"Inputs that fire n{best} of {layer} most")
    raise ValueError(f"a Layers page figure must be one of separation, cka, crossovers, auroc, exits, roc, "
                     f"heatmap, images, got {view!r}")


def layers_plots(exp, analysis):
    """Every figure the Layers page shows first, encoded: ``{("layers", view, ...): Plot}``.

    The panels of the experiment, and per layer the neuron heatmap and the images behind the
    first "Neurons of" choice (what :meth:`LayersApp.select` and a change of layer show).
    """
    keys = [("layers", "separation"), ("layers", "cka"), ("layers", "crossovers")]
    an = analysis.get("anomaly")
    if an and an.get("auroc"):
        keys += [("layers", "auroc"), ("layers", "exits")]
    if analysis.get("detectors"):
        keys.append(("layers", "roc"))
    for layer in exp.layers:
        keys.append(("layers", "heatmap", layer))
        choice = _subject_options(exp, analysis, layer)[0][1]
        if _subject_neurons(exp, analysis, layer, choice)[0]:
            keys.append(("layers", "images", layer, choice))
    return {key: Plot(_layers_figure(exp, analysis, key)) for key in keys}


def crossover_explanations(exp, analysis, folder, *, limit=6):
    """The stored maps of the first crossovers (and, without any, of unseen inputs on a trained class's path)."""
    from ..explanations import load_explanations

    found = load_explanations(folder, n_rows=exp.n_rows, image_shape=exp.images.shape[1:])
    names = exp.class_names
    sig = analysis["signatures"]
    cross = sig["crossovers"]
    if cross["rows"]:
        titles = [f"{names[exp.labels[r]]} on {names[int(c)]}'s path" for r, c in zip(cross["rows"],
                                                                                  cross["dominant_class"])]
        return F.experiment_explanations(exp, found, cross["rows"], row_titles=titles, limit=limit,
                                         title="Why these inputs take another class's path")
    across = sig.get("anomaly_crossovers") or {"rows": [], "dominant_class": []}
    titles = [f"unseen {names[exp.labels[r]]} on {names[int(c)]}'s path" for r, c in zip(across["rows"],
                                                                                      across["dominant_class"])]
    return F.experiment_explanations(exp, found, across["rows"], row_titles=titles, limit=limit,
                                     title="No input takes another class's path; unseen inputs on a trained "
                                           "class's path")


def _crossover_grid(exp, analysis, *, limit=30):
    """Image grid of the inputs that take another class's dominant path."""
    from ..analysis import format_share

    cross = analysis["signatures"]["crossovers"]
    rows, towards = cross["rows"][:limit], cross["dominant_class"][:limit]
    names = exp.class_names
    titles = [f"{names[exp.labels[r]]} on {names[int(c)]}'s path" for r, c in zip(rows, towards)]
    return F.image_grid(exp.images[rows] if rows else np.zeros((0, *exp.images.shape[1:]), dtype=np.uint8),
                        titles=titles, ncols=10,
                        title=f"Inputs on another class's dominant path: {len(cross['rows'])} "
                              f"({format_share(analysis['signatures']['overall_purity'])} of paths are pure)")


def build_layers(store=None, *, renderer=None):
    """The "Layers and neurons" app (see :class:`LayersApp`)."""
    return LayersApp(store, renderer=renderer)
