"""The Builder: choose an experiment, run it, see its results in the page."""

from __future__ import annotations

import html
import time

import ipywidgets as W
import numpy as np
import traitlets

from ..data import DATASETS, DataUnavailableError
from ..experiment import ExperimentConfig
from ..store import check_name, experiment_path
from .common import _error_html, _failure_html, _low_priority_thread, _preheating, store_root
from .view import ExperimentView


#: The builder's stages, in order, with the share of the progress bar each one ends at.
STAGES = (
    ("loading", 0.05), ("startup", 0.10), ("training", 0.45), ("extraction", 0.50), ("evaluation", 0.52),
    ("clustering", 0.65), ("projection", 0.97), ("saving", 1.0),
)


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
            from ..data import load_dataset

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
        from ..experiment import run_experiment
        from ..store import save_experiment

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
        from .. import models  # noqa: F401  (TensorFlow)
        from ..projection import warm_up

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


