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
    INPUT_LAYER,
    cka_matrix,
    cluster_agreement,
    first_separating_layer,
    input_representation,
    input_separation,
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
        assert set(row) == {"layer", "kind", "label_silhouette", "nmi", "ari", "purity", "probe_accuracy",
                            "cka_labels"}
        assert row["kind"] == "hidden"
        assert -1 <= row["label_silhouette"] <= 1 and -1 <= row["ari"] <= 1
        assert all(0 <= row[k] <= 1 for k in ("nmi", "purity", "probe_accuracy", "cka_labels"))
    assert table[-1]["probe_accuracy"] > 0.9  # a trained network's last hidden layer reads 1 vs 7
    layer, reason = first_separating_layer(table)
    assert layer in exp.layers or layer is None
    assert isinstance(reason, str) and reason
    M = layer_cka(exp)
    assert M.shape == (len(exp.layers),) * 2 and np.allclose(np.diag(M), 1.0)


def test_real_input_row_is_the_reference_and_never_the_separating_layer(small_experiment):
    exp = small_experiment
    table = separation_table(exp, include_input=True)
    assert [r["layer"] for r in table] == [INPUT_LAYER, *exp.layers]
    row = table[0]
    assert row["kind"] == "input" and "PCA to 50 of 784 components" in row["representation"]
    assert row["probe_accuracy"] > 0.9  # 1 vs 7 is linearly readable from the pixels already
    assert table[1:] == separation_table(exp)
    layer, reason = first_separating_layer(table)
    assert layer == first_separating_layer(table[1:])[0] and layer != INPUT_LAYER
    assert "For reference, the input itself (pixels, PCA to 50 of 784" in reason
    assert f"NMI of clusters and classes {row['nmi']:.3f}" in reason
    assert input_separation(exp) == row  # seeded: same numbers again


# --------------------------------------------------------------------------- the raw input as a reference row


def with_images(exp, images):
    exp.images = images
    return exp


def test_input_row_of_images_that_show_the_class_exactly():
    """Images whose left half is lit for 1s and right half for 7s: the input separates perfectly."""
    exp = network_case("noise")
    images = np.zeros((exp.n_rows, 4, 4), dtype=np.uint8)
    images[exp.labels == 1, :, :2] = 255
    images[exp.labels == 7, :, 2:] = 255
    row = input_separation(with_images(exp, images))
    assert row["layer"] == INPUT_LAYER and row["kind"] == "input"
    assert row["representation"] == "pixels, 16 features"  # 16 pixels < 50: no PCA
    assert row["nmi"] == 1.0 and row["ari"] == 1.0 and row["purity"] == 1.0 and row["k"] == 2
    assert row["probe_accuracy"] == 1.0 and row["label_silhouette"] == pytest.approx(1.0)
    assert row["cka_labels"] == pytest.approx(1.0)
    X, what = input_representation(exp)
    np.testing.assert_array_equal(X[exp.labels == 1][0], [1, 1, 0, 0] * 4)
    table = separation_table(exp, include_input=True)
    layer, reason = first_separating_layer(table)
    assert layer == "h2"  # the rule picks among hidden layers even though the input meets it
    assert reason.endswith("For reference, the input itself (pixels, 16 features) has NMI of clusters and classes "
                           "1.000, linear-probe accuracy 1.000: it already meets the rule.")


def test_input_row_of_constant_images_carries_nothing():
    exp = network_case("noise")  # every image is zeros
    row = input_separation(exp)
    assert row["k"] == 1 and row["nmi"] == 0.0 and row["ari"] == 0.0
    assert row["label_silhouette"] == 0.0 and row["cka_labels"] == 0.0
    assert row["probe_accuracy"] <= 0.6
    reason = first_separating_layer(separation_table(exp, include_input=True))[1]
    assert reason.endswith("linear-probe accuracy " + f"{row['probe_accuracy']:.3f}" + ": it does not meet the rule.")


def test_input_pca_is_fitted_on_training_rows_and_seeded(rng):
    exp = network_case("noise")
    images = rng.integers(0, 256, size=(exp.n_rows, 10, 10)).astype(np.uint8)
    X, what = input_representation(with_images(exp, images), n_components=7)
    assert X.shape == (exp.n_rows, 7) and what.startswith("pixels, PCA to 7 of 100 components, ")
    train = exp.split == 0
    np.testing.assert_allclose(X[train].mean(axis=0), 0.0, atol=1e-12)  # centred on the training rows
    np.testing.assert_array_equal(input_representation(exp, n_components=7)[0], X)


def test_input_row_bad_values_are_named():
    exp = network_case("noise")
    for bad in (0, 2.5, True, "50"):
        with pytest.raises(ValueError, match=f"n_components must be a positive integer, got {bad!r}"):
            input_representation(exp, n_components=bad)
    with pytest.raises(ValueError, match="include_input must be True or False, got 'yes'"):
        separation_table(exp, include_input="yes")
    with pytest.raises(ValueError, match=r"one input image per row \(240\).*got 3"):
        input_separation(with_images(exp, np.zeros((3, 2, 2), dtype=np.uint8)))
    with pytest.raises(ValueError, match="table is empty; it needs one row per hidden layer"):
        first_separating_layer([{"layer": "input", "kind": "input", "nmi": 1.0, "probe_accuracy": 1.0}])
