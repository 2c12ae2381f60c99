"""The view of one stored experiment: every figure built once, cached, and swapped into place.

The figures the pages show first are also kept with the experiment, encoded, in
``plots.zip`` (:func:`write_plots`), so a page kernel that opens a stored experiment only
reads their bytes (:func:`read_plots`) instead of building them. The file is written
atomically and never trusted blindly: one that is missing, damaged, of another version or of
another experiment (its stamp names the manifest's key) is rebuilt and rewritten by the first
kernel that needs it.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import ipywidgets as W
import numpy as np

from .. import __version__
from .. import figures as F
from ..paths import path_label
from ..plotview import Plot, PlotBox
from ..store import read_manifest, write_file_atomic
from .common import _architecture, _failure_html, _findings_html, _low_priority_thread

__all__ = ["ExperimentView", "PLOTS_FILE", "PLOTS_VERSION", "read_plots", "write_plots"]

#: The file of an experiment folder holding its pages' figures (see signatures.store.EXTRA_FILES).
PLOTS_FILE = "plots.zip"
#: Raised whenever what is stored, or how a figure is built, changes: older files are then rebuilt.
PLOTS_VERSION = 3
_INDEX = "index.json"
_FORMAT = "signatures-plots"

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- plots.zip


def _plain(key):
    """A figure key as JSON: tuples become lists, numpy integers plain ints."""
    if isinstance(key, (tuple, list)):
        return [_plain(k) for k in key]
    if isinstance(key, np.integer):
        return int(key)
    if key is None or isinstance(key, (str, int, float)):
        return key
    raise TypeError(f"a figure key must hold tuples, strings and numbers, got {key!r}")


def _key(value):
    """The figure key of :func:`_plain`'s JSON (lists become tuples)."""
    return tuple(_key(v) for v in value) if isinstance(value, list) else value


def plots_stamp(folder):
    """What a ``plots.zip`` must carry to be used for the experiment in ``folder`` (a dict).

    The plots' version, the package's, plotly's and the analysis's (figures show the analysis),
    and the manifest's ``key`` (the config's hash) and ``created``: a file written for another experiment, or for this name before it
    was overwritten, or by other code, is stale.
    """
    import plotly

    from ..analysis import ANALYSIS_VERSION

    manifest = read_manifest(folder)
    return {"format": _FORMAT, "version": PLOTS_VERSION, "signatures": __version__, "plotly": plotly.__version__,
            "analysis": ANALYSIS_VERSION, "key": manifest.get("key"), "created": manifest.get("created")}


class StoredPlot(Plot):
    """A :class:`~signatures.plotview.Plot` read from ``plots.zip``: nothing is decoded or built.

    Its bytes are kept compressed (plotly's JSON shrinks about fourfold) and inflated when a
    widget sends them (about 1 ms per MB): a page kernel holds the figures of several
    experiments, and a class holds 30 such kernels.
    """

    __slots__ = ("_packed",)

    def __init__(self, payload, title, height):  # noqa: D107  (Plot's __init__ builds from a figure)
        self._packed = zlib.compress(bytes(payload), 1)
        self.title, self.height = str(title), int(height)

    @property
    def payload(self):
        return zlib.decompress(self._packed)


def _stored_plot(payload, title, height):
    """A :class:`StoredPlot` from its stored bytes."""
    return StoredPlot(payload, title, height)


def read_plots(folder):
    """The figures kept in ``folder/plots.zip``, if they can be used.

    Parameters
    ----------
    folder : str or Path
        A stored experiment's folder.

    Returns
    -------
    plots : dict or None
        Figure key (a tuple, see :meth:`ExperimentView.figure_key`; the Layers page's start
        with ``"layers"``) -> :class:`~signatures.plotview.Plot`; None when the file cannot be
        used.
    why : str
        Empty when read; else why not (missing, damaged, stale), naming the file.
    """
    path = Path(folder) / PLOTS_FILE
    if not path.is_file():
        return None, f"{path} is missing"
    try:
        stamp = plots_stamp(folder)
    except (ValueError, OSError) as exc:
        return None, f"{path} cannot be checked against its experiment: {exc}"
    try:
        with zipfile.ZipFile(path) as z:
            index = json.loads(z.read(_INDEX).decode("utf-8"))
            if not isinstance(index, dict) or not isinstance(index.get("stamp"), dict) \
                    or not isinstance(index.get("plots"), list):
                return None, f"{path} is damaged: its index is not a plots index"
            if index["stamp"] != stamp:
                changed = sorted(k for k in stamp if index["stamp"].get(k) != stamp[k])
                return None, f"{path} is stale (its {', '.join(changed)} differ from the experiment's)"
            plots = {}
            for key, member, title, height in index["plots"]:
                plots[_key(key)] = _stored_plot(z.read(member), title, height)  # zipfile checks each CRC
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError, TypeError,
            UnicodeDecodeError) as exc:
        return None, f"{path} is damaged ({type(exc).__name__}: {exc})"
    return plots, ""


