"""The Builder: choose an experiment, run it as a job on a Dask cluster, see its results in the page.

The page never imports TensorFlow: Run checks every choice here, then submits the
experiment as a job (:mod:`signatures.app.jobs`) to the scheduler at ``$SIGNATURES_SCHEDULER``
(the site's ``serve`` sets it) or given as ``scheduler=``. The page shows the job's place
in the queue, then the stage and epoch progress streamed from the worker, then the
experiment the worker stored, loaded from the store. Without a scheduler address (the
notebook opened in JupyterLab or Colab) the first Run starts a small ``LocalCluster`` of
one worker in this kernel, and says so.
"""

from __future__ import annotations

import html
import os
import threading
import time

import anywidget
import ipywidgets as W
import numpy as np
import traitlets

from ..data import DATASETS, ENV_DATA_DIR, DataUnavailableError
from ..experiment import ExperimentConfig
from ..store import check_name, experiment_path
from .common import _error_html, _failure_html, store_root
from .view import ExperimentView

__all__ = ["BuilderApp", "build_builder", "Toggles", "ScrollAnchor", "NumberText", "STAGES"]

#: The environment variable holding the scheduler's address (as :data:`signatures.app.jobs.SCHEDULER_ENV`;
#: not imported from there, so that this page imports Dask only on its first Run).
SCHEDULER_ENV = "SIGNATURES_SCHEDULER"

#: The stages a job reports, in order, with the share of the progress bar each one ends at.
STAGES = (
    ("started", 0.02), ("loading", 0.07), ("startup", 0.10), ("training", 0.45), ("extraction", 0.50),
    ("evaluation", 0.52), ("clustering", 0.65), ("projection", 0.90), ("saving", 0.92), ("explanation", 0.96), ("analysis", 0.99),
    ("done", 1.0),
)

#: Stages a job reports only once its experiment is stored (see :func:`signatures.app.jobs.run_job`).
SAVED_STAGES = ("explanation", "analysis", "done")

#: What to do after a failed run.
_TODO_FAILED = ("Nothing was saved to the store. Change the values above (fewer images or smaller layers "
                "need less memory) and run again.")

#: Colours of the toggles: selected ones are filled, with a tick, and say ``aria-pressed="true"``.
_TOGGLES_ESM = r"""
function render({ model, el }) {
  el.classList.add("sig-toggles");
  const group = document.createElement("div");
  group.setAttribute("role", "group");
  group.style.cssText = "display:flex;flex-wrap:wrap;align-items:center;gap:4px;margin:2px 0";
  const label = document.createElement("span");
  label.className = "sig-toggles-label";
  label.style.cssText = "width:150px;flex:none;font-size:13px";
  group.appendChild(label);
  el.appendChild(group);
  let buttons = [];

  function paint() {
    const chosen = new Set(model.get("value"));
    const disabled = model.get("disabled");
    buttons.forEach((b, i) => {
      const on = chosen.has(i);
      b.setAttribute("aria-pressed", on ? "true" : "false");
      b.textContent = (on ? "\u2713 " : "") + model.get("labels")[i];
      b.disabled = disabled;
      b.style.cssText = "min-width:38px;height:30px;padding:0 8px;border-radius:4px;cursor:pointer;" +
        "font-size:13px;" + (on
          ? "background:#1565c0;color:#fff;border:2px solid #0d47a1;font-weight:600"
          : "background:#fff;color:#333;border:1px solid #9e9e9e;font-weight:400");
    });
  }

  function build() {
    label.textContent = model.get("description");
    group.setAttribute("aria-label", model.get("description"));
    buttons.forEach((b) => b.remove());
    buttons = model.get("labels").map((text, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.value = String(i);
      b.title = text;
      b.addEventListener("click", () => {
        const chosen = new Set(model.get("value"));
        if (chosen.has(i)) chosen.delete(i); else chosen.add(i);
        model.set("value", [...chosen].sort((a, b) => a - b));
        model.save_changes();
      });
      group.appendChild(b);
      return b;
    });
    paint();
  }

  model.on("change:labels", build);
  model.on("change:description", build);
  model.on("change:value", paint);
  model.on("change:disabled", paint);
  build();
  return () => {
    model.off("change:labels", build);
    model.off("change:description", build);
    model.off("change:value", paint);
    model.off("change:disabled", paint);
  };
}
export default { render };
"""

