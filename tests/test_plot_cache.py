"""plots.zip: the pages' figures encoded once, kept with the experiment, read by page kernels
instead of built; a missing, damaged or stale file is rebuilt and rewritten atomically."""

import json
import os
import shutil
import warnings
import zipfile

import pytest

from signatures import figures
from signatures.analysis import load_or_analyze
from signatures.app import ExperimentView, GalleryApp, LayersApp
from signatures.app import view as view_module
from signatures.app.layers import layers_plots
from signatures.app.view import PLOTS_FILE, read_plots, write_plots
from signatures.store import is_experiment_folder, save_experiment

#: Every figure builder the Gallery and Layers pages call.
BUILDERS = ("confusion_matrix", "training_curves", "experiment_sankey", "layer_umap", "silhouette_curve", "image_grid",
            "neuron_heatmap", "separation_panel", "cka_heatmap", "auroc_bars", "exit_layers", "sankey", "umap_scatter")


@pytest.fixture(scope="module")
def reference(small_experiment, tmp_path_factory):
    """A stored 'small' with its analysis and plots.zip, and the fresh plots (key -> payload bytes)."""
    root = tmp_path_factory.mktemp("plots")
    folder = save_experiment(small_experiment, root / "small", save_model=False)
    analysis = load_or_analyze(small_experiment, folder)
    write_plots(small_experiment, folder, analysis=analysis)
    fresh = ExperimentView(small_experiment, analysis=analysis).warm()
    payloads = {key: fresh.plot_of_key(key).payload for key in fresh.plot_keys()}
    payloads.update((key, plot.payload) for key, plot in layers_plots(small_experiment, analysis).items())
    return folder, payloads


@pytest.fixture
def store(reference, tmp_path):
    """A store of its own holding a copy of the reference 'small' (with plots.zip)."""
    shutil.copytree(reference[0], tmp_path / "small")
    return tmp_path


def stored_payloads(folder):
    plots, why = read_plots(folder)
    assert why == "" and plots is not None, why
    return {key: plot.payload for key, plot in plots.items()}


