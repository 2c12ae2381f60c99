"""UMAP maps: exact neighbours from precomputed distances on small inputs, seeded, placing new rows."""

import inspect
import sys

import numpy as np
import pytest
from sklearn.manifold import trustworthiness
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.neighbors import NearestNeighbors

from signatures import projection
from signatures.projection import EXACT_NEIGHBOURS_BELOW, choose_rows, fit_projection, project_layers, warm_up


def _numba_overloads():
    """Compiled signatures per numba function of umap-learn and pynndescent."""
    from numba.core.dispatcher import Dispatcher

    counts = {}
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("umap", "pynndescent"):
            for attr, value in list(vars(module).items()):
                if isinstance(value, Dispatcher):
                    counts[f"{name}.{attr}"] = len(value.signatures)
    return counts


@pytest.fixture(scope="module")
def zeros_ones(mnist):
    """Real 0s and 1s (pixels scaled to 0..1): 320 rows to fit the map on, 80 held-out rows to place."""
    from signatures.data import prepare

    return prepare(mnist, (0, 1), n_per_class=200, random_state=0)


@pytest.fixture(scope="module")
def fitted(zeros_ones):
    return fit_projection(zeros_ones.X_train, random_state=0)


# First in the file, so that in a run of this file alone warm_up does the compiling.
def test_warm_up_leaves_nothing_to_compile_for_a_real_map(zeros_ones):
    seconds = warm_up()
    assert seconds > 0
    before = _numba_overloads()
    assert any(before.values())
    fit_projection(zeros_ones.X_train[:200], random_state=3).transform(zeros_ones.X_test)
    after = _numba_overloads()
    grew = {name: (before.get(name, 0), n) for name, n in after.items() if n > before.get(name, 0)}
    assert grew == {}


def test_threshold_is_the_one_of_the_installed_umap():
    import umap

    assert f"shape[0] < {EXACT_NEIGHBOURS_BELOW}" in inspect.getsource(umap.UMAP.fit)


def test_small_maps_are_fitted_on_exact_euclidean_distances_and_large_ones_on_rows(monkeypatch, rng):
    calls = []

    class Recorder:
        def __init__(self, metric):
            self.metric = metric

        def fit(self, X):
            calls.append((self.metric, X))
            self.embedding_ = np.zeros((len(X), 2), dtype=np.float32)
            return self

        def transform(self, X):
            calls.append((self.metric, X))
            return np.zeros((len(X), 2), dtype=np.float32)

    monkeypatch.setattr(projection, "_umap", lambda n, *, metric, **kw: Recorder(metric))
    X = rng.normal(size=(EXACT_NEIGHBOURS_BELOW, 3)).astype(np.float32)

    small = fit_projection(X[:-1])
    metric, D = calls[-1]
    assert small.metric_ == metric == "precomputed"
    assert D.shape == (len(X) - 1, len(X) - 1) and D.dtype == np.float32
    assert np.array_equal(D, D.T) and not np.diag(D).any()
    np.testing.assert_allclose(D, euclidean_distances(X[:-1].astype(np.float64)), atol=1e-5)
    small.transform(X[-5:])
    metric, D_new = calls[-1]
    assert D_new.shape == (5, len(X) - 1)
    np.testing.assert_allclose(D_new, euclidean_distances(X[-5:], X[:-1]), atol=1e-5)

    large = fit_projection(X)
    metric, rows = calls[-1]
    assert large.metric_ == metric == "euclidean"
    np.testing.assert_array_equal(rows, X)


def test_small_map_uses_precomputed_distances_and_keeps_the_exact_neighbours(zeros_ones, fitted):
    X = zeros_ones.X_train
    assert fitted.metric_ == fitted.reducer_.metric == "precomputed"
    assert fitted.embedding_.shape == (len(X), 2)
    k = fitted.reducer_.n_neighbors
    _, exact = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    graph = fitted.reducer_.graph_.tocsr()
    missing = [i for i in range(len(X)) if not set(exact[i, 1:]) <= set(graph[i].indices)]
    assert missing == []


def test_the_map_keeps_real_digits_neighbourhoods(zeros_ones, fitted):
    X = zeros_ones.X_train
    assert trustworthiness(X, fitted.embedding_, n_neighbors=10) > 0.93
    scrambled = np.random.default_rng(0).permutation(fitted.embedding_)
    assert trustworthiness(X, scrambled, n_neighbors=10) < 0.7


