"""From which layer do the classes separate: measures, CKA, the table and the rule."""

from collections import OrderedDict

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from signatures.clustering import cluster_layers
from signatures.experiment import Experiment, ExperimentConfig
from signatures.paths import assign_paths
from signatures.separation import (
    DEFAULT_RULE,
    cka_matrix,
    cluster_agreement,
    first_separating_layer,
    label_silhouette,
    layer_cka,
    linear_cka,
    one_hot_cka,
    probe_accuracy,
    separation_table,
)


def one_hot(y):
    return (np.asarray(y)[:, None] == np.unique(y)[None, :]).astype(float)


def orthogonal(rng, n):
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


# --------------------------------------------------------------------------- representations identical to the labels


@pytest.mark.parametrize("n_classes", [2, 3])
def test_labels_themselves_give_cka_1_and_probe_1(n_classes):
    y = np.repeat(np.arange(n_classes) * 3 + 1, 20)
    assert one_hot_cka(one_hot(y), y) == pytest.approx(1.0)
    assert probe_accuracy(one_hot(y), y) == 1.0
    if n_classes == 2:  # X = y as one column is the same partition
        assert one_hot_cka(y.astype(float), y) == pytest.approx(1.0)
        assert linear_cka(y, one_hot(y)) == pytest.approx(1.0)
        assert probe_accuracy(y[:, None], y) == 1.0


# --------------------------------------------------------------------------- CKA


def test_cka_of_x_with_itself_is_1_and_invariant_to_rotation_and_scaling(rng):
    X = rng.normal(size=(120, 6)) @ rng.normal(size=(6, 6))
    Y = np.tanh(X @ rng.normal(size=(6, 4))) + 0.3 * rng.normal(size=(120, 4))
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, 3.7 * X @ orthogonal(rng, 6)) == pytest.approx(1.0)
    base = linear_cka(X, Y)
    assert 0.0 < base < 1.0
    assert linear_cka(0.2 * X @ orthogonal(rng, 6), 5.0 * Y @ orthogonal(rng, 4)) == pytest.approx(base)
    assert linear_cka(Y, X) == pytest.approx(base)
    assert linear_cka(X + 10.0, Y - 3.0) == pytest.approx(base)  # centered


def test_linear_cka_equals_the_hsic_form(rng):
    """Feature-space formula == sample-space HSIC form tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))."""
    X, Y = rng.normal(size=(50, 3)), rng.normal(size=(50, 7))
    Y[:, 0] += 2 * X[:, 0]
    H = np.eye(50) - 1.0 / 50
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    expected = np.trace(K @ L) / np.sqrt(np.trace(K @ K) * np.trace(L @ L))
    assert linear_cka(X, Y) == pytest.approx(expected)


def test_cka_edge_cases():
    assert linear_cka(np.ones((10, 3)), np.arange(10.0)) == 0.0  # constant shares nothing
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(np.zeros((4, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="at least 2 labels"):
        one_hot_cka(np.zeros((4, 2)), np.ones(4))


def test_cka_matrix(rng):
    arrays = OrderedDict(a=rng.normal(size=(60, 4)), b=rng.normal(size=(60, 2)), c=np.zeros((60, 3)))
    arrays["d"] = arrays["a"] @ orthogonal(rng, 4)
    M = cka_matrix(arrays)
    assert M.shape == (4, 4)
    np.testing.assert_allclose(M, M.T)
    np.testing.assert_allclose(np.diag(M), [1, 1, 0, 1])
    assert M[0, 1] == pytest.approx(linear_cka(arrays["a"], arrays["b"]))
    assert M[0, 3] == pytest.approx(1.0) and M[0, 2] == 0.0
    np.testing.assert_array_equal(cka_matrix(list(arrays.values())), M)
    with pytest.raises(ValueError, match="same inputs"):
        cka_matrix([np.zeros((3, 1)), np.zeros((4, 1))])


# --------------------------------------------------------------------------- clusters vs labels


def test_cluster_agreement_exact_and_invariant_to_relabelling(rng):
    y = np.repeat([1, 7], 6)
    assert cluster_agreement(np.repeat([0, 1], 6), y) == {"nmi": 1.0, "ari": 1.0, "purity": 1.0}
    clusters = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2])  # one 1 in a cluster of 7s
    base = cluster_agreement(clusters, y)
    assert base["purity"] == pytest.approx(11 / 12)
    for _ in range(5):
        perm = rng.permutation(3)
        assert cluster_agreement(perm[clusters], y) == base
    assert cluster_agreement(np.array([10, 42, 7])[clusters], y) == base
    assert cluster_agreement(clusters, np.where(y == 1, "one", "seven")) == base


