"""Characteristic signatures: dominant paths, purity, crossovers, matching, stability, confidence."""

import time
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest

from signatures.characteristic import (
    bootstrap_stability,
    class_paths,
    compare_runs,
    crossovers,
    layer_margins,
    layer_stability,
    match_by_members,
    match_clusters,
    overall_purity,
    path_confidence,
    path_purity,
    retrained_stability,
    seed_stability,
    signature_summary,
)
from signatures.clustering import LayerKMeans

# Three 1s on (0, 1); 7s on (1, 0) twice, (1, 1) once and the 1s' path once (row 6).
PATHS = np.array([[0, 1], [0, 1], [0, 1], [1, 0], [1, 0], [1, 1], [0, 1]])
LABELS = np.array([1, 1, 1, 7, 7, 7, 7])


def fitted(centers):
    """A LayerKMeans with the given centers, as the store rebuilds one."""
    state = {"params": {"k_range": [2, 3], "sample_size": 2000, "n_init": 4, "random_state": 0},
             "k": len(centers), "silhouette_scores": {}, "status": "ok", "note": ""}
    return LayerKMeans.from_dict(state, np.asarray(centers, dtype=float))


def relabel(paths, seed):
    """Permute the cluster ids of every layer independently."""
    rng = np.random.default_rng(seed)
    out = paths.copy()
    for j in range(paths.shape[1]):
        out[:, j] = rng.permutation(paths[:, j].max() + 1)[paths[:, j]]
    return out


def random_case(seed, n=600):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    noise = np.column_stack([rng.integers(0, 4, n), rng.integers(0, 3, n), rng.integers(0, 3, n)])
    typical = np.column_stack([labels, (labels + 1) % 3, labels])  # each class's clear dominant path
    paths = np.where((rng.random(n) < 0.5)[:, None], typical, noise)
    return paths, labels, rng.integers(0, 3, n)


def blobs(seed, n_per=100, k=3, dim=4, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 10
    return np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centers]), np.repeat(np.arange(k), n_per)


# --------------------------------------------------------------------------- paths


def test_class_paths_exact():
    out = class_paths(PATHS, LABELS)
    assert list(out) == [1, 7]
    assert out[1] == {"n": 3, "n_paths": 1, "entropy": 0.0, "dominant": (0, 1), "dominant_share": 1.0,
                      "paths": [{"path": (0, 1), "count": 3, "share": 1.0}]}
    assert out[7]["dominant"] == (1, 0) and out[7]["dominant_share"] == 0.5
    assert out[7]["entropy"] == pytest.approx(1.5)  # shares 1/2, 1/4, 1/4
    assert [p["path"] for p in out[7]["paths"]] == [(1, 0), (0, 1), (1, 1)]  # ties: smaller path first
    assert len(class_paths(PATHS, LABELS, top=1)[7]["paths"]) == 1
    with_pred = class_paths(PATHS, LABELS, predicted=np.array([1, 1, 1, 7, 7, 7, 1]))
    assert with_pred[7]["dominant"] == (1, 0, 7)
    with pytest.raises(ValueError, match="top must be"):
        class_paths(PATHS, LABELS, top=0)
    with pytest.raises(ValueError, match="labels must have shape"):
        class_paths(PATHS, LABELS[:3])


def test_path_purity_exact():
    table = path_purity(PATHS, LABELS)
    assert table[0] == {"path": (0, 1), "total": 4, "majority": 1, "purity": 0.75, "by_class": {1: 3, 7: 1}}
    assert table[1] == {"path": (1, 0), "total": 2, "majority": 7, "purity": 1.0, "by_class": {7: 2}}
    assert table[2]["path"] == (1, 1) and table[2]["purity"] == 1.0
    assert sum(r["total"] for r in table) == len(PATHS)
    assert overall_purity(PATHS, LABELS) == pytest.approx(6 / 7)