def test_new_rows_land_next_to_their_own_class(zeros_ones, fitted):
    placed = fitted.transform(zeros_ones.X_test)
    assert placed.shape == (len(zeros_ones.X_test), 2) and np.isfinite(placed).all()
    y_fit, y_new = zeros_ones.y_train, zeros_ones.y_test
    classes = np.unique(y_fit)
    centres = np.stack([fitted.embedding_[y_fit == c].mean(axis=0) for c in classes])
    nearest_centre = classes[np.argmin(((placed[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)]
    assert np.mean(nearest_centre == y_new) >= 0.95
    d = ((placed[:, None, :] - fitted.embedding_[None]) ** 2).sum(-1)
    assert np.mean(y_fit[np.argmin(d, axis=1)] == y_new) >= 0.95


def test_same_seed_same_map_other_seed_other_map(zeros_ones, fitted):
    again = fit_projection(zeros_ones.X_train, random_state=0)
    np.testing.assert_array_equal(again.embedding_, fitted.embedding_)
    np.testing.assert_array_equal(again.transform(zeros_ones.X_test), fitted.transform(zeros_ones.X_test))
    other = fit_projection(zeros_ones.X_train, random_state=1)
    assert not np.allclose(other.embedding_, fitted.embedding_)


def test_project_layers_fits_transforms_skips_and_leaves_the_rest_nan(zeros_ones, fitted):
    X = np.concatenate([zeros_ones.X_train, zeros_ones.X_test])
    n_fit = len(zeros_ones.X_train)
    fit_rows = np.arange(n_fit)
    transform_rows = np.arange(n_fit, len(X) - 10)
    hidden = {"pixels": X, "dead": np.zeros((len(X), 3), dtype=np.float32)}
    stages = []
    out = project_layers(hidden, fit_rows, transform_rows, skip={"dead"}, random_state=0,
                         progress=lambda *a: stages.append(a))
    assert list(out) == ["pixels", "dead"]
    np.testing.assert_array_equal(out["pixels"][fit_rows], fitted.embedding_)
    np.testing.assert_array_equal(out["pixels"][transform_rows], fitted.transform(X[transform_rows]))
    assert np.isnan(out["pixels"][-10:]).all() and np.isnan(out["dead"][-10:]).all()
    assert not out["dead"][: len(X) - 10].any()
    assert [s[1] for s in stages] == [0.5, 1.0]


def test_choose_rows_keeps_everything_when_small_and_splits_by_the_mask():
    groups = np.repeat([1, 7, 3], [5, 5, 4])
    fit_mask = groups != 3
    fit_rows, transform_rows = choose_rows(groups, fit_mask, max_points=20)
    np.testing.assert_array_equal(fit_rows, np.arange(10))
    np.testing.assert_array_equal(transform_rows, np.arange(10, 14))


def test_choose_rows_samples_each_group_by_its_share_reproducibly():
    groups = np.repeat([1, 7, 3], [6000, 3000, 1000])
    fit_mask = groups != 3
    fit_rows, transform_rows = choose_rows(groups, fit_mask, max_points=1000, random_state=0)
    chosen = np.concatenate([fit_rows, transform_rows])
    assert len(np.unique(chosen)) == len(chosen) == 1000
    assert fit_mask[fit_rows].all() and not fit_mask[transform_rows].any()
    assert {g: int(np.sum(groups[chosen] == g)) for g in (1, 7, 3)} == {1: 600, 7: 300, 3: 100}
    assert np.all(np.diff(fit_rows) > 0) and np.all(np.diff(transform_rows) > 0)
    again = choose_rows(groups, fit_mask, max_points=1000, random_state=0)
    other = choose_rows(groups, fit_mask, max_points=1000, random_state=1)
    np.testing.assert_array_equal(again[0], fit_rows)
    assert not np.array_equal(other[0], fit_rows)


def test_errors_name_the_problem(fitted):
    with pytest.raises(ValueError, match="at least 4 points, got 3"):
        fit_projection(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        fit_projection(np.zeros(10))
    with pytest.raises(ValueError, match="fitted on 784"):
        fitted.transform(np.zeros((2, 5)))


_CACHED_FIT = """
import json, sys
import numpy as np
from signatures.projection import fit_projection, import_umap, _CACHING
umap = import_umap()
X = np.random.default_rng(0).normal(size=(300, 6))
emb = fit_projection(X[:250], n_neighbors=10).transform(X[250:])
from umap import layouts
stats = layouts._nb_optimize_layout_euclidean_single_epoch.stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                  "functions": _CACHING["functions"], "dir": _CACHING["dir"], "sum": float(np.abs(emb).sum())}))
"""


def _fresh_fit(cache_dir):
    import json
    import os
    import subprocess

    env = dict(os.environ, SIGNATURES_NUMBA_CACHE=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", _CACHED_FIT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_umap_kernels_compiled_in_one_process_are_loaded_from_disk_by_the_next(tmp_path):
    first = _fresh_fit(tmp_path / "numba")
    assert first["dir"] == str(tmp_path / "numba") and first["functions"] > 50
    assert first["misses"] >= 1 and first["hits"] == 0  # compiled here, and saved
    assert any((tmp_path / "numba").rglob("*.nbi"))
    second = _fresh_fit(tmp_path / "numba")
    assert second["hits"] >= 1 and second["misses"] == 0  # loaded, not compiled again
    assert second["sum"] == first["sum"]  # the same map


def test_an_unwritable_cache_folder_leaves_caching_off_and_the_map_unchanged(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    off = _fresh_fit(blocker / "numba")
    assert off["dir"] == "" and off["functions"] == 0 and off["hits"] == 0
    X = np.random.default_rng(0).normal(size=(300, 6))
    assert off["sum"] == float(np.abs(fit_projection(X[:250], n_neighbors=10).transform(X[250:])).sum())


def test_new_points_start_where_umap_learn_would_start_them():
    """The vectorised start of ``UMAP.transform`` follows umap-learn's own rule, point for point."""
    import scipy.sparse as sp

    from signatures import projection

    umap = projection.import_umap()
    theirs = projection._REPLACED.get("init_graph_transform")
    assert umap.umap_.init_graph_transform is projection.init_graph_transform and theirs is not None
    rng = np.random.default_rng(0)
    graph = sp.random(300, 200, density=0.05, random_state=1, format="lil", dtype=np.float32)
    graph[5, :] = 0  # no neighbour in the fitted data: NaN
    graph[7, 3], graph[7, 9] = 0.5, 1.0  # identical to fitted point 9: starts there
    graph = graph.tocsr()
    graph.eliminate_zeros()
    embedding = rng.normal(size=(200, 2)).astype(np.float32)
    ours = projection.init_graph_transform(graph, embedding)
    np.testing.assert_allclose(ours, theirs(graph, embedding), atol=1e-5)
    assert np.isnan(ours[5]).all() and np.array_equal(ours[7], embedding[9])
    row = graph[11]
    want = (row.data[:, None] * embedding[row.indices]).sum(axis=0) / row.data.sum()
    np.testing.assert_allclose(ours[11], want, rtol=1e-5)
