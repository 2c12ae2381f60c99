"""K selection and per-layer k-means (numpy + scikit-learn only)."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from signatures.clustering import LayerKMeans, check_k_range, cluster_layers, select_k, silhouette_sweep


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_select_k_finds_known_blobs(k):
    X, _ = make_blobs(n_samples=1500, centers=k, n_features=6, cluster_std=0.6, center_box=(-20, 20), random_state=k)
    best, scores = select_k(X, k_range=range(2, 11), random_state=0)
    assert best == k
    assert set(scores) == set(range(2, 11))


def test_fit_labels_match_truth_and_predict_agrees():
    X, y = make_blobs(n_samples=3000, centers=4, n_features=5, cluster_std=0.8, random_state=1)
    est = LayerKMeans(sample_size=500, random_state=0).fit(X)
    assert est.k_ == 4 and est.status_ == "ok"
    assert adjusted_rand_score(y, est.labels_) == pytest.approx(1.0)
    assert est.centers_.shape == (4, 5)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    assert max(est.silhouette_scores_, key=est.silhouette_scores_.get) == 4


def test_sample_and_full_sweep_choose_the_same_k():
    X, _ = make_blobs(n_samples=4000, centers=6, n_features=8, cluster_std=1.0, random_state=2)
    sampled = silhouette_sweep(X, sample_size=800, random_state=0)
    full = silhouette_sweep(X, sample_size=None, n_init=10, random_state=0)
    assert max(sampled, key=sampled.get) == max(full, key=full.get) == 6


def test_same_seed_same_result_different_seed_same_partition():
    X, _ = make_blobs(n_samples=1200, centers=3, n_features=4, random_state=3)
    a = LayerKMeans(random_state=7).fit(X)
    b = LayerKMeans(random_state=7).fit(X)
    c = LayerKMeans(random_state=8).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    assert a.silhouette_scores_ == b.silhouette_scores_
    assert adjusted_rand_score(a.labels_, c.labels_) == pytest.approx(1.0)


def test_constant_layer_is_recorded_not_a_crash():
    X = np.zeros((50, 8))
    est = LayerKMeans().fit(X)
    assert est.status_ == "constant" and est.k_ == 1
    assert "all activations are equal" in est.note_
    assert est.predict(np.ones((3, 8))).tolist() == [0, 0, 0]


def test_few_distinct_points():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 20, axis=0)
    est = LayerKMeans(k_range=range(3, 6)).fit(X)
    assert est.status_ == "few-distinct" and est.k_ == 2
    assert "only 2 distinct activation vectors, fewer than the smallest K = 3" in est.note_
    assert adjusted_rand_score(np.repeat([0, 1], 20), est.labels_) == 1.0
    np.testing.assert_array_equal(est.centers_, [[0.0, 0.0], [5.0, 5.0]])
    X3 = np.repeat(np.array([[0.0], [5.0], [10.0], [20.0]]), 10, axis=0)
    est3 = LayerKMeans(k_range=range(2, 8)).fit(X3)
    assert est3.status_ == "ok" and set(est3.silhouette_scores_) == {2, 3, 4}
    assert "only 4 distinct activation vectors: K limited to 4" in est3.note_
    assert est3.k_ == 4 and est3.silhouette_scores_[4] == 1.0


def test_k_may_equal_the_number_of_distinct_vectors():
    X = np.repeat(np.eye(3), 10, axis=0)
    est = LayerKMeans().fit(X)
    assert est.k_ == 3 and est.status_ == "ok"
    assert est.silhouette_scores_[3] == 1.0 and set(est.silhouette_scores_) == {2, 3}
    assert est.note_ == "only 3 distinct activation vectors: K limited to 3"
    np.testing.assert_array_equal(est.labels_, np.repeat([2, 1, 0], 10))  # distinct rows sorted: e3, e2, e1
    np.testing.assert_array_equal(est.centers_[est.labels_], X)  # every cluster is one repeated vector
    np.testing.assert_array_equal(est.predict(np.eye(3)), est.labels_[[0, 10, 20]])


def test_two_distinct_vectors_are_two_clusters_not_a_degenerate_layer():
    X = np.repeat(np.array([[0.0, 1.0], [3.0, 0.0]]), 6, axis=0)
    est = LayerKMeans().fit(X)
    assert est.status_ == "ok" and est.k_ == 2 and est.silhouette_scores_ == {2: 1.0}


def test_five_distinct_vectors_reach_k5_when_best():
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 5.0]])
    X = np.repeat(points, 8, axis=0)
    est = LayerKMeans(k_range=range(2, 9)).fit(X)
    assert est.k_ == 5 and est.silhouette_scores_[5] == 1.0
    assert all(est.silhouette_scores_[k] < 1.0 for k in (2, 3, 4))
    assert "K limited to 5" in est.note_
    assert adjusted_rand_score(np.repeat(np.arange(5), 8), est.labels_) == 1.0
    # Not best: with singletons (silhouette 0 each) K = 5 scores 40/43; K = 3 groups the near copies and wins.
    values = [0.0] * 20 + [0.01] + [100.0] * 20 + [100.01] + [50.0]
    est2 = LayerKMeans(k_range=range(2, 9)).fit(np.array(values)[:, None])
    assert set(est2.silhouette_scores_) == {2, 3, 4, 5}
    assert est2.silhouette_scores_[5] == pytest.approx(40 / 43)
    assert est2.k_ == 3 and "K limited to 5" in est2.note_


def test_sweep_skips_k_above_the_distinct_rows_of_the_sample():
    X = np.repeat(np.eye(3), 10, axis=0)
    scores = silhouette_sweep(X, k_range=range(2, 6))
    assert scores[3] == 1.0
    assert np.isnan(scores[4]) and np.isnan(scores[5])


@pytest.mark.parametrize(
    "k_range, n, message",
    [
        (range(1, 5), 100, "K >= 2"),
        (range(2, 30), 20, r"K = 29 .* K must be <= n - 1 = 19"),
        ([], 10, "empty"),
        (["x"], 10, "integers"),
    ],
)
def test_bad_k_range(k_range, n, message):
    with pytest.raises(ValueError, match=message):
        LayerKMeans(k_range=k_range).fit(np.random.default_rng(0).normal(size=(n, 3)))


def test_check_k_range_sorts():
    assert check_k_range([5, 2, 3, 3]) == (2, 3, 5)


def test_nan_rows_are_refused():
    X = np.ones((20, 3))
    X[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 of 20 rows"):
        LayerKMeans().fit(X)


def test_predict_before_fit_and_wrong_width():
    with pytest.raises(ValueError, match="not fitted"):
        LayerKMeans().predict(np.zeros((2, 2)))
    est = LayerKMeans(k_range=range(2, 4)).fit(np.random.default_rng(0).normal(size=(40, 3)))
    with pytest.raises(ValueError, match="X has 5 features, the clusters were fitted on 3"):
        est.predict(np.zeros((2, 5)))


def test_roundtrip_through_dict():
    X, _ = make_blobs(n_samples=600, centers=3, random_state=4)
    est = LayerKMeans(k_range=range(2, 6)).fit(X)
    again = LayerKMeans.from_dict(est.to_dict(), est.centers_)
    np.testing.assert_array_equal(again.predict(X), est.labels_)
    assert again.k_ == est.k_ and again.silhouette_scores_ == est.silhouette_scores_


def test_cluster_layers_keeps_order_and_reports():
    rng = np.random.default_rng(0)
    hidden = {"b": rng.normal(size=(60, 3)), "a": np.zeros((60, 2))}
    seen = []
    out = cluster_layers(hidden, k_range=range(2, 4), progress=lambda *a: seen.append(a))
    assert list(out) == ["b", "a"]
    assert out["a"].status_ == "constant"
    assert seen[-1][1] == 1.0 and "constant" in seen[-1][2]


@pytest.mark.parametrize(
    "X, options, message",
    [
        (np.zeros((0, 3)), {}, r"X must hold at least one row and one column, got shape \(0, 3\)"),
        (np.full((10, 2), "a"), {}, "X must hold numbers .* dtype <U1"),
        (np.ones((30, 2)), {"sample_size": 1}, "sample_size must be an integer >= 2 or None, got 1"),
        (np.ones((30, 2)), {"n_init": 0}, "n_init must be an integer >= 1, got 0"),
        (np.ones((30, 2)), {"random_state": -1}, "random_state must be an integer >= 0, got -1"),
        (np.ones((30, 2)), {"random_state": 1.5}, "random_state must be an integer >= 0, got 1.5"),
        (np.ones((30, 2)), {"n_threads": 0}, "n_threads must be an integer >= 1 or None, got 0"),
    ],
)
def test_bad_inputs_and_options_are_named(X, options, message):
    with pytest.raises(ValueError, match=message):
        LayerKMeans(k_range=range(2, 4), **options).fit(X)
    with pytest.raises(ValueError, match=message):
        silhouette_sweep(X, k_range=range(2, 4), **options)


def test_cluster_layers_names_the_layer_that_cannot_be_clustered():
    hidden = {"ok": np.random.default_rng(0).normal(size=(20, 2)), "block/act": np.full((20, 2), np.inf)}
    with pytest.raises(ValueError, match=r"layer 'block/act': X has NaN or infinite values in 20 of 20 rows"):
        cluster_layers(hidden, k_range=range(2, 4))
    with pytest.raises(ValueError, match="hidden must hold at least one layer's activations, got none"):
        cluster_layers({})


def _nested_blobs(rng, n=200):
    """Two far-apart groups, each of two close sub-blobs; the class is the sub-blob's side."""
    centers = np.array([[0.0, 0.0], [0.0, 3.0], [40.0, 0.0], [40.0, 3.0]])
    which = rng.integers(0, 4, size=n)
    X = centers[which] + rng.normal(scale=0.3, size=(n, 2))
    return X, which % 2, which


