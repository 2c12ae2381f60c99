"""From which layer do the classes separate.

Per hidden layer, on the in-distribution inputs (training and held-out rows of the
trained classes), :func:`separation_table` measures:

``label_silhouette``
    Silhouette score of the activations with the true labels as the clusters, in
    [-1, 1]: are the classes compact groups, far apart, in the layer's geometry?
``nmi``, ``ari``, ``purity``
    Agreement between the layer's k-means clusters (the ones the Sankey shows) and
    the classes: normalized mutual information and adjusted Rand index (both 1 for
    identical partitions, about 0 for unrelated ones), and the share of inputs whose
    cluster's majority class is their own.
``probe_accuracy``
    Cross-validated accuracy of a linear classifier reading the class from the layer
    (standardised units, logistic regression, seeded stratified folds).
``cka_labels``
    Centered linear CKA between the layer and the one-hot labels, in [0, 1].

The rule
    The first separating layer is the first hidden layer whose k-means clusters agree
    with the classes, **NMI >= 0.5**, and whose linear probe reads the class,
    **probe accuracy >= 0.95** (:data:`DEFAULT_RULE`); ``None`` if no layer does.

    Why both, and why these. In an MLP trained on 1 vs 7 the class is linearly
    decodable everywhere: on 2,000 MNIST test digits and a 64-32 MLP trained for 5
    epochs, a probe on the raw pixels already reaches 0.99, and on both hidden layers
    0.998. The probe therefore only rules out layers that have lost the class (dead or
    collapsed layers); it cannot tell layers apart. What changes from layer to layer is
    whether the class is the *dominant* structure of the layer, the one an unsupervised
    method finds without being told the labels, and so the one the cluster paths show.
    That is the NMI condition. NMI rather than ARI, because a class split into several
    pure clusters (upright and slanted 1s) still has the classes apart, and ARI punishes
    that hard (two balanced classes in four pure clusters: ARI 0.50, NMI 0.67); NMI
    rather than purity, because purity rewards any fine enough clustering. With two
    balanced classes and two clusters, NMI 0.5 is about 89% of the inputs in a cluster
    of their own class; six pure clusters still give 0.56; clusters unrelated to the
    classes give 0. The probe threshold 0.95 asks that the class be read nearly as
    well as a trained network reads it. On such 1-vs-7 MLPs the rule names the first
    hidden layer (there NMI 0.88, probe 0.998); later layers sharpen the separation
    (NMI 0.95, label silhouette 0.51 -> 0.68) rather than create it.
    Both thresholds are options of :func:`first_separating_layer`.

The input itself, for reference
    Every measure means something only beside the same measure on the raw input: on 1 vs 7
    the pixels alone give k-means NMI about 0.77 and a probe accuracy about 0.99, so a
    hidden layer at NMI 0.88 sharpens a separation the input already has.
    :func:`input_separation` measures the input the same way as a hidden layer (rows
    marked ``"kind": "input"``; hidden layers' rows are ``"kind": "hidden"``): the pixels
    scaled to [0, 1], reduced by PCA (fitted on the training rows) to at most
    :data:`INPUT_COMPONENTS` components when they have more, clustered by k-means with K
    chosen by silhouette over the experiment's K range (fitted on the training rows, like
    the layers' clusters). ``separation_table(exp, include_input=True)`` puts that row
    first; :func:`first_separating_layer` never picks it (it picks among hidden layers)
    and quotes it in its reason.

The silhouette and the probe run on a seeded stratified sample of at most
``sample_size`` rows (the silhouette costs O(n^2)); NMI, ARI, purity and CKA use all rows.
These and the CKA run with BLAS and OpenMP limited to one thread (threadpoolctl, which
comes with scikit-learn): on problems this small (about 2,000 x 64) threads cost more
than they give; on 2 busy cores a probe took 3 to 5 times longer with two threads.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

__all__ = [
    "DEFAULT_RULE",
    "label_silhouette",
    "cluster_agreement",
    "probe_accuracy",
    "linear_cka",
    "one_hot_cka",
    "cka_matrix",
    "separation_table",
    "layer_cka",
    "first_separating_layer",
    "input_representation",
    "input_separation",
    "INPUT_COMPONENTS",
    "INPUT_LAYER",
]

#: Metric of :func:`separation_table` -> the least value a separating layer must have.
DEFAULT_RULE = {"nmi": 0.5, "probe_accuracy": 0.95}

#: Most PCA components of the raw input measured by :func:`input_separation`.
INPUT_COMPONENTS = 50

#: The ``"layer"`` of the raw input's row in a separation table.
INPUT_LAYER = "input"

_METRIC_NAMES = {
    "label_silhouette": "label silhouette",
    "nmi": "NMI of clusters and classes",
    "ari": "ARI of clusters and classes",
    "purity": "cluster purity",
    "probe_accuracy": "linear-probe accuracy",
    "cka_labels": "CKA with the labels",
}


# --------------------------------------------------------------------------- checks


def _as_2d(X, name="X"):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 1-D or 2-D array of shape (n_samples, n_features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return X


def _check_y(y, n, *, name="y"):
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must have one label per row ({n}), got shape {y.shape}")
    return y


def _check_size(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(f"{name} must be an integer >= 2 or None, got {value!r}")
    return int(value)


def _stratified_sample(y, size, random_state):
    """Sorted row indices of a seeded sample of at most ``size`` rows, classes in proportion."""
    n = len(y)
    if size is None or n <= size:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: size - take.sum()]] += 1
    take = np.minimum(np.maximum(take, 1), counts)
    picked = [rng.choice(np.flatnonzero(inverse == j), size=t, replace=False) for j, t in enumerate(take)]
    return np.sort(np.concatenate(picked))


# --------------------------------------------------------------------------- the measures


def label_silhouette(X, y, *, sample_size=2000, random_state=0):
    """Silhouette score of ``X`` with the true labels as the clusters.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        At least 2 labels and fewer labels than rows.
    sample_size : int or None, default 2000
        Above this many rows, the score is computed on a seeded sample stratified by
        label; None uses every row.
    random_state : int, default 0

    Returns
    -------
    float in [-1, 1]
        0 for a constant representation.
    """
    X = _as_2d(X)
    y = _check_y(y, len(X))
    sample_size = _check_size(sample_size, "sample_size")
    n_labels = len(np.unique(y))
    if not 2 <= n_labels <= len(X) - 1:
        raise ValueError(f"a silhouette needs 2 <= number of labels <= n_samples - 1, got {n_labels} labels "
                         f"for {len(X)} rows")
    keep = _stratified_sample(y, sample_size, random_state)
    with threadpool_limits(limits=1):
        return float(silhouette_score(X[keep], y[keep]))


def cluster_agreement(cluster_labels, y):
    """How well a clustering agrees with the true labels.

    Parameters
    ----------
    cluster_labels : ndarray of shape (n_samples,)
    y : ndarray of shape (n_samples,)

    Returns
    -------
    dict
        ``nmi`` (normalized mutual information, arithmetic mean), ``ari`` (adjusted Rand
        index) and ``purity`` (share of rows whose cluster's majority label is their
        own). All three are unchanged by renaming clusters or labels.
    """
    c = np.asarray(cluster_labels)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"cluster_labels must be a non-empty 1-D array, got shape {c.shape}")
    y = _check_y(y, len(c))
    _, ci = np.unique(c, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    table = np.zeros((ci.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, yi), 1)
    return {
        "nmi": float(normalized_mutual_info_score(y, c)),
        "ari": float(adjusted_rand_score(y, c)),
        "purity": float(table.max(axis=1).sum() / len(c)),
    }


def probe_accuracy(X, y, *, cv=5, max_iter=200, random_state=0):
    """Cross-validated accuracy of a linear probe reading the labels from ``X``.

    The probe is ``StandardScaler`` then ``LogisticRegression`` (L2, C=1), scored by
    mean accuracy over seeded, shuffled ``StratifiedKFold`` folds.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        At least 2 classes, each with at least ``cv`` rows.
    cv : int, default 5
        Folds.
    max_iter : int, default 200
        Solver iterations per fold; the probe is scored as it stands when they run out.
    random_state : int, default 0

    Returns
    -------
    float in [0, 1]
    """
    X = _as_2d(X)
    y = _check_y(y, len(X))
    cv = _check_size(cv, "cv")
    if cv is None:
        raise ValueError("cv must be an integer >= 2, got None")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least 2 classes, got {classes.tolist()}")
    if counts.min() < cv:
        small = {c: int(n) for c, n in zip(classes.tolist(), counts) if n < cv}
        raise ValueError(f"every class needs at least cv = {cv} rows for {cv}-fold cross-validation; too few: {small}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(probe, X, y, cv=folds)
    return float(np.mean(scores))


def _centered(X, name):
    X = _as_2d(X, name)
    return X - X.mean(axis=0)


def _cka_centered(Xc, Yc, norm_x=None, norm_y=None):
    norm_x = np.linalg.norm(Xc.T @ Xc) if norm_x is None else norm_x
    norm_y = np.linalg.norm(Yc.T @ Yc) if norm_y is None else norm_y
    if norm_x == 0.0 or norm_y == 0.0:
        return 0.0
    cross = np.linalg.norm(Yc.T @ Xc) ** 2
    return float(min(1.0, cross / (norm_x * norm_y)))


def linear_cka(X, Y):
    """Centered linear CKA between two representations of the same inputs.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc`` and
    ``Yc`` (Kornblith et al., 2019). It is 1 for ``X`` against itself, and unchanged by
    orthogonal transforms and isotropic scaling of either representation.

    Parameters
    ----------
    X : ndarray of shape (n_samples, p) or (n_samples,)
    Y : ndarray of shape (n_samples, q) or (n_samples,)
        1-D arrays are one feature.

    Returns
    -------
    float in [0, 1]
        0 when either representation is constant (it shares nothing with any other).
    """
    Xc, Yc = _centered(X, "X"), _centered(Y, "Y")
    if len(Xc) != len(Yc):
        raise ValueError(f"X and Y must describe the same inputs, got {len(Xc)} and {len(Yc)} rows")
    with threadpool_limits(limits=1):
        return _cka_centered(Xc, Yc)


def one_hot_cka(X, y):
    """Linear CKA between ``X`` (n_samples, p) and the one-hot encoding of ``y`` (at least 2 labels)."""
    X = _as_2d(X)
    y = _check_y(y, len(X))
    labels = np.unique(y)
    if len(labels) < 2:
        raise ValueError(f"one-hot CKA needs at least 2 labels, got {labels.tolist()}")
    return linear_cka(X, (y[:, None] == labels[None, :]).astype(np.float64))


def cka_matrix(arrays):
    """Linear CKA between every pair of representations.

    Parameters
    ----------
    arrays : sequence or dict of ndarray of shape (n_samples, p_i)
        The same inputs in each (e.g. one array per layer); a dict's values in order.

    Returns
    -------
    ndarray of shape (n_arrays, n_arrays)
        Symmetric, 1 on the diagonal (0 for a constant representation).
    """
    arrays = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
    if not arrays:
        raise ValueError("arrays is empty; give at least one representation")
    centred = [_centered(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    sizes = sorted({len(a) for a in centred})
    if len(sizes) != 1:
        raise ValueError(f"every representation must describe the same inputs, got row counts {sizes}")
    n = len(centred)
    out = np.zeros((n, n))
    with threadpool_limits(limits=1):
        norms = [np.linalg.norm(a.T @ a) for a in centred]
        for i in range(n):
            out[i, i] = 1.0 if norms[i] > 0 else 0.0
            for j in range(i + 1, n):
                out[i, j] = out[j, i] = _cka_centered(centred[i], centred[j], norms[i], norms[j])
    return out


# --------------------------------------------------------------------------- per layer of an experiment


def _known_rows(exp, rows):
    labels, split = np.asarray(exp.labels), np.asarray(exp.split)
    if rows is None:
        rows = np.arange(len(labels))
    else:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            raise ValueError("rows must be row indices, not a boolean mask; pass np.flatnonzero(mask)")
        rows = rows.astype(np.int64).ravel()
        bad = rows[(rows < 0) | (rows >= len(labels))]
        if len(bad):
            raise ValueError(f"rows must be in 0..{len(labels) - 1}, got {bad[:5].tolist()}")
    known = rows[np.isin(labels[rows], list(exp.classes)) & (split[rows] != 2)]
    if len(known) == 0:
        raise ValueError(f"rows hold no training or held-out rows of the trained classes {list(exp.classes)}")
    return known


def _row(layer, kind, X, clusters, y, sample, cv, random_state):
    agree = cluster_agreement(clusters, y)
    return {
        "layer": layer,
        "kind": kind,
        "label_silhouette": label_silhouette(X[sample], y[sample], sample_size=None),
        "nmi": agree["nmi"],
        "ari": agree["ari"],
        "purity": agree["purity"],
        "probe_accuracy": probe_accuracy(X[sample], y[sample], cv=cv, random_state=random_state),
        "cka_labels": one_hot_cka(X, y),
    }


def _check_components(n_components):
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    return int(n_components)


def _pca_solver():
    """The exact PCA solver to use: the covariance matrix's eigenvectors (scikit-learn >= 1.5; a
    third of the full SVD's time on 1,730 x 784 pixels, the same components to 1e-12), else the
    full SVD."""
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return "covariance_eigh" if (major, minor) >= (1, 5) else "full"


def input_representation(exp, *, n_components=INPUT_COMPONENTS, random_state=0):
    """The raw input of every row, as :func:`input_separation` measures it.

    Parameters
    ----------
    exp : Experiment
        Uses ``images`` (one image per row), ``labels``, ``split`` and ``classes``.
    n_components : int, default :data:`INPUT_COMPONENTS`
        Inputs with more features are reduced by PCA to this many components, fitted
        on the training rows of the trained classes (all rows transformed).
    random_state : int, default 0

    Returns
    -------
    X : ndarray of shape (n_rows, n_features)
        Pixels scaled to [0, 1] (images of dtype uint8 are divided by 255), or their
        PCA components.
    description : str
        What ``X`` is, in words, e.g. ``"pixels, PCA to 50 of 784 components, 93% of their variance"``.
    """
    n_components = _check_components(n_components)
    images = getattr(exp, "images", None)
    n = len(np.asarray(exp.labels))
    if images is None or len(images) != n:
        got = None if images is None else len(images)
        raise ValueError(f"the experiment must hold one input image per row ({n}) to measure the input, got {got}")
    images = np.asarray(images)
    X = images.reshape(n, -1).astype(np.float64)
    if images.dtype == np.uint8:
        X /= 255.0
    X = _as_2d(X, "the input images")
    n_pixels = X.shape[1]
    fit = np.flatnonzero((np.asarray(exp.split) == 0) & np.isin(exp.labels, list(exp.classes)))
    if len(fit) < 2:
        fit = _known_rows(exp, None)
    keep = min(n_components, n_pixels, len(fit))
    if keep >= n_pixels or np.ptp(X[fit], axis=0).max() == 0.0:
        return X, f"pixels, {n_pixels} features"
    from sklearn.decomposition import PCA

    with threadpool_limits(limits=1):
        pca = PCA(n_components=keep, svd_solver=_pca_solver(), random_state=random_state).fit(X[fit])
        X = pca.transform(X)
    kept = float(np.sum(pca.explained_variance_ratio_))
    return X, f"pixels, PCA to {keep} of {n_pixels} components, {kept:.0%} of their variance"


def input_separation(exp, *, rows=None, sample_size=2000, cv=5, random_state=0, n_components=INPUT_COMPONENTS):
    """The separation measures of the raw input itself: the reference row of the table.

    The input (:func:`input_representation`) is clustered like a hidden layer: k-means
    with K chosen by silhouette over the experiment's K range
    (:class:`~signatures.clustering.LayerKMeans` with its sample size and seed), fitted
    on the training rows and assigned to the others. Then every measure of
    :func:`separation_table` is computed on the same rows.

    Parameters
    ----------
    exp : Experiment
    rows, sample_size, cv, random_state
        As in :func:`separation_table`.
    n_components : int, default :data:`INPUT_COMPONENTS`

    Returns
    -------
    dict
        ``layer`` (:data:`INPUT_LAYER`), ``kind`` (``"input"``), ``representation`` (words,
        see :func:`input_representation`), ``k`` (clusters) and the measures of a table row.
    """
    from .clustering import LayerKMeans

    known = _known_rows(exp, rows)
    y = np.asarray(exp.labels)[known]
    if len(np.unique(y)) < 2:
        raise ValueError(f"separation needs rows of at least 2 classes, got only {np.unique(y).tolist()}")
    sample = _stratified_sample(y, _check_size(sample_size, "sample_size"), random_state)
    X_all, description = input_representation(exp, n_components=n_components, random_state=random_state)
    config = exp.config
    fit = np.flatnonzero((np.asarray(exp.split) == 0) & np.isin(exp.labels, list(exp.classes)))
    if len(fit) < 3:
        fit = known
    k_range = [k for k in config.k_range if k <= len(fit) - 1] or [2]
    est = LayerKMeans(k_range=k_range, sample_size=config.sample_size, random_state=config.seed).fit(X_all[fit])
    X = X_all[known]
    row = _row(INPUT_LAYER, "input", X, est.predict(X), y, sample, cv, random_state)
    row["representation"] = description
    row["k"] = int(est.k_)
    return row


def separation_table(exp, *, rows=None, sample_size=2000, cv=5, random_state=0, include_input=False,
                     input_row=None):
    """How well each hidden layer separates the trained classes.

    Parameters
    ----------
    exp : Experiment
        Uses ``layers``, ``hidden``, ``paths`` (the layers' cluster ids), ``labels``,
        ``split`` and ``classes``.
    rows : ndarray of int, optional
        Rows to use; only training and held-out rows of the trained classes among them
        count. All such rows by default.
    sample_size : int or None, default 2000
        Most rows for the silhouette and the probe (seeded sample stratified by class).
    cv : int, default 5
        Folds of the probe.
    random_state : int, default 0
    include_input : bool, default False
        Put the raw input's row (:func:`input_separation`, ``"kind": "input"``) first, as
        the reference the hidden layers are read against.
    input_row : dict, optional
        That row computed already (by :func:`input_separation` of the same rows, e.g. in a
        run's side process): used instead of computing it again.

    Returns
    -------
    list of dict
        One per hidden layer, in order: ``layer``, ``kind`` (``"hidden"``),
        ``label_silhouette``, ``nmi``, ``ari``, ``purity``, ``probe_accuracy``,
        ``cka_labels`` (see the module notes); with ``include_input``, the input's row first.
    """
    if not isinstance(include_input, (bool, np.bool_)):
        raise ValueError(f"include_input must be True or False, got {include_input!r}")
    known = _known_rows(exp, rows)
    y = np.asarray(exp.labels)[known]
    if len(np.unique(y)) < 2:
        raise ValueError(f"separation needs rows of at least 2 classes, got only {np.unique(y).tolist()}")
    sample = _stratified_sample(y, _check_size(sample_size, "sample_size"), random_state)
    paths = np.asarray(exp.paths)
    table = []
    if include_input:
        table.append(input_row if input_row is not None else
                     input_separation(exp, rows=rows, sample_size=sample_size, cv=cv, random_state=random_state))
    for i, layer in enumerate(exp.layers):
        X = np.asarray(exp.hidden[layer])[known].astype(np.float64)
        table.append(_row(layer, "hidden", X, paths[known, i], y, sample, cv, random_state))
    return table


def layer_cka(exp, *, rows=None):
    """Layer x layer linear CKA of an experiment's hidden layers (in ``exp.layers`` order).

    Uses the training and held-out rows of the trained classes among ``rows`` (all by
    default). Returns an ndarray of shape (n_layers, n_layers).
    """
    known = _known_rows(exp, rows)
    return cka_matrix([np.asarray(exp.hidden[layer])[known] for layer in exp.layers])


def _fmt(value):
    return "nan" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _is_input(row):
    return row.get("kind") == "input"


def first_separating_layer(table, *, rule=None):
    """The first hidden layer that meets the separation rule, and why, in words.

    Parameters
    ----------
    table : list of dict
        From :func:`separation_table`, layers in order. A row of the raw input
        (``"kind": "input"``) is never picked; the reason quotes it for reference.
    rule : dict, optional
        Metric -> least value; every condition must hold. Default :data:`DEFAULT_RULE`
        (NMI >= 0.5 and probe accuracy >= 0.95; see the module notes for why).

    Returns
    -------
    layer : str or None
        None if no hidden layer meets the rule.
    reason : str
    """
    rule = dict(DEFAULT_RULE if rule is None else rule)
    if not rule:
        raise ValueError("rule is empty; give at least one metric and its least value, e.g. {'nmi': 0.5}")
    bad = {k: v for k, v in rule.items()
           if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v)}
    if bad:
        raise ValueError(f"rule thresholds must be finite numbers, got {bad}")
    table = list(table)
    reference = next((row for row in table if _is_input(row)), None)
    table = [row for row in table if not _is_input(row)]
    if not table:
        raise ValueError("table is empty; it needs one row per hidden layer")
    unknown = sorted(k for k in rule if any(k not in row for row in table))
    if unknown:
        raise ValueError(f"rule names metrics {unknown} that the table lacks; it has {sorted(table[0])}")

    def name(key):
        return _METRIC_NAMES.get(key, key)

    def failures(row):
        return [k for k, least in rule.items() if not (row.get(k) is not None and row[k] >= least)]

    def shortfall(row):
        return ", ".join(f"{name(k)} {_fmt(row.get(k))} < {rule[k]:g}" for k in failures(row))

    def met(row):
        return " and ".join(f"{name(k)} {_fmt(row[k])} >= {rule[k]:g}" for k in rule)

    note = ""
    if reference is not None:
        values = ", ".join(f"{name(k)} {_fmt(reference.get(k))}" for k in rule)
        verdict = "already meets the rule" if not failures(reference) else "does not meet the rule"
        what = reference.get("representation") or "the raw input"
        note = f" For reference, the input itself ({what}) has {values}: it {verdict}."
    for i, row in enumerate(table):
        if failures(row):
            continue
        reason = f"{row['layer']} is the first layer where the classes separate: {met(row)}"
        if i > 0:
            reason += "; before it, " + "; ".join(f"{r['layer']} has {shortfall(r)}" for r in table[:i])
        later = [r for r in table[i + 1:] if failures(r)]
        if later:
            reason += "; note that later " + "; ".join(
                f"{r['layer']} falls short again ({shortfall(r)})" for r in later)
        return row["layer"], reason + "." + note
    wanted = " and ".join(f"{name(k)} >= {least:g}" for k, least in rule.items())
    return None, f"no layer meets the rule ({wanted}): " + "; ".join(
        f"{r['layer']} has {shortfall(r)}" for r in table) + "." + note