def test_crossovers_exact():
    out = crossovers(PATHS, LABELS)
    assert out["rows"].tolist() == [6]  # the 7 on the 1s' path; the 7 on (1, 1) takes no class's path
    assert out["dominant_class"].tolist() == [1]
    assert out["counts"] == {(7, 1): 1}
    assert out["shares"] == {(7, 1): 0.25}
    assert out["dominant"] == {1: (0, 1), 7: (1, 0)}
    # inserted anomalies against the trained classes' dominant paths
    anomalies = np.array([[0, 1], [1, 0], [1, 1], [1, 0]])
    out = crossovers(anomalies, np.array([3, 3, 3, 4]), dominant={1: (0, 1), 7: (1, 0)})
    assert out["rows"].tolist() == [0, 1, 3]
    assert out["dominant_class"].tolist() == [1, 7, 7]
    assert out["counts"] == {(3, 1): 1, (3, 7): 1, (4, 7): 1}
    assert out["shares"][(3, 1)] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="dominant paths must have 3 entries"):
        crossovers(PATHS, LABELS, predicted=LABELS, dominant={1: (0, 1)})


def test_relabelling_changes_no_entropy_purity_or_crossover():
    paths, labels, pred = random_case(0)
    assert crossovers(paths, labels)["counts"]  # some inputs do cross over
    for seed in range(3):
        other = relabel(paths, seed)
        a, b = class_paths(paths, labels, predicted=pred), class_paths(other, labels, predicted=pred)
        assert [a[c]["entropy"] for c in a] == pytest.approx([b[c]["entropy"] for c in b])
        assert [a[c]["dominant_share"] for c in a] == [b[c]["dominant_share"] for c in b]
        pa, pb = path_purity(paths, labels, predicted=pred), path_purity(other, labels, predicted=pred)
        assert sorted((r["total"], r["purity"], r["majority"]) for r in pa) == \
            sorted((r["total"], r["purity"], r["majority"]) for r in pb)
        assert overall_purity(paths, labels) == overall_purity(other, labels)
        assert crossovers(paths, labels)["rows"].tolist() == crossovers(other, labels)["rows"].tolist()


# --------------------------------------------------------------------------- matching


def test_match_clusters_recovers_a_permutation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 3)) * 10
    perm = rng.permutation(6)
    b = a[perm] + 0.01 * rng.normal(size=a.shape)  # b's cluster j is a's cluster perm[j]
    assert match_clusters(a, b).tolist() == perm.tolist()
    labels_b = rng.integers(0, 6, 50)
    assert (match_clusters(a, b)[labels_b] == perm[labels_b]).all()
    # more clusters in b: the extra (far) one gets a new id
    extra = np.vstack([b, [[1e3, 1e3, 1e3]]])
    assert match_clusters(a, extra).tolist() == perm.tolist() + [6]
    # fewer in b: each still finds its own
    assert match_clusters(a, b[:3]).tolist() == perm[:3].tolist()
    with pytest.raises(ValueError, match="different spaces"):
        match_clusters(a, b[:, :2])


def test_match_by_members_recovers_a_permutation():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 300)
    perm = rng.permutation(5)  # a's cluster i is b's cluster perm[i]
    b = perm[a]
    flip = rng.choice(300, 20, replace=False)
    b[flip] = rng.integers(0, 5, 20)  # some noise
    mapping = match_by_members(a, b)
    assert mapping[perm].tolist() == list(range(5))
    # more clusters in b: the unmatched one gets a new id
    assert match_by_members(np.array([0, 0, 1, 1, 1]), np.array([1, 1, 0, 0, 2])).tolist() == [1, 0, 2]
    # b's cluster 0 has no member, so its forced partner (a's 0) is no match: a new id
    assert match_by_members(np.array([0, 1, 1]), np.array([1, 1, 1])).tolist() == [2, 1]
    with pytest.raises(ValueError, match="same inputs"):
        match_by_members(a, b[:-1])
    with pytest.raises(ValueError, match="non-negative integer"):
        match_by_members(a.astype(float) + 0.5, b)