_SCROLL_ESM = r"""
function render({ model, el }) {
  el.className = "sig-scroll-anchor";
  const go = () => el.scrollIntoView({ behavior: "smooth", block: "start" });
  model.on("change:count", go);
  return () => model.off("change:count", go);
}
export default { render };
"""


class Toggles(anywidget.AnyWidget):
    """A row of toggle buttons, one per class; several may be chosen.

    A chosen button is filled blue with a tick and says ``aria-pressed="true"``; the others
    are white and say ``"false"``, so the choice reads in colour, in text and to a screen reader.

    Attributes
    ----------
    labels : list of str
        One button per label; button ``i`` stands for class ``i``.
    value : list of int
        The chosen classes, sorted.
    description : str
        The words before the buttons (also the group's ``aria-label``).
    disabled : bool
    """

    _esm = _TOGGLES_ESM
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    value = traitlets.List(traitlets.Int()).tag(sync=True)
    description = traitlets.Unicode("").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)

    @traitlets.validate("value")
    def _sorted(self, proposal):
        return sorted({int(v) for v in proposal["value"]})


class ScrollAnchor(anywidget.AnyWidget):
    """An empty widget that scrolls itself to the top of the screen each time ``count`` grows."""

    _esm = _SCROLL_ESM
    count = traitlets.Int(0).tag(sync=True)


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


def _plural(n, one, many):
    return f"{n} {one if n == 1 else many}"


def _status_html(text):
    return f"<div class='sig-status'>{html.escape(text)}</div>"


