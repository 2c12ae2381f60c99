"""Which neurons fire for which class, and how.

Everything here takes one layer's activations ``X`` of shape (n_samples, n_units) with
plain label arrays or boolean masks, and returns numpy arrays or plain dicts; only
:func:`layer_neuron_summary` reads an :class:`~signatures.experiment.Experiment`.
Neurons are columns of ``X`` and are named by their column index.

Active and dead neurons
    A neuron is *active* for an input when its activation is above ``threshold``
    (default 0), and *dead* when it is active for no input at all: activation
    ``<= threshold`` for every row. For ReLU layers threshold 0 is the natural choice:
    a dead ReLU outputs exactly 0 for every input, so it passes on no information.
    For other activations "dead" means only "never above the threshold". A tanh,
    ELU or linear neuron that stays ``<= 0`` can still vary and carry information
    (its sign is simply fixed); a sigmoid is always above 0, so at threshold 0 none is
    ever dead. There, choose a threshold that means "off" for that activation (for
    example 0.5 for a sigmoid, its value at input 0), or look for constant
    columns (``np.ptp(X, axis=0) == 0``), which carry no information for any activation.

Dead and constant layers
    A *constant* neuron has the same activation for every input (``np.ptp == 0``); it
    carries nothing about the input for any activation function, and its AUROC is 0.5
    for every group. A layer's ``status`` (:func:`layer_status`) is ``"dead"`` when every
    neuron is dead, ``"constant"`` when every neuron is constant but not all are dead
    (a saturated layer), and ``"ok"`` otherwise. Nothing about the input passes through a
    dead or constant layer, so the findings name such layers first and never cite their
    neurons, and no neuron that is constant is ever a signature neuron of a summary.

Effect sizes
    For a group of inputs (the *members*: a class, a cluster or a path) against all
    other inputs, the *AUROC* of a neuron is the probability that a random member
    activates it more than a random non-member, ties counting one half: 0.5 carries no
    information, 1 means members are always higher, 0 means they are always lower.
    It depends only on the ranks, so it is the same for any increasing transform of the
    activations. *Cohen's d* is the difference of the two means over their pooled
    standard deviation. Signature neurons are ranked by ``|AUROC - 0.5|``.
"""

from __future__ import annotations

import numpy as np

from ._mapped import drop_pages

__all__ = [
    "class_means",
    "class_preference",
    "neuron_order",
    "active_fraction",
    "dead_neurons",
    "constant_neurons",
    "layer_status",
    "auroc_per_neuron",
    "cohens_d",
    "signature_neurons",
    "top_activating",
    "anomaly_profile",
    "layer_neuron_summary",
]


# --------------------------------------------------------------------------- checks


def _check_X(X):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array of shape (n_samples, n_units), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must have at least one row and one unit, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X holds NaN or infinite activations")
    return X


def _check_labels(y, n):
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must have one label per row of X ({n}), got shape {y.shape}")
    return y