def test_compare_runs_sees_through_relabelling_and_row_order():
    rng = np.random.default_rng(2)
    n = 120
    paths = np.column_stack([rng.integers(0, 3, n), rng.integers(0, 4, n)])
    ref = SimpleNamespace(
        layers=["a", "b"], split=np.r_[np.zeros(80, int), np.ones(20, int), np.full(20, 2)],
        dataset_rows=np.arange(n) + 1000, paths=paths, n_rows=n,
        clusterers={"a": SimpleNamespace(k_=3), "b": SimpleNamespace(k_=4)},
    )
    order = rng.permutation(n)  # same inputs in another order, clusters renamed
    perms = [rng.permutation(3), rng.permutation(4)]
    run = SimpleNamespace(
        layers=["a", "b"], split=ref.split[order], dataset_rows=ref.dataset_rows[order], n_rows=n,
        paths=np.column_stack([perms[j][paths[order, j]] for j in range(2)]), clusterers=ref.clusterers,
    )
    out = compare_runs(ref, run)
    assert out["n_shared"] == 100  # anomaly rows are left out
    assert out["path_agreement"] == 1.0
    for j, name in enumerate(["a", "b"]):
        assert out["layers"][name]["ari"] == pytest.approx(1.0)
        assert out["layers"][name]["agreement"] == 1.0
        assert np.asarray(out["layers"][name]["mapping"])[perms[j]].tolist() == list(range(len(perms[j])))
    assert all(p["agreement"] == 1.0 for p in out["paths"])
    assert sum(p["count"] for p in out["paths"]) <= 100


# --------------------------------------------------------------------------- stability


def test_seed_and_bootstrap_stability():
    X, truth = blobs(0)
    seed = seed_stability(X, 3, seeds=(0, 1, 2))
    assert seed["mean"] == pytest.approx(1.0) and seed["ari"].shape == (3, 3)
    boot = bootstrap_stability(X, 3, n_boot=5, random_state=0)
    assert boot["min"] == pytest.approx(1.0) and boot["ari"].shape == (5,)
    # ARI ignores cluster ids: a relabelled reference gives the same scores
    same = bootstrap_stability(X, 3, n_boot=5, random_state=0, reference_labels=truth)
    relabelled = bootstrap_stability(X, 3, n_boot=5, random_state=0, reference_labels=np.array([2, 0, 1])[truth])
    assert same["ari"].tolist() == relabelled["ari"].tolist()
    # structureless data is less stable than blobs, and the result is seeded
    noise = np.random.default_rng(0).uniform(size=(300, 2))
    unstable = seed_stability(noise, 6, seeds=(0, 1, 2, 3), n_init=1)
    assert unstable["min"] < 0.99
    assert unstable["mean"] == seed_stability(noise, 6, seeds=(0, 1, 2, 3), n_init=1)["mean"]
    with pytest.raises(ValueError, match="k must be an integer in 1..300"):
        seed_stability(X, 0)
    with pytest.raises(ValueError, match="two distinct seeds"):
        seed_stability(X, 3, seeds=(1, 1))
    with pytest.raises(ValueError, match="fraction must be"):
        bootstrap_stability(X, 3, fraction=1.5)


# --------------------------------------------------------------------------- confidence


def test_path_confidence_exact():
    clusterers = OrderedDict(l1=fitted([[0, 0], [10, 0]]), l2=fitted([[0], [5], [100]]))
    hidden = OrderedDict(
        l1=np.array([[0, 0], [5, 0], [2, 0], [10, 0]]),
        l2=np.array([[100], [0], [1], [2.5]]),
    )
    margins = layer_margins(clusterers, hidden=hidden)
    assert margins["l1"].tolist() == pytest.approx([1.0, 0.0, 0.75, 1.0])  # 1 - 2 / 8 for [2, 0]
    assert margins["l2"].tolist() == pytest.approx([1.0, 1.0, 0.75, 0.0])
    conf = path_confidence((clusterers, hidden))
    assert conf.tolist() == pytest.approx([1.0, 0.0, 0.5625, 0.0])  # on centers far apart: 1
    assert path_confidence(clusterers, hidden=hidden, rows=[0, 2]).tolist() == pytest.approx([1.0, 0.5625])
    one = path_confidence(OrderedDict(l=fitted([[3.0]])), hidden={"l": np.array([[0.0], [7.0]])})
    assert one.tolist() == [1.0, 1.0]  # one cluster: nothing to confuse it with
    with pytest.raises(ValueError, match="lack the clustered layers"):
        path_confidence(clusterers, hidden={"l1": hidden["l1"]})


