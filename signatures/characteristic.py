"""Are there characteristic signatures? Dominant paths, purity, crossovers and stability.

Everything here answers the issue's second question with plain arrays in and plain
values out (numpy, scikit-learn and scipy; no TensorFlow except inside
:func:`retrained_stability`, which retrains on purpose).

Paths
    ``paths`` is an ``(n_samples, n_layers)`` array of cluster ids, ``labels`` the true class
    of each input; when ``predicted`` is given it is appended to every path as a last
    column, as the Sankey shows it. A class's *dominant path* is its most common path
    (ties go to the smallest path). The *entropy* of a class is the Shannon entropy, in
    bits, of the distribution of its inputs over paths: 0 when they all take one path.
    The *purity* of a path is the share of its inputs that belong to its majority class
    (ties go to the smallest class). All of these depend on counts only, so relabelling
    the clusters of any layer changes none of them.

Crossovers
    An input *crosses over* when it takes the dominant path of another class and not the
    dominant path of its own (the original study's "7s that look like 1s"). Dominant paths
    come from the given rows, or from ``dominant`` (for example the trained classes'
    dominant paths, to see which inserted anomalies follow them).

Stability
    Clusterings are compared with the adjusted Rand index (ARI), which ignores cluster ids.
    :func:`seed_stability` refits one layer's k-means with other seeds;
    :func:`bootstrap_stability` refits it on random subsamples (drawn without replacement)
    and compares with the full clustering on the subsample's rows. Across retrained models
    the activation spaces differ (neurons can be permuted), so clusters are matched by
    their members (:func:`match_by_members`); within one model, by their centers
    (:func:`match_clusters`). Both use the Hungarian algorithm. The k-means refits run on
    one thread (threadpoolctl, which comes with scikit-learn): on layers this small, OpenMP
    threads cost tens of times more than they save on a busy 2-core machine.
    :func:`retrained_stability` is the one slow, explicit action: it retrains the model with
    other seeds (by default only the model's seed changes, so every input is shared) and
    reports, per layer, the ARI and the share of inputs given the same cluster after
    matching, and the share of inputs whose whole path is unchanged.

Path confidence
    At one layer, with ``d1`` and ``d2`` the distances from an input to its nearest and
    second-nearest centers, the *margin* is ``1 - d1 / d2``: 1 on a center, 0 on the
    boundary between two clusters (a layer with one cluster has margin 1). The confidence
    of a path is the product of its margins over the layers: it is 1 only when the input
    sits on a center at every layer and 0 when it lies on a boundary at any layer.
"""

from __future__ import annotations

import itertools
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

__all__ = [
    "class_paths",
    "path_purity",
    "overall_purity",
    "crossovers",
    "seed_stability",
    "bootstrap_stability",
    "match_clusters",
    "match_by_members",
    "layer_margins",
    "path_confidence",
    "layer_stability",
    "compare_runs",
    "retrained_stability",
    "signature_summary",
]


# --------------------------------------------------------------------------- paths


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _check_paths(paths, labels, predicted=None):
    paths = np.asarray(paths)
    if paths.ndim != 2:
        raise ValueError(f"paths must be 2-D (n_samples, n_layers), got shape {paths.shape}")
    labels = np.asarray(labels)
    if labels.shape != (len(paths),):
        raise ValueError(f"labels must have shape ({len(paths)},) like the paths, got {labels.shape}")
    paths = paths.astype(np.int64)
    if predicted is not None:
        predicted = np.asarray(predicted)
        if predicted.shape != (len(paths),):
            raise ValueError(f"predicted must have shape ({len(paths)},) like the paths, got {predicted.shape}")
        paths = np.column_stack([paths, predicted.astype(np.int64)])
    return paths, labels


def _path_table(full):
    """Distinct paths (sorted) and each row's index among them."""
    if len(full) == 0:
        return np.empty((0, full.shape[1]), dtype=np.int64), np.empty(0, dtype=np.int64)
    uniq, inverse = np.unique(full, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1)