class BuilderApp:
    """Choose an experiment, run it as a job with progress, see the results; the job saves it to the store.

    Parameters
    ----------
    store : str or Path, optional
        Where experiments are saved (see :func:`store_root`); workers must see the same folder.
    data_dir : str, optional
        Folder of IDX files; default ``$SIGNATURES_DATA_DIR`` (see :mod:`signatures.data`).
    renderer : {"widget", "mime"}, optional
        How plots are drawn (default :func:`signatures.plotview.plot_renderer`).
    scheduler : str, optional
        Address of the Dask scheduler that runs the jobs; default ``$SIGNATURES_SCHEDULER``.
        Without either, the first Run starts a ``LocalCluster`` of one worker in this process.
    jobs : signatures.app.jobs.JobClient, optional
        A client to submit with (instead of ``scheduler``).
    poll : float
        Seconds between two looks at a submitted job.

    Attributes
    ----------
    job : signatures.app.jobs.Job or None
        The last submitted job.
    experiment, view
        The last finished run's :class:`~signatures.experiment.Experiment` (loaded from the
        store) and its :class:`ExperimentView`.
    """

    def __init__(self, store=None, *, data_dir=None, renderer=None, scheduler=None, jobs=None, poll=0.3):
        self.store = store_root(store)
        self.data_dir = data_dir
        self.renderer = renderer
        self.scheduler = scheduler
        self.jobs = jobs
        self.poll = float(poll)
        self._counts = {}
        self._lines = {}
        self._watcher = None
        self.job = None
        self.experiment = None
        self.view = None
        label = dict(style={"description_width": "150px"}, layout=W.Layout(width="420px"))
        self.dataset = W.Dropdown(options=[("MNIST digits", "mnist"), ("Fashion-MNIST clothes", "fashion-mnist"),
                                           ("scikit-learn 8x8 digits", "digits")],
                                  value="mnist", description="Dataset", **label)
        self.digit_toggles = Toggles(labels=list(DATASETS["mnist"]), value=[1, 7])
        self.anomaly_toggles = Toggles(labels=list(DATASETS["mnist"]), value=[3, 4])
        self.n_per_class = W.Text(value="", placeholder="all", **label)
        self.arch = W.ToggleButtons(options=[("MLP", "mlp"), ("CNN", "cnn")], value="mlp",
                                    description="Architecture", style={"description_width": "150px"})
        self.hidden = W.Text(value="64 32", description="Dense hidden sizes", **label)
        self.activation = W.Dropdown(options=["relu", "tanh", "sigmoid", "elu", "gelu"], value="relu",
                                     description="Activation", **label)
        self.filters = W.Text(value="8 16", description="CNN filters", **label)
        self.dropout = W.Dropdown(options=[("none", 0.0), ("0.1", 0.1), ("0.2", 0.2), ("0.3", 0.3), ("0.5", 0.5)],
                                  value=0.0, description="Dropout", tooltip="Dropout after each dense hidden layer: "
                                  "the run then also measures how sure the network is (Monte-Carlo dropout)",
                                  **label)
        self.epochs = W.BoundedIntText(value=5, min=0, max=200, description="Epochs", **label)
        self.k_min = NumberText(value="2", description="K from", **label)
        self.k_max = NumberText(value="10", description="K to", **label)
        self.k_criterion = W.Dropdown(options=[("best silhouette", "silhouette"),
                                               ("at least one cluster per class", "classes"),
                                               ("clusters that best predict the output", "faithfulness"),
                                               ("a fixed K", "fixed")],
                                      value="silhouette", description="K chosen by", **label)
        self.k_fixed = NumberText(value="", description="Fixed K", style={"description_width": "80px"},
                                  layout=W.Layout(width="200px", display="none"))  # its own layout: it hides
        self.seed = NumberText(value="0", description="Seed", **label)
        self.name = W.Text(value="my-experiment", description="Experiment name", **label)
        self.run_button = W.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = W.Button(description="Cancel", button_style="warning", icon="stop",
                                      tooltip="Stop this run; nothing is saved",
                                      layout=W.Layout(display="none"))
        self.progress = W.FloatProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="420px"))
        self.cluster_note = W.HTML()
        self.queue = W.HTML()
        self.status = W.HTML()
        self.error = W.HTML()
        self.scroll = ScrollAnchor()
        self.results = W.VBox()

        self.errors = {key: W.HTML() for key in (
            "dataset", "digits", "anomalies", "n_per_class", "arch", "hidden", "filters", "activation",
            "dropout", "epochs", "k_range", "k_criterion", "seed", "name", "other")}
        self.filters_row = W.VBox([self.filters, self.errors["filters"]])
        self.arch.observe(lambda _: self._show_arch(), "value")
        self._show_arch()
        self.dataset.observe(lambda _: self._show_dataset(), "value")
        self._show_dataset()
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.cancel())
        controls = {
            "dataset": [self.dataset], "digits": [self.digit_toggles], "anomalies": [self.anomaly_toggles],
            "n_per_class": [self.n_per_class], "arch": [self.arch], "hidden": [self.hidden],
            "filters": [self.filters], "activation": [self.activation], "dropout": [self.dropout],
            "epochs": [self.epochs],
            "k_range": [self.k_min, self.k_max], "k_criterion": [self.k_criterion, self.k_fixed],
            "seed": [self.seed], "name": [self.name],
        }
        self.k_criterion.observe(
            lambda _: setattr(self.k_fixed.layout, "display", "" if self.k_criterion.value == "fixed" else "none"),
            "value")
        for key, widgets in controls.items():
            for widget in widgets:
                widget.observe(lambda _, key=key: self._changed(key), "value")

        e = self.errors
        form = W.VBox([
            self.dataset, e["dataset"],
            self.digit_toggles, e["digits"],
            self.n_per_class, e["n_per_class"],
            self.arch, e["arch"],
            self.hidden, e["hidden"],
            self.filters_row,
            self.activation, e["activation"],
            self.dropout, e["dropout"],
            self.epochs, e["epochs"],
            W.HBox([self.k_min, self.k_max]), e["k_range"],
            W.HBox([self.k_criterion, self.k_fixed]), e["k_criterion"],
            self.anomaly_toggles, e["anomalies"],
            self.seed, e["seed"],
            self.name, e["name"],
            e["other"],
            W.HBox([self.run_button, self.cancel_button, self.progress]),
            self.cluster_note, self.queue, self.status, self.error,
        ])
        self.widget = W.VBox([form, self.scroll, self.results])

    def _show_arch(self):
        self.filters_row.layout.display = "" if self.arch.value == "cnn" else "none"
        if self.arch.value == "cnn" and self.hidden.value.strip() == "64 32":
            self.hidden.value = "32"
        elif self.arch.value == "mlp" and self.hidden.value.strip() == "32":
            self.hidden.value = "64 32"

    def _show_dataset(self):
        """Name the classes as the chosen dataset does: digits 0-9, or Fashion-MNIST's clothes."""
        names = list(DATASETS.get(self.dataset.value, DATASETS["mnist"]))
        one, many = ("class", "classes") if self.dataset.value == "fashion-mnist" else ("digit", "digits")
        self.digit_toggles.labels = self.anomaly_toggles.labels = names
        self.digit_toggles.description = f"Train on {many}"
        self.anomaly_toggles.description = f"Insert unseen {many}"
        self.n_per_class.description = f"Images per {one}"

    def _changed(self, key):
        """A control changed: its old message, and the Run's, no longer apply."""
        related = ("digits", "anomalies") if key in ("digits", "anomalies") else (key,)
        if key == "dataset":  # the dataset decides what the class choices and image counts mean
            related = ("dataset", "digits", "anomalies", "n_per_class", "k_range")
        for k in (*related, "other"):
            self.errors[k].value = ""
        self.error.value = ""

    # ------------------------------------------------------------------ inputs

    def words(self):
        """Config field -> the words the page shows for its control; messages start with them."""
        return {
            "dataset": self.dataset.description, "digits": self.digit_toggles.description,
            "anomalies": self.anomaly_toggles.description, "n_per_class": self.n_per_class.description,
            "arch": self.arch.description, "hidden": self.hidden.description, "filters": self.filters.description,
            "activation": self.activation.description, "dropout": self.dropout.description,
            "epochs": self.epochs.description,
            "k_min": self.k_min.description, "k_max": self.k_max.description, "k_range": "K range",
            "k_criterion": self.k_criterion.description, "k_fixed": self.k_fixed.description,
            "seed": self.seed.description,
            "name": self.name.description,
        }

    def config(self):
        """The :class:`ExperimentConfig` the controls describe (not yet validated).

        A text box that does not hold a whole number (images per class, K from, K to, seed)
        gives its text, which :meth:`check` reports next to the control.
        """
        n = self.n_per_class.value.strip()
        return ExperimentConfig(
            name=self.name.value.strip(),
            dataset=self.dataset.value,
            digits=tuple(self.digit_toggles.value),
            anomalies=tuple(self.anomaly_toggles.value),
            all_unseen=True,
            n_per_class=_int_or_text(n) if n and n.lower() != "all" else None,
            arch=self.arch.value,
            hidden=self.hidden.value,
            activation=self.activation.value,
            dropout=self.dropout.value,
            filters=self.filters.value if self.arch.value == "cnn" else (8, 16),
            epochs=self.epochs.value,
            k_min=_int_or_text(self.k_min.value),
            k_max=_int_or_text(self.k_max.value),
            k_criterion=self.k_criterion.value,
            k_fixed=(_int_or_text(self.k_fixed.value) if self.k_criterion.value == "fixed"
                     and self.k_fixed.value.strip() else None),
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
                counts = self._class_counts(config.dataset)
            except (DataUnavailableError, ValueError) as exc:
                problems["dataset"] = f"{self.dataset.description}: {exc}"
        for key, message in config.problems(words=self.words(), counts=counts).items():
            problems.setdefault(key if key in self.errors else "other", message)
        try:
            check_name(config.name)
            if experiment_path(self.store, config.name).exists():
                problems["name"] = (f"{self.name.description}: an experiment named {config.name!r} exists "
                                    "already in the store; choose another name")
        except ValueError as exc:
            problems["name"] = str(exc)  # it names the experiment name and the bad value
        for key, widget in self.errors.items():
            widget.value = _error_html(problems.get(key, ""))
        return problems

    def _class_counts(self, name):
        """Images per class of dataset ``name``, or None when only ``keras.datasets`` has it.

        The images themselves are not kept: the worker loads them. MNIST and Fashion-MNIST
        without a folder of IDX files come from ``keras.datasets``, which imports TensorFlow:
        then the page leaves the checks against the images per class to the worker.
        """
        if name != "digits" and not (self.data_dir or os.environ.get(ENV_DATA_DIR)):
            return None
        if name not in self._counts:
            from ..data import load_dataset

            self._counts[name] = load_dataset(name, data_dir=self.data_dir).counts()
        return self._counts[name]

    # ------------------------------------------------------------------ the job

    def _job_client(self):
        """The :class:`~signatures.app.jobs.JobClient` runs go to: given, at the scheduler, or a local one."""
        if self.jobs is None:
            from .jobs import connect, start_cluster

            address = self.scheduler or os.environ.get(SCHEDULER_ENV)
            if address:
                self.jobs = connect(address, timeout=10)
            else:
                self.cluster_note.value = _status_html(
                    f"No Dask scheduler address is set ({SCHEDULER_ENV}), so this notebook starts its own "
                    "cluster of 1 worker; its first run also waits for it to load TensorFlow (about 30 s).")
                self.jobs = start_cluster(n_workers=1)
                self.own_cluster = True
        return self.jobs

    def _busy(self, busy):
        self.run_button.disabled = busy
        self.cancel_button.disabled = False
        self.cancel_button.layout.display = "" if busy else "none"

    def run(self):
        """Check the inputs and submit the experiment as a job. Returns the :class:`Job`, or None.

        Returns at once; a background thread follows the job (queue place, progress, results
        or error). :meth:`wait` waits for it. Every failure is shown in the page, never as a
        traceback: bad inputs next to their controls, a run that cannot start or fails with
        what to do. The page stays usable: the previous results stay shown and Run works again.
        """
        if self._watcher is not None and self._watcher.is_alive():
            return None  # one run at a time per page (Run is disabled meanwhile)
        self.error.value = ""
        self.queue.value = ""
        try:
            if self.check():
                self.error.value = _error_html("Fix the values marked above, then run again.")
                return None
            config = self.config().validate(words=self.words(), counts=self._class_counts(self.dataset.value))
            self._busy(True)
            self.cancel_button.layout.display = "none"  # nothing to cancel until the job is queued
            job = self._job_client().submit(config, self.store)
        except Exception as exc:  # the Run button's outermost boundary: shown in the page
            self._busy(False)
            self.error.value = _failure_html("The run could not start", exc, _TODO_FAILED)
            return None
        self.job = job
        self._cancelling = False
        self._lines = {}
        self.progress.value = 0.0
        self.status.value = ""
        self.queue.value = _status_html("Your run is queued…")
        self._busy(True)
        self._watcher = threading.Thread(target=self._follow, args=(job,), name="signatures-builder-job",
                                         daemon=True)
        self._watcher.start()
        return job

    def wait(self, timeout=None):
        """Wait until the last run is over and shown; returns its Experiment, or None if it did not finish."""
        if self._watcher is not None:
            self._watcher.join(timeout)
        return self.experiment if self.job is not None and self._shown == self.job.id else None

    _shown = None
    _early = None  # the job whose results are shown before it ended (stored; findings to follow)
    _cancelling = False

    def cancel(self):
        """Stop the running or waiting job (Cancel button); the page says what happened."""
        job = self.job
        if job is None or self._watcher is None or not self._watcher.is_alive():
            return
        try:
            job.cancel()
        except Exception as exc:  # the Cancel button's boundary: shown in the page
            self.error.value = _failure_html("The run could not be cancelled", exc, "Try Cancel again.")
            return
        self._cancelling = True
        self.cancel_button.disabled = True
        self.queue.value = _status_html("Cancelling your run: it stops at its next step…")

    def _show_queue(self, position):
        if position == 1:
            text = "Your run is next in the queue: it starts as soon as a worker is free."
        else:
            ahead = position - 1
            text = f"Your run is waiting in the queue: {_plural(ahead, 'run', 'runs')} ahead of yours."
        self.queue.value = _status_html(text)

    def _progress(self, stage, fraction, message):
        bounds = dict(STAGES)
        names = [s for s, _ in STAGES]
        i = names.index(stage) if stage in names else 0
        low = STAGES[i - 1][1] if i else 0.0
        high = bounds.get(stage, low)
        self.progress.value = max(self.progress.value, low + (high - low) * min(max(float(fraction), 0.0), 1.0))
        self._lines[stage] = message
        self.status.value = "<div class='sig-status'>" + "".join(
            f"<div><b>{html.escape(s)}</b>: {html.escape(m)}</div>" for s, m in self._lines.items()) + "</div>"

    def _follow(self, job):
        """The watcher thread: poll ``job`` until it ends, showing its place, progress and outcome."""
        seen, asked = -1, 0.0
        try:
            while True:
                state = job.state
                if state == "waiting" and time.monotonic() - asked >= max(self.poll, 1.0):
                    asked = time.monotonic()  # the queue's place costs the scheduler more: once a second
                    position = job.position()
                    if position is not None and not self._cancelling:
                        self._show_queue(position)
                events = [e for e in job.events() if e["seq"] > seen]
                if events and not self._cancelling:
                    self.queue.value = ""
                for event in events:
                    seen = event["seq"]
                    self._progress(event["stage"], event["fraction"], event["message"])
                if job.future.done():
                    break
                if self._early != job.id and any(e["stage"] in SAVED_STAGES for e in events):
                    self._show_saved(job)
                time.sleep(self.poll)
            self._outcome(job)
        except Exception as exc:  # the watcher thread's boundary: shown in the page
            self.error.value = _failure_html("Following the run failed", exc,
                                             "Check the store in the Gallery, then run again.")
        finally:
            self._busy(False)

    def _show_saved(self, job):
        """The run is stored: show its results now; its findings follow when the job ends."""
        self._early = job.id
        try:
            self._show(experiment_path(self.store, job.name), analysis=False)
        except Exception:  # noqa: BLE001  (shown again, with any error, when the job ends)
            self._early = None
            return
        self.scroll.count += 1
        self.queue.value = _status_html("Your run is stored and its results are below; "
                                        "its findings follow in a few seconds.")

    def _outcome(self, job):
        """Show what a finished, failed or cancelled job left."""
        folder = experiment_path(self.store, job.name)
        state = job.state
        # This job saved the experiment once it reported a stage after saving.
        saved = any(e["stage"] in SAVED_STAGES for e in job.events())
        early = self._early == job.id and self.view is not None
        if state == "finished":
            self.queue.value = ""
            summary = job.result(timeout=30)
            try:
                if early:
                    self.view.show_findings(_read_analysis(self.experiment, folder))
                else:
                    self._show(folder)
            except Exception as exc:  # the experiment is stored; only showing it failed
                self.error.value = _failure_html(
                    f"Saved as {job.name!r} in the store, but the results cannot be shown here", exc,
                    "Open it in the Gallery.")
                return
            note = " (it had finished before the cancel reached it)" if self._cancelling else ""
            self._progress("done", 1.0, f"saved as {job.name!r} in {summary['seconds']:.1f} s{note}")
            self._shown = job.id
            if not early:
                self.scroll.count += 1
        elif state == "cancelled":
            self.queue.value = _status_html(
                f"Your run was cancelled. It was saved as {job.name!r} before the cancel reached it; "
                "open it in the Gallery." if saved else "Your run was cancelled. Nothing was saved to the store.")
        else:
            message = (job.error() or "the worker gave no reason").rstrip(".")
            self.queue.value = ""
            if saved:
                shown = "Its results are shown below without findings" if early else "Open it in the Gallery"
                self.error.value = _error_html(f"The run failed after it was saved as {job.name!r}: {message}. "
                                               f"{shown}.")
                return
            if folder.exists():  # the name was taken while the run waited: say so in the page's words
                message = (f"{self.name.description}: an experiment named {job.name!r} was stored by someone "
                           "else while your run waited; choose another name")
                self.errors["name"].value = _error_html(message)
            self.error.value = _error_html(f"The run failed: {message}. {_TODO_FAILED}")

    def _show(self, folder, *, analysis=True):
        """Show the stored experiment in ``folder``; ``analysis=False``: without findings (yet)."""
        from ..store import load_experiment

        exp = load_experiment(folder)
        analysis = _read_analysis(exp, folder) if analysis else None
        view = ExperimentView(exp, analysis=analysis, renderer=self.renderer, maps_folder=folder)
        view.widget  # noqa: B018  (builds every figure here, in this thread)
        self.results.children = (view.widget,)
        self.experiment, self.view = exp, view

    def close(self):
        """Close the job client, and the cluster this page started, if any."""
        if self.jobs is not None and getattr(self, "own_cluster", False):
            self.jobs.close()
            self.jobs = None


def _read_analysis(exp, folder):
    """The analysis the job stored with the experiment (computed here only if it is missing)."""
    from ..analysis import load_or_analyze

    return load_or_analyze(exp, folder)


def build_builder(store=None, *, data_dir=None, renderer=None, scheduler=None):
    """The experiment builder app (see :class:`BuilderApp`).

    Building it imports neither TensorFlow nor Dask: Dask's client is made on the first Run,
    and TensorFlow only ever runs on the workers.
    """
    return BuilderApp(store, data_dir=data_dir, renderer=renderer, scheduler=scheduler)