def _save_plots(folder, plots, stamp):
    """Write ``plots`` (key -> Plot) to ``folder/plots.zip`` atomically; returns its path."""
    import io

    buffer = io.BytesIO()
    index = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for i, (key, plot) in enumerate(plots.items()):
            member = f"plots/{i:04d}.json"
            z.writestr(member, plot.payload)
            index.append([_plain(key), member, plot.title, plot.height])
        z.writestr(_INDEX, json.dumps({"stamp": stamp, "plots": index}))
    path = Path(folder) / PLOTS_FILE
    write_file_atomic(path, buffer.getvalue())
    return path


def refresh_store(store, *, say=None):
    """Bring every stored experiment's ``analysis.json`` and ``plots.zip`` up to date, once.

    After an upgrade that changes the analysis or the figures, every page kernel would find
    them stale and compute them again, all at once when a class's pool starts; ``serve`` runs
    this first, in a process of its own, so that page kernels only read. Damaged experiments
    are left alone (the pages name them).

    Returns
    -------
    list of (str, list of str)
        The experiments updated and what was (``"analysis"``, ``"figures"``).
    """
    from ..analysis import ANALYSIS_FILE, _read_cache, load_or_analyze
    from ..store import list_experiments, load_experiment

    done = []
    for manifest in list_experiments(store):
        folder = Path(manifest["path"])
        try:
            exp = load_experiment(folder)
        except (ValueError, OSError):
            continue
        stale = [] if _read_cache(folder / ANALYSIS_FILE, exp) is not None else ["analysis"]
        if stale or read_plots(folder)[0] is None:  # figures show the analysis: a new one, new figures
            stale.append("figures")
        if not stale:
            continue
        if say:
            say(f"{manifest['name']}: computing its {' and '.join(stale)} once, for the pages")
        try:
            analysis = load_or_analyze(exp, folder)
            if "figures" in stale:
                write_plots(exp, folder, analysis=analysis)
        except (ValueError, OSError) as exc:  # the pages build what is missing and say why
            if say:
                say(f"{manifest['name']}: not updated ({exc}); its pages will compute it")
            continue
        done.append((manifest["name"], stale))
    return done


def build_plots_but_maps(exp, analysis):
    """Every figure :func:`write_plots` keeps except the UMAP maps, encoded: ``(view, layers)`` to hand it.

    A run builds them while its maps are still being fitted (``Experiment.wait_for_maps``): they
    read no map. Returns an :class:`ExperimentView` of ``exp`` and the Layers page's plots.
    """
    from .layers import layers_plots

    view = ExperimentView(exp, analysis=analysis)
    for key in view.plot_keys():
        if key[0] != "umap":
            view.plot_of_key(key)
    return view, layers_plots(exp, analysis)


def write_plots(exp, folder, *, analysis=None, view=None, layers=None):
    """Build every figure the Gallery and Layers pages show first and keep them in ``folder/plots.zip``.

    Called once an experiment is saved (``run``, the Builder's jobs) and by the first page
    kernel that finds the file missing, damaged or stale. The file is written atomically
    (a temporary file and a rename): a reader sees the old file or the new one, whole.

    Parameters
    ----------
    exp : Experiment
        The experiment stored in ``folder``.
    folder : str or Path
        Its folder (already saved: its manifest stamps the file).
    analysis : dict, optional
        :func:`signatures.analysis.analyze` of ``exp``; default read from (or kept in) the folder.
    view : ExperimentView, optional
        A view of ``exp`` whose figures were built already (they are reused).
    layers : dict, optional
        The Layers page's plots built already (:func:`build_plots_but_maps`).

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        ``folder`` is not a complete experiment.
    OSError
        The file cannot be written (nothing is left half-written).
    """
    from ..analysis import load_or_analyze
    from .layers import layers_plots

    folder = Path(folder)
    stamp = plots_stamp(folder)
    if analysis is None:
        analysis = load_or_analyze(exp, folder)
    if view is None:
        view = ExperimentView(exp, analysis=analysis)
    view.warm(keep=False)
    plots = {key: view.plot_of_key(key) for key in view.plot_keys()}
    plots.update(layers_plots(exp, analysis) if layers is None else layers)
    return _save_plots(folder, plots, stamp)


