"""The builder and gallery apps, driven in-process: bad input shown next to its control,
runs saved to the store, views swapped from cached figures, no TensorFlow in the gallery."""

import html
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from signatures.store import list_experiments, save_experiment
from signatures.widgets import BuilderApp, ExperimentView, GalleryApp


@pytest.fixture(scope="module")
def store(small_experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    save_experiment(small_experiment, root / "small", save_model=False)
    return root


def errors(app):
    return {k: html.unescape(w.value) for k, w in app.errors.items() if w.value}


def set_toggles(buttons, values):
    for b in buttons:
        b.value = int(b.description) in values


def test_builder_defaults_are_valid(store):
    app = BuilderApp(store)
    assert app.check() == {} and errors(app) == {}
    config = app.config().validate()
    assert config.digits == (1, 7) and config.anomalies == (3, 4) and config.all_unseen


@pytest.mark.parametrize(
    "change, field, text",
    [
        (lambda a: set_toggles(a.digit_buttons, {1}), "digits", "at least 2 digits"),
        (lambda a: set_toggles(a.anomaly_buttons, {7}), "anomalies", "both trained and anomalies"),
        (lambda a: setattr(a.n_per_class, "value", "5000"), "n_per_class", "digit 1 has 1135"),
        (lambda a: setattr(a.n_per_class, "value", "many"), "n_per_class", "'many'"),
        (lambda a: (setattr(a.k_min, "value", 8), setattr(a.k_max, "value", 3)), "k_range", "inverted"),
        (lambda a: setattr(a.hidden, "value", "  "), "hidden", "at least one layer size"),
        (lambda a: setattr(a.hidden, "value", "64 abc"), "hidden", "'abc'"),
        (lambda a: setattr(a.name, "value", "../outside"), "name", "not allowed"),
        (lambda a: setattr(a.name, "value", "a/b"), "name", "not allowed"),
        (lambda a: setattr(a.name, "value", "small"), "name", "exists already"),
        (lambda a: setattr(a.epochs, "value", 0), "epochs", "at least 1"),
    ],
)
def test_bad_choice_is_shown_next_to_its_control(store, change, field, text):
    app = BuilderApp(store)
    change(app)
    assert app.run() is None
    shown = errors(app)
    assert field in shown and text in shown[field]
    assert "Fix the values marked above" in app.error.value
    assert [m["name"] for m in list_experiments(store)] == ["small"]


def test_dataset_not_available_offline(store, monkeypatch, tmp_path):
    monkeypatch.setenv("SIGNATURES_DATA_DIR", str(tmp_path))  # a folder without IDX files
    app = BuilderApp(store)
    app.check()
    assert "no mnist IDX files" in errors(app)["dataset"] and "--dataset digits" in errors(app)["dataset"]


def test_run_saves_and_shows_results_then_a_bad_run_keeps_them(store):
    app = BuilderApp(store)
    app.n_per_class.value = "60"
    app.epochs.value = 1
    app.hidden.value = "12 6"
    app.k_max.value = 5
    app.name.value = "built"
    exp = app.run()
    assert exp is not None and app.progress.value == pytest.approx(1.0)
    for stage in ("loading", "training", "extraction", "clustering", "projection", "saving"):
        assert f"<b>{stage}</b>" in app.status.value
    assert "built" in [m["name"] for m in list_experiments(store)]
    assert set(exp.unseen) == set(range(10)) - {1, 7}  # every unseen digit stored for later insertion
    view = app.results.children[0]
    assert view is app.view.widget
    manifest_before = (store / "built" / "manifest.json").read_bytes()
    assert app.run() is None  # same name again: refused, results and store kept
    assert "exists already" in errors(app)["name"]
    assert app.results.children[0] is view
    assert (store / "built" / "manifest.json").read_bytes() == manifest_before


def test_gallery_select_and_swap_views(store):
    app = GalleryApp(store)
    assert app.select_from_query("experiment=nothing") is None
    assert "no stored experiment named 'nothing'" in html.unescape(app.message.value)
    view = app.select_from_query("experiment=small")
    assert isinstance(view, ExperimentView) and app.body.children == (view.widget,)
    exp = view.exp

    def sankey_total():
        link = view.shown('sankey').data[0].link
        steps = len(exp.layers)  # hidden-to-hidden steps plus the step to the prediction
        return sum(link.value) / steps

    assert sankey_total() == len(exp.rows_with(exp.anomalies))
    view.inserted.value = ()
    assert sankey_total() == len(exp.rows("train", "test"))
    view.inserted.value = (4,)
    assert sankey_total() == len(exp.rows("train", "test")) + int(np.sum(exp.labels == 4))

    first = np.array(view.shown('umap').data[0].x)
    view.layer.value = exp.layers[1]
    assert not np.array_equal(np.array(view.shown('umap').data[0].x), first)
    assert exp.layers[1] in view.shown('silhouette').layout.title.text
    view.color_by.value = "cluster"
    assert {t.name for t in view.shown('umap').data} == {f"c{c}" for c in range(exp.clusterers[exp.layers[1]].k_)}

    label, value = view.selection.options[0]
    view.selection.value = view.selection.options[1][1]
    view.selection.value = value
    n = int(label.split("·")[-1].split()[0])
    assert f"of {n} inputs" in view.shown('images').layout.title.text


def test_gallery_empty_store_says_how_to_fill_it(tmp_path):
    app = GalleryApp(tmp_path)
    assert "python -m signatures canonical" in app.message.value


def test_gallery_needs_no_tensorflow_or_umap(store):
    code = (
        "import sys; from signatures.widgets import build_gallery;"
        f"app = build_gallery({str(store)!r}, preload=True); v = app.select('small');"
        "v.layer.value = v.exp.layers[-1]; v.color_by.value = 'predicted'; v.inserted.value = ();"
        "import json; print(json.dumps(sorted(m for m in ('tensorflow', 'keras', 'umap', 'numba') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_shown_figure_has_a_height(store):
    """A plot in an output area with no height of its own would be drawn 0 px tall."""
    view = GalleryApp(store).select("small")
    for name in view.VIEWS:
        assert view.boxes[name].spec["layout"]["height"] > 200


def test_layers_app_answers_for_a_stored_experiment(store):
    from signatures.widgets import LayersApp

    app = LayersApp(store)
    analysis = app.select_from_query("experiment=small")
    assert analysis is not None and app.picker.value == "small"
    assert "separate from layer" in html.unescape(app.findings.value)
    assert (store / "small" / "analysis.json").is_file()  # computed once, kept with the experiment
    for name in ("separation", "cka", "heatmap", "images", "auroc", "exits"):
        assert app.boxes[name].spec is not None and app.boxes[name].widget.outputs, name
    layer = app.layer.value
    kinds = {v[0] for _, v in app.subject.options}
    assert kinds == {"class", "cluster", "unseen"}
    cluster = next(v for _, v in app.subject.options if v[0] == "cluster")
    app.subject.value = cluster
    assert f"cluster c{cluster[1]} against the rest of {layer}" in html.unescape(app.signature_table.value)
    app.layer.value = app.experiment.layers[0]
    heat = app.boxes["heatmap"].spec
    assert app.experiment.layers[0] in heat["layout"]["title"]["text"]
    assert app.select("nothing") is None and "no stored experiment named 'nothing'" in html.unescape(app.message.value)


def test_gallery_opens_with_the_findings_and_anomaly_auroc(store):
    view = GalleryApp(store).select("small")
    text = html.unescape(view.widget.children[1].value)
    assert "separate from layer" in text and "max-softmax baseline" in text


def test_layers_app_shows_the_inputs_on_another_class_path(store):
    from signatures.widgets import LayersApp

    app = LayersApp(store)
    app.select("small")
    grid = app.boxes["crossovers"].spec
    n = len(app.analysis["signatures"]["crossovers"]["rows"])
    assert f"dominant path: {n} " in grid["layout"]["title"]["text"]


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread niceness is Linux's")
def test_background_work_runs_at_lower_priority_than_the_kernel():
    from signatures.widgets import _low_priority_thread

    seen = {}
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = _low_priority_thread(lambda: seen.setdefault(
        "nice", os.getpriority(os.PRIO_PROCESS, threading.get_native_id())), name="probe", niceness=5)
    thread.join(10)
    assert seen["nice"] == min(main + 5, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # the caller keeps its own


def test_preheated_gallery_preloads_in_the_background_and_a_request_is_served_meanwhile(store, monkeypatch):
    from signatures import widgets

    monkeypatch.setenv("VOILA_PREHEAT", "True")
    started, release = threading.Event(), threading.Event()
    real_view = GalleryApp._view

    def slow_view(self, name):  # the background preload is busy with this experiment
        if threading.current_thread().name == "signatures-gallery-preload":
            started.set()
            release.wait(10)
        return real_view(self, name)

    monkeypatch.setattr(GalleryApp, "_view", slow_view)
    app = widgets.build_gallery(store)
    assert app._preloading.is_alive() and started.wait(10)
    view = app.select("small")  # does not wait for the preload
    assert view is not None and app.body.children == (view.widget,)
    release.set()
    app._preloading.join(30)
    assert app._views["small"] is view  # the preload kept the one already shown
    assert set(app._views) == {m["name"] for m in list_experiments(store)}


def test_preheated_builder_warms_up_in_the_background_and_a_run_waits_for_it(store, monkeypatch):
    from signatures import widgets

    monkeypatch.setenv("VOILA_PREHEAT", "True")
    done = threading.Event()

    def fake_warm_up():
        time.sleep(0.5)
        done.set()
        return 0.5

    monkeypatch.setattr(BuilderApp, "warm_up", staticmethod(fake_warm_up))
    app = widgets.build_builder(store)
    assert app._warming.is_alive() and not done.is_set()  # build_builder returned at once
    app._wait_for_warm_up()
    assert done.is_set() and "warm-up" in app.status.value and app.warm_seconds >= 0.5
