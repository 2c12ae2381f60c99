"""Calibrated anomalies: distances, empirical p-values, exit layers, path rarity, AUROC."""

from collections import OrderedDict

import numpy as np
import pytest
from scipy import stats

from signatures.anomaly import (
    SCORES,
    anomaly_auroc,
    anomaly_scores,
    anomaly_summary,
    auroc,
    empirical_pvalues,
    exit_layer,
    exit_summary,
    layer_distances,
    layer_pvalues,
    path_rarity,
)
from signatures.clustering import LayerKMeans


def fitted(centers):
    """A LayerKMeans with the given centers, as the store rebuilds one."""
    state = {"params": {"k_range": [2, 3], "sample_size": 2000, "n_init": 4, "random_state": 0},
             "k": len(centers), "silhouette_scores": {}, "status": "ok", "note": ""}
    return LayerKMeans.from_dict(state, np.asarray(centers, dtype=float))


def two_layers(rng, n):
    """Inputs drawn around two centers per layer, with different spreads per cluster."""
    which = rng.integers(0, 2, n)
    l1 = np.array([[0.0, 0.0], [20.0, 0.0]])[which] + rng.normal(size=(n, 2)) * np.where(which, 2.0, 0.5)[:, None]
    l2 = np.array([[0.0], [30.0]])[which] + rng.normal(size=(n, 1)) * np.where(which, 0.3, 3.0)[:, None]
    return OrderedDict(l1=l1, l2=l2)


CLUSTERERS = OrderedDict(l1=fitted([[0, 0], [20, 0]]), l2=fitted([[0], [30]]))


def test_layer_distances_match_the_clusterers():
    hidden = OrderedDict(l1=np.array([[0, 0], [3, 4], [19, 0]]), l2=np.array([[1.0], [29.0], [-2.0]]))
    dist = layer_distances(CLUSTERERS, hidden=hidden)
    assert list(dist) == ["l1", "l2"]
    assert dist["l1"].tolist() == pytest.approx([0.0, 5.0, 1.0])
    assert dist["l2"].tolist() == pytest.approx([1.0, 1.0, 2.0])
    for name, est in CLUSTERERS.items():
        assert dist[name] == pytest.approx(est.distances(hidden[name]))
    assert layer_distances((CLUSTERERS, hidden), rows=[1])["l1"].tolist() == pytest.approx([5.0])


def test_empirical_pvalues_exact():
    p = empirical_pvalues(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.5, 4.0, 5.0]))
    assert p.tolist() == pytest.approx([5 / 5, 3 / 5, 2 / 5, 1 / 5])
    # two layers as columns
    p2 = empirical_pvalues(np.array([[1.0, 10.0], [2.0, 20.0]]), np.array([[1.5, 30.0]]))
    assert p2.shape == (1, 2) and p2[0].tolist() == pytest.approx([2 / 3, 1 / 3])
    # a reference input left out of its own reference: ranks 1/n .. n/n exactly
    ref = np.array([4.0, 1.0, 3.0, 2.0])
    loo = empirical_pvalues(ref, ref, in_reference=np.ones(4, bool))
    assert loo.tolist() == pytest.approx([1 / 4, 4 / 4, 2 / 4, 3 / 4])


def test_pvalues_per_cluster_with_fallback():
    ref = np.array([1.0, 2.0, 3.0, 100.0, 200.0])
    ref_c = np.array([0, 0, 0, 1, 1])
    d, c = np.array([2.5, 150.0]), np.array([0, 1])
    # cluster 0 has 3 reference points (enough at min_reference=3); cluster 1 falls back to all 5
    p = empirical_pvalues(ref, d, reference_clusters=ref_c, clusters=c, min_reference=3)
    assert p.tolist() == pytest.approx([2 / 4, 2 / 6])
    # with too few everywhere, the whole layer is the reference
    assert empirical_pvalues(ref, d, reference_clusters=ref_c, clusters=c).tolist() == \
        pytest.approx(empirical_pvalues(ref, d).tolist())
    with pytest.raises(ValueError, match="give both"):
        empirical_pvalues(ref, d, clusters=c)
    with pytest.raises(ValueError, match="min_reference must be"):
        empirical_pvalues(ref, d, reference_clusters=ref_c, clusters=c, min_reference=0)


def test_pvalues_of_in_distribution_inputs_are_roughly_uniform():
    # All test inputs share one reference, so their p-values follow the reference's empirical
    # distribution; a reference ten times larger than the test set keeps that from dominating
    # the one-sample KS test (over 50 seeds, 3 of 200 checks fail; 1500 / 2000 failed 37).
    rng = np.random.default_rng(0)
    reference, test = two_layers(rng, 6000), two_layers(rng, 600)
    names = list(CLUSTERERS)
    ref_d = np.column_stack(list(layer_distances(CLUSTERERS, hidden=reference).values()))
    test_d = np.column_stack(list(layer_distances(CLUSTERERS, hidden=test).values()))
    ref_c = np.column_stack([CLUSTERERS[n].predict(reference[n]) for n in names])
    test_c = np.column_stack([CLUSTERERS[n].predict(test[n]) for n in names])
    for kwargs in ({}, {"reference_clusters": ref_c, "clusters": test_c}):
        p = empirical_pvalues(ref_d, test_d, **kwargs)
        for j in range(p.shape[1]):
            assert 0.05 <= np.mean(p[:, j] < 0.1) <= 0.15
            assert stats.kstest(p[:, j], "uniform").pvalue > 0.01
    # the reference itself, left out one at a time, is as uniform
    loo = empirical_pvalues(ref_d, ref_d, reference_clusters=ref_c, clusters=ref_c, in_reference=np.ones(6000, bool))
    assert 0.05 <= np.mean(loo[:, 0] < 0.1) <= 0.15