def test_k_criteria_on_blobs_of_known_structure():
    rng = np.random.default_rng(0)
    X, y, which = _nested_blobs(rng, 400)
    sil = LayerKMeans(k_range=range(2, 7)).fit(X)
    assert sil.k_ == 2 and sil.criterion_ == "silhouette"  # the two far groups
    assert sil.criterion_scores_ == sil.silhouette_scores_
    # The coarse split says nothing of the class; four clusters predict it exactly.
    faithful = LayerKMeans(k_range=range(2, 7), criterion="faithfulness").fit(X, y)
    assert faithful.k_ == 4
    assert faithful.criterion_scores_[2] < 0.6 and faithful.criterion_scores_[4] == 1.0
    assert adjusted_rand_score(faithful.labels_, which) == 1.0
    # At least as many clusters as classes: with four classes, K >= 4.
    classes = LayerKMeans(k_range=range(2, 7), criterion="classes").fit(X, which)
    assert classes.k_ == 4 and min(classes.silhouette_scores_) == 4
    fixed = LayerKMeans(k_range=range(2, 7), criterion="fixed", k=3).fit(X)
    assert fixed.k_ == 3 and len(np.unique(fixed.labels_)) == 3 and fixed.criterion_scores_ == {}
    # The choice and its curve survive storage.
    back = LayerKMeans.from_dict(faithful.to_dict(), faithful.centers_)
    assert back.criterion_ == "faithfulness" and back.criterion_scores_ == faithful.criterion_scores_


