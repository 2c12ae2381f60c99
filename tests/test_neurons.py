"""Which neurons fire for which class: means, order, dead neurons, effect sizes, anomalies."""

from collections import OrderedDict

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from signatures.experiment import Experiment, ExperimentConfig
from signatures.neurons import (
    active_fraction,
    anomaly_profile,
    auroc_per_neuron,
    class_means,
    class_preference,
    cohens_d,
    constant_neurons,
    dead_neurons,
    layer_status,
    layer_neuron_summary,
    neuron_order,
    signature_neurons,
    top_activating,
)


def make_experiment(hidden, labels, split, *, classes=(1, 7), anomalies=(3,)):
    """An Experiment from hand-made activations (no model, no clustering needed here)."""
    n = len(labels)
    return Experiment(
        config=ExperimentConfig(digits=classes, anomalies=anomalies), layers=list(hidden), classes=classes,
        anomalies=anomalies, class_names=tuple(str(d) for d in range(10)), labels=np.asarray(labels),
        split=np.asarray(split, dtype=np.int8), images=np.zeros((n, 2, 2), dtype=np.uint8),
        probs=np.full((n, len(classes)), 1.0 / len(classes)), hidden=OrderedDict(hidden),
        clusterers=OrderedDict(), paths=np.zeros((n, len(hidden)), dtype=np.int64), embeddings=OrderedDict(),
        metrics={},
    )


# --------------------------------------------------------------------------- means and order


def test_class_means_exact():
    X = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [9.0, 9.0]])
    y = np.array([1, 1, 7, 7, 3])
    np.testing.assert_array_equal(class_means(X, y, (1, 7)), [[2.0, 0.0], [0.0, 3.0]])
    np.testing.assert_array_equal(class_means(X, y, (7, 1)), [[0.0, 2.0], [3.0, 0.0]])
    with pytest.raises(ValueError, match=r"classes \[4\] have no rows"):
        class_means(X, y, (1, 4))
    with pytest.raises(ValueError, match="one label per row"):
        class_means(X, y[:3], (1, 7))


MEANS = np.array([
    [0.0, 0.0, 0.0],  # n0: dead
    [0.0, 2.0, 0.0],  # n1: class 1, selectivity 1
    [3.0, 1.0, 1.0],  # n2: class 0, selectivity (3 - 1) / (3 + 1) = 0.5
    [4.0, 0.0, 0.0],  # n3: class 0, selectivity 1
    [1.0, 1.0, 2.0],  # n4: class 2, selectivity (2 - 1) / (2 + 1)
    [1.0, 3.0, 1.0],  # n5: class 1, selectivity 0.5
])


def test_class_preference_exact():
    preferred, sel = class_preference(MEANS)
    assert preferred.tolist() == [0, 1, 0, 0, 2, 1]
    np.testing.assert_allclose(sel, [0.0, 1.0, 0.5, 1.0, 1 / 3, 0.5])


def test_neuron_order_groups_by_class_then_selectivity_dead_last():
    assert neuron_order(MEANS).tolist() == [3, 2, 1, 5, 4, 0]
    # Told that n3 is dead (and not n0): n3 goes last, n0 (no preference) joins class 0's group.
    assert neuron_order(MEANS, dead=[3]).tolist() == [2, 0, 1, 5, 4, 3]
    with pytest.raises(ValueError, match=r"dead neurons must be in 0\.\.5, got \[6\]"):
        neuron_order(MEANS, dead=[6])


def test_neuron_order_is_a_permutation(rng):
    means = rng.random((40, 4))
    assert sorted(neuron_order(means).tolist()) == list(range(40))


# --------------------------------------------------------------------------- active and dead


def test_active_fraction_and_dead_neurons_exact():
    X = np.array([[0.0, 1.0, -1.0], [0.0, 2.0, 0.5], [0.0, 0.0, -2.0]])
    np.testing.assert_allclose(active_fraction(X), [0.0, 2 / 3, 1 / 3])
    assert dead_neurons(X).tolist() == [0]
    np.testing.assert_allclose(active_fraction(X, threshold=0.6), [0.0, 2 / 3, 0.0])
    assert dead_neurons(X, threshold=0.6).tolist() == [0, 2]


