"""Scale: activations streamed to disk and read memory-mapped, k-means fitted on a sample of a large
layer, neuron statistics by column blocks, and the analysis on a sample of a large experiment."""

import json
import os
import subprocess
import sys
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from signatures import neurons
from signatures.clustering import LayerKMeans
from signatures.store import load_experiment, save_experiment


# --------------------------------------------------------------------------- streaming extraction


def _wide_model(keras, width=64, seed=1):
    """A 2-input MLP with seeded random weights (so no two units are alike) and a softmax output."""
    inputs = keras.Input(shape=(2,), name="x")
    h1 = keras.layers.Dense(width, activation="relu", name="h1")(inputs)
    h2 = keras.layers.Dense(8, activation="tanh", name="h2")(h1)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h2)
    model = keras.Model(inputs, out)
    rng = np.random.default_rng(seed)
    for layer in model.layers[1:]:
        w, b = layer.get_weights()
        layer.set_weights([rng.normal(size=w.shape).astype("float32"), rng.normal(size=b.shape).astype("float32")])
    return model


def test_streamed_activations_equal_the_in_memory_ones_exactly(tmp_path):
    keras = pytest.importorskip("keras")
    from signatures.activations import extract

    model = _wide_model(keras)
    X = np.random.default_rng(0).normal(size=(1000, 2)).astype("float32")
    mem, p_mem, l_mem = extract(model, X, batch_size=96, logits=True)
    disk, p_disk, l_disk = extract(model, X, batch_size=96, logits=True, out=tmp_path)
    for name in ("h1", "h2"):
        assert isinstance(disk[name], np.memmap) and not isinstance(mem[name], np.memmap)
        assert np.array_equal(disk[name], mem[name])
    assert np.array_equal(p_disk, p_mem) and np.array_equal(l_disk, l_mem)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["act-0.npy", "act-1.npy"]
    # the files are the layers, in order, readable on their own
    assert np.array_equal(np.load(tmp_path / "act-0.npy"), mem["h1"])
    # and the values are the network's: relu(x W1 + b1) with its weights
    w1, b1 = model.get_layer("h1").get_weights()
    np.testing.assert_allclose(mem["h1"], np.maximum(X @ w1 + b1, 0.0), rtol=1e-5, atol=1e-5)


def test_float16_activations_are_the_float32_ones_rounded_and_overflow_is_refused(tmp_path):
    keras = pytest.importorskip("keras")
    from signatures.activations import extract

    model = _wide_model(keras)
    X = np.random.default_rng(0).normal(size=(300, 2)).astype("float32")
    full, _ = extract(model, X)
    half, _ = extract(model, X, dtype="float16", out=tmp_path)
    assert half["h1"].dtype == np.float16
    assert np.array_equal(half["h1"], full["h1"].astype(np.float16))
    with pytest.raises(ValueError, match="beyond float16's 65504: keep activations as float32"):
        extract(model, X * 1e6, dtype="float16")
    with pytest.raises(ValueError, match="activations dtype must be one of float32, float16, got 'int8'"):
        extract(model, X, dtype="int8")


# --------------------------------------------------------------------------- the store