@pytest.mark.parametrize("options,y,message", [
    ({"criterion": "elbow"}, None, "K criterion must be one of"),
    ({"criterion": "faithfulness"}, None, "needs the class of every row"),
    ({"criterion": "classes"}, np.zeros(3), "one class per row"),
    ({"criterion": "fixed"}, None, "fixed K must be a whole number"),
    ({"criterion": "fixed", "k": 2.5}, None, "fixed K must be a whole number"),
    ({"criterion": "fixed", "k": 500}, None, "fixed K must be a whole number from 1 to 399"),
])
def test_bad_k_criteria_are_named(options, y, message):
    X, _, _ = _nested_blobs(np.random.default_rng(1), 400)
    with pytest.raises(ValueError, match=message):
        LayerKMeans(**options).fit(X, y)


def test_the_sweep_scores_every_k_on_distances_computed_once_with_the_same_result(monkeypatch):
    from sklearn.datasets import make_blobs

    from signatures import clustering

    X, _ = make_blobs(n_samples=600, centers=4, n_features=5, random_state=3)
    once = clustering.silhouette_sweep(X, k_range=range(2, 7), sample_size=None)
    monkeypatch.setattr(clustering, "PRECOMPUTE_ROWS", 0)  # every K computes its own distances
    each = clustering.silhouette_sweep(X, k_range=range(2, 7), sample_size=None)
    assert once == each and max(once, key=once.get) == 4