def test_dead_means_never_above_threshold_for_tanh_too():
    x = np.linspace(-3, 3, 50)
    X = np.tanh(np.column_stack([x, -np.abs(x), np.abs(x)]))  # column 1 is <= 0 everywhere but varies
    assert dead_neurons(X).tolist() == [1]
    assert dead_neurons(1 / (1 + np.exp(-X))).tolist() == []  # a sigmoid is never <= 0
    assert dead_neurons(1 / (1 + np.exp(-X)), threshold=0.5).tolist() == [1]


# --------------------------------------------------------------------------- effect sizes


def test_auroc_matches_sklearn_with_ties(rng):
    X = np.round(rng.normal(size=(300, 6)), 1)  # many ties
    X[:, 5] = rng.integers(0, 3, 300)  # heavy ties
    mask = rng.random(300) < 0.3
    X[mask, 2] += 1.0
    ours = auroc_per_neuron(X, mask)
    expected = [roc_auc_score(mask, X[:, j]) for j in range(X.shape[1])]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_auroc_extremes():
    mask = np.array([True, True, False, False, False])
    X = np.column_stack([
        [5.0, 6.0, 1.0, 2.0, 3.0],  # members always higher
        [0.0, 0.0, 1.0, 2.0, 3.0],  # members always lower
        np.ones(5),  # constant
    ])
    np.testing.assert_allclose(auroc_per_neuron(X, mask), [1.0, 0.0, 0.5])


@pytest.mark.parametrize("mask, message", [
    (np.zeros(4, dtype=bool), "no members"),
    (np.ones(4, dtype=bool), "every row"),
    (np.array([1, 0, 0, 0]), "boolean"),
    (np.array([True, False]), "one entry per row"),
])
def test_masks_must_have_members_and_non_members(mask, message):
    with pytest.raises(ValueError, match=message):
        auroc_per_neuron(np.zeros((4, 2)), mask)


def test_cohens_d_exact_and_degenerate():
    mask = np.array([True, True, False, False, False])
    X = np.column_stack([
        [1.0, 3.0, 5.0, 7.0, 9.0],
        np.zeros(5),  # dead: no difference
        [2.0, 2.0, 1.0, 1.0, 1.0],  # constant within groups, different means
    ])
    d = cohens_d(X, mask)
    assert d[0] == pytest.approx(-5.0 / np.sqrt(10.0 / 3.0))  # SS 2 + 8 over n - 2 = 3
    assert d[1] == 0.0
    assert d[2] == np.inf
    with pytest.raises(ValueError, match="at least 3 rows"):
        cohens_d(np.zeros((2, 1)), np.array([True, False]))


def test_signature_neurons_strongest_first(rng):
    n = 200
    mask = np.arange(n) < 80
    X = np.column_stack([
        rng.normal(size=n),  # noise
        np.where(mask, 0.0, 1.0) + rng.normal(scale=0.5, size=n),  # lower for members, overlapping
        np.where(mask, 2.0, 0.0) + rng.random(n),  # perfectly higher for members
    ])
    sig = signature_neurons(X, mask, top=2)
    assert [s["neuron"] for s in sig] == [2, 1]
    assert set(sig[0]) == {"neuron", "auroc", "cohens_d", "mean_in", "mean_out"}
    assert sig[0]["auroc"] == 1.0 and sig[0]["cohens_d"] > 0 and sig[0]["mean_in"] > sig[0]["mean_out"]
    assert sig[1]["auroc"] < 0.5 and sig[1]["cohens_d"] < 0
    assert len(signature_neurons(X, mask, top=None)) == 3
    with pytest.raises(ValueError, match="top must be a positive integer or None, got 0"):
        signature_neurons(X, mask, top=0)