def _entropy_bits(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def class_paths(paths, labels, *, predicted=None, top=5):
    """Each class's dominant paths, their shares, and the class's path entropy.

    Parameters
    ----------
    paths : ndarray of shape (n_samples, n_layers)
        Cluster id per input and layer.
    labels : ndarray of shape (n_samples,)
        True class of each input.
    predicted : ndarray of shape (n_samples,), optional
        Predicted class, appended to each path.
    top : int or None, default 5
        Most common paths listed per class; ``None`` lists all.

    Returns
    -------
    dict
        Class -> ``{"n": int, "n_paths": int, "entropy": float (bits), "dominant": tuple,
        "dominant_share": float, "paths": [{"path": tuple, "count": int, "share": float}]}``,
        classes sorted, paths most common first (ties: smaller path first).
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1):
        raise ValueError(f"top must be a positive integer or None, got {top!r}")
    full, labels = _check_paths(paths, labels, predicted)
    uniq, inverse = _path_table(full)
    out = {}
    for c in np.unique(labels):
        counts = np.bincount(inverse[labels == c], minlength=len(uniq))
        present = np.flatnonzero(counts)
        # np.unique sorted the paths, so a stable sort by count keeps smaller paths first on ties
        order = present[np.argsort(-counts[present], kind="stable")]
        n = int(counts.sum())
        listed = order if top is None else order[:top]
        out[_plain(c)] = {
            "n": n,
            "n_paths": int(len(present)),
            "entropy": _entropy_bits(counts),
            "dominant": tuple(int(v) for v in uniq[order[0]]),
            "dominant_share": float(counts[order[0]] / n),
            "paths": [
                {"path": tuple(int(v) for v in uniq[i]), "count": int(counts[i]), "share": float(counts[i] / n)}
                for i in listed
            ],
        }
    return out


def path_purity(paths, labels, *, predicted=None):
    """Every path's size, majority class and purity.

    Parameters
    ----------
    paths : ndarray of shape (n_samples, n_layers)
    labels : ndarray of shape (n_samples,)
    predicted : ndarray of shape (n_samples,), optional
        Predicted class, appended to each path.

    Returns
    -------
    list of dict
        ``{"path": tuple, "total": int, "majority": class, "purity": float, "by_class": {class: count}}``,
        largest first (ties: smaller path first). ``purity`` is the majority class's share.
    """
    full, labels = _check_paths(paths, labels, predicted)
    uniq, inverse = _path_table(full)
    classes = np.unique(labels)
    table = np.zeros((len(uniq), len(classes)), dtype=np.int64)
    np.add.at(table, (inverse, np.searchsorted(classes, labels)), 1)
    totals = table.sum(axis=1)
    order = np.argsort(-totals, kind="stable")
    out = []
    for i in order:
        j = int(np.argmax(table[i]))  # first maximum: the smallest class on ties
        out.append({
            "path": tuple(int(v) for v in uniq[i]),
            "total": int(totals[i]),
            "majority": _plain(classes[j]),
            "purity": float(table[i, j] / totals[i]),
            "by_class": {_plain(c): int(table[i, k]) for k, c in enumerate(classes) if table[i, k]},
        })
    return out


def overall_purity(paths, labels, *, predicted=None):
    """Share of inputs whose class is the majority class of their path (size-weighted purity).

    Returns
    -------
    float
        In ``[1 / n_classes, 1]``; 1 when every path holds a single class.
    """
    table = path_purity(paths, labels, predicted=predicted)
    n = sum(r["total"] for r in table)
    if n == 0:
        raise ValueError("no inputs given: purity is undefined")
    return float(sum(r["purity"] * r["total"] for r in table) / n)


def crossovers(paths, labels, *, predicted=None, dominant=None):
    """Inputs that take another class's dominant path instead of their own class's.

    Parameters
    ----------
    paths : ndarray of shape (n_samples, n_layers)
    labels : ndarray of shape (n_samples,)
    predicted : ndarray of shape (n_samples,), optional
        Predicted class, appended to each path (and to the dominant paths).
    dominant : dict[class, tuple], optional
        Dominant path of each class to compare with, e.g. computed on the training rows
        with :func:`class_paths`. Default: the dominant paths of the given rows. Classes in
        ``labels`` but not in ``dominant`` (inserted anomalies) cross over whenever they
        take any listed path.

    Returns
    -------
    dict
        ``rows`` : ndarray of int, positions (in the given arrays) of the inputs that cross over;
        ``true`` and ``dominant_class`` : ndarray, their class and the class whose dominant path
        they take (the smallest such class when several share it);
        ``counts`` : dict[(true class, dominant-path class), int];
        ``shares`` : dict[(true class, dominant-path class), float], counts over the true class's size;
        ``dominant`` : dict[class, tuple], the dominant paths used.
    """
    full, labels = _check_paths(paths, labels, predicted)
    if dominant is None:
        dominant = {c: info["dominant"] for c, info in class_paths(full, labels, top=1).items()}
    else:
        dominant = {_plain(c): tuple(int(v) for v in p) for c, p in dict(dominant).items()}
        bad = {c: p for c, p in dominant.items() if len(p) != full.shape[1]}
        if bad:
            raise ValueError(
                f"dominant paths must have {full.shape[1]} entries like the paths"
                f"{' (with the prediction)' if predicted is not None else ''}, got {bad}"
            )
    on = {c: (full == np.asarray(p)).all(axis=1) if len(full) else np.zeros(0, bool) for c, p in dominant.items()}
    own = np.zeros(len(full), dtype=bool)
    for c, mask in on.items():
        own |= mask & (labels == c)
    order = sorted(on)
    owner = np.full(len(full), -1)
    for i, c in enumerate(order):
        owner[on[c] & ~own & (labels != c) & (owner < 0)] = i
    rows = np.flatnonzero(owner >= 0)
    true = labels[rows]
    dom = np.asarray(order)[owner[rows]] if order else np.empty(0, dtype=labels.dtype)
    sizes = {_plain(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    counts = {}
    for t, d in zip(true.tolist(), dom.tolist()):
        counts[(t, d)] = counts.get((t, d), 0) + 1
    counts = dict(sorted(counts.items()))
    return {
        "rows": rows,
        "true": true,
        "dominant_class": dom,
        "counts": counts,
        "shares": {key: n / sizes[key[0]] for key, n in counts.items()},
        "dominant": dict(sorted(dominant.items())),
    }


# --------------------------------------------------------------------------- stability


def _check_X(X):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X has NaN or infinite values; cannot cluster")
    return X


def _check_k(k, n):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in 1..{n} (the rows given), got {k!r}")
    return int(k)


def _kmeans_labels(X, k, seed, n_init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct rows than k
        return KMeans(n_clusters=k, n_init=n_init, random_state=int(seed)).fit(X).labels_


def _one_thread():
    """k-means on one thread (see the module notes)."""
    return threadpool_limits(limits=1)


def seed_stability(X, k, *, seeds=(0, 1, 2, 3, 4), n_init=4):
    """Agreement of k-means clusterings of one layer across seeds.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        One layer's activations.
    k : int
        Number of clusters (the layer's chosen K).
    seeds : sequence of int, default (0, 1, 2, 3, 4)
        k-means seeds; at least two distinct ones.
    n_init : int, default 4
        k-means restarts per fit, as in :class:`~signatures.clustering.LayerKMeans`, so the
        clusterings compared are those the tool would show.

    Returns
    -------
    dict
        ``mean`` and ``min`` of the pairwise ARI, ``ari`` (ndarray of shape (n_seeds, n_seeds)),
        ``seeds`` (list).
    """
    X = _check_X(X)
    k = _check_k(k, len(X))
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) < 2:
        raise ValueError(f"seeds must hold at least two distinct seeds, got {seeds}")
    with _one_thread():
        labels = [_kmeans_labels(X, k, s, n_init) for s in seeds]
    ari = np.eye(len(seeds))
    for i, j in itertools.combinations(range(len(seeds)), 2):
        ari[i, j] = ari[j, i] = adjusted_rand_score(labels[i], labels[j])
    pairs = ari[np.triu_indices(len(seeds), 1)]
    return {"mean": float(pairs.mean()), "min": float(pairs.min()), "ari": ari, "seeds": seeds}


def bootstrap_stability(X, k, *, n_boot=10, fraction=0.8, random_state=0, n_init=4, reference_labels=None):
    """Agreement between a full-data clustering and clusterings of random subsamples.

    Each subsample holds ``round(fraction * n_samples)`` rows drawn without replacement
    (so no row is duplicated); it is clustered anew and compared with the full clustering
    on its own rows.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    k : int
    n_boot : int, default 10
    fraction : float in (0, 1], default 0.8
    random_state : int, default 0
        Seeds the subsamples, their k-means fits and (without ``reference_labels``) the full fit.
    n_init : int, default 4
    reference_labels : ndarray of shape (n_samples,), optional
        The full-data clustering to compare with (e.g. the experiment's own); fitted if not given.

    Returns
    -------
    dict
        ``mean``, ``min`` and ``std`` of the ARI, ``ari`` (ndarray of shape (n_boot,)).
    """
    X = _check_X(X)
    k = _check_k(k, len(X))
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    size = int(round(float(fraction) * len(X)))
    if size < k:
        raise ValueError(f"a subsample of fraction {fraction} holds {size} rows, fewer than k = {k}")
    if reference_labels is not None:
        reference_labels = np.asarray(reference_labels)
        if reference_labels.shape != (len(X),):
            raise ValueError(f"reference_labels must have shape ({len(X)},), got {reference_labels.shape}")
    rng = np.random.default_rng(random_state)
    ari = np.empty(n_boot)
    with _one_thread():
        if reference_labels is None:
            reference_labels = _kmeans_labels(X, k, random_state, n_init)
        for b in range(n_boot):
            rows = rng.choice(len(X), size=size, replace=False)
            seed = int(rng.integers(2**31 - 1))
            ari[b] = adjusted_rand_score(reference_labels[rows], _kmeans_labels(X[rows], k, seed, n_init))
    return {"mean": float(ari.mean()), "min": float(ari.min()), "std": float(ari.std()), "ari": ari}


def _complete(mapping, n_a):
    """Give unmatched ids (-1) new ids n_a, n_a + 1, ... in order."""
    unmatched = np.flatnonzero(mapping < 0)
    mapping[unmatched] = n_a + np.arange(len(unmatched))
    return mapping


def match_clusters(centers_a, centers_b):
    """Match clusters b to clusters a by their centers (Hungarian, Euclidean distances).

    Parameters
    ----------
    centers_a : ndarray of shape (k_a, n_features)
    centers_b : ndarray of shape (k_b, n_features)

    Returns
    -------
    mapping : ndarray of shape (k_b,), int
        ``mapping[j]`` is the id in a's numbering of b's cluster ``j``, so ``mapping[labels_b]``
        relabels b like a. The total distance of matched pairs is minimal; when ``k_b > k_a``
        the unmatched b clusters get new ids ``k_a, k_a + 1, ...`` in order of their b id.
    """
    a = np.asarray(centers_a, dtype=np.float64)
    b = np.asarray(centers_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or not len(a) or not len(b):
        raise ValueError(f"centers must be non-empty 2-D arrays (k, n_features), got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"centers live in different spaces: {a.shape[1]} and {b.shape[1]} features; "
            "match clusters of different models by their members (match_by_members)"
        )
    rows, cols = linear_sum_assignment(cdist(a, b))
    mapping = np.full(len(b), -1, dtype=np.int64)
    mapping[cols] = rows
    return _complete(mapping, len(a))


def _check_ids(labels, what):
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0)):
        raise ValueError(f"{what} must be a 1-D array of non-negative integer cluster ids")
    return labels.astype(np.int64)


def match_by_members(labels_a, labels_b):
    """Match clusters b to clusters a by shared members (Hungarian on co-membership counts).

    Parameters
    ----------
    labels_a, labels_b : ndarray of shape (n_samples,)
        Non-negative cluster ids of the same inputs in two clusterings.

    Returns
    -------
    mapping : ndarray of shape (max(labels_b) + 1,), int
        ``mapping[j]`` is the id in a's numbering of b's cluster ``j``; the matching
        maximises the number of inputs given the same id. A b cluster left without a
        partner, or matched to an a cluster with which it shares no input, gets a new id
        ``max(labels_a) + 1, ...`` in order of its b id.
    """
    a = _check_ids(labels_a, "labels_a")
    b = _check_ids(labels_b, "labels_b")
    if len(a) != len(b):
        raise ValueError(f"labels_a and labels_b must label the same inputs, got {len(a)} and {len(b)}")
    if not len(a):
        raise ValueError("no inputs given to match clusters on")
    n_a, n_b = int(a.max()) + 1, int(b.max()) + 1
    shared = np.zeros((n_a, n_b), dtype=np.int64)
    np.add.at(shared, (a, b), 1)
    rows, cols = linear_sum_assignment(shared, maximize=True)
    mapping = np.full(n_b, -1, dtype=np.int64)
    keep = shared[rows, cols] > 0
    mapping[cols[keep]] = rows[keep]
    return _complete(mapping, n_a)


def _layers(source, hidden=None, rows=None):
    """(clusterers, hidden) from an Experiment, a (clusterers, hidden) pair, or clusterers + hidden."""
    if hidden is None:
        if hasattr(source, "clusterers") and hasattr(source, "hidden"):
            clusterers, hidden = source.clusterers, source.hidden
        elif isinstance(source, tuple) and len(source) == 2:
            clusterers, hidden = source
        else:
            raise ValueError(
                "give an Experiment, a (clusterers, hidden) pair, or clusterers with hidden=...; "
                f"got {type(source).__name__}"
            )
    else:
        clusterers = source
    if not isinstance(clusterers, Mapping) or not isinstance(hidden, Mapping):
        raise ValueError("clusterers and hidden must be dicts keyed by layer name")
    missing = [name for name in clusterers if name not in hidden]
    if missing:
        raise ValueError(f"activations lack the clustered layers {missing}; got {list(hidden)}")
    if not clusterers:
        raise ValueError("no clustered layer given")
    out = OrderedDict()
    for name, est in clusterers.items():
        X = np.asarray(hidden[name], dtype=np.float64)
        out[name] = (est, X if rows is None else X[np.asarray(rows)])
    n = {len(X) for _, X in out.values()}
    if len(n) != 1:
        raise ValueError(f"every layer must hold the same inputs, got row counts {sorted(n)}")
    return out


def layer_margins(source, *, hidden=None, rows=None):
    """Per layer and input, the margin ``1 - d_nearest / d_second_nearest`` (see the module notes).

    Parameters
    ----------
    source : Experiment, (clusterers, hidden) pair, or dict[str, LayerKMeans]
        Fitted clusters and the activations of the inputs (``hidden`` given separately when
        ``source`` is the clusterers).
    hidden : dict[str, ndarray of shape (n_samples, n_units)], optional
    rows : ndarray of int, optional
        Only these inputs.

    Returns
    -------
    OrderedDict[str, ndarray of shape (n_samples,)]
        Margins in [0, 1], in layer order.
    """
    out = OrderedDict()
    for name, (est, X) in _layers(source, hidden, rows).items():
        centers = np.asarray(est.centers_, dtype=np.float64)
        if X.shape[1] != centers.shape[1]:
            raise ValueError(f"layer {name}: activations have {X.shape[1]} units, its centers {centers.shape[1]}")
        if len(centers) < 2:
            out[name] = np.ones(len(X))
            continue
        d = np.partition(cdist(X, centers), 1, axis=1)[:, :2]
        d1, d2 = d[:, 0], d[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            margin = np.where(d2 > 0, 1.0 - d1 / d2, 0.0)  # two centers at the same point: no margin
        out[name] = np.clip(margin, 0.0, 1.0)
    return out


def path_confidence(source, *, hidden=None, rows=None):
    """Per input, the confidence of its path: the product of its layer margins.

    Parameters are those of :func:`layer_margins`.

    Returns
    -------
    ndarray of shape (n_samples,)
        In [0, 1]: 1 for an input on a center at every layer, 0 on a boundary at any layer.
    """
    margins = layer_margins(source, hidden=hidden, rows=rows)
    return np.prod(np.stack(list(margins.values()), axis=1), axis=1)


def layer_stability(exp, *, rows=None, seeds=(0, 1, 2, 3, 4), n_boot=10, fraction=0.8, random_state=0,
                    n_init=None):
    """Seed and subsample stability of every layer's clustering, and its mean margin.

    Parameters
    ----------
    exp : Experiment
    rows : ndarray of int, optional
        Inputs to recluster; default the training rows (those the clusters were fitted on).
    seeds, n_boot, fraction, random_state
        As in :func:`seed_stability` and :func:`bootstrap_stability`; each layer is reclustered
        with its chosen K, and subsamples are compared with the experiment's own clusters.
    n_init : int, optional
        k-means restarts; default each layer's own setting.

    Returns
    -------
    OrderedDict[str, dict]
        Layer -> ``{"k", "n_rows", "seed_ari_mean", "seed_ari_min", "boot_ari_mean", "boot_ari_min",
        "boot_ari_std", "margin_mean"}``.
    """
    rows = exp.rows("train") if rows is None else np.asarray(rows)
    margins = layer_margins(exp, rows=rows)
    out = OrderedDict()
    for j, name in enumerate(exp.layers):
        est = exp.clusterers[name]
        X = np.asarray(exp.hidden[name][rows], dtype=np.float64)
        k = min(int(est.k_), len(X))
        ni = int(est.n_init if n_init is None else n_init)
        seed = seed_stability(X, k, seeds=seeds, n_init=ni)
        boot = bootstrap_stability(X, k, n_boot=n_boot, fraction=fraction, random_state=random_state, n_init=ni,
                                   reference_labels=exp.paths[rows, j])
        out[name] = {
            "k": int(est.k_),
            "n_rows": int(len(X)),
            "seed_ari_mean": seed["mean"],
            "seed_ari_min": seed["min"],
            "boot_ari_mean": boot["mean"],
            "boot_ari_min": boot["min"],
            "boot_ari_std": boot["std"],
            "margin_mean": float(margins[name].mean()),
        }
    return out


# --------------------------------------------------------------------------- retrained models


def _shared_rows(ref, run):
    """Row positions in ``ref`` and ``run`` of the same in-distribution inputs."""
    ref_ok = ref.split != 2
    run_ok = run.split != 2
    if ref.dataset_rows is None or run.dataset_rows is None:
        if ref.n_rows != run.n_rows:
            raise ValueError("the runs hold different inputs and no dataset rows to align them by")
        both = np.flatnonzero(ref_ok & run_ok)
        return both, both
    a = np.asarray(ref.dataset_rows)[ref_ok]
    b = np.asarray(run.dataset_rows)[run_ok]
    common, ia, ib = np.intersect1d(a, b, assume_unique=True, return_indices=True)
    return np.flatnonzero(ref_ok)[ia], np.flatnonzero(run_ok)[ib]


def compare_runs(ref, run, *, top=10):
    """Compare the clusters and paths of two experiments on the inputs they share.

    Clusters of ``run`` are matched to those of ``ref`` by their members (their centers live
    in different activation spaces), layer by layer.

    Returns
    -------
    dict
        ``n_shared``; ``layers``: layer -> ``{"ari", "agreement", "k_reference", "k_run", "mapping"}``
        (``agreement``: share of shared inputs given the same id after matching);
        ``path_agreement``: share of shared inputs whose whole matched path is unchanged;
        ``paths``: the ``top`` most common reference paths with ``count`` and ``agreement``.
    """
    if list(ref.layers) != list(run.layers):
        raise ValueError(f"the runs have different layers: {list(ref.layers)} and {list(run.layers)}")
    ia, ib = _shared_rows(ref, run)
    if not len(ia):
        raise ValueError("the two runs share no in-distribution input")
    pa, pb = ref.paths[ia], run.paths[ib]
    matched = np.empty_like(pb)
    layers = OrderedDict()
    for j, name in enumerate(ref.layers):
        mapping = match_by_members(pa[:, j], pb[:, j])
        matched[:, j] = mapping[pb[:, j]]
        layers[name] = {
            "ari": float(adjusted_rand_score(pa[:, j], pb[:, j])),
            "agreement": float(np.mean(matched[:, j] == pa[:, j])),
            "k_reference": int(ref.clusterers[name].k_),
            "k_run": int(run.clusterers[name].k_),
            "mapping": mapping.tolist(),
        }
    same = (matched == pa).all(axis=1)
    uniq, inverse = _path_table(pa)
    counts = np.bincount(inverse, minlength=len(uniq))
    order = np.argsort(-counts, kind="stable")[:top]
    paths = [
        {"path": tuple(int(v) for v in uniq[i]), "count": int(counts[i]), "agreement": float(same[inverse == i].mean())}
        for i in order
    ]
    return {"n_shared": int(len(ia)), "layers": layers, "path_agreement": float(same.mean()), "paths": paths}


def _retrained_model(config, seed, dataset, progress):
    """A model of ``config``'s architecture trained with ``seed`` on ``config``'s own training rows.

    The data and model steps of :func:`signatures.experiment.run_experiment`, with only the
    model's seed changed. Imports TensorFlow.
    """
    from .experiment import build_and_train, prepare_subset

    model, _ = build_and_train(config, prepare_subset(config, dataset), seed=seed, progress=progress)
    return model


def retrained_stability(config, *, seeds=(1, 2), vary="model", reference=None, umap_points=200, progress=None):
    """Retrain the experiment with other seeds and compare each layer's clusters with the original.

    An explicit, slow action (it trains ``len(seeds)`` models, and the reference too when not
    given); never part of loading a page. Every run goes through
    :func:`signatures.experiment.run_experiment`, and is compared with the reference on the
    in-distribution inputs they share, after matching clusters by members (see
    :func:`compare_runs`).

    Parameters
    ----------
    config : ExperimentConfig
    seeds : sequence of int, default (1, 2)
        Seeds of the retrained runs; distinct, and each different from ``config.seed``.
    vary : {"model", "all"}, default "model"
        ``"model"``: only the model's initialisation and training order change; the data, the
        train / held-out split and the k-means seeds stay those of ``config``, so every input is
        shared. ``"all"``: the whole experiment is rerun with ``seed`` replaced, which also
        redraws the split (and the sample, when ``n_per_class`` is set: then few inputs may be
        shared).
    reference : Experiment, optional
        The original run of ``config`` (e.g. a stored one); run anew if not given.
    umap_points : int, default 200
        Points projected by the retrained runs (their maps are not used).
    progress : callable, optional
        ``progress(stage, fraction, message)``, stage ``"retraining"``, fraction over all runs.

    Returns
    -------
    dict
        ``reference_seed``, ``vary``; ``runs``: per seed ``{"seed", "accuracy", **compare_runs(...)}``;
        ``summary``: layer -> ``{"ari_mean", "ari_min", "agreement_mean"}``, and
        ``path_agreement_mean``.
    """
    from .data import load_dataset
    from .experiment import run_experiment

    report = progress or (lambda *a: None)
    if vary not in ("model", "all"):
        raise ValueError(f"vary must be 'model' or 'all', got {vary!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed to retrain with")
    if int(config.seed) in seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and differ from the reference seed {config.seed}, got {seeds}")
    if config.model_path:
        raise ValueError(f"config {config.name!r} uses the given model {config.model_path!r}; it cannot be retrained")
    config.validate()
    if reference is not None and reference.config.key() != config.key():
        raise ValueError(
            f"reference {reference.config.name!r} was run with another config than {config.name!r}; "
            "give the reference run of this config"
        )
    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    light = replace(config, umap_points=min(int(umap_points), int(config.umap_points)))
    jobs = ([] if reference is not None else [("reference", None)]) + [(f"seed {s}", s) for s in seeds]
    runs = []
    for i, (what, seed) in enumerate(jobs):
        base = i / len(jobs)
        report("retraining", base, f"{what}: starting")

        def inner(stage, fraction, message, _what=what, _base=base):
            report("retraining", _base, f"{_what}: {stage}: {message}")

        if seed is None:
            reference = run_experiment(config, progress=inner, dataset=dataset)
        else:
            if vary == "model":
                model = _retrained_model(config, seed, dataset, inner)
                exp = run_experiment(light, progress=inner, dataset=dataset, model=model)
            else:
                exp = run_experiment(replace(light, seed=seed), progress=inner, dataset=dataset)
            runs.append({"seed": seed, "accuracy": exp.metrics.get("accuracy"), **compare_runs(reference, exp)})
        report("retraining", (i + 1) / len(jobs), f"{what}: done")
    summary = OrderedDict()
    for name in reference.layers:
        aris = [r["layers"][name]["ari"] for r in runs]
        summary[name] = {
            "ari_mean": float(np.mean(aris)),
            "ari_min": float(np.min(aris)),
            "agreement_mean": float(np.mean([r["layers"][name]["agreement"] for r in runs])),
        }
    summary["path_agreement_mean"] = float(np.mean([r["path_agreement"] for r in runs]))
    return {"reference_seed": int(reference.config.seed), "vary": vary, "runs": runs, "summary": summary}


# --------------------------------------------------------------------------- all together


def signature_summary(exp, *, top=5, stability=True, seeds=(0, 1, 2, 3, 4), n_boot=10):
    """The second question for one experiment, in plain values (no retraining).

    Paths are those of the in-distribution rows (training and held-out) with the predicted
    class appended, as the Sankey shows them.

    Returns
    -------
    dict
        ``classes`` (:func:`class_paths`), ``purity`` (:func:`path_purity`), ``overall_purity``,
        ``crossovers`` (:func:`crossovers` of the in-distribution rows, ``rows`` as experiment rows),
        ``anomaly_crossovers`` (unseen rows on a trained class's dominant path, experiment rows),
        ``confidence`` (ndarray of shape (n_rows,), :func:`path_confidence` of every row), and
        ``stability`` (:func:`layer_stability`) when asked.
    """
    rows = exp.rows("train", "test")
    pred = exp.predicted
    paths, labels = exp.paths[rows], exp.labels[rows]
    classes = class_paths(paths, labels, predicted=pred[rows], top=top)
    cross = crossovers(paths, labels, predicted=pred[rows])
    cross["rows"] = rows[cross["rows"]]
    anomaly = exp.rows("anomaly")
    dominant = {c: info["dominant"] for c, info in classes.items()}
    across = crossovers(exp.paths[anomaly], exp.labels[anomaly], predicted=pred[anomaly], dominant=dominant)
    across["rows"] = anomaly[across["rows"]]
    out = {
        "classes": classes,
        "purity": path_purity(paths, labels, predicted=pred[rows]),
        "overall_purity": overall_purity(paths, labels, predicted=pred[rows]),
        "crossovers": cross,
        "anomaly_crossovers": across,
        "confidence": path_confidence(exp),
    }
    if stability:
        out["stability"] = layer_stability(exp, seeds=seeds, n_boot=n_boot)
    return out
