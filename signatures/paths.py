"""Cluster paths: the cluster each input falls in at every hidden layer.

A *signature* of an input is its activation vectors layer by layer; its *path* is the
tuple of cluster ids, one per hidden layer, followed by the class the network predicts.
Everything here takes and returns numpy arrays and plain Python values.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import numpy as np

__all__ = [
    "paths_from_labels",
    "assign_paths",
    "path_counts",
    "flows",
    "cluster_members",
    "path_members",
    "path_label",
]


def paths_from_labels(labels):
    """Stack per-layer cluster labels into paths.

    Parameters
    ----------
    labels : dict[str, ndarray of shape (n_samples,)]
        Cluster id per input, per layer, in layer order.

    Returns
    -------
    ndarray of shape (n_samples, n_layers), int64
    """
    columns = [np.asarray(v, dtype=np.int64) for v in labels.values()]
    if not columns:
        raise ValueError("labels holds no layer")
    n = {len(c) for c in columns}
    if len(n) != 1:
        raise ValueError(f"every layer must label the same inputs, got lengths {sorted(n)}")
    return np.stack(columns, axis=1)


def assign_paths(clusterers, hidden):
    """Paths of new inputs through already-fitted clusters (``predict``, no refit).

    This is how anomalies are inserted: their activations come from the same model,
    and each layer's fitted clusters assign them, so their paths are comparable with
    the training inputs' paths.

    Parameters
    ----------
    clusterers : dict[str, LayerKMeans]
        Fitted, one per layer.
    hidden : dict[str, ndarray of shape (n_samples, n_units)]
        The new inputs' activations, with the same layer names.

    Returns
    -------
    ndarray of shape (n_samples, n_layers)
    """
    missing = [name for name in clusterers if name not in hidden]
    if missing:
        raise ValueError(f"activations lack the clustered layers {missing}; got {list(hidden)}")
    return paths_from_labels(OrderedDict((name, est.predict(hidden[name])) for name, est in clusterers.items()))


def _full_paths(paths, predicted):
    paths = np.asarray(paths, dtype=np.int64)
    if predicted is None:
        return paths
    predicted = np.asarray(predicted, dtype=np.int64)
    if len(predicted) != len(paths):
        raise ValueError(f"predicted has {len(predicted)} entries for {len(paths)} paths")
    return np.column_stack([paths, predicted])


def path_counts(paths, groups, *, predicted=None):
    """How many inputs of each group take each path.

    Parameters
    ----------
    paths : ndarray of shape (n_samples, n_layers)
    groups : ndarray of shape (n_samples,)
        A label per input (true class, or anomaly class).
    predicted : ndarray of shape (n_samples,), optional
        Predicted class, appended to each path when given.

    Returns
    -------
    list of dict
        ``{"path": tuple, "total": int, "by_group": {group: count}}``, most common first
        (ties broken by path order, so the result is deterministic).
    """
    full = _full_paths(paths, predicted)
    groups = np.asarray(groups)
    if len(groups) != len(full):
        raise ValueError(f"groups has {len(groups)} entries for {len(full)} paths")
    table = {}
    for row, g in zip(map(tuple, full.tolist()), groups.tolist()):
        table.setdefault(row, Counter())[g] += 1
    out = [
        {"path": path, "total": sum(c.values()), "by_group": dict(sorted(c.items()))}
        for path, c in table.items()
    ]
    out.sort(key=lambda r: (-r["total"], r["path"]))
    return out


def flows(paths, groups, *, predicted=None):
    """Flows between consecutive columns of the paths, split by group, for a Sankey.

    Column ``i`` is hidden layer ``i``; when ``predicted`` is given the last column is
    the predicted class.

    Returns
    -------
    list of dict
        ``{"step": i, "source": a, "target": b, "group": g, "count": n}``: ``n``
        inputs of group ``g`` go from cluster ``a`` of column ``i`` to ``b`` of column
        ``i + 1``. For each step, the counts add up to the number of inputs.
    """
    full = _full_paths(paths, predicted)
    groups = np.asarray(groups)
    if len(groups) != len(full):
        raise ValueError(f"groups has {len(groups)} entries for {len(full)} paths")
    out = []
    for step in range(full.shape[1] - 1):
        c = Counter(zip(full[:, step].tolist(), full[:, step + 1].tolist(), groups.tolist()))
        for (a, b, g), n in sorted(c.items()):
            out.append({"step": step, "source": a, "target": b, "group": g, "count": n})
    return out


def cluster_members(paths, *, layer, cluster):
    """Indices of the inputs in ``cluster`` at column ``layer`` (an int index)."""
    paths = np.asarray(paths)
    if not 0 <= layer < paths.shape[1]:
        raise ValueError(f"layer index must be in 0..{paths.shape[1] - 1}, got {layer}")
    return np.flatnonzero(paths[:, layer] == cluster)


def path_members(paths, path, *, predicted=None):
    """Indices of the inputs that take exactly ``path`` (a tuple, one id per column)."""
    full = _full_paths(paths, predicted)
    path = tuple(int(p) for p in path)
    if len(path) != full.shape[1]:
        raise ValueError(f"path must have {full.shape[1]} entries, got {len(path)}: {path}")
    return np.flatnonzero((full == np.asarray(path)).all(axis=1))


def path_label(path, layer_names, *, class_names=None):
    """A readable path, e.g. ``hidden_1:c0 > hidden_2:c2 > pred 7``.

    ``path`` has one entry per layer name, plus the predicted class if longer.
    """
    parts = [f"{name}:c{int(c)}" for name, c in zip(layer_names, path)]
    if len(path) > len(layer_names):
        pred = int(path[len(layer_names)])
        parts.append(f"pred {class_names[pred] if class_names else pred}")
    return " > ".join(parts)