def _check_mask(member_mask, n):
    mask = np.asarray(member_mask)
    if mask.dtype != bool:
        raise ValueError(f"member_mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != (n,):
        raise ValueError(f"member_mask must have one entry per row of X ({n}), got shape {mask.shape}")
    n_in = int(mask.sum())
    if n_in == 0:
        raise ValueError("member_mask selects no members; give a group with at least one row")
    if n_in == n:
        raise ValueError("member_mask selects every row; an effect size needs some non-members")
    return mask


def _row_indices(rows, n):
    """``rows`` as int64 indices in 0..n-1 (all rows when None)."""
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        raise ValueError("rows must be row indices, not a boolean mask; pass np.flatnonzero(mask)")
    rows = rows.astype(np.int64).ravel()
    bad = rows[(rows < 0) | (rows >= n)]
    if len(bad):
        raise ValueError(f"rows must be in 0..{n - 1}, got {bad[:5].tolist()}")
    return rows


def _check_top(top, name="top"):
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {top!r}")
    return int(top)


# --------------------------------------------------------------------------- class means and order


def class_means(X, y, classes):
    """Mean activation of each neuron for each class.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    y : ndarray of shape (n_samples,)
        Class of each row.
    classes : sequence
        Classes, one per output column; each must have at least one row.

    Returns
    -------
    ndarray of shape (n_units, n_classes)
    """
    X = _check_X(X)
    y = _check_labels(y, len(X))
    classes = list(classes)
    if not classes:
        raise ValueError("classes is empty; give at least one class")
    missing = [c for c in classes if not np.any(y == c)]
    if missing:
        raise ValueError(f"classes {missing} have no rows in y; classes present: {np.unique(y).tolist()}")
    return np.stack([X[y == c].mean(axis=0) for c in classes], axis=1)


def class_preference(means):
    """Each neuron's preferred class and how selective it is for it.

    Parameters
    ----------
    means : ndarray of shape (n_units, n_classes)
        From :func:`class_means`.

    Returns
    -------
    preferred : ndarray of shape (n_units,), int
        Column of the class whose mean is largest relative to the neuron's mean over
        classes (the lowest column on ties).
    selectivity : ndarray of shape (n_units,)
        ``(m_pref - m_rest) / (|m_pref| + |m_rest|)``, where ``m_rest`` is the mean over
        the other classes: in [0, 1], 0 when the neuron does not tell the classes
        apart, 1 when it is silent (0) for every other class. 0 for a single class.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] == 0:
        raise ValueError(f"means must have shape (n_units, n_classes), got {means.shape}")
    n_units, n_classes = means.shape
    preferred = np.argmax(means - means.mean(axis=1, keepdims=True), axis=1)
    m_pref = means[np.arange(n_units), preferred]
    if n_classes == 1:
        return preferred, np.zeros(n_units)
    m_rest = (means.sum(axis=1) - m_pref) / (n_classes - 1)
    denom = np.abs(m_pref) + np.abs(m_rest)
    with np.errstate(invalid="ignore", divide="ignore"):
        sel = np.where(denom > 0, (m_pref - m_rest) / denom, 0.0)
    return preferred, np.clip(sel, 0.0, 1.0)


def neuron_order(means, *, dead=None):
    """A neuron order that shows class-specific groups in a neuron x class heatmap.

    Neurons are grouped by preferred class (in column order, see
    :func:`class_preference`), most selective first within each group; dead neurons
    come last, in index order.

    Parameters
    ----------
    means : ndarray of shape (n_units, n_classes)
    dead : sequence of int, optional
        Neurons to put last (e.g. :func:`dead_neurons`). By default, the neurons whose
        class means are all equal, which tell no class from another (a dead ReLU has
        every mean 0).

    Returns
    -------
    ndarray of shape (n_units,), int
        A permutation of ``range(n_units)``.
    """
    means = np.asarray(means, dtype=np.float64)
    preferred, sel = class_preference(means)
    n_units = len(means)
    if dead is None:
        is_dead = np.all(means == means[:, :1], axis=1)
    else:
        dead = np.asarray(dead, dtype=np.int64).ravel()
        bad = dead[(dead < 0) | (dead >= n_units)]
        if len(bad):
            raise ValueError(f"dead neurons must be in 0..{n_units - 1}, got {bad.tolist()}")
        is_dead = np.zeros(n_units, dtype=bool)
        is_dead[dead] = True
    return np.lexsort((np.arange(n_units), -sel, preferred, is_dead)).astype(np.int64)


# --------------------------------------------------------------------------- active and dead


def active_fraction(X, *, threshold=0.0):
    """Share of inputs for which each neuron is active (activation > ``threshold``).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    threshold : float, default 0.0

    Returns
    -------
    ndarray of shape (n_units,), values in [0, 1]
    """
    X = _check_X(X)
    return (X > threshold).mean(axis=0)


def dead_neurons(X, *, threshold=0.0):
    """Neurons that are active for no input: activation <= ``threshold`` on every row.

    See the module notes for what "dead" means for activations other than ReLU.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    threshold : float, default 0.0

    Returns
    -------
    ndarray of shape (n_dead,), int
        Column indices, ascending.
    """
    X = _check_X(X)
    return np.flatnonzero(~np.any(X > threshold, axis=0)).astype(np.int64)


def constant_neurons(X):
    """Neurons whose activation is the same for every input (they carry no information).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)

    Returns
    -------
    ndarray of shape (n_constant,), int
        Column indices, ascending.
    """
    X = _check_X(X)
    return np.flatnonzero(np.ptp(X, axis=0) == 0).astype(np.int64)


def layer_status(X, *, threshold=0.0):
    """Whether a layer passes anything on: ``"dead"``, ``"constant"`` or ``"ok"``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    threshold : float, default 0.0
        As in :func:`dead_neurons`.

    Returns
    -------
    str
        ``"dead"`` when every neuron is dead, ``"constant"`` when every neuron is constant
        (and not all dead), ``"ok"`` otherwise.
    """
    X = _check_X(X)
    if len(dead_neurons(X, threshold=threshold)) == X.shape[1]:
        return "dead"
    if len(constant_neurons(X)) == X.shape[1]:
        return "constant"
    return "ok"


# --------------------------------------------------------------------------- effect sizes


def _average_ranks(X):
    """Ranks 1..n of every column of ``X``, ties sharing their mean rank (``scipy.stats.rankdata``'s
    default, written with numpy so that a page kernel showing neurons never loads scipy). Each
    column is ranked as a contiguous row of ``X.T``: about 1.5x faster than along strided columns."""
    T = np.ascontiguousarray(np.asarray(X).T)
    n = T.shape[1]
    order = np.argsort(T, axis=1, kind="stable")
    ordered = np.take_along_axis(T, order, axis=1)
    pos = np.broadcast_to(np.arange(n)[None, :], T.shape)
    starts = np.ones(T.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(T.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(T.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks.T


def auroc_per_neuron(X, member_mask):
    """AUROC of each neuron's activation at telling members from non-members.

    Computed for all neurons at once from the Mann-Whitney U statistic of average
    ranks (ties share their mean rank), which equals
    ``sklearn.metrics.roc_auc_score(member_mask, X[:, j])`` for every column ``j``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    member_mask : ndarray of shape (n_samples,), bool
        Members (at least one) and non-members (at least one).

    Returns
    -------
    ndarray of shape (n_units,), values in [0, 1]
        0.5 = no information; above 0.5 members activate the neuron more.
    """
    X = _check_X(X)
    mask = _check_mask(member_mask, len(X))
    n_in = int(mask.sum())
    n_out = len(mask) - n_in
    ranks = _average_ranks(X)
    u = ranks[mask].sum(axis=0) - n_in * (n_in + 1) / 2.0
    return u / (n_in * n_out)


def cohens_d(X, member_mask):
    """Cohen's d of each neuron: (mean of members - mean of the rest) / pooled std.

    The pooled standard deviation is ``sqrt((SS_in + SS_out) / (n - 2))``. A neuron
    constant within both groups gives 0 if the two means are equal and +-inf if not.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    member_mask : ndarray of shape (n_samples,), bool
        At least one member, at least one non-member, at least three rows in all.

    Returns
    -------
    ndarray of shape (n_units,)
    """
    X = _check_X(X)
    mask = _check_mask(member_mask, len(X))
    if len(X) < 3:
        raise ValueError(f"Cohen's d needs at least 3 rows (a pooled variance with n - 2 >= 1), got {len(X)}")
    a, b = X[mask], X[~mask]
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    ss = ((a - mean_a) ** 2).sum(axis=0) + ((b - mean_b) ** 2).sum(axis=0)
    pooled = np.sqrt(ss / (len(X) - 2))
    diff = mean_a - mean_b
    tol = 1e-12 * (1.0 + np.abs(X).max(axis=0))  # rounding noise of a constant column
    flat = pooled <= tol
    d = np.zeros(X.shape[1])
    d[~flat] = diff[~flat] / pooled[~flat]
    apart = flat & (np.abs(diff) > tol)
    d[apart] = np.sign(diff[apart]) * np.inf
    return d


def signature_neurons(X, member_mask, *, top=10):
    """The neurons that best tell a group's members from the other inputs.

    The group is whatever the mask selects: a class, a cluster, or the inputs taking
    a path.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    member_mask : ndarray of shape (n_samples,), bool
    top : int or None, default 10
        How many neurons to return; None for all.

    Returns
    -------
    list of dict
        ``{"neuron", "auroc", "cohens_d", "mean_in", "mean_out"}``, strongest effect first:
        by ``|auroc - 0.5|``, then ``|cohens_d|``, then neuron index. ``auroc`` above 0.5
        means the members activate the neuron more than the rest.
    """
    top = _check_top(top)
    X = _check_X(X)
    mask = _check_mask(member_mask, len(X))
    return _strongest(auroc_per_neuron(X, mask), cohens_d(X, mask), X[mask].mean(axis=0), X[~mask].mean(axis=0), top)


def top_activating(X, neuron, *, k=16, rows=None):
    """Rows with the highest activation of one neuron (e.g. to show their images).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
    neuron : int
        Column of ``X``.
    k : int, default 16
        Most rows returned.
    rows : ndarray of shape (n_rows,), int, optional
        Row indices of ``X`` to choose from; all rows by default.

    Returns
    -------
    ndarray of shape (min(k, n_rows),), int
        Row indices of ``X``, highest activation first (ties by row index).
    """
    shape = X.shape if hasattr(X, "shape") else np.shape(X)
    if len(shape) != 2 or 0 in shape:
        _check_X(X)  # names what is wrong
    k = _check_top(k, "k")
    if k is None:
        raise ValueError("k must be a positive integer, got None")
    if isinstance(neuron, bool) or not isinstance(neuron, (int, np.integer)) or not 0 <= neuron < shape[1]:
        raise ValueError(f"neuron must be an integer in 0..{shape[1] - 1}, got {neuron!r}")
    candidates = _row_indices(rows, shape[0])
    # Only the neuron's column is read: a memory-mapped layer is never copied whole.
    values = _check_X(np.asarray(X[:, neuron], dtype=np.float64)[candidates][:, None])[:, 0]
    drop_pages(X)  # a column of a row-major file touches every page of it
    return candidates[np.lexsort((candidates, -values))[:k]]


# --------------------------------------------------------------------------- anomalies


def anomaly_profile(X, y, classes, anomaly_class, *, top=10, threshold=0.0):
    """Which neurons an anomaly (a class never trained on) fires, against the trained classes.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_units)
        Rows of the trained classes and of the anomaly; other rows are ignored.
    y : ndarray of shape (n_samples,)
    classes : sequence
        Trained classes.
    anomaly_class
        The anomaly's label in ``y``; not one of ``classes``.
    top : int or None, default 10
        Signature neurons listed.
    threshold : float, default 0.0
        Activation above which a neuron counts as active.

    Returns
    -------
    dict
        ``anomaly_class``, ``classes``;
        ``anomaly_means`` (n_units,) and ``class_means`` (n_units, n_classes);
        ``excess`` (n_units,): anomaly mean minus the largest trained-class mean;
        ``exceeds_all``: neurons the anomaly fires more, on average, than every trained
        class, largest excess first; ``below_all``: neurons it fires less than every
        trained class, largest shortfall first;
        ``active_fraction`` (n_units,) of the anomaly rows;
        ``distance_to_class``: class -> Euclidean distance between the anomaly's and the
        class's mean activation vectors, and ``nearest_class``, the closest;
        ``signature``: :func:`signature_neurons` of the anomaly rows against the rows of
        the trained classes.
    """
    X = _check_X(X)
    y = _check_labels(y, len(X))
    classes = list(classes)
    if anomaly_class in classes:
        raise ValueError(f"anomaly_class {anomaly_class!r} is one of the trained classes {classes}")
    is_anomaly = y == anomaly_class
    if not is_anomaly.any():
        raise ValueError(f"anomaly_class {anomaly_class!r} has no rows in y; labels present: {np.unique(y).tolist()}")
    means = class_means(X, y, classes)
    a_means = X[is_anomaly].mean(axis=0)
    excess = a_means - means.max(axis=1)
    shortfall = means.min(axis=1) - a_means
    exceeds = np.flatnonzero(excess > 0)
    below = np.flatnonzero(shortfall > 0)
    distances = {c: float(np.linalg.norm(a_means - means[:, j])) for j, c in enumerate(classes)}
    keep = is_anomaly | np.isin(y, classes)
    return {
        "anomaly_class": anomaly_class,
        "classes": tuple(classes),
        "anomaly_means": a_means,
        "class_means": means,
        "excess": excess,
        "exceeds_all": exceeds[np.lexsort((exceeds, -excess[exceeds]))],
        "below_all": below[np.lexsort((below, -shortfall[below]))],
        "active_fraction": active_fraction(X[is_anomaly], threshold=threshold),
        "distance_to_class": distances,
        "nearest_class": min(distances, key=distances.get),
        "signature": signature_neurons(X[keep], is_anomaly[keep], top=top),
    }


# --------------------------------------------------------------------------- one layer of an experiment


#: Values (rows x units) of one block of a layer's columns read at a time by
#: :func:`layer_neuron_summary` (about 32 MiB as float64): a layer of any width and any number
#: of rows, memory-mapped, is summarised in bounded memory.
BLOCK_CELLS = 4_000_000


def _column(X_all, rows, j):
    """Column ``j`` of ``X_all`` at ``rows``, as an (n_rows, 1) float64 array."""
    column = np.asarray(X_all[:, j][rows], dtype=np.float64)[:, None]
    drop_pages(X_all)
    return column


def _sample_rows(rows, width, *, seed=0):
    """``rows``, or a sorted seeded sample of them when ``rows x width`` exceeds 4 blocks."""
    most = max(2, (4 * BLOCK_CELLS) // max(1, width))
    if len(rows) <= most:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=most, replace=False))


#: Past this many values (rows x units) a layer's neuron statistics are streamed by blocks of
#: rows (class means, spreads, Cohen's d, dead and constant neurons: exact, from sums) and the
#: AUROCs come from a seeded sample of ``RANK_CELLS // units`` rows (at least 2,000): ranking
#: every column of a 70,000-row layer of thousands of units over its row-major file costs minutes.
STREAM_CELLS = 50_000_000
RANK_CELLS = 50_000_000
MIN_RANK_ROWS = 2_000


def _column_stats(X_all, rows, y, classes, *, threshold=0.0):
    """Per-neuron statistics of ``X_all[rows]`` (see :data:`STREAM_CELLS` for large layers).

    Returns :func:`_block_stats`'s dict, with ``auroc_rows``: the rows the AUROCs were computed on.
    """
    width = int(np.prod(X_all.shape[1:]))
    if len(rows) * width <= STREAM_CELLS:
        stats = _block_stats(X_all, rows, y, classes, threshold=threshold)
        stats["auroc_rows"] = int(len(rows))
        return stats
    stats = _streamed_stats(X_all, rows, y, classes, threshold=threshold)
    most = max(MIN_RANK_ROWS, RANK_CELLS // max(1, width))
    pick = np.arange(len(rows))
    if len(rows) > most:
        pick = np.sort(np.random.default_rng(0).choice(len(rows), size=most, replace=False))
    sample = np.asarray(X_all[np.asarray(rows)[pick]])
    ranked = _block_stats(sample, np.arange(len(pick)), y[pick], classes, threshold=threshold)
    stats["auroc"] = ranked["auroc"]
    stats["auroc_rows"] = int(len(pick))
    return stats


def _streamed_stats(X_all, rows, y, classes, *, threshold=0.0):
    """Class means, active fractions, dead and constant neurons, Cohen's d and the in / out means,
    from sums over blocks of rows (each read once, in file order)."""
    width = int(np.prod(X_all.shape[1:]))
    rows = np.asarray(rows)
    step = max(1, BLOCK_CELLS // max(1, width))
    n_cls = {c: 0 for c in classes}
    sums = {c: np.zeros(width) for c in classes}
    squares = {c: np.zeros(width) for c in classes}
    low, high = np.full(width, np.inf), np.full(width, -np.inf)
    active = np.zeros(width)
    total, total_sq, n = np.zeros(width), np.zeros(width), 0
    for start in range(0, len(rows), step):
        X = _check_X(np.asarray(X_all[rows[start:start + step]], dtype=np.float64).reshape(-1, width))
        drop_pages(X_all)
        yy = y[start:start + step]
        low, high = np.minimum(low, X.min(axis=0)), np.maximum(high, X.max(axis=0))
        active += (X > threshold).sum(axis=0)
        total += X.sum(axis=0)
        total_sq += (X * X).sum(axis=0)
        n += len(X)
        for c in classes:
            part = X[yy == c]
            n_cls[c] += len(part)
            sums[c] += part.sum(axis=0)
            squares[c] += (part * part).sum(axis=0)
    stats = {"means": np.stack([sums[c] / n_cls[c] for c in classes], axis=1), "active_fraction": active / n,
             "dead": np.flatnonzero(high <= threshold).astype(np.int64),
             "constant": np.flatnonzero(high == low).astype(np.int64),
             "cohens_d": {}, "mean_in": {}, "mean_out": {}}
    tol = 1e-12 * (1.0 + np.maximum(np.abs(low), np.abs(high)))  # as cohens_d: rounding noise of a flat column
    for c in classes:
        n_in, n_out = n_cls[c], n - n_cls[c]
        if n_in in (0, n):
            for key in ("cohens_d", "mean_in", "mean_out"):
                stats[key][c] = np.full(width, np.nan)
            continue
        mean_in, mean_out = sums[c] / n_in, (total - sums[c]) / n_out
        ss = np.maximum(squares[c] - n_in * mean_in ** 2, 0.0) + \
            np.maximum((total_sq - squares[c]) - n_out * mean_out ** 2, 0.0)
        pooled = np.sqrt(ss / max(1, n - 2))
        diff = mean_in - mean_out
        d = np.zeros(width)
        flat = pooled <= tol
        d[~flat] = diff[~flat] / pooled[~flat]
        apart = flat & (np.abs(diff) > tol)
        d[apart] = np.sign(diff[apart]) * np.inf
        stats["cohens_d"][c], stats["mean_in"][c], stats["mean_out"][c] = d, mean_in, mean_out
    return stats


def _block_stats(X_all, rows, y, classes, *, threshold=0.0):
    """Per-neuron statistics of ``X_all[rows]``, a block of columns at a time.

    Returns a dict: ``means`` (n_units, n_classes), ``active_fraction`` (n_units,), ``dead`` and
    ``constant`` (indices), and per class ``auroc``, ``cohens_d``, ``mean_in`` and ``mean_out``
    (n_units,) of the class against the other rows, as :func:`signature_neurons` computes them.
    """
    width = int(np.prod(X_all.shape[1:]))
    step = max(1, BLOCK_CELLS // max(1, len(rows)))
    out = {"means": [], "active_fraction": [], "dead": [], "constant": []}
    per_class = {key: {c: [] for c in classes} for key in ("auroc", "cohens_d", "mean_in", "mean_out")}
    masks = {c: y == c for c in classes}
    for c0 in range(0, width, step):
        X = _check_X(np.asarray(X_all[:, c0:c0 + step][rows], dtype=np.float64))
        drop_pages(X_all)
        out["means"].append(class_means(X, y, classes))
        out["active_fraction"].append(active_fraction(X, threshold=threshold))
        out["dead"].append(c0 + dead_neurons(X, threshold=threshold))
        out["constant"].append(c0 + constant_neurons(X))
        ranks = _average_ranks(X)  # once per block, shared by every class
        for c, mask in masks.items():
            n_in = int(mask.sum())
            if n_in in (0, len(mask)):
                for key in per_class:
                    per_class[key][c].append(np.full(X.shape[1], np.nan))
                continue
            u = ranks[mask].sum(axis=0) - n_in * (n_in + 1) / 2.0
            per_class["auroc"][c].append(u / (n_in * (len(mask) - n_in)))
            per_class["cohens_d"][c].append(cohens_d(X, mask) if len(X) >= 3 else np.zeros(X.shape[1]))
            per_class["mean_in"][c].append(X[mask].mean(axis=0))
            per_class["mean_out"][c].append(X[~mask].mean(axis=0))
    stats = {"means": np.concatenate(out["means"]), "active_fraction": np.concatenate(out["active_fraction"]),
             "dead": np.concatenate(out["dead"]).astype(np.int64),
             "constant": np.concatenate(out["constant"]).astype(np.int64)}
    for key, by_class in per_class.items():
        stats[key] = {c: np.concatenate(parts) for c, parts in by_class.items()}
    return stats


def _strongest(auc, d, mean_in, mean_out, top):
    """The neurons of strongest effect, as :func:`signature_neurons` lists them."""
    order = np.lexsort((np.arange(len(auc)), -np.abs(d), -np.abs(auc - 0.5)))
    if top is not None:
        order = order[:top]
    return [
        {"neuron": int(j), "auroc": float(auc[j]), "cohens_d": float(d[j]),
         "mean_in": float(mean_in[j]), "mean_out": float(mean_out[j])}
        for j in order
    ]


def layer_signature_neurons(X_all, rows, member_mask, *, top=10):
    """:func:`signature_neurons` of ``X_all[rows]``, read a block of columns at a time: the same
    list, without copying a (memory-mapped) layer whole."""
    mask = _check_mask(member_mask, len(rows))
    stats = _column_stats(X_all, np.asarray(rows), mask.astype(np.int64), [1])
    return _strongest(*(stats[key][1] for key in ("auroc", "cohens_d", "mean_in", "mean_out")), _check_top(top))


def layer_neuron_summary(exp, layer, *, rows=None, top=10, k=16, threshold=0.0, anomalies=None):
    """Everything about one layer's neurons in an experiment.

    Class means, order, active fractions, dead neurons and per-class signature neurons
    use the training and held-out rows of the trained classes; anomaly profiles use the
    anomaly rows.

    Parameters
    ----------
    exp : Experiment
    layer : str
        One of ``exp.layers``.
    rows : ndarray of int, optional
        Rows to consider (all by default); anomaly rows among them feed the anomaly
        profiles.
    top : int or None, default 10
        Signature neurons per class.
    k : int, default 16
        Top-activating rows listed per signature neuron.
    threshold : float, default 0.0
        Activation above which a neuron counts as active.
    anomalies : sequence, optional
        Anomaly classes to profile; by default ``exp.anomalies`` that have rows.

    Returns
    -------
    dict
        ``layer``, ``classes``, ``class_names`` (one per class, for the heatmap's columns),
        ``n_rows`` (in-distribution rows used);
        ``means`` (n_units, n_classes); ``order`` (n_units,) from :func:`neuron_order`;
        ``preferred`` (n_units,) class of each neuron and ``selectivity`` (n_units,);
        ``active_fraction`` (n_units,); ``dead`` (indices) and ``n_dead``; ``constant``
        (indices of neurons with one value for every row) and ``n_constant``; ``status``
        (:func:`layer_status`);
        ``signatures``: class -> :func:`signature_neurons` (class vs other trained classes),
        constant neurons left out (an empty list for a dead or constant layer);
        ``top_rows``: class -> {neuron: row indices of ``exp`` activating it most};
        ``anomalies``: anomaly class -> :func:`anomaly_profile`.
    """
    if layer not in exp.hidden:
        raise ValueError(f"layer must be one of {list(exp.hidden)}, got {layer!r}")
    X_all = exp.hidden[layer]
    rows = _row_indices(rows, len(exp.labels))
    classes = list(exp.classes)
    labels, split = np.asarray(exp.labels), np.asarray(exp.split)
    known = rows[np.isin(labels[rows], classes) & (split[rows] != 2)]
    if len(known) == 0:
        raise ValueError(f"rows hold no training or held-out rows of the trained classes {classes}")
    y = labels[known]
    top = _check_top(top)
    stats = _column_stats(X_all, known, y, classes, threshold=threshold)
    means, dead, constant = stats["means"], stats["dead"], stats["constant"]
    n_units = means.shape[0]
    status = "dead" if len(dead) == n_units else "constant" if len(constant) == n_units else "ok"
    varying = np.setdiff1d(np.arange(n_units), constant)
    preferred, selectivity = class_preference(means)
    signatures, top_rows = {}, {}
    for c in classes:
        members = y == c
        if members.all() or len(varying) == 0:
            signatures[c], top_rows[c] = [], {}
            continue
        auc, d, mean_in, mean_out = (stats[key][c][varying] for key in ("auroc", "cohens_d", "mean_in", "mean_out"))
        found = _strongest(auc, d, mean_in, mean_out, top)
        for f in found:
            f["neuron"] = int(varying[f["neuron"]])
        signatures[c] = found
        top_rows[c] = {f["neuron"]: known[top_activating(_column(X_all, known, f["neuron"]), 0, k=k)]
                       for f in found}
    out_rows = rows[split[rows] == 2]
    wanted = exp.anomalies if anomalies is None else anomalies
    profiles = {}
    for a in wanted:
        a_rows = out_rows[labels[out_rows] == a]
        if len(a_rows) == 0:
            if anomalies is not None:
                raise ValueError(f"anomaly class {a!r} has no anomaly rows among the given rows")
            continue
        # Known rows as many as fit the block budget (a seeded sample of a very large layer), and every
        # anomaly row: the profile compares class means, which a sample of thousands of rows pins down.
        keep = _sample_rows(known, n_units, seed=0)
        both = np.concatenate([np.asarray(X_all[keep], dtype=np.float64), np.asarray(X_all[a_rows], dtype=np.float64)])
        profiles[a] = anomaly_profile(both, np.concatenate([labels[keep], labels[a_rows]]), classes, a, top=top,
                                      threshold=threshold)
        if len(keep) < len(known):
            profiles[a]["known_rows_sampled"] = int(len(keep))
    return {
        "layer": layer,
        "classes": tuple(classes),
        "class_names": tuple(str(exp.class_names[int(c)]) for c in classes),
        "n_rows": int(len(known)),
        "auroc_rows": stats["auroc_rows"],
        "means": means,
        "order": neuron_order(means, dead=dead),
        "preferred": np.asarray(classes)[preferred],
        "selectivity": selectivity,
        "active_fraction": stats["active_fraction"],
        "dead": dead,
        "n_dead": int(len(dead)),
        "constant": constant,
        "n_constant": int(len(constant)),
        "status": status,
        "signatures": signatures,
        "top_rows": top_rows,
        "anomalies": profiles,
    }
