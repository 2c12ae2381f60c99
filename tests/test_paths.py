"""Cluster paths, counts, flows, members, and anomaly insertion."""

from collections import Counter, OrderedDict

import numpy as np
import pytest

from signatures.clustering import LayerKMeans
from signatures.paths import (
    assign_paths,
    cluster_members,
    flows,
    path_counts,
    path_label,
    path_members,
    paths_from_labels,
)

LABELS = OrderedDict(l1=np.array([0, 0, 1, 1, 2, 0]), l2=np.array([1, 1, 0, 0, 0, 1]))
GROUPS = np.array([1, 1, 7, 7, 3, 7])
PRED = np.array([1, 1, 7, 7, 7, 1])


def test_paths_from_labels():
    paths = paths_from_labels(LABELS)
    assert paths.tolist() == [[0, 1], [0, 1], [1, 0], [1, 0], [2, 0], [0, 1]]
    with pytest.raises(ValueError, match="same inputs"):
        paths_from_labels({"a": np.zeros(3), "b": np.zeros(4)})


def test_path_counts_exact():
    counts = path_counts(paths_from_labels(LABELS), GROUPS, predicted=PRED)
    assert counts[0] == {"path": (0, 1, 1), "total": 3, "by_group": {1: 2, 7: 1}}
    assert counts[1] == {"path": (1, 0, 7), "total": 2, "by_group": {7: 2}}
    assert counts[2] == {"path": (2, 0, 7), "total": 1, "by_group": {3: 1}}
    assert sum(c["total"] for c in counts) == len(GROUPS)


def random_case(seed, n=500):
    rng = np.random.default_rng(seed)
    paths = np.column_stack([rng.integers(0, 4, n), rng.integers(0, 3, n), rng.integers(0, 5, n)])
    return paths, rng.integers(0, 3, n), rng.integers(0, 2, n)


def relabel(paths, seed):
    """Permute the cluster ids of every layer independently."""
    rng = np.random.default_rng(seed)
    out = paths.copy()
    for j in range(paths.shape[1]):
        perm = rng.permutation(paths[:, j].max() + 1)
        out[:, j] = perm[paths[:, j]]
    return out


def test_counts_and_flows_sum_to_inputs_and_ignore_relabelling():
    paths, groups, pred = random_case(0)
    counts = path_counts(paths, groups, predicted=pred)
    assert sum(c["total"] for c in counts) == len(paths)
    fl = flows(paths, groups, predicted=pred)
    for step in range(paths.shape[1]):
        assert sum(f["count"] for f in fl if f["step"] == step) == len(paths)
    moved = relabel(paths, 1)
    assert sorted(c["total"] for c in path_counts(moved, groups, predicted=pred)) == sorted(
        c["total"] for c in counts
    )
    per_group = lambda cs: sorted(tuple(sorted(c["by_group"].items())) for c in cs)  # noqa: E731
    assert per_group(path_counts(moved, groups)) == per_group(path_counts(paths, groups))
    flow_sizes = lambda f: Counter((x["step"], x["group"], x["count"]) for x in f)  # noqa: E731
    assert flow_sizes(flows(moved, groups, predicted=pred)) == flow_sizes(fl)


def test_flows_exact_small_case():
    fl = flows(paths_from_labels(LABELS), GROUPS, predicted=PRED)
    step0 = {(f["source"], f["target"], f["group"]): f["count"] for f in fl if f["step"] == 0}
    assert step0 == {(0, 1, 1): 2, (0, 1, 7): 1, (1, 0, 7): 2, (2, 0, 3): 1}
    step1 = {(f["source"], f["target"], f["group"]): f["count"] for f in fl if f["step"] == 1}
    assert step1 == {(1, 1, 1): 2, (1, 1, 7): 1, (0, 7, 7): 2, (0, 7, 3): 1}


def test_members():
    paths = paths_from_labels(LABELS)
    assert cluster_members(paths, layer=0, cluster=0).tolist() == [0, 1, 5]
    assert path_members(paths, (1, 0)).tolist() == [2, 3]
    assert path_members(paths, (0, 1, 1), predicted=PRED).tolist() == [0, 1, 5]
    with pytest.raises(ValueError, match="path must have 2 entries"):
        path_members(paths, (0, 1, 1))
    with pytest.raises(ValueError, match="layer index must be in 0..1"):
        cluster_members(paths, layer=2, cluster=0)


def test_path_label():
    assert path_label((0, 2, 1), ["h1", "h2"], class_names=["0", "7"]) == "h1:c0 > h2:c2 > pred 7"


def test_assign_paths_is_predict_without_refit():
    rng = np.random.default_rng(0)
    train = OrderedDict(a=rng.normal(size=(300, 4)), b=rng.normal(size=(300, 3)))
    new = OrderedDict(a=rng.normal(size=(40, 4)) + 0.5, b=rng.normal(size=(40, 3)))
    clusterers = OrderedDict((k, LayerKMeans(k_range=range(2, 5)).fit(v)) for k, v in train.items())
    centers_before = {k: e.centers_.copy() for k, e in clusterers.items()}
    paths = assign_paths(clusterers, new)
    assert paths[:, 0].tolist() == clusterers["a"].predict(new["a"]).tolist()
    assert paths[:, 1].tolist() == clusterers["b"].predict(new["b"]).tolist()
    for k, e in clusterers.items():
        np.testing.assert_array_equal(e.centers_, centers_before[k])
    with pytest.raises(ValueError, match=r"lack the clustered layers \['b'\]"):
        assign_paths(clusterers, {"a": new["a"]})


def test_experiment_anomalies_use_fitted_clusters(small_experiment):
    exp = small_experiment
    rows = exp.rows("anomaly")
    assert len(rows) > 0 and set(exp.labels[rows].tolist()) == {3, 4}
    for j, name in enumerate(exp.layers):
        expected = exp.clusterers[name].predict(exp.hidden[name][rows])
        np.testing.assert_array_equal(exp.paths[rows, j], expected)
    train = exp.rows("train")
    for j, name in enumerate(exp.layers):
        np.testing.assert_array_equal(exp.paths[train, j], exp.clusterers[name].labels_)
    assert sum(c["total"] for c in exp.path_counts()) == exp.n_rows