def test_label_silhouette(rng):
    y = np.repeat([0, 1], 50)
    X = rng.normal(size=(100, 3)) + 20.0 * y[:, None]
    assert label_silhouette(X, y) == pytest.approx(silhouette_score(X, y))
    assert label_silhouette(X, y) > 0.9
    sampled = label_silhouette(X, y, sample_size=40, random_state=1)
    assert sampled == label_silhouette(X, y, sample_size=40, random_state=1)
    assert sampled > 0.9
    assert label_silhouette(np.zeros((10, 2)), np.repeat([0, 1], 5)) == 0.0
    with pytest.raises(ValueError, match="2 <= number of labels"):
        label_silhouette(X, np.zeros(100))


def test_probe_errors_name_the_problem():
    X = np.arange(20.0)[:, None]
    with pytest.raises(ValueError, match=r"at least 2 classes, got \[3\]"):
        probe_accuracy(X, np.full(20, 3))
    with pytest.raises(ValueError, match=r"at least cv = 5 rows.*\{7: 3\}"):
        probe_accuracy(X, np.array([1] * 17 + [7] * 3))


# --------------------------------------------------------------------------- constructed networks


def relu(z):
    return np.maximum(z, 0.0)


def network_case(kind, seed=0, n_per_class=120):
    """Activations of a hand-set 2-layer network, clustered and wrapped as an Experiment.

    The input of each row is a class feature (+-1 for 1s and 7s) and two nuisance features,
    bimodal and independent of the class (the ``style`` of the digit).

    kind "noise": layer 1 reads only the nuisance features, so it holds nothing about the
    class; layer 2 reads the class feature (a skip connection, as in a network that
    could see it). kind "weak": layer 1 keeps the class feature, small, beside large
    nuisance units (linearly decodable, not dominant); layer 2 amplifies the class unit
    and drops the nuisance.
    """
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 7], n_per_class)
    c = np.where(y == 1, 1.0, -1.0)
    style = rng.choice([-1.0, 1.0], size=(len(y), 2))
    x = np.column_stack([c, style]) + 0.1 * rng.normal(size=(len(y), 3))
    W1 = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, -4.0, 0.0, 0.0], [0.0, 0.0, 4.0, -4.0]])  # style only
    h1 = relu(x @ W1)
    if kind == "weak":
        h1 = np.column_stack([h1, relu(0.5 * x[:, 0]), relu(-0.5 * x[:, 0])])
        h2 = relu(h1[:, 4:] @ np.array([[10.0, -10.0, 1.0], [-10.0, 10.0, 1.0]]))
    else:
        h2 = relu(x[:, :1] @ np.array([[3.0, -3.0, 0.5]]))
    h2 = h2 + 0.1 * rng.random(h2.shape)
    hidden = OrderedDict(h1=h1, h2=h2)
    split = np.where(rng.random(len(y)) < 0.75, 0, 1).astype(np.int8)
    train = split == 0
    clusterers = cluster_layers({k: v[train] for k, v in hidden.items()}, k_range=range(2, 6), random_state=0)
    return Experiment(
        config=ExperimentConfig(), layers=list(hidden), classes=(1, 7), anomalies=(), class_names=tuple("0123456789"),
        labels=y, split=split, images=np.zeros((len(y), 2, 2), dtype=np.uint8), probs=np.full((len(y), 2), 0.5),
        hidden=hidden, clusterers=clusterers, paths=assign_paths(clusterers, hidden), embeddings=OrderedDict(),
        metrics={},
    )


def test_only_layer_2_separates_so_the_rule_picks_layer_2():
    exp = network_case("noise")
    table = separation_table(exp)
    assert [r["layer"] for r in table] == ["h1", "h2"]
    h1, h2 = table
    assert h1["nmi"] < 0.1 and abs(h1["ari"]) < 0.1 and h1["probe_accuracy"] < 0.7 and h1["cka_labels"] < 0.1
    assert h2["nmi"] > 0.9 and h2["probe_accuracy"] == 1.0 and h2["cka_labels"] > 0.9
    assert h2["label_silhouette"] > h1["label_silhouette"]
    layer, reason = first_separating_layer(table)
    assert layer == "h2"
    assert reason.startswith("h2 is the first layer") and "h1 has NMI" in reason


