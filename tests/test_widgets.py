"""The Gallery and Layers apps, driven in-process: views swapped from cached figures, no TensorFlow
in the gallery, damaged experiments named. The Builder's tests are in test_builder.py."""

import html
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from signatures.store import list_experiments, save_experiment
from signatures.app import BuilderApp, ExperimentView, GalleryApp


@pytest.fixture(scope="module")
def store(small_experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    save_experiment(small_experiment, root / "small", save_model=False)
    return root


def test_store_root_defaults_to_the_one_default_store(monkeypatch, tmp_path):
    from signatures.store import default_store
    from signatures.app import store_root

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("SIGNATURES_STORE", raising=False)
    monkeypatch.chdir(repo / "notebooks")  # where JupyterLab runs a notebook
    assert store_root() == default_store() == repo / "runs"
    assert BuilderApp().store == GalleryApp().store == repo / "runs"
    monkeypatch.setenv("SIGNATURES_STORE", str(tmp_path / "elsewhere"))
    assert store_root() == tmp_path / "elsewhere"
    assert store_root(tmp_path / "given") == tmp_path / "given"


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
        "import sys; from signatures.app import build_gallery;"
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
    from signatures.app import LayersApp

    app = LayersApp(store)
    analysis = app.select_from_query("experiment=small")
    assert analysis is not None and app.picker.value == "small"
    assert "separate from layer" in html.unescape(app.findings.value)
    assert (store / "small" / "analysis.json").is_file()  # computed once, kept with the experiment
    for name in ("separation", "cka", "heatmap", "images", "auroc", "exits", "roc"):
        assert app.boxes[name].spec is not None and app.boxes[name].widget.outputs, name
    table = html.unescape(app.detector_table.value)
    assert "signature score (this tool)" in table and "Mahalanobis" in table and "AUROC: 3" in table
    roc = app.boxes["roc"].spec
    assert [t["name"] for t in roc["data"]][:2] == ["chance", "signature score (this tool)"]
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
    from signatures.app import LayersApp

    app = LayersApp(store)
    app.select("small")
    grid = app.boxes["crossovers"].spec
    n = len(app.analysis["signatures"]["crossovers"]["rows"])
    assert f"dominant path: {n} " in grid["layout"]["title"]["text"]


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread niceness is Linux's")
def test_background_work_runs_at_lower_priority_than_the_kernel():
    from signatures.app.common import _low_priority_thread

    seen = {}
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = _low_priority_thread(lambda: seen.setdefault(
        "nice", os.getpriority(os.PRIO_PROCESS, threading.get_native_id())), name="probe", niceness=5)
    thread.join(10)
    assert seen["nice"] == min(main + 5, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # the caller keeps its own


def test_preheated_gallery_preloads_in_the_background_and_a_request_is_served_meanwhile(store, monkeypatch):
    from signatures import app as widgets

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


# --------------------------------------------------------------------------- damaged experiments in the pages


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))  # same size: the manifest's size check passes


def _extra_layer(path):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["layers"] = manifest["layers"] + ["dense_99"]
    (path / "manifest.json").write_text(json.dumps(manifest))


def _classes_of_wrong_kind(path):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["class_names"] = 7
    (path / "manifest.json").write_text(json.dumps(manifest))


DAMAGES = {
    "tampered-arrays": lambda path: _flip_middle(path / "arrays.npz"),
    "manifest-extra-layer": _extra_layer,
    "manifest-wrong-kind": _classes_of_wrong_kind,
}


@pytest.fixture(scope="module")
def damaged_store(small_experiment, tmp_path_factory):
    """A store with the good 'small' and one copy per damage (damaged after the page lists it)."""
    import shutil

    from signatures.analysis import load_or_analyze

    root = tmp_path_factory.mktemp("damaged")
    save_experiment(small_experiment, root / "small", save_model=False)
    load_or_analyze(small_experiment, root / "small")  # analysis.json, as the pages keep it
    for name in DAMAGES:
        shutil.copytree(root / "small", root / name)
    return root


def damage(store, name):
    """Damage the copy ``name`` (after an app listed it); returns a function that repairs it."""
    import shutil

    folder = store / name
    backup = store.parent / f"{store.name}-{name}-backup"
    # Hidden names are temporary files of a plots.zip rewrite that a page may be making meanwhile.
    shutil.copytree(folder, backup, ignore=shutil.ignore_patterns(".*"))
    DAMAGES[name](folder)

    def repair():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(backup, folder, dirs_exist_ok=True)
        shutil.rmtree(backup)
    return repair