def test_top_activating_exact():
    X = np.array([[0.1, 5.0], [0.9, 1.0], [0.5, 1.0], [0.9, 0.0], [0.2, 3.0]])
    assert top_activating(X, 0, k=3).tolist() == [1, 3, 2]  # tie 0.9 broken by row index
    assert top_activating(X, 1, k=10).tolist() == [0, 4, 1, 2, 3]
    assert top_activating(X, 0, k=2, rows=[0, 2, 4]).tolist() == [2, 4]
    with pytest.raises(ValueError, match=r"neuron must be an integer in 0\.\.1, got 2"):
        top_activating(X, 2)
    with pytest.raises(ValueError, match=r"rows must be in 0\.\.4"):
        top_activating(X, 0, rows=[7])
    with pytest.raises(ValueError, match="not a boolean mask"):
        top_activating(X, 0, rows=np.ones(5, dtype=bool))


# --------------------------------------------------------------------------- anomalies


def anomaly_case(rng):
    """Neuron 0 fires for 1s, neuron 1 for 7s, neuron 2 only for 3s; neuron 3 for 1s and 7s, never 3s."""
    y = np.repeat([1, 7, 3], 30)
    X = np.zeros((90, 4))
    X[y == 1, 0] = 1.0
    X[y == 7, 1] = 1.0
    X[y == 3, 2] = 2.0
    X[y == 3, 0] = 0.8  # 3s look a little like 1s
    X[y != 3, 3] = 1.0
    return X + 0.05 * rng.random(X.shape), y


def test_anomaly_profile_finds_the_anomalys_own_neuron(rng):
    X, y = anomaly_case(rng)
    prof = anomaly_profile(X, y, (1, 7), 3)
    assert prof["exceeds_all"].tolist() == [2]
    assert prof["below_all"][0] == 3
    assert prof["class_means"].shape == (4, 2) and prof["anomaly_means"].shape == (4,)
    assert prof["excess"][2] == pytest.approx(prof["anomaly_means"][2] - prof["class_means"][2].max())
    assert prof["nearest_class"] == 1
    assert prof["signature"][0]["neuron"] in (2, 3) and abs(prof["signature"][0]["auroc"] - 0.5) == 0.5
    np.testing.assert_allclose(prof["active_fraction"], [1, 1, 1, 1])  # the +noise keeps every unit > 0
    with pytest.raises(ValueError, match="is one of the trained classes"):
        anomaly_profile(X, y, (1, 7), 7)
    with pytest.raises(ValueError, match="anomaly_class 4 has no rows"):
        anomaly_profile(X, y, (1, 7), 4)


def test_layer_neuron_summary_on_a_hand_made_experiment(rng):
    X, y = anomaly_case(rng)
    X[:, 3] = 0.0  # dead
    X[y != 3, 2] = 0.0  # dead for the trained classes, fires for 3s
    split = np.where(y == 3, 2, np.tile([0, 0, 1], 30))
    exp = make_experiment({"h1": X}, y, split)
    s = layer_neuron_summary(exp, "h1", k=4)
    assert s["classes"] == (1, 7) and s["class_names"] == ("1", "7")
    assert s["n_rows"] == 60 and s["n_dead"] == 2 and s["dead"].tolist() == [2, 3]
    assert s["order"].tolist() == [0, 1, 2, 3] and s["preferred"].tolist()[:2] == [1, 7]
    np.testing.assert_allclose(s["means"][:2], [[1.0, 0.0], [0.0, 1.0]], atol=0.05)
    assert list(s["signatures"]) == [1, 7]
    assert all(sig[0]["neuron"] in (0, 1) and abs(sig[0]["auroc"] - 0.5) == 0.5 for sig in s["signatures"].values())
    rows = s["top_rows"][1][0]
    assert len(rows) == 4 and set(y[rows]) == {1} and set(split[rows]) <= {0, 1}  # rows of exp, no anomalies
    assert list(s["anomalies"]) == [3] and s["anomalies"][3]["exceeds_all"].tolist() == [2]
    assert s["status"] == "ok" and s["constant"].tolist() == [2, 3] and s["n_constant"] == 2
    only_train = layer_neuron_summary(exp, "h1", rows=exp.rows("train"))
    assert only_train["n_rows"] == 40 and only_train["anomalies"] == {}
    with pytest.raises(ValueError, match="layer must be one of"):
        layer_neuron_summary(exp, "h9")