_rebuilding = set()
_rebuilding_lock = threading.Lock()


def _rebuild_in_background(exp, folder, analysis, *, view=None, niceness=10):
    """:func:`write_plots` in a daemon thread at low CPU priority, once at a time per folder in this
    process. A failure is a warning (the page works without the file). Returns the thread, or None
    when one is already at work on ``folder``."""
    folder = Path(folder)
    with _rebuilding_lock:
        if str(folder) in _rebuilding:
            return None
        _rebuilding.add(str(folder))

    def work():
        try:
            write_plots(exp, folder, analysis=analysis, view=view)
        except Exception as exc:  # a background thread's outermost boundary: the page works without the file
            _log.debug("plots not kept", exc_info=exc)
            warnings.warn(f"the figures could not be kept in {folder / PLOTS_FILE}: {exc}; they will be built "
                          "again next time", RuntimeWarning, stacklevel=2)
        else:
            if view is not None:
                view.stored_why = ""
        finally:
            with _rebuilding_lock:
                _rebuilding.discard(str(folder))

    return _low_priority_thread(work, name="signatures-plots-rebuild", niceness=niceness)


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
    folder : str or Path, optional
        The experiment's folder: its figures are read from ``plots.zip`` there (see
        :func:`read_plots`), and :meth:`warm` rewrites that file when it could not be used.
    maps_folder : str or Path, optional
        Where its attribution maps are read from (``explanations.npz``); default ``folder``. The
        Builder gives only this one: the job is still writing the folder's other files.

    Attributes
    ----------
    widget : ipywidgets.VBox
        Built on first access.
    layer, color_by, inserted, selection : ipywidgets controls
    stored : int
        How many figures were read from ``plots.zip`` (0 when it could not be used).
    stored_why : str
        Why ``plots.zip`` was not used ("" when it was).
    """

    IMAGES = 40
    VIEWS = ("confusion", "training", "sankey", "umap", "silhouette", "images", "explain")

    def __init__(self, exp, *, anomalies=None, analysis=None, renderer=None, folder=None, maps_folder=None):
        self.exp = exp
        maps_folder = folder if maps_folder is None else maps_folder
        self.maps_folder = None if maps_folder is None else Path(maps_folder)
        self.analysis = analysis
        self.renderer = renderer
        self.folder = None if folder is None else Path(folder)
        self._figures = {}
        self._plots = {}
        self._widget = None
        self._warm_lock = threading.RLock()  # write_plots(view=self) warms again inside warm
        self._explanations = None  # loaded from the folder on first use (see :attr:`explanations`)
        self._updating = False
        unseen = exp.unseen
        self._start = tuple(a for a in (exp.anomalies if anomalies is None else anomalies) if a in unseen)
        self.stored, self.stored_why = 0, "no folder given"
        if self.folder is not None:
            stored, self.stored_why = read_plots(self.folder)
            if stored:
                self._plots.update((k, p) for k, p in stored.items() if k[0] != "layers")
                self.stored = len(self._plots)

    # ------------------------------------------------------------------ state of the controls

    def _state(self):
        if self._widget is None:
            return self.exp.layers[0], "digit", self._start, None
        return self.layer.value, self.color_by.value, tuple(self.inserted.value), self.selection.value

    def show_findings(self, analysis):
        """Show ``analysis``'s findings under the title (the Builder shows a run before they exist)."""
        self.analysis = analysis
        self._explanations = None  # the job stores its maps before its findings: look again
        if self._widget is not None:
            self._findings.value = _findings_html(analysis) if analysis else ""
            self._update_explain()

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
        if view == "explain":
            return ("explain", self._explained_row())
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
            return F.k_choice_curve(exp.clusterers[key[1]], key[1])
        if kind == "explain":
            return self._explain_figure(key[1])
        return self._images(key[1], self._rows(key[2]))

    # ------------------------------------------------------------------ why this path (stored maps)

    @property
    def explanations(self):
        """The attribution maps stored with the experiment (:func:`signatures.explanations.load_explanations`),
        or None (none stored, or no folder)."""
        if self._explanations is None:
            from ..explanations import load_explanations

            found = None if self.maps_folder is None else load_explanations(
                self.maps_folder, n_rows=self.exp.n_rows, image_shape=self.exp.images.shape[1:])
            self._explanations = found if found is not None else False
        return self._explanations or None

    def explain_options(self, choice=None, inserted=None):
        """(label, row) pairs of the inputs of the grid of ``choice`` that have stored maps."""
        exp, found = self.exp, self.explanations
        _, _, s_inserted, s_selection = self._state()
        choice = s_selection if choice is None else choice
        inserted = s_inserted if inserted is None else tuple(inserted)
        if found is None or choice is None:
            return []
        shown, _, _ = self._grid_rows(choice, self._rows(inserted))
        names, split_words = exp.class_names, {0: "training", 1: "held-out", 2: "unseen"}
        return [(f"#{r} · {names[exp.labels[r]]} ({split_words[int(exp.split[r])]}), predicted "
                 f"{names[exp.predicted[r]]}", int(r)) for r in shown if int(r) in found["index"]]

    def _explained_row(self):
        if self._widget is None:
            options = self.explain_options()
            return options[0][1] if options else None
        return self.explain.value

    def explanation_text(self, row):
        """One line about input ``row``: its class, prediction, path and, with dropout, how sure the network is."""
        exp = self.exp
        names = exp.class_names
        j = exp.classes.index(int(exp.predicted[row]))
        path = path_label(list(exp.paths[row]) + [int(exp.predicted[row])], exp.layers, class_names=names)
        text = (f"Input #{row}: a {names[exp.labels[row]]}, predicted {names[exp.predicted[row]]} "
                f"(probability {exp.probs[row, j]:.2f}), path {path}.")
        mc = getattr(exp, "uncertainty", None)
        if mc is not None:
            text += (f" Monte-Carlo dropout ({mc['passes']} passes): predictive entropy "
                     f"{float(mc['entropy'][row]):.3f} nats, mutual information {float(mc['mutual_information'][row]):.3f}.")
        return text

    def _explain_figure(self, row):
        from ..explanations import short_title

        exp, found = self.exp, self.explanations
        empty = np.zeros((0, *exp.images.shape[1:]), dtype=np.uint8)
        if found is None:
            return F.explanation_grid(empty, {}, title="No attribution maps are stored with this experiment "
                                                       "(run it again to compute them)")
        if row is None or int(row) not in found["index"]:
            return F.explanation_grid(empty, {}, title="Choose an input of the grid above to see why it takes its path")
        i = found["index"][int(row)]
        maps = {short_title(key): values[i:i + 1] for key, values in found["maps"].items()}
        names = exp.class_names
        return F.explanation_grid(exp.images[[row]], maps, row_titles=[f"#{row} {names[exp.labels[row]]}"],
                                  title=f"Why input #{row} takes its path: red pixels push it towards the class "
                                        "or cluster, blue ones away")

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

    def _grid_rows(self, choice, rows):
        """The rows a grid of ``choice`` shows (the first :attr:`IMAGES` members in
        :func:`~signatures.explanations.row_priority` order, so that those with stored maps come
        first), its members and its title."""
        from ..explanations import row_priority

        exp = self.exp
        if choice[0] == "cluster":
            members = np.intersect1d(exp.cluster_members(choice[1], choice[2]), rows)
            title = f"{choice[1]} cluster c{choice[2]}"
        else:
            members = exp.path_members(choice[1], rows=rows)
            title = "path " + path_label(choice[1], exp.layers, class_names=exp.class_names)
        shown = members
        if len(members) > self.IMAGES:
            priority = self._cached(("priority",), lambda: row_priority(exp.n_rows, exp.config.seed))
            shown = np.sort(members[np.argsort(priority[members], kind="stable")[:self.IMAGES]])
        return shown, members, title

    def _images(self, choice, rows):
        exp = self.exp
        if choice is None:
            return F.image_grid(np.zeros((0, *exp.images.shape[1:]), dtype=np.uint8), title="No selection")
        shown, members, title = self._grid_rows(choice, rows)
        anomaly = exp.split[shown] == 2
        titles = [exp.class_names[t] for t in exp.labels[shown]]
        colors = ["#d62728" if a else "#333333" for a in anomaly]
        return F.image_grid(exp.images[shown], titles=titles, title_colors=colors,
                            title=f"{title}: {len(shown)} of {len(members)} inputs")

    def plot(self, view, **choice):
        """The :class:`~signatures.plotview.Plot` (encoded figure) of ``view``, built once."""
        return self.plot_of_key(self.figure_key(view, **choice))

    def plot_of_key(self, key):
        """The :class:`~signatures.plotview.Plot` of a :meth:`figure_key`: stored, cached, or built now."""
        if key not in self._plots:
            # The encoded plot is what is kept; its go.Figure (several times larger) is dropped.
            fig = self._figures.pop(key) if key in self._figures else self._build(key)
            self._plots[key] = Plot(fig)
        return self._plots[key]

    def plot_keys(self):
        """The keys of every figure the controls can ask for with the first anomalies (what :meth:`warm`
        builds and ``plots.zip`` keeps), in order."""
        inserted = self._start
        keys = [("confusion",), ("training",), ("sankey", inserted)]
        for name in self.exp.layers:
            keys.append(("silhouette", name))
            keys += [("umap", name, c, inserted) for c in F.COLOR_BY]
        keys += [("images", value, inserted) for _, value in self.selection_options(inserted)[:12]]
        return keys

    def warm(self, *, keep=True):
        """Build and encode every figure the controls can ask for with the first anomalies, ahead of time.

        Figures read from ``plots.zip`` are not built again. With ``keep`` and a :attr:`folder`
        whose ``plots.zip`` lacked any of them (missing, damaged, stale), the file is rewritten
        (:func:`write_plots`); a failure to do so is a warning, never an error of the page.
        """
        with self._warm_lock:
            missing = [key for key in self.plot_keys() if key not in self._plots]
            for key in missing:
                self.plot_of_key(key)
            if keep and missing and self.folder is not None:
                self._keep_plots()
        return self

    def _keep_plots(self):
        try:
            write_plots(self.exp, self.folder, analysis=self.analysis, view=self)
        except Exception as exc:  # keeping the figures only saves later kernels time: never fatal to the page
            _log.debug("plots not kept", exc_info=exc)
            warnings.warn(f"the figures could not be kept in {self.folder / PLOTS_FILE}: {exc}; they will be "
                          "built again next time", RuntimeWarning, stacklevel=3)
        else:
            self.stored_why = ""

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
        explained = self.explain_options(options[0][1] if options else None, self._start)
        self.explain = W.Dropdown(options=explained or [("no input of this grid has stored maps", None)],
                                  value=explained[0][1] if explained else None, description="Explain",
                                  layout=W.Layout(width="640px"))
        self.explain_note = W.HTML()
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
        findings = self._findings = W.HTML(_findings_html(self.analysis) if self.analysis else "")
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
            W.HTML("<h3>Why this path</h3><p>Choose one of the inputs above: beside it, which pixels push the "
                   "network towards the class it predicts, and which hold the input in its cluster at each layer "
                   "(red) or pull it towards another cluster (blue).</p>"),
            self.explain,
            self.explain_note,
            b["explain"],
        ], layout=W.Layout(width="100%"))
        for view in self.VIEWS:
            self._show(view)
        self.layer.observe(lambda _: self._shown_or_error(self._show, "umap", "silhouette"), "value")
        self.color_by.observe(lambda _: self._shown_or_error(self._show, "umap"), "value")
        self.inserted.observe(lambda _: self._shown_or_error(self._on_inserted), "value")
        self.selection.observe(lambda _: self._shown_or_error(self._on_selection), "value")
        self.explain.observe(lambda _: None if self._updating else self._shown_or_error(self._show_explain), "value")
        self._show_explain()

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

    def _on_selection(self):
        self._show("images")
        self._update_explain()

    def _update_explain(self):
        """The grid changed: offer its inputs that have maps."""
        options = self.explain_options()
        self._updating = True
        try:
            self.explain.options = options or [("no input of this grid has stored maps", None)]
            self.explain.value = options[0][1] if options else None  # the index may stay 0: set the value
        finally:
            self._updating = False
        self._show_explain()

    def _show_explain(self):
        row = self.explain.value
        self.explain_note.value = "" if row is None else f"<p>{html.escape(self.explanation_text(row))}</p>"
        self._show("explain")

    def _on_inserted(self):
        options = self.selection_options()
        previous = self.selection.value
        values = [v for _, v in options]
        with self.selection.hold_trait_notifications():
            self.selection.options = options
            self.selection.value = previous if previous in values else (values[0] if values else None)
        self._show("sankey", "umap", "images")
        self._update_explain()

    def shown(self, view):
        """The figure now shown for ``view`` (one of :attr:`VIEWS`), as a ``go.Figure``."""
        return self.boxes[view].figure()