def no_figure_builds(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a figure was built")

    for name in BUILDERS:
        monkeypatch.setattr(figures, name, refuse)


def test_plots_read_from_the_zip_are_byte_identical_to_freshly_built_ones(reference):
    folder, fresh = reference
    stored = stored_payloads(folder)
    assert stored == fresh  # same keys, same bytes
    kinds = {key[0] if key[0] != "layers" else key[1] for key in stored}
    assert kinds == {"confusion", "training", "sankey", "umap", "silhouette", "images",
                     "separation", "cka", "crossovers", "auroc", "exits", "roc", "heatmap"}
    layers = json.loads((folder / "manifest.json").read_text())["layers"]
    for layer in layers:
        assert ("silhouette", layer) in stored and ("layers", "heatmap", layer) in stored
        assert {key[2] for key in stored if key[0] == "umap" and key[1] == layer} == set(figures.COLOR_BY)


def test_a_kernel_that_opens_an_experiment_with_plots_zip_builds_no_figure(store, monkeypatch):
    no_figure_builds(monkeypatch)
    gallery = GalleryApp(store).preload()
    assert gallery.failed == {}
    view = gallery.select("small")
    assert view is not None and gallery.message.value == "" and view.stored > 0 and view.stored_why == ""
    for name in view.VIEWS:
        assert view.boxes[name].spec is not None, name
    view.layer.value = view.exp.layers[-1]
    view.color_by.value = "predicted"
    assert view.message.value == "" and view.exp.layers[-1] in view.shown("silhouette").layout.title.text

    layers = LayersApp(store)
    assert layers.select("small") is not None and layers.message.value == "" and layers.stored_why == ""
    for name in ("separation", "cka", "crossovers", "auroc", "exits", "heatmap", "images"):
        assert layers.boxes[name].spec is not None, name
    layers.layer.value = layers.experiment.layers[0]
    assert layers.message.value == "" and layers.experiment.layers[0] in \
        layers.boxes["heatmap"].spec["layout"]["title"]["text"]
    assert layers._rebuilding is None and gallery._rebuilding is None  # nothing to rewrite


def test_a_figure_not_kept_is_still_built_on_demand(store):
    view = GalleryApp(store).select("small")
    assert ("umap", view.exp.layers[0], "digit", (4,)) not in view._plots
    view.inserted.value = (4,)
    assert view.message.value == "" and ("umap", view.exp.layers[0], "digit", (4,)) in view._plots


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _rewrite_index(path, change):
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    index = json.loads(members["index.json"])
    change(index)
    members["index.json"] = json.dumps(index).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


DAMAGES = {
    "missing": (lambda path: path.unlink(), "is missing"),
    "flipped bytes": (_flip_middle, "is damaged"),
    "truncated": (lambda path: path.write_bytes(path.read_bytes()[:1000]), "is damaged"),
    "not a zip": (lambda path: path.write_text("plots"), "is damaged"),
    "index not an object": (lambda path: _rewrite_index(path, lambda index: index.clear()), "is damaged"),
    "member missing": (lambda path: _rewrite_index(path, lambda index: index["plots"].append(
        [["training"], "plots/9999.json", "t", 300])), "is damaged"),
    "another experiment's": (lambda path: _rewrite_index(path, lambda index: index["stamp"].update(key="0" * 16)),
                             "is stale (its key differ"),
    "written before an overwrite": (lambda path: _rewrite_index(
        path, lambda index: index["stamp"].update(created="2000-01-01T00:00:00")), "is stale (its created differ"),
    "another version": (lambda path: _rewrite_index(path, lambda index: index["stamp"].update(version=0)),
                        "is stale (its version differ"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_an_unusable_plots_zip_is_rebuilt_by_the_gallery_preload_and_rewritten(reference, store, damage):
    folder = store / "small"
    spoil, words = DAMAGES[damage]
    spoil(folder / PLOTS_FILE)
    plots, why = read_plots(folder)
    assert plots is None and str(folder / PLOTS_FILE) in why and words in why, why
    app = GalleryApp(store)
    app.preload()
    assert app.failed == {} and app._views["small"].stored == 0
    assert stored_payloads(folder) == reference[1]  # rewritten whole, as freshly built
    assert app.select("small") is not None and app.message.value == ""


def test_a_plots_zip_of_another_plots_version_is_stale(reference, store, monkeypatch):
    monkeypatch.setattr(view_module, "PLOTS_VERSION", view_module.PLOTS_VERSION + 1)
    plots, why = read_plots(store / "small")
    assert plots is None and "is stale (its version differ" in why
    GalleryApp(store).preload()
    assert stored_payloads(store / "small") == reference[1]


def test_an_unusable_plots_zip_is_rebuilt_after_a_select_or_by_the_layers_page(reference, store):
    folder = store / "small"
    (folder / PLOTS_FILE).write_bytes(b"damaged")
    gallery = GalleryApp(store)
    view = gallery.select("small")  # shown at once, the rest built and kept in the background
    assert view is not None and view.stored == 0 and "is damaged" in view.stored_why
    gallery._rebuilding.join(120)
    assert stored_payloads(folder) == reference[1]

    (folder / PLOTS_FILE).unlink()
    layers = LayersApp(store)
    assert layers.select("small") is not None and layers.message.value == ""
    assert "is missing" in layers.stored_why
    layers._rebuilding.join(120)
    assert stored_payloads(folder) == reference[1]


def test_the_write_is_atomic_and_leaves_a_complete_experiment(reference, store):
    folder = store / "small"
    (folder / PLOTS_FILE).unlink()
    small = GalleryApp(store).preload()._views["small"]
    write_plots(small.exp, folder, view=small)
    assert sorted(os.listdir(folder)) == ["act-0.npy", "act-1.npy", "analysis.json", "arrays.npz", "manifest.json",
                                          PLOTS_FILE]  # no temp file
    assert is_experiment_folder(folder) == (True, "")


def test_a_failed_write_keeps_the_old_file_and_the_page_works(reference, store, monkeypatch):
    folder = store / "small"
    before = (folder / PLOTS_FILE).read_bytes()
    view = GalleryApp(store).select("small")

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        write_plots(view.exp, folder, view=view)
    assert (folder / PLOTS_FILE).read_bytes() == before
    assert sorted(os.listdir(folder)) == ["act-0.npy", "act-1.npy", "analysis.json", "arrays.npz", "manifest.json",
                                          PLOTS_FILE]

    (folder / PLOTS_FILE).unlink()  # a kernel that must rebuild it, on a full disk: a warning, the page works
    app = GalleryApp(store)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app.preload()
    assert app.failed == {} and not (folder / PLOTS_FILE).exists()
    assert any(f"could not be kept in {folder / PLOTS_FILE}" in str(w.message) for w in caught)
    assert app.select("small") is not None and app.message.value == ""


def test_write_plots_refuses_a_folder_that_is_not_an_experiment(small_experiment, tmp_path):
    with pytest.raises(ValueError, match="not a complete experiment"):
        write_plots(small_experiment, tmp_path)
    assert not (tmp_path / PLOTS_FILE).exists()


def test_the_cli_run_writes_plots_zip(tmp_path):
    from signatures.cli import main

    out = tmp_path / "tiny"
    status = main(["run", "--digits", "1", "7", "--n-per-class", "60", "--hidden", "8", "--epochs", "1",
                   "--k-max", "3", "--umap-points", "100", "--quiet", "--out", str(out)])
    assert status == 0
    plots, why = read_plots(out)
    assert why == "" and ("confusion",) in plots and ("layers", "separation") in plots
    assert is_experiment_folder(out) == (True, "")


PAGE_KERNEL = r"""
import json, sys
from signatures.app import build_gallery, build_layers

store, name = sys.argv[1], sys.argv[2]
gallery = build_gallery(store, preload=True)
view = gallery.select(name)
widget = view.widget
layers = build_layers(store)
layers.select(name)
clusters = [v for _, v in layers.subject.options if v[0] == "cluster"]
layers.subject.value = clusters[0]  # a cluster's signature neurons: ranked in the kernel
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "scipy", "pandas", "tensorflow", "keras",
                                                      "umap", "numba", "distributed", "matplotlib", "voila",
                                                      "jupyter_server", "jsonschema"})
print(json.dumps({"heavy": heavy, "failed": gallery.failed, "message": gallery.message.value,
                  "table": layers.signature_table.value}))
"""


def test_page_kernels_never_load_scikit_learn_scipy_or_tensorflow(store):
    """A class's kernels stay light (~85 MiB, imports under 1 s): the pages only read what was stored."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PAGE_KERNEL, str(store), "small"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == {} and out["message"] == ""
    assert "Signature neurons of cluster" in out["table"] and "<td>n" in out["table"]
    assert out["heavy"] == []


def test_a_kernel_keeps_few_views_and_preloads_few_experiments(store, monkeypatch):
    """A store that grows with a class's experiments does not grow every kernel."""
    for name in ("b", "c"):
        shutil.copytree(store / "small", store / name)
    monkeypatch.setattr(GalleryApp, "KEEP_VIEWS", 2)
    monkeypatch.setattr(GalleryApp, "PRELOAD_LIMIT", 2)
    app = GalleryApp(store)
    app.preload_in_background().join(120)
    assert list(app._views) == ["b", "c"]  # the first two in the landing page's (sorted) order
    first = app.select("b").widget
    assert list(app._views) == ["c", "b"]
    assert app.select("small") is not None and list(app._views) == ["b", "small"]  # c, least recent, went
    assert first.comm is not None  # b is kept, its widget still live
    assert app.select("c") is not None and list(app._views) == ["small", "c"]
    assert first.comm is None and all(getattr(w, "comm", None) is None for w in first.children)  # b's closed
    assert app.body.children == (app._views["c"].widget,) and app.message.value == ""
    assert app.select("b").widget is not first and list(app._views) == ["c", "b"]  # read again when chosen


def test_refresh_store_computes_stale_analyses_and_figures_once(store):
    """After an upgrade serve brings analyses and figures up to date once, so page kernels only read."""
    from signatures.analysis import ANALYSIS_FILE
    from signatures.app.view import refresh_store

    folder = store / "small"
    shutil.copytree(folder, store / "fresh")
    cached = json.loads((folder / ANALYSIS_FILE).read_text())
    cached["version"] = -1  # an analysis of an older version
    (folder / ANALYSIS_FILE).write_text(json.dumps(cached))
    said = []
    assert refresh_store(store, say=said.append) == [("small", ["analysis", "figures"])]  # its figures show it
    assert said == ["small: computing its analysis and figures once, for the pages"]
    from signatures.analysis import ANALYSIS_VERSION

    assert json.loads((folder / ANALYSIS_FILE).read_text())["version"] == ANALYSIS_VERSION
    plots, why = read_plots(folder)
    assert why == "" and plots and read_plots(store / "fresh")[0]
    assert refresh_store(store) == []  # nothing left to do
    (store / "fresh" / PLOTS_FILE).unlink()
    assert refresh_store(store) == [("fresh", ["figures"])] and read_plots(store / "fresh")[1] == ""