def test_inputs_far_from_every_center_get_tiny_pvalues():
    rng = np.random.default_rng(1)
    reference = two_layers(rng, 500)
    far = OrderedDict(l1=np.array([[10.0, 500.0], [-300.0, 0.0]]), l2=np.array([[400.0], [-250.0]]))
    ref_d = np.column_stack(list(layer_distances(CLUSTERERS, hidden=reference).values()))
    far_d = np.column_stack(list(layer_distances(CLUSTERERS, hidden=far).values()))
    p = empirical_pvalues(ref_d, far_d)
    assert np.allclose(p, 1 / 501)  # the smallest possible p-value


def test_exit_layer_picks_the_first_layer_below_alpha():
    p = np.array([
        [0.50, 0.20, 0.01],
        [0.01, 0.90, 0.001],
        [0.30, 0.04, 0.02],
        [0.05, 0.06, 0.50],  # never below 0.05 (not strictly)
    ])
    assert exit_layer(p, ["a", "b", "c"]) == ["c", "a", "b", None]
    assert exit_layer(p, ["a", "b", "c"], alpha=0.001) == [None, None, None, None]
    with pytest.raises(ValueError, match="alpha must be"):
        exit_layer(p, ["a", "b", "c"], alpha=1.5)
    with pytest.raises(ValueError, match="for the 2 layers"):
        exit_layer(p, ["a", "b"])


def test_path_rarity_exact():
    train = np.array([[0, 0], [0, 0], [0, 0], [1, 1]])
    paths = np.array([[0, 0], [1, 1], [0, 1]])
    # V = 2 * 2 possible paths, smoothing 1: (3 + 1) / (4 + 4), (1 + 1) / 8, (0 + 1) / 8
    assert path_rarity(train, paths).tolist() == pytest.approx([np.log(2), np.log(4), np.log(8)])
    assert path_rarity(train, paths, n_clusters=[3, 3]).tolist() == pytest.approx(
        [-np.log(4 / 13), -np.log(2 / 13), -np.log(1 / 13)])
    # the predicted class is a last column: a 1s' path predicted 7 is rare
    rarity = path_rarity(train, np.array([[0, 0], [0, 0]]), predicted=np.array([1, 7]),
                         train_predicted=np.array([1, 1, 1, 7]))
    assert rarity.tolist() == pytest.approx([-np.log(4 / 12), -np.log(1 / 12)])
    # relabelling the clusters changes no rarity
    assert path_rarity(1 - train, 1 - paths).tolist() == pytest.approx(path_rarity(train, paths).tolist())
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        path_rarity(train, paths, smoothing=0)
    with pytest.raises(ValueError, match="give both predicted"):
        path_rarity(train, paths, predicted=np.array([1, 1, 1]))


def test_auroc_of_separating_scores():
    is_anomaly = np.array([0, 0, 0, 1, 1], bool)
    assert auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), is_anomaly) == 1.0
    assert auroc(-np.array([0.1, 0.2, 0.3, 0.8, 0.9]), is_anomaly) == 0.0
    assert auroc(np.ones(5), is_anomaly) == 0.5
    with pytest.raises(ValueError, match="needs anomalies and normal inputs"):
        auroc(np.ones(3), np.zeros(3, bool))


def test_scores_and_auroc_on_small_experiment(small_experiment):
    exp = small_experiment
    p = layer_pvalues(exp)
    assert p.shape == (exp.n_rows, len(exp.layers)) and ((p > 0) & (p <= 1)).all()
    scores = anomaly_scores(exp, pvalues=p)
    assert list(scores) == list(SCORES)
    anomalies = exp.rows("anomaly")
    assert len(anomalies)
    for name, values in scores.items():
        assert values.shape == (exp.n_rows,) and np.isfinite(values[anomalies]).all()
    assert (scores["msp"] >= 0).all() and (scores["msp"] <= 0.5 + 1e-9).all()  # two classes
    result = anomaly_auroc(exp, scores=scores)
    assert set(result["auroc"]) == set(SCORES)
    assert all(0 <= v <= 1 for v in result["auroc"].values())
    assert set(result["by_class"]) == set(exp.unseen) == {3, 4}
    assert result["n_held_out"] == len(exp.rows("test"))
    assert sum(result["n_anomaly"].values()) == len(anomalies)
    exits = exit_summary(exp, pvalues=p)
    assert set(exits["unseen"]) == {3, 4} and set(exits["held_out"]) == set(exp.classes)
    for entry in [*exits["unseen"].values(), *exits["held_out"].values()]:
        assert sum(entry["shares"].values()) == pytest.approx(1.0)
    summary = anomaly_summary(exp)
    assert summary["auroc"]["auroc"] == pytest.approx(anomaly_auroc(exp)["auroc"])
    assert len(summary["exit"]) == exp.n_rows
    with pytest.raises(ValueError, match="anomalies must be unseen classes"):
        anomaly_auroc(exp, anomalies=[5])