def test_constant_neurons_and_layer_status_exact():
    X = np.array([[0.0, 2.0, 0.5], [0.0, 2.0, 0.7], [0.0, 2.0, 0.1]])
    assert constant_neurons(X).tolist() == [0, 1]
    assert layer_status(X) == "ok"
    assert layer_status(np.zeros((4, 3))) == "dead"
    assert layer_status(np.full((4, 3), -1.0)) == "dead"  # never above 0
    assert layer_status(np.full((4, 2), 0.5)) == "constant"  # saturated: one value, above 0
    assert layer_status(np.full((4, 2), 0.5), threshold=0.5) == "dead"


def test_summary_of_a_dead_or_constant_layer_names_no_signature_neuron(rng):
    """A layer whose neurons carry nothing (AUROC 0.5 everywhere) has no signature neurons."""
    y = np.repeat([1, 7], 20)
    split = np.tile([0, 1], 20)
    live = np.column_stack([(y == 1) + 0.1 * rng.random(40), (y == 7) + 0.1 * rng.random(40)])
    exp = make_experiment({"h1": live, "h2": np.zeros((40, 3)), "h3": np.full((40, 2), 0.7)}, y, split,
                          anomalies=())
    dead, saturated = layer_neuron_summary(exp, "h2"), layer_neuron_summary(exp, "h3")
    assert dead["status"] == "dead" and dead["n_dead"] == 3 and dead["n_constant"] == 3
    assert saturated["status"] == "constant" and saturated["n_dead"] == 0 and saturated["n_constant"] == 2
    assert dead["signatures"] == {1: [], 7: []} and saturated["signatures"] == {1: [], 7: []}
    assert dead["top_rows"] == {1: {}, 7: {}}
    ok = layer_neuron_summary(exp, "h1")
    assert ok["status"] == "ok" and [abs(n["auroc"] - 0.5) for n in ok["signatures"][1]] == [0.5, 0.5]


def test_constant_neurons_of_a_live_layer_are_never_signature_neurons(rng):
    y = np.repeat([1, 7], 20)
    X = np.column_stack([np.zeros(40), rng.random(40) + (y == 1), np.full(40, 3.0)])
    exp = make_experiment({"h1": X}, y, np.tile([0, 1], 20), anomalies=())
    s = layer_neuron_summary(exp, "h1", top=None)
    assert [n["neuron"] for n in s["signatures"][1]] == [1]  # neurons 0 and 2 are constant
    assert s["top_rows"][1][1].tolist() == top_activating(X, 1, k=16, rows=np.arange(40)).tolist()


def test_layer_neuron_summary_on_real_mnist(small_experiment):
    exp = small_experiment
    for layer in exp.layers:
        s = layer_neuron_summary(exp, layer)
        units = exp.hidden[layer].shape[1]
        assert s["means"].shape == (units, 2) and sorted(s["order"].tolist()) == list(range(units))
        assert np.all((s["active_fraction"] >= 0) & (s["active_fraction"] <= 1))
        # A trained layer has neurons that tell 1s from 7s well.
        assert abs(s["signatures"][1][0]["auroc"] - 0.5) > 0.4
        assert set(s["anomalies"]) == {3, 4}
        assert s["status"] == "ok"


@pytest.mark.parametrize("seed", range(5))
def test_average_ranks_match_scipy_with_ties(seed):
    from scipy.stats import rankdata

    from signatures.neurons import _average_ranks

    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 5)))
        X = rng.integers(0, int(rng.integers(1, 5)), size=shape).astype(np.float64)  # many ties
        if rng.random() < 0.3:
            X = rng.normal(size=shape)
        np.testing.assert_allclose(_average_ranks(X), rankdata(X, axis=0))