def test_memory_mapped_activations_are_stored_as_links_and_read_back_memory_mapped(small_experiment, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    hidden = OrderedDict()
    for j, (name, values) in enumerate(small_experiment.hidden.items()):
        mm = np.lib.format.open_memmap(work / f"act-{j}.npy", mode="w+", dtype=np.float32, shape=values.shape)
        mm[:] = values
        hidden[name] = mm
    exp = replace(small_experiment, hidden=hidden, work_folder=str(work))
    folder = save_experiment(exp, tmp_path / "store" / "mapped", save_model=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["activations"] == {name: f"act-{j}.npy" for j, name in enumerate(exp.layers)}
    for j in range(len(exp.layers)):  # the same data, linked, not copied
        assert os.stat(folder / f"act-{j}.npy").st_ino == os.stat(work / f"act-{j}.npy").st_ino
    exp.release_work_folder()
    assert not work.exists() and exp.work_folder is None
    back = load_experiment(folder)
    for name in exp.layers:
        assert isinstance(back.hidden[name], np.memmap) and back.hidden[name].mode == "r"
        assert np.array_equal(back.hidden[name], small_experiment.hidden[name])
    assert np.array_equal(back.paths, small_experiment.paths)
    # in-memory activations are written as files too, and a damaged one is named
    plain = save_experiment(small_experiment, tmp_path / "store" / "plain", save_model=False)
    size = (plain / "act-1.npy").stat().st_size
    (plain / "act-1.npy").write_bytes(b"x" * size)  # the right size, not an array
    with pytest.raises(ValueError, match=r"act-1\.npy is damaged"):
        load_experiment(plain)


_BUDGET_RUN = """
import json, sys
from signatures.experiment import ExperimentConfig, run_experiment
from signatures.store import save_experiment

def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

config = ExperimentConfig(name="budget", dataset="mnist", digits=tuple(range(10)), hidden=(4096,), epochs=1,
                          k_max=4, umap_points=300, memory_budget=16)
seen = {}
def progress(stage, fraction, message):
    seen.setdefault(stage, anon_mib())  # the process's own memory when each stage starts
exp = run_experiment(config, progress=progress, workdir=sys.argv[1])
folder = save_experiment(exp, sys.argv[1] + "/budget", save_model=False)
work = exp.work_folder
exp.release_work_folder()
print(json.dumps({"info": exp.info["activations"], "seen": seen, "work": work,
                  "mapped": [type(v).__name__ for v in exp.hidden.values()]}))
"""


def test_a_run_under_a_budget_far_below_its_activations_streams_them_and_stays_under_it(tmp_path):
    pytest.importorskip("keras")
    out = subprocess.run([sys.executable, "-c", _BUDGET_RUN, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    info = res["info"]
    size_mib = info["bytes"] / 2**20
    assert info["held"] == "on disk" and info["budget_bytes"] == 16 << 20 and size_mib > 150  # 10,000 x 4,096
    assert res["mapped"] == ["memmap"]
    # The activations live in a file: the process's own memory (anonymous RSS) grows during the
    # extraction by far less than their size.
    grew = res["seen"]["evaluation"] - res["seen"]["extraction"]
    assert grew < 0.25 * size_mib, res
    assert res["work"].startswith(str(tmp_path)) and not os.path.exists(res["work"])
    stored = load_experiment(tmp_path / "budget")
    assert stored.hidden["hidden_1"].shape == (10000, 4096) and isinstance(stored.hidden["hidden_1"], np.memmap)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work folder left in the store


# --------------------------------------------------------------------------- clustering a large layer


def test_kmeans_fitted_on_a_sample_agrees_with_kmeans_on_every_row(tmp_path):
    X, truth = make_blobs(n_samples=6000, n_features=40, centers=5, cluster_std=2.0, random_state=3)
    X = X.astype(np.float32)
    full = LayerKMeans(k_range=range(2, 8), random_state=0).fit(X)
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=X.shape)
    mapped[:] = X
    small = LayerKMeans(k_range=range(2, 8), random_state=0, max_fit_cells=40 * 2500).fit(mapped)
    assert full.fitted_rows_ == 6000 and small.fitted_rows_ == 2500
    assert "fitted on a random sample of 2,500 of the 6,000 rows" in small.note_ and full.note_ == ""
    assert small.k_ == full.k_ == 5
    assert adjusted_rand_score(full.labels_, small.labels_) > 0.99
    assert adjusted_rand_score(truth, small.labels_) > 0.99
    assert np.array_equal(small.labels_, small.predict(X))  # every row assigned to its nearest center
    back = LayerKMeans.from_dict(small.to_dict(), small.centers_)
    assert back.fitted_rows_ == 2500 and back.max_fit_cells == 100_000


# --------------------------------------------------------------------------- neurons by column blocks


def test_neuron_statistics_by_column_blocks_equal_the_whole_layers(small_experiment, monkeypatch):
    whole = neurons.layer_neuron_summary(small_experiment, "hidden_1")
    monkeypatch.setattr(neurons, "BLOCK_CELLS", 700)  # a few columns per block
    blocks = neurons.layer_neuron_summary(small_experiment, "hidden_1")
    for key in ("means", "active_fraction", "dead", "constant", "order", "selectivity"):
        np.testing.assert_allclose(blocks[key], whole[key])
    for c in small_experiment.classes:
        assert [b["neuron"] for b in blocks["signatures"][c]] == [w["neuron"] for w in whole["signatures"][c]]
        np.testing.assert_allclose([b["cohens_d"] for b in blocks["signatures"][c]],
                                   [w["cohens_d"] for w in whole["signatures"][c]], rtol=1e-12)
        assert {n: list(r) for n, r in blocks["top_rows"][c].items()} == \
            {n: list(r) for n, r in whole["top_rows"][c].items()}
    # and both are what signature_neurons says of the whole matrix
    exp = small_experiment
    known = np.flatnonzero(np.isin(exp.labels, exp.classes) & (exp.split != 2))
    X = np.asarray(exp.hidden["hidden_1"], dtype=np.float64)[known]
    varying = np.setdiff1d(np.arange(X.shape[1]), neurons.constant_neurons(X))
    c = exp.classes[0]
    expect = neurons.signature_neurons(X[:, varying], exp.labels[known] == c)
    assert [s["neuron"] for s in blocks["signatures"][c]] == [int(varying[s["neuron"]]) for s in expect]


# --------------------------------------------------------------------------- the analysis of a large experiment


def test_a_large_experiment_is_analysed_on_a_stratified_sample_and_says_so(small_experiment):
    from signatures.analysis import sampled

    exp = small_experiment
    same, none = sampled(exp)
    assert same is exp and none is None  # small: every row
    view, sample = sampled(exp, cells=16 * 150, min_rows=50)  # 150 rows of the 16-unit layer
    assert sample == {"rows": view.n_rows, "of": exp.n_rows, "units": 16}
    assert 140 <= view.n_rows <= 170
    groups = {(int(s), int(c)) for s, c in zip(exp.split, exp.labels)}
    assert {(int(s), int(c)) for s, c in zip(view.split, view.labels)} == groups  # every class and split kept
    assert view.hidden["hidden_1"].shape == (view.n_rows, 16) and len(view.paths) == view.n_rows
    rows = [int(np.flatnonzero((exp.hidden["hidden_1"] == row).all(axis=1))[0]) for row in view.hidden["hidden_1"][:5]]
    assert all(np.array_equal(exp.paths[r], p) for r, p in zip(rows, view.paths[:5]))  # rows kept whole


def test_the_findings_say_when_the_answers_come_from_a_sample(small_experiment, monkeypatch):
    from signatures import analysis

    monkeypatch.setattr(analysis, "ANALYSIS_CELLS", 16 * 200)
    monkeypatch.setattr(analysis, "MIN_ANALYSIS_ROWS", 100)
    result = analysis.analyze(small_experiment, stability=False)
    n = result["sample"]["rows"]
    assert 190 <= n <= 215 and result["sample"]["of"] == small_experiment.n_rows
    assert result["findings"][-1].startswith(f"The paths, separation and anomaly answers come from a seeded sample of "
                                             f"{n:,} of the {small_experiment.n_rows:,} inputs")
    assert result["neurons"]["hidden_1"]["n_rows"] == int((small_experiment.split != 2).sum())  # neurons: all rows


def test_a_clusters_signature_neurons_by_blocks_equal_signature_neurons(small_experiment, monkeypatch, tmp_path):
    exp = small_experiment
    known = exp.rows("train", "test")
    X = np.asarray(exp.hidden["hidden_1"])
    mapped = np.lib.format.open_memmap(tmp_path / "h.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    mapped[:] = X
    mask = exp.paths[known, 0] == 0
    monkeypatch.setattr(neurons, "BLOCK_CELLS", 500)
    blocks = neurons.layer_signature_neurons(mapped, known, mask, top=5)
    whole = neurons.signature_neurons(X[known], mask, top=5)
    assert [b["neuron"] for b in blocks] == [w["neuron"] for w in whole]
    for key in ("auroc", "cohens_d", "mean_in", "mean_out"):
        np.testing.assert_allclose([b[key] for b in blocks], [w[key] for w in whole], rtol=1e-12)
    best = neurons.top_activating(mapped, 3, k=7, rows=known)
    assert np.array_equal(best, neurons.top_activating(X, 3, k=7, rows=known))


def test_streamed_neuron_statistics_equal_the_blocked_ones_and_aurocs_come_from_a_sample(small_experiment,
                                                                                        monkeypatch):
    exp = small_experiment
    whole = neurons.layer_neuron_summary(exp, "hidden_1")
    monkeypatch.setattr(neurons, "STREAM_CELLS", 1)  # every layer streamed by blocks of rows
    monkeypatch.setattr(neurons, "BLOCK_CELLS", 16 * 37)
    streamed = neurons.layer_neuron_summary(exp, "hidden_1")  # the AUROCs still on every row
    assert streamed["auroc_rows"] == whole["auroc_rows"] == whole["n_rows"]
    for key in ("means", "active_fraction", "selectivity"):
        np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-9, atol=1e-12)
    for key in ("dead", "constant", "order"):
        assert np.array_equal(streamed[key], whole[key])
    for c in exp.classes:
        assert [s["neuron"] for s in streamed["signatures"][c]] == [w["neuron"] for w in whole["signatures"][c]]
        for key in ("auroc", "cohens_d", "mean_in", "mean_out"):
            np.testing.assert_allclose([s[key] for s in streamed["signatures"][c]],
                                       [w[key] for w in whole["signatures"][c]], rtol=1e-9)
    monkeypatch.setattr(neurons, "RANK_CELLS", 16 * 10)  # AUROCs on a seeded sample of rows
    monkeypatch.setattr(neurons, "MIN_RANK_ROWS", 100)
    sampled = neurons.layer_neuron_summary(exp, "hidden_1")
    assert sampled["auroc_rows"] == 100 and sampled["n_rows"] == whole["n_rows"]
    np.testing.assert_allclose(sampled["means"], whole["means"], rtol=1e-9)  # the rest still on every row
    assert sampled["signatures"][exp.classes[0]][0]["auroc"] != whole["signatures"][exp.classes[0]][0]["auroc"]


def test_streamed_activations_are_read_only_and_never_written_over_an_existing_file(tmp_path):
    keras = pytest.importorskip("keras")
    from signatures.activations import extract

    model = _wide_model(keras)
    X = np.random.default_rng(0).normal(size=(50, 2)).astype("float32")
    hidden, _ = extract(model, X, out=tmp_path)
    with pytest.raises(ValueError, match="read-only"):
        hidden["h1"][0, 0] = 1.0  # a stored experiment may link this file
    before = (tmp_path / "act-0.npy").read_bytes()
    with pytest.raises(FileExistsError, match="act-0.npy' exists already; give extract an empty folder"):
        extract(model, X * 2, out=tmp_path)
    assert (tmp_path / "act-0.npy").read_bytes() == before


def test_a_run_over_its_budget_extracts_and_clusters_on_a_dask_cluster_as_it_would_alone(tmp_path):
    """``client=``: the forward pass and the k-means run as tasks on the cluster's workers (issue 11, item 5)."""
    from signatures.app.jobs import start_cluster
    from signatures.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig(name="ooc", digits=(1, 7), anomalies=(3,), n_per_class=250, arch="cnn", hidden=(8,),
                              filters=(8, 8), reduce="flatten", epochs=1, k_max=4, umap_points=200,
                              memory_budget=16)
    alone = run_experiment(config, workdir=tmp_path)
    assert alone.info["activations"]["held"] == "on disk", "the budget sends the activations to files"
    jobs = start_cluster(n_workers=1, warm=False)
    try:
        spread = run_experiment(config, workdir=tmp_path, client=jobs.client)
    finally:
        jobs.close()
    assert spread.info["activations"]["held"] == "on disk, by the Dask cluster"
    assert np.array_equal(spread.probs, alone.probs), "the same forward batches give the same outputs"
    for name in alone.layers:
        assert np.array_equal(np.asarray(spread.hidden[name]), np.asarray(alone.hidden[name])), name
        a, b = alone.clusterers[name], spread.clusterers[name]
        assert a.k_ == b.k_ and a.silhouette_scores_ == b.silhouette_scores_, name
        assert "Dask" in b.note_ or b.status_ != "ok"
        assert adjusted_rand_score(alone.paths[:, alone.layers.index(name)],
                                   spread.paths[:, spread.layers.index(name)]) > 0.99, name
    spread.release_work_folder()
    alone.release_work_folder()