def test_decodable_but_not_dominant_is_not_separated():
    """Layer 1 holds the class (probe passes) but its clusters follow the style: the rule waits for layer 2."""
    table = separation_table(network_case("weak"))
    h1, h2 = table
    assert h1["probe_accuracy"] >= DEFAULT_RULE["probe_accuracy"] and h1["nmi"] < DEFAULT_RULE["nmi"]
    assert first_separating_layer(table)[0] == "h2"
    assert first_separating_layer(table, rule={"probe_accuracy": 0.95})[0] == "h1"


def test_table_ignores_anomaly_rows_and_rows_selects():
    exp = network_case("noise")
    table = separation_table(exp)
    n = exp.n_rows
    exp.labels = np.concatenate([exp.labels, np.full(10, 3)])
    exp.split = np.concatenate([exp.split, np.full(10, 2, dtype=np.int8)])
    exp.hidden = OrderedDict((k, np.vstack([v, np.full((10, v.shape[1]), 9.0)])) for k, v in exp.hidden.items())
    exp.paths = np.vstack([exp.paths, np.zeros((10, 2), dtype=np.int64)])
    assert separation_table(exp) == table
    assert separation_table(exp, rows=np.arange(n + 10)) == table
    train_only = separation_table(exp, rows=exp.rows("train"))
    assert train_only != table and first_separating_layer(train_only)[0] == "h2"
    M = layer_cka(exp)
    assert M.shape == (2, 2) and M[0, 1] < 0.1
    with pytest.raises(ValueError, match="not a boolean mask"):
        separation_table(exp, rows=exp.split == 0)
    with pytest.raises(ValueError, match="no training or held-out rows"):
        separation_table(exp, rows=exp.rows("anomaly"))


# --------------------------------------------------------------------------- the rule on hand-made tables


TABLE = [
    {"layer": "a", "nmi": 0.2, "probe_accuracy": 0.99},
    {"layer": "b", "nmi": 0.7, "probe_accuracy": 0.97},
    {"layer": "c", "nmi": 0.4, "probe_accuracy": 0.99},
]


def test_rule_reasons_in_words():
    layer, reason = first_separating_layer(TABLE)
    assert layer == "b"
    assert "NMI of clusters and classes 0.700 >= 0.5" in reason
    assert "a has NMI of clusters and classes 0.200 < 0.5" in reason
    assert "later c falls short again" in reason
    layer, reason = first_separating_layer(TABLE, rule={"nmi": 0.8})
    assert layer is None and reason.startswith("no layer meets the rule (NMI of clusters and classes >= 0.8)")
    assert first_separating_layer(TABLE, rule={"nmi": 0.1})[0] == "a"
    with pytest.raises(ValueError, match=r"rule names metrics \['ari'\]"):
        first_separating_layer(TABLE, rule={"ari": 0.5})
    with pytest.raises(ValueError, match=r"finite numbers, got \{'nmi': 'high'\}"):
        first_separating_layer(TABLE, rule={"nmi": "high"})
    with pytest.raises(ValueError, match="rule is empty"):
        first_separating_layer(TABLE, rule={})
    with pytest.raises(ValueError, match="table is empty"):
        first_separating_layer([])


# --------------------------------------------------------------------------- real MNIST


def test_separation_table_on_real_mnist(small_experiment):
    exp = small_experiment
    table = separation_table(exp)
    assert [r["layer"] for r in table] == list(exp.layers)
    for row in table:
        assert set(row) == {"layer", "label_silhouette", "nmi", "ari", "purity", "probe_accuracy", "cka_labels"}
        assert -1 <= row["label_silhouette"] <= 1 and -1 <= row["ari"] <= 1
        assert all(0 <= row[k] <= 1 for k in ("nmi", "purity", "probe_accuracy", "cka_labels"))
    assert table[-1]["probe_accuracy"] > 0.9  # a trained network's last hidden layer reads 1 vs 7
    layer, reason = first_separating_layer(table)
    assert layer in exp.layers or layer is None
    assert isinstance(reason, str) and reason
    M = layer_cka(exp)
    assert M.shape == (len(exp.layers),) * 2 and np.allclose(np.diag(M), 1.0)
