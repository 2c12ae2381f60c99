"""Past one machine: dask arrays over activation files, k-means and extraction on real LocalClusters.

Two clusters are started, each once for the module: ``lean``, two worker processes of
:data:`LIMIT` each that never import TensorFlow (k-means, and data larger than a worker's
memory), and ``keras_workers``, one ordinary worker for the distributed forward pass.
"""

import os
import pickle

import numpy as np
import pytest

pytest.importorskip("distributed")

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from signatures.app.jobs import start_cluster  # noqa: E402
from signatures.clustering import LayerKMeans  # noqa: E402
from signatures.outofcore import (  # noqa: E402
    DaskKMeans,
    activation_arrays,
    cluster_layer,
    cluster_layers,
    extract_on_cluster,
    mapped_array,
    nearest_center,
)

#: Memory limit of each lean worker (a bare worker with this module imported takes about 90 MiB).
LIMIT = 256 << 20


@pytest.fixture(scope="module")
def lean():
    """Two single-threaded worker processes of 256 MiB each, without TensorFlow (no WarmUp plugin)."""
    jobs = start_cluster(n_workers=2, memory_limit=LIMIT, warm=False)
    yield jobs.client
    jobs.close()


def _blobs_file(path, n, d, k, *, seed, step=20_000, spread=4.0):
    """Gaussian blobs (unit variance around ``k`` centers) written to ``path`` block by block; their labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, spread, size=(k, d)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    labels = np.empty(n, dtype=np.int64)
    for a in range(0, n, step):
        b = min(n, a + step)
        labels[a:b] = rng.integers(0, k, size=b - a)
        out[a:b] = centers[labels[a:b]] + rng.standard_normal((b - a, d), dtype=np.float32)
    out.flush()
    del out
    return labels


# ---------------------------------------------------------------------------------------
# Dask arrays over the files
# ---------------------------------------------------------------------------------------


def test_a_file_becomes_row_chunks_whose_tasks_carry_only_its_path(tmp_path):
    values = np.random.default_rng(0).random((1000, 64)).astype(np.float32)  # 250 KiB
    np.save(tmp_path / "act-0.npy", values)
    np.save(tmp_path / "act-1.npy", values[:, :8] * 2)
    arrays = activation_arrays(tmp_path, ["a", "b"], rows_per_chunk=300)
    assert list(arrays) == ["a", "b"]
    assert arrays["a"].chunks == ((300, 300, 300, 100), (64,)) and arrays["a"].dtype == np.float32
    np.testing.assert_array_equal(arrays["a"].compute(scheduler="sync"), values)
    np.testing.assert_array_equal(arrays["b"][250:720].compute(scheduler="sync"), values[250:720, :8] * 2)
    graph = dict(arrays["a"].__dask_graph__())
    assert len(pickle.dumps(graph)) < 20_000, "the graph holds the file's path, not its 250 KiB of values"
    by_bytes = mapped_array(tmp_path / "act-0.npy", chunk_bytes=64 * 4 * 128)
    assert by_bytes.chunks[0][0] == 128


def test_dask_arrays_see_a_file_that_changed_after_they_were_made(tmp_path):
    np.save(tmp_path / "act-0.npy", np.zeros((10, 4), dtype=np.float32))
    array = mapped_array(tmp_path / "act-0.npy")
    np.save(tmp_path / "act-0.npy", np.zeros((20, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="changed since its dask array was made"):
        array.compute(scheduler="sync")


def _write(folder, j, values, **kw):
    np.save(folder / f"act-{j}.npy", values, **kw)


@pytest.mark.parametrize("case, match", [
    ("rows_per_chunk=0", r"^rows_per_chunk must be a whole number >= 1 or None, got 0"),
    ("chunk_bytes=-5", r"^chunk_bytes must be a whole number >= 1, got -5"),
    ("missing layer", r"layer 'b' \(layer 1\) has no activation file .*act-1.npy.*holds \['act-0.npy'\]"),
    ("1-D file", r"layer 'a': .* shape \(10,\); activations must be 2-D"),
    ("3-D file", r"shape \(10, 2, 2\); activations must be 2-D"),
    ("integers", "holds int64 values; activations must be floats"),
    ("Fortran order", "is Fortran-ordered; rows must be contiguous"),
    ("other row counts", r"must hold 10 rows \(one per input\); \{'b': 9\} differ"),
    ("n_rows", r"must hold 12 rows .*\{'a': 10\} differ"),
    ("truncated", "a damaged or unfinished file"),
    ("not npy", "is not a readable .npy file"),
    ("layers as a string", "layers must be a non-empty list of layer names, got 'a'"),
    ("no layers", r"layers must be a non-empty list of layer names, got \[\]"),
    ("repeated layer", "layers must name each layer once"),
])
def test_bad_activation_files_and_options_are_named(tmp_path, case, match):
    good = np.ones((10, 3), dtype=np.float32)
    _write(tmp_path, 0, good)
    layers, kw = ["a"], {}
    if case == "rows_per_chunk=0":
        kw["rows_per_chunk"] = 0
    elif case == "chunk_bytes=-5":
        kw["chunk_bytes"] = -5
    elif case == "missing layer":
        layers = ["a", "b"]
    elif case == "1-D file":
        _write(tmp_path, 0, np.ones(10, dtype=np.float32))
    elif case == "3-D file":
        _write(tmp_path, 0, np.ones((10, 2, 2), dtype=np.float32))
    elif case == "integers":
        _write(tmp_path, 0, np.ones((10, 3), dtype=np.int64))
    elif case == "Fortran order":
        _write(tmp_path, 0, np.asfortranarray(np.ones((10, 3), dtype=np.float32)))
    elif case == "other row counts":
        _write(tmp_path, 1, np.ones((9, 3), dtype=np.float32))
        layers = ["a", "b"]
    elif case == "n_rows":
        kw["n_rows"] = 12
    elif case == "truncated":
        with open(tmp_path / "act-0.npy", "r+b") as fh:
            fh.truncate(os.path.getsize(tmp_path / "act-0.npy") - 4)
    elif case == "not npy":
        (tmp_path / "act-0.npy").write_bytes(b"not an array at all, just words")
    elif case == "layers as a string":
        layers = "a"
    elif case == "no layers":
        layers = []
    elif case == "repeated layer":
        layers = ["a", "a"]
    with pytest.raises(ValueError, match=match):
        activation_arrays(tmp_path, layers, **kw)


# ---------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------


def test_dask_kmeans_agrees_with_full_kmeans_and_is_deterministic(lean):
    import dask
    import dask.array as da

    X, _ = make_blobs(n_samples=4000, centers=6, n_features=10, cluster_std=2.5, random_state=3)
    Xd = da.from_array(X, chunks=(350, 10))
    full = KMeans(6, n_init=10, random_state=0).fit(X)
    km = DaskKMeans(6, init_sample=600, random_state=0, client=lean).fit(Xd)
    assert adjusted_rand_score(full.labels_, km.labels_) > 0.99
    assert km.inertia_ == pytest.approx(full.inertia_, rel=1e-3)
    assert km.converged_ and 1 <= km.n_iter_ < km.max_iter and km.init_rows_ == 600
    assert km.labels_.dtype == np.int64 and km.cluster_centers_.shape == (6, 10)
    np.testing.assert_array_equal(km.predict(Xd).compute(), km.labels_)
    # A Lloyd fixed point: every center is the mean of the rows it labels.
    means = np.stack([X[km.labels_ == c].mean(axis=0) for c in range(6)])
    np.testing.assert_allclose(km.cluster_centers_, means, atol=1e-6 * np.abs(X).max())
    again = DaskKMeans(6, init_sample=600, random_state=0, client=lean).fit(Xd)
    np.testing.assert_array_equal(again.cluster_centers_, km.cluster_centers_)
    np.testing.assert_array_equal(again.labels_, km.labels_)
    with dask.config.set(scheduler="threads"):  # other processes, another schedule: the same sums
        local = DaskKMeans(6, init_sample=600, random_state=0).fit(Xd)
    np.testing.assert_array_equal(local.cluster_centers_, km.cluster_centers_)


def test_an_empty_cluster_is_moved_to_a_far_row():
    import dask.array as da

    X = np.concatenate([np.zeros((50, 2)), np.full((50, 2), 10.0)]) + np.linspace(0, 0.1, 100)[:, None]
    # The third center lies beyond the second: no row is nearest to it in the first iteration.
    km = DaskKMeans(3, init=np.array([[0.0, 0.0], [10.0, 10.0], [100.0, 100.0]]), init_sample=100,
                    random_state=0).fit(da.from_array(X, chunks=30))
    assert np.bincount(km.labels_, minlength=3).min() > 0, "every cluster holds rows"
    assert np.abs(km.cluster_centers_).max() < 20, "the empty cluster's center left (100, 100)"


@pytest.mark.parametrize("params, X, match", [
    ({"n_clusters": 0}, None, "n_clusters must be a whole number >= 1, got 0"),
    ({"n_clusters": 50}, None, "n_clusters = 50 but X has only 40 rows"),
    ({"n_clusters": 2, "init": "random"}, None, r"init must be 'k-means\+\+' or an array of centers, got 'random'"),
    ({"n_clusters": 2, "init": np.zeros((3, 3))}, None, r"init centers must be .* \(2, 3\), got shape \(3, 3\)"),
    ({"n_clusters": 2, "tol": -1.0}, None, "tol must be a number >= 0, got -1.0"),
    ({"n_clusters": 2, "max_iter": 0}, None, "max_iter must be a whole number >= 1, got 0"),
    ({"n_clusters": 2, "random_state": -3}, None, "random_state must be a whole number >= 0, got -3"),
    ({"n_clusters": 2}, "nan", "X has NaN or infinite values"),
    ({"n_clusters": 2}, "1-D", r"X must be 2-D \(n_samples, n_features\), got shape \(40,\)"),
    ({"n_clusters": 2}, "memmap", "X is a numpy.memmap, whose data every task would carry"),
])
def test_bad_kmeans_options_and_data_are_named(tmp_path, params, X, match):
    import dask.array as da

    values = np.random.default_rng(0).random((40, 3))
    if X == "nan":
        values[7, 1] = np.nan
        X = da.from_array(values, chunks=10)
    elif X == "1-D":
        X = da.from_array(values[:, 0], chunks=10)
    elif X == "memmap":
        np.save(tmp_path / "x.npy", values)
        X = np.load(tmp_path / "x.npy", mmap_mode="r")
    else:
        X = da.from_array(values, chunks=10)
    with pytest.raises(ValueError, match=match):
        DaskKMeans(**params).fit(X)


def test_a_large_layer_gets_layerkmeans_k_and_the_store_takes_the_result(lean, tmp_path):
    from signatures.paths import assign_paths

    X, _ = make_blobs(n_samples=6000, centers=4, n_features=12, cluster_std=1.5, random_state=0)
    np.save(tmp_path / "act-0.npy", X.astype(np.float32))
    layer = activation_arrays(tmp_path, ["h"], rows_per_chunk=700)["h"]
    options = dict(k_range=range(2, 8), max_fit_cells=1500 * 12, random_state=5)
    est = cluster_layer(layer, client=lean, **options)
    single = LayerKMeans(**options).fit(np.load(tmp_path / "act-0.npy", mmap_mode="r"))
    assert isinstance(est, LayerKMeans)
    # The same sample, the same K curve: K is chosen exactly as on one machine.
    assert est.k_ == single.k_ == 4 and est.silhouette_scores_ == single.silhouette_scores_
    assert est.criterion_ == "silhouette" and est.status_ == "ok"
    assert single.fitted_rows_ == 2000 and est.fitted_rows_ == 6000  # the centers were refined on every row
    assert adjusted_rand_score(single.labels_, est.labels_) > 0.99
    assert "Dask cluster" in est.note_ and "2,000 of the 6,000 rows" in est.note_
    stored = LayerKMeans.from_dict(est.to_dict(), est.centers_, est.labels_)
    np.testing.assert_array_equal(stored.predict(X), est.labels_)
    np.testing.assert_array_equal(nearest_center(layer, est.centers_).compute(), est.labels_)
    paths = assign_paths({"h": stored}, {"h": X[:10]})
    np.testing.assert_array_equal(paths[:, 0], est.labels_[:10])


def test_a_dead_layer_is_one_cluster_as_on_one_machine(lean):
    import dask.array as da

    est = cluster_layer(da.zeros((500, 6), chunks=(100, 6)), k_range=range(2, 5), client=lean)
    assert est.status_ == "constant" and est.k_ == 1
    assert est.labels_.shape == (500,) and not est.labels_.any()


def test_layers_larger_than_a_worker_memory_are_clustered_without_losing_a_worker(lean, tmp_path):
    """The acceptance test: a 552 MiB file, workers of 256 MiB (512 MiB in all)."""
    n, d, k = 282_500, 512, 4
    file = tmp_path / "act-0.npy"
    try:
        truth = _blobs_file(file, n, d, k, seed=11)
        size = os.path.getsize(file)
        limits = lean.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
        assert set(limits.values()) == {LIMIT} and len(limits) == 2
        assert size > 2 * LIMIT and size > sum(limits.values()), "the data do not fit in the cluster's memory"
        before = lean.run(os.getpid)
        info = lean.scheduler_info(n_workers=-1)["workers"]
        ids = {address: w["id"] for address, w in info.items()}

        layer = activation_arrays(tmp_path, ["wide"], chunk_bytes=16 << 20)["wide"]
        est = cluster_layer(layer, k_range=range(2, 7), max_fit_cells=5_000_000, client=lean)

        assert lean.run(os.getpid) == before, "a worker process was restarted"
        after = lean.scheduler_info(n_workers=-1)["workers"]
        assert {address: w["id"] for address, w in after.items()} == ids
        peaks = lean.run(lambda dask_worker: max(dask_worker.monitor.quantities["memory"]))
        assert max(peaks.values()) < 0.8 * LIMIT, f"a worker came near its pause threshold: {peaks}"

        assert est.k_ == k and est.fitted_rows_ == n and est.labels_.shape == (n,)
        assert adjusted_rand_score(truth, est.labels_) > 0.999
        # scikit-learn's k-means, fitted on 20,000 rows and assigning all of them, agrees.
        values = np.load(file, mmap_mode="r")
        rows = np.sort(np.random.default_rng(1).choice(n, 20_000, replace=False))
        sk = KMeans(k, n_init=4, random_state=0).fit(values[rows])
        sk_labels = np.concatenate([sk.predict(values[a:a + 50_000]) for a in range(0, n, 50_000)])
        assert adjusted_rand_score(sk_labels, est.labels_) > 0.999
        # The centers are the means of the rows each labels (a Lloyd fixed point over every row).
        sums = np.zeros((k, d))
        for a in range(0, n, 50_000):
            block, labels = values[a:a + 50_000].astype(np.float64), est.labels_[a:a + 50_000]
            for c in range(k):
                sums[c] += block[labels == c].sum(axis=0)
        means = sums / np.bincount(est.labels_, minlength=k)[:, None]
        np.testing.assert_allclose(est.centers_, means, atol=1e-6)
        del values
    finally:
        file.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Extraction on the workers
# ---------------------------------------------------------------------------------------

# A hand-set MLP whose activations are exact in float32: weights and inputs are small halves.
W1 = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -1.0]], dtype=np.float32)
B1 = np.array([0.0, 1.0, -0.5], dtype=np.float32)
W2 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
B2 = np.array([0.5, -0.5], dtype=np.float32)
W3 = np.array([[1.0, -1.0], [-1.0, 1.0]], dtype=np.float32)
B3 = np.zeros(2, dtype=np.float32)


@pytest.fixture(scope="module")
def keras_workers():
    """One ordinary worker (it imports TensorFlow for the forward pass)."""
    jobs = start_cluster(n_workers=1, warm=False)
    yield jobs.client
    jobs.close()


@pytest.fixture(scope="module")
def hand_set(tmp_path_factory):
    keras = pytest.importorskip("keras")
    from signatures.models import save_model

    inputs = keras.Input(shape=(2,), name="x")
    h1 = keras.layers.Dense(3, activation="relu", name="h1")(inputs)
    h2 = keras.layers.Dense(2, activation="relu", name="h2")(h1)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(h2), name="hand")
    for name, (w, b) in zip(["h1", "h2", "out"], [(W1, B1), (W2, B2), (W3, B3)]):
        model.get_layer(name).set_weights([w, b])
    path = save_model(model, tmp_path_factory.mktemp("model") / "hand.keras")
    return model, path


def _inputs(n=37):
    return (np.random.default_rng(0).integers(-6, 7, size=(n, 2)) / 2).astype(np.float32)


def test_extraction_on_the_cluster_equals_extract(keras_workers, hand_set, tmp_path):
    from signatures.activations import extract

    model, path = hand_set
    X = _inputs()
    seen = []
    hidden, output, logits = extract_on_cluster(keras_workers, path, X, tmp_path / "acts", batch_size=4,
                                                rows_per_task=10, logits=True, progress=lambda *a: seen.append(a))
    h1 = np.maximum(X @ W1 + B1, 0)
    h2 = np.maximum(h1 @ W2 + B2, 0)
    assert list(hidden) == ["h1", "h2"]
    np.testing.assert_array_equal(hidden["h1"], h1)  # exact: halves and small integers
    np.testing.assert_array_equal(hidden["h2"], h2)
    np.testing.assert_array_equal(logits, h2 @ W3 + B3)
    local, local_output, local_logits = extract(model, X, batch_size=4, logits=True)
    for name in local:
        np.testing.assert_array_equal(hidden[name], local[name])
    np.testing.assert_array_equal(output, local_output)
    np.testing.assert_array_equal(logits, local_logits)
    assert all(isinstance(v, np.memmap) and not v.flags.writeable for v in hidden.values())
    assert [str(v.filename) for v in hidden.values()] == [str(tmp_path / "acts" / f"act-{j}.npy") for j in range(2)]
    # rows_per_task 10 is rounded up to 12 (whole batches of 4): 37 rows in 4 tasks, each reported.
    fractions = [f for stage, f, _ in seen if stage == "extraction"]
    assert len(fractions) == 4 and fractions == sorted(fractions) and fractions[-1] == 1.0
    # The same from an .npy file of the inputs that the workers read themselves, in float16.
    np.save(tmp_path / "x.npy", X)
    from_file, _ = extract_on_cluster(keras_workers, path, tmp_path / "x.npy", tmp_path / "half", batch_size=8,
                                      dtype="float16")
    assert from_file["h1"].dtype == np.float16
    np.testing.assert_array_equal(from_file["h1"], h1.astype(np.float16))
    # The files are the dask arrays' source: cluster every layer on the cluster, as LayerKMeans would.
    arrays = activation_arrays(tmp_path / "acts", list(hidden), rows_per_chunk=8)
    clusterers = cluster_layers(arrays, k_range=range(2, 4), client=keras_workers)
    for name, est in clusterers.items():
        np.testing.assert_array_equal(est.labels_, est.predict(hidden[name]))


def test_a_cnn_flatten_extraction_equals_extract(keras_workers, tmp_path):
    pytest.importorskip("keras")
    from signatures.activations import extract
    from signatures.models import build_cnn, save_model

    model = build_cnn((8, 8, 1), 3, filters=(2,), dense=(4,), seed=0)
    path = save_model(model, tmp_path / "cnn.keras")
    X = np.random.default_rng(1).random((50, 8, 8, 1), dtype=np.float32)
    hidden, output = extract_on_cluster(keras_workers, path, X, tmp_path / "acts", reduce="flatten", batch_size=16,
                                        rows_per_task=16)
    local, local_output = extract(model, X, reduce="flatten", batch_size=16)
    assert list(hidden) == list(local) == ["conv_1", "hidden_1"] and hidden["conv_1"].shape == (50, 8 * 8 * 2)
    for name in local:  # every forward batch holds the same rows as extract's: the same floats
        np.testing.assert_array_equal(hidden[name], local[name])
    np.testing.assert_array_equal(output, local_output)


def test_extraction_errors_are_named_and_leave_no_files(keras_workers, hand_set, tmp_path):
    _, path = hand_set
    X = _inputs()
    with pytest.raises(ValueError, match="rows_per_task must be a whole number >= 1 or None, got 0"):
        extract_on_cluster(keras_workers, path, X, tmp_path / "a", rows_per_task=0)
    with pytest.raises(ValueError, match="activations dtype must be one of float32, float16, got 'float64'"):
        extract_on_cluster(keras_workers, path, X, tmp_path / "a", dtype="float64")
    with pytest.raises(ValueError, match="model must be an existing .keras file"):
        extract_on_cluster(keras_workers, tmp_path / "nothing.keras", X, tmp_path / "a")
    with pytest.raises(ValueError, match=r"expects inputs of shape \(2,\), the data has rows of shape \(3,\)"):
        extract_on_cluster(keras_workers, path, np.ones((5, 3), dtype=np.float32), tmp_path / "b")
    assert not list((tmp_path / "b").glob("act-*.npy"))
    bad = X.copy()
    bad[30, 0] = np.nan
    with pytest.raises(ValueError, match=r"inputs 24\.\.35: layer 'h1' gives NaN or infinite activations"):
        extract_on_cluster(keras_workers, path, bad, tmp_path / "c", batch_size=4, rows_per_task=12)
    assert not list((tmp_path / "c").glob("act-*.npy")), "the unfinished files are removed"
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "act-0.npy", np.arange(4.0))
    with pytest.raises(FileExistsError, match="act-0.npy' exists already"):
        extract_on_cluster(keras_workers, path, X, tmp_path / "d")
    np.testing.assert_array_equal(np.load(tmp_path / "d" / "act-0.npy"), np.arange(4.0))  # never written over