def test_confidence_falls_towards_a_boundary():
    clusterers = OrderedDict(l=fitted([[-1.0, 0.0], [1.0, 0.0]]))
    xs = np.linspace(-1, 0, 11)
    conf = path_confidence(clusterers, hidden={"l": np.column_stack([xs, np.zeros_like(xs)])})
    assert conf[0] == 1.0 and conf[-1] == 0.0
    assert (np.diff(conf) < 0).all()


# --------------------------------------------------------------------------- on a real experiment


def test_summary_and_stability_on_small_experiment(small_experiment):
    exp = small_experiment
    start = time.perf_counter()
    summary = signature_summary(exp, seeds=(0, 1, 2), n_boot=4)
    assert time.perf_counter() - start < 10
    assert set(summary["classes"]) == set(exp.classes)
    for info in summary["classes"].values():
        assert 0 <= info["entropy"] <= np.log2(info["n"]) and 0 < info["dominant_share"] <= 1
    assert 0.5 <= summary["overall_purity"] <= 1
    cross = summary["crossovers"]
    assert (exp.split[cross["rows"]] != 2).all()
    assert all(exp.labels[r] != d for r, d in zip(cross["rows"], cross["dominant_class"]))
    assert (exp.split[summary["anomaly_crossovers"]["rows"]] == 2).all()
    assert summary["confidence"].shape == (exp.n_rows,)
    assert ((summary["confidence"] >= 0) & (summary["confidence"] <= 1)).all()
    stability = summary["stability"]
    assert list(stability) == exp.layers
    for layer, row in stability.items():
        assert row["k"] == exp.clusterers[layer].k_ and row["n_rows"] == len(exp.rows("train"))
        assert -0.5 <= row["seed_ari_min"] <= row["seed_ari_mean"] <= 1
        assert -0.5 <= row["boot_ari_min"] <= row["boot_ari_mean"] <= 1
    assert layer_stability(exp, seeds=(0, 1), n_boot=2)[exp.layers[0]]["k"] == exp.clusterers[exp.layers[0]].k_


def test_retrained_stability_once(small_experiment):
    """One retrained run of the shared small experiment (reused as the reference)."""
    pytest.importorskip("tensorflow")
    stages = []
    out = retrained_stability(small_experiment.config, seeds=(1,), reference=small_experiment,
                              umap_points=60, progress=lambda *a: stages.append(a))
    assert out["reference_seed"] == 0 and out["vary"] == "model" and [r["seed"] for r in out["runs"]] == [1]
    run = out["runs"][0]
    assert run["n_shared"] == len(small_experiment.rows("train", "test"))  # only the model changed
    for layer in small_experiment.layers:
        assert -0.5 <= run["layers"][layer]["ari"] <= 1 and 0 <= run["layers"][layer]["agreement"] <= 1
    assert 0 <= out["summary"]["path_agreement_mean"] <= 1
    assert stages[0][:2] == ("retraining", 0.0) and stages[-1][:2] == ("retraining", 1.0)
    with pytest.raises(ValueError, match="differ from the reference seed"):
        retrained_stability(small_experiment.config, seeds=(0,), reference=small_experiment)
    with pytest.raises(ValueError, match="vary must be"):
        retrained_stability(small_experiment.config, vary="data", reference=small_experiment)