def shown_error(widget):
    return html.unescape(widget.value)


@pytest.mark.parametrize("name", list(DAMAGES))
def test_gallery_shows_a_damaged_experiment_error_and_stays_usable(damaged_store, name):
    app = GalleryApp(damaged_store)
    assert name in app.manifests
    good = app.select("small")
    assert good is not None
    repair = damage(damaged_store, name)
    try:
        app.picker.value = name  # as a visitor picks it
        text = shown_error(app.message)
        assert f"Experiment {name!r} cannot be shown: " in text, text
        assert str(damaged_store / name) in text and "other experiments can still be chosen" in text
        assert app.body.children == ()  # no other experiment's views under its name
        assert name not in app._views
        view = app.select("small")  # another experiment still works, and the error goes
        assert view is good and app.body.children == (good.widget,) and app.message.value == ""
        good.layer.value = good.exp.layers[-1]
        assert good.message.value == "" and good.exp.layers[-1] in good.shown("silhouette").layout.title.text
    finally:
        repair()
    assert app.select(name) is not None and app.message.value == ""  # repaired: read again, not a cached failure


@pytest.mark.parametrize("name", list(DAMAGES))
def test_layers_page_shows_a_damaged_experiment_error_and_stays_usable(damaged_store, name):
    from signatures.app import LayersApp

    app = LayersApp(damaged_store)
    repair = damage(damaged_store, name)
    try:
        assert app.select("small") is not None and app.body.layout.display == ""
        app.picker.value = name
        text = shown_error(app.message)
        assert f"Experiment {name!r} cannot be shown: " in text, text
        assert str(damaged_store / name) in text and "other experiments can still be chosen" in text
        assert app.experiment is None and app.body.layout.display == "none"
        app.layer.value = app.layer.options[0]  # a control of the hidden answers does nothing, raises nothing
        assert app.select("small") is not None
        assert app.message.value == "" and app.body.layout.display == "" and app.experiment.config.name == "small"
    finally:
        repair()


def test_gallery_preload_skips_a_damaged_experiment_and_select_says_why(damaged_store):
    app = GalleryApp(damaged_store)
    repair = damage(damaged_store, "tampered-arrays")
    try:
        app.preload()
        assert "tampered-arrays" in app.failed and "small" in app._views
        assert app.message.value == ""  # nobody asked for it yet
        assert app.select("tampered-arrays") is None
        assert "Experiment 'tampered-arrays' cannot be shown" in shown_error(app.message)
    finally:
        repair()


def test_a_view_that_fails_to_draw_says_so_and_the_next_change_works(store, monkeypatch):
    from signatures import figures

    view = GalleryApp(store).select("small")
    real = figures.layer_umap

    def broken(*args, **kwargs):
        raise KeyError("emb/dense")

    monkeypatch.setattr(figures, "layer_umap", broken)
    view.inserted.value = (4,)  # a map neither shown nor kept in plots.zip yet: built now
    assert "This view cannot be drawn: KeyError: 'emb/dense'" in shown_error(view.message)
    monkeypatch.setattr(figures, "layer_umap", real)
    view.inserted.value = (3,)
    assert view.message.value == ""


@pytest.mark.parametrize("app_class", ["GalleryApp", "LayersApp"])
def test_an_analysis_of_the_wrong_type_is_shown_as_an_error(store, monkeypatch, app_class):
    from signatures import analysis
    from signatures import app as widgets

    real = analysis.load_or_analyze
    monkeypatch.setattr(analysis, "load_or_analyze", lambda exp, folder=None, **kw: {"findings": 5, "separation": []})
    app = getattr(widgets, app_class)(store)
    assert app.select("small") is None
    text = shown_error(app.message)
    assert "Experiment 'small' cannot be shown: TypeError: " in text
    assert f"build it again (the Builder page, or python -m signatures run ... --out {store / 'small'}) or remove " \
           f"the folder {store / 'small'}" in text
    monkeypatch.setattr(analysis, "load_or_analyze", real)
    assert app.select("small") is not None and app.message.value == ""
