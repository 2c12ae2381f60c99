"""Anomalies, calibrated: how far inputs lie from their clusters, and where unseen digits leave.

The issue's fourth question, with plain arrays in and plain values out (numpy,
scikit-learn and scipy only).

Distances
    At every layer an input is assigned to its nearest center (as the paths are), and its
    *distance* is the Euclidean distance to that center.

Empirical p-values
    A distance means little on its own, so it is compared with the distances of held-out
    inputs of the trained classes (``split`` 1): inputs the clusters were not fitted on
    but that come from the training distribution. (Training inputs would make every new
    input look far: the centers were fitted to them.) With ``n`` reference distances,
    ``p = (1 + #{reference >= d}) / (1 + n)``: for an input drawn like the reference, ``p`` is
    uniform on ``{1/(n+1), ..., 1}``, so ``P(p <= alpha) <= alpha`` (a conformal p-value).
    The reference is the held-out inputs *assigned to the same cluster*, because clusters
    differ in spread; a cluster with fewer than ``min_reference`` (20) held-out inputs falls
    back to the whole layer's. A held-out input is left out of its own reference
    (leave-one-out), so its p-value is calibrated as well.

Exit layer
    The first layer where an input's p-value falls below ``alpha`` (0.05): where it leaves
    the known paths. ``None`` when it never does.

Scores (larger = more anomalous)
    ``path_rarity``: ``-ln`` of the smoothed frequency of the input's path (cluster ids and
    predicted class, as the Sankey shows it) among the training inputs:
    ``(count + s) / (n_train + s * V)``, with ``s`` the smoothing (1) and ``V`` the number of
    possible paths (the product of the number of ids per column).
    ``pvalue``: Fisher's statistic ``-2 * sum_l ln p_l`` over the layers. Layers are not
    independent, so it ranks inputs but is not turned into a combined p-value;
    ``combine="min"`` uses ``-ln(min_l p_l)`` instead.
    ``msp``: the maximum-softmax-probability baseline, ``1 - max_j probs_j``.

AUROC
    Each score's area under the ROC curve at telling held-out unseen digits (``split`` 2)
    from held-out trained digits (``split`` 1): 1 means every unseen digit scores higher,
    0.5 chance.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from sklearn.metrics import roc_auc_score

from .characteristic import _layers

__all__ = [
    "layer_distances",
    "empirical_pvalues",
    "layer_pvalues",
    "exit_layer",
    "exit_summary",
    "path_rarity",
    "anomaly_scores",
    "auroc",
    "anomaly_auroc",
    "anomaly_summary",
    "SCORES",
]

#: Names of the scores of :func:`anomaly_scores`, in the order they are reported.
SCORES = ("path_rarity", "pvalue", "msp")

TEST, ANOMALY = 1, 2


def _distances_and_clusters(source, hidden=None, rows=None):
    names, dist, clus = [], [], []
    for name, (est, X) in _layers(source, hidden, rows).items():
        clusters = est.predict(X)
        names.append(name)
        clus.append(clusters)
        dist.append(np.linalg.norm(X - np.asarray(est.centers_)[clusters], axis=1))
    return names, np.stack(dist, axis=1), np.stack(clus, axis=1)


def layer_distances(source, *, hidden=None, rows=None):
    """Per layer, each input's distance to its assigned (nearest) center.

    Parameters
    ----------
    source : Experiment, (clusterers, hidden) pair, or dict[str, LayerKMeans]
        Fitted clusters and the inputs' activations (``hidden`` given separately when
        ``source`` is the clusterers).
    hidden : dict[str, ndarray of shape (n_samples, n_units)], optional
    rows : ndarray of int, optional
        Only these inputs.

    Returns
    -------
    OrderedDict[str, ndarray of shape (n_samples,)]
        As :meth:`LayerKMeans.distances`, in layer order.
    """
    names, dist, _ = _distances_and_clusters(source, hidden, rows)
    return OrderedDict((name, dist[:, j]) for j, name in enumerate(names))


def _as_columns(values, what, dtype=np.float64):
    values = np.asarray(values, dtype=dtype)
    if values.ndim not in (1, 2):
        raise ValueError(f"{what} must be 1-D (n,) or 2-D (n, n_layers), got shape {values.shape}")
    return values.reshape(len(values), -1)


def _pvalues(reference, d, self_count):
    """(1 + #{reference >= d} - self) / (1 + n - self), for sorted ``reference``."""
    n = len(reference)
    at_least = n - np.searchsorted(reference, d, side="left")
    return (1.0 + at_least - self_count) / (1.0 + n - self_count)


def empirical_pvalues(reference_distances, distances, *, reference_clusters=None, clusters=None,
                      min_reference=20, in_reference=None):
    """Empirical (conformal) p-values of distances against reference distances.

    Parameters
    ----------
    reference_distances : ndarray of shape (n_reference,) or (n_reference, n_layers)
        Distances of in-distribution inputs the clusters were not fitted on.
    distances : ndarray of shape (n_samples,) or (n_samples, n_layers)
        Distances to test, with as many columns (layers).
    reference_clusters, clusters : ndarray of the same shapes, optional
        Assigned cluster ids. Given both, each input is compared with the reference inputs of
        its own cluster, or with the whole layer's when that cluster has fewer than
        ``min_reference`` of them.
    min_reference : int, default 20
    in_reference : ndarray of bool of shape (n_samples,), optional
        Inputs whose own distances (and clusters) are among the reference: each is left out
        of its own reference.

    Returns
    -------
    ndarray of the shape of ``distances``
        ``p = (1 + #{reference >= d}) / (1 + n_reference)``, in ``(0, 1]``.
    """
    ref = _as_columns(reference_distances, "reference_distances")
    d = _as_columns(distances, "distances")
    if not len(ref):
        raise ValueError("reference_distances is empty: p-values need at least one reference input")
    if ref.shape[1] != d.shape[1]:
        raise ValueError(f"reference_distances has {ref.shape[1]} layers (columns), distances {d.shape[1]}")
    if not (np.isfinite(ref).all() and np.isfinite(d).all()):
        raise ValueError("distances must be finite")
    if (reference_clusters is None) != (clusters is None):
        raise ValueError("give both reference_clusters and clusters, or neither")
    if reference_clusters is not None:
        ref_c = _as_columns(reference_clusters, "reference_clusters", np.int64)
        c = _as_columns(clusters, "clusters", np.int64)
        if ref_c.shape != ref.shape or c.shape != d.shape:
            raise ValueError(
                f"clusters must have the shapes of the distances: got {ref_c.shape} for {ref.shape} "
                f"and {c.shape} for {d.shape}"
            )
    if isinstance(min_reference, bool) or not isinstance(min_reference, (int, np.integer)) or min_reference < 1:
        raise ValueError(f"min_reference must be a positive integer, got {min_reference!r}")
    self_count = np.zeros(len(d))
    if in_reference is not None:
        in_reference = np.asarray(in_reference, dtype=bool)
        if in_reference.shape != (len(d),):
            raise ValueError(f"in_reference must have shape ({len(d)},), got {in_reference.shape}")
        if in_reference.sum() > len(ref):
            raise ValueError(f"{int(in_reference.sum())} inputs are marked in_reference but it holds {len(ref)}")
        self_count = in_reference.astype(np.float64)
    p = np.empty_like(d)
    for j in range(d.shape[1]):
        p[:, j] = _pvalues(np.sort(ref[:, j]), d[:, j], self_count)
        if reference_clusters is None:
            continue
        ids, sizes = np.unique(ref_c[:, j], return_counts=True)
        for cluster in ids[sizes >= min_reference]:
            members = c[:, j] == cluster
            own_ref = np.sort(ref[ref_c[:, j] == cluster, j])
            p[members, j] = _pvalues(own_ref, d[members, j], self_count[members])
    return p.reshape(np.shape(distances))


def layer_pvalues(exp, *, per_cluster=True, min_reference=20, rows=None):
    """Per input and layer, the empirical p-value of its distance (see the module notes).

    Parameters
    ----------
    exp : Experiment
    per_cluster : bool, default True
        Compare with the held-out inputs of the same cluster (with the whole-layer fallback);
        ``False`` always compares with the whole layer.
    min_reference : int, default 20
    rows : ndarray of int, optional
        Inputs to score; default every row.

    Returns
    -------
    ndarray of shape (n_rows, n_layers)
        Columns in the order of ``exp.layers``.
    """
    reference = exp.rows("test")
    if not len(reference):
        raise ValueError("the experiment has no held-out rows (split 1) to calibrate p-values on")
    rows = np.arange(exp.n_rows) if rows is None else np.asarray(rows)
    _, dist, clus = _distances_and_clusters(exp)
    return empirical_pvalues(
        dist[reference], dist[rows],
        reference_clusters=clus[reference] if per_cluster else None,
        clusters=clus[rows] if per_cluster else None,
        min_reference=min_reference,
        in_reference=exp.split[rows] == TEST,
    )


def exit_layer(pvalues, layer_names, *, alpha=0.05):
    """Per input, the first layer where its p-value falls below ``alpha``.

    Parameters
    ----------
    pvalues : ndarray of shape (n_samples, n_layers)
    layer_names : sequence of str, length n_layers
    alpha : float in (0, 1), default 0.05

    Returns
    -------
    list of (str or None), length n_samples
        The layer's name, or ``None`` when the input never falls below ``alpha``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    names = list(layer_names)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(
            f"pvalues must have shape (n_samples, {len(names)}) for the {len(names)} layers, got {p.shape}"
        )
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    below = p < alpha
    first = np.argmax(below, axis=1)
    return [names[j] if below[i, j] else None for i, j in enumerate(first.tolist())]


def exit_summary(exp, *, alpha=0.05, pvalues=None):
    """Where the held-out inputs of each class leave the known paths.

    Parameters
    ----------
    exp : Experiment
    alpha : float, default 0.05
    pvalues : ndarray of shape (n_rows, n_layers), optional
        :func:`layer_pvalues` of every row, if already computed.

    Returns
    -------
    dict
        ``{"held_out": {class: entry}, "unseen": {class: entry}}`` with entry
        ``{"n": int, "shares": {layer: share, ..., "never": share}}``. For trained classes the
        shares are false alarms (near ``alpha`` per layer when calibrated).
    """
    p = layer_pvalues(exp) if pvalues is None else np.asarray(pvalues)
    if p.shape != (exp.n_rows, len(exp.layers)):
        raise ValueError(f"pvalues must have shape ({exp.n_rows}, {len(exp.layers)}), got {p.shape}")
    exits = np.array(["never" if e is None else e for e in exit_layer(p, exp.layers, alpha=alpha)], dtype=object)
    out = {"held_out": {}, "unseen": {}}
    for key, code in (("held_out", TEST), ("unseen", ANOMALY)):
        for c in np.unique(exp.labels[exp.split == code]):
            mine = exits[(exp.split == code) & (exp.labels == c)]
            out[key][int(c)] = {
                "n": int(len(mine)),
                "shares": {name: float(np.mean(mine == name)) for name in [*exp.layers, "never"]},
            }
    return out


def path_rarity(train_paths, paths, *, predicted=None, train_predicted=None, smoothing=1.0, n_clusters=None):
    """``-ln`` of the smoothed frequency of each input's path among the training inputs.

    Parameters
    ----------
    train_paths : ndarray of shape (n_train, n_layers)
    paths : ndarray of shape (n_samples, n_layers)
    predicted, train_predicted : ndarray of shape (n_samples,) and (n_train,), optional
        Predicted classes, appended to the paths; give both or neither.
    smoothing : float > 0, default 1.0
        Added to every path's count (Laplace smoothing), so an unseen path has a finite score.
    n_clusters : sequence of int, optional
        Number of possible ids per column (clusters per layer, then classes); default the
        largest id seen plus one (for the predicted column, the number of distinct classes).

    Returns
    -------
    ndarray of shape (n_samples,)
        ``-ln((count + smoothing) / (n_train + smoothing * V))`` with ``V`` the number of
        possible paths; in nats, larger = rarer.
    """
    train = np.asarray(train_paths, dtype=np.int64)
    test = np.asarray(paths, dtype=np.int64)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"train_paths and paths must be 2-D with as many layers, got {train.shape} and {test.shape}")
    if (predicted is None) != (train_predicted is None):
        raise ValueError("give both predicted and train_predicted, or neither")
    if not float(smoothing) > 0:
        raise ValueError(f"smoothing must be > 0 (an unseen path would be infinitely rare), got {smoothing!r}")
    if predicted is not None:
        train_predicted = np.asarray(train_predicted)
        predicted = np.asarray(predicted)
        if train_predicted.shape != (len(train),) or predicted.shape != (len(test),):
            raise ValueError("predicted and train_predicted must have one entry per path")
        classes, codes = np.unique(np.concatenate([train_predicted, predicted]), return_inverse=True)
        train = np.column_stack([train, codes[: len(train)]])
        test = np.column_stack([test, codes[len(train):]])
    if n_clusters is None:
        both = np.concatenate([train, test])
        n_clusters = [int(v) + 1 for v in both.max(axis=0)] if len(both) else [1] * train.shape[1]
        if predicted is not None:
            n_clusters[-1] = len(classes)
    n_clusters = [int(v) for v in n_clusters]
    if len(n_clusters) != train.shape[1] or min(n_clusters) < 1:
        raise ValueError(
            f"n_clusters must give a positive count for each of the {train.shape[1]} columns, got {n_clusters}"
        )
    possible = float(np.prod(np.asarray(n_clusters, dtype=np.float64)))
    if len(train):
        uniq, counts = np.unique(train, axis=0, return_counts=True)
        table = {tuple(row): int(n) for row, n in zip(uniq.tolist(), counts)}
    else:
        table = {}
    count = np.array([table.get(tuple(row), 0) for row in test.tolist()], dtype=np.float64)
    s = float(smoothing)
    return -np.log((count + s) / (len(train) + s * possible))


def anomaly_scores(exp, *, per_cluster=True, min_reference=20, combine="fisher", smoothing=1.0, pvalues=None):
    """Three anomaly scores for every row (larger = more anomalous; see the module notes).

    Parameters
    ----------
    exp : Experiment
    per_cluster, min_reference
        As in :func:`layer_pvalues`.
    combine : {"fisher", "min"}, default "fisher"
        How the layers' p-values become one score.
    smoothing : float, default 1.0
        Of :func:`path_rarity`.
    pvalues : ndarray of shape (n_rows, n_layers), optional
        :func:`layer_pvalues` of every row, if already computed.

    Returns
    -------
    dict[str, ndarray of shape (n_rows,)]
        ``path_rarity``, ``pvalue`` and ``msp``.
    """
    if combine not in ("fisher", "min"):
        raise ValueError(f"combine must be 'fisher' or 'min', got {combine!r}")
    p = layer_pvalues(exp, per_cluster=per_cluster, min_reference=min_reference) if pvalues is None else pvalues
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (exp.n_rows, len(exp.layers)):
        raise ValueError(f"pvalues must have shape ({exp.n_rows}, {len(exp.layers)}), got {p.shape}")
    combined = -2.0 * np.log(p).sum(axis=1) if combine == "fisher" else -np.log(p.min(axis=1))
    train = exp.rows("train")
    predicted = exp.predicted
    rarity = path_rarity(
        exp.paths[train], exp.paths, predicted=predicted, train_predicted=predicted[train], smoothing=smoothing,
        n_clusters=[int(exp.clusterers[name].k_) for name in exp.layers] + [len(exp.classes)],
    )
    msp = 1.0 - np.asarray(exp.probs, dtype=np.float64).max(axis=1)
    return {"path_rarity": rarity, "pvalue": combined, "msp": msp}


def auroc(scores, is_anomaly):
    """AUROC of ``scores`` (larger = more anomalous) at finding the ``is_anomaly`` inputs.

    Parameters
    ----------
    scores : ndarray of shape (n_samples,)
    is_anomaly : ndarray of bool of shape (n_samples,)

    Returns
    -------
    float
        In [0, 1]: 1 when every anomaly scores above every other input, 0 when below, 0.5 for
        chance (ties count half).
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_anomaly = np.asarray(is_anomaly, dtype=bool)
    if scores.shape != is_anomaly.shape or scores.ndim != 1:
        raise ValueError(
            f"scores and is_anomaly must be 1-D of the same length, got {scores.shape} and {is_anomaly.shape}"
        )
    n_pos = int(is_anomaly.sum())
    if n_pos == 0 or n_pos == len(scores):
        raise ValueError(f"AUROC needs anomalies and normal inputs, got {n_pos} anomalies among {len(scores)} inputs")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return float(roc_auc_score(is_anomaly, scores))


def anomaly_auroc(exp, *, anomalies=None, scores=None, **options):
    """AUROC of each score at telling held-out unseen digits from held-out trained digits.

    Parameters
    ----------
    exp : Experiment
    anomalies : sequence of int, optional
        Unseen classes counted as anomalies; default every unseen class with rows.
    scores : dict[str, ndarray of shape (n_rows,)], optional
        :func:`anomaly_scores` of every row, if already computed.
    **options
        Passed to :func:`anomaly_scores`.

    Returns
    -------
    dict
        ``auroc``: score -> AUROC over all the chosen unseen classes; ``by_class``: unseen
        class -> {score -> AUROC}; ``n_held_out``: int; ``n_anomaly``: class -> int.
    """
    anomalies = list(exp.unseen) if anomalies is None else [int(a) for a in anomalies]
    missing = sorted(set(anomalies) - set(exp.unseen))
    if missing or not anomalies:
        raise ValueError(f"anomalies must be unseen classes with rows among {list(exp.unseen)}, got {anomalies}")
    scores = anomaly_scores(exp, **options) if scores is None else scores
    held_out = exp.split == TEST
    if not held_out.any():
        raise ValueError("the experiment has no held-out rows (split 1) to compare anomalies with")
    unseen = exp.split == ANOMALY

    def table(positive):
        keep = held_out | positive
        return {name: auroc(np.asarray(scores[name])[keep], positive[keep]) for name in scores}

    return {
        "auroc": table(unseen & np.isin(exp.labels, anomalies)),
        "by_class": {c: table(unseen & (exp.labels == c)) for c in anomalies},
        "n_held_out": int(held_out.sum()),
        "n_anomaly": {c: int((unseen & (exp.labels == c)).sum()) for c in anomalies},
    }


def anomaly_summary(exp, *, alpha=0.05, anomalies=None, per_cluster=True, min_reference=20, combine="fisher"):
    """The fourth question for one experiment, in plain values.

    Returns
    -------
    dict
        ``pvalues`` (ndarray of shape (n_rows, n_layers)), ``exit`` (list, :func:`exit_layer`),
        ``exit_summary``, ``scores`` (:func:`anomaly_scores`), ``auroc`` (:func:`anomaly_auroc`;
        ``None`` without anomaly rows), ``calibration``: share of held-out rows with p < alpha
        per layer (near alpha when calibrated).
    """
    p = layer_pvalues(exp, per_cluster=per_cluster, min_reference=min_reference)
    scores = anomaly_scores(exp, pvalues=p, combine=combine)
    held_out = exp.split == TEST
    return {
        "pvalues": p,
        "exit": exit_layer(p, exp.layers, alpha=alpha),
        "exit_summary": exit_summary(exp, alpha=alpha, pvalues=p),
        "scores": scores,
        "auroc": anomaly_auroc(exp, anomalies=anomalies, scores=scores) if exp.unseen else None,
        "calibration": {name: float(np.mean(p[held_out, j] < alpha)) for j, name in enumerate(exp.layers)},
    }
