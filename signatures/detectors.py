"""Out-of-distribution detectors of the field, and the signature score, under one API.

Every detector gives a *score* per input, larger = more anomalous (more likely an unseen
class), so all of them are compared with the same metrics. Features are plain arrays: the
network's output (probabilities or logits) or a layer's activations, one row per input.

Baselines (the field's own methods)
    ``msp``: one minus the maximum softmax probability (Hendrycks & Gimpel 2017).
    ``maxlogit``: minus the largest logit (Hendrycks et al. 2022; Vaze et al. 2022).
    ``energy``: the free energy ``-T logsumexp(logits / T)`` (Liu et al. 2020).
    :class:`Mahalanobis`: the smallest Mahalanobis distance to a class mean, with one
    covariance shared by the classes (tied), shrunk towards a scaled identity by the
    Ledoit-Wolf formula (Lee et al. 2018, without input pre-processing), per layer.
    :class:`KNN`: the distance to the k-th nearest training input after scaling every row to
    unit length (Sun et al. 2022), per layer.
    :class:`DkNN`: deep k-nearest neighbours (Papernot & McDaniel 2018): the number of
    neighbours, summed over layers, whose label differs from a candidate label; calibrated
    on held-out inputs; the score is one minus the credibility of the best label.

The signature score (:class:`SignatureScore`) is built on what this tool is about, the
clusters of every layer: an input's distance to its nearest cluster of a layer, measured
with that cluster's own (Ledoit-Wolf shrunk) covariance, is turned into a conformal
p-value against held-out inputs of the trained classes; the layers' p-values are combined
by a weighted Fisher statistic (the weights: how well each statistic tells a left-out known
class from the other known classes, never the unseen ones), and that statistic is
calibrated once more against the held-out inputs, so the combined p-value is calibrated
too: for an input drawn like the held-out ones, ``P(p <= alpha) <= alpha``.

Metrics (:func:`detection_metrics`): AUROC, the false-positive rate at 95% true-positive
rate, and the area under the precision-recall curve (unseen inputs are the positives).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

__all__ = [
    "msp",
    "max_logit",
    "energy",
    "Mahalanobis",
    "KNN",
    "DkNN",
    "SignatureScore",
    "conformal_pvalues",
    "detection_metrics",
    "fpr_at_tpr",
]

# scikit-learn is imported where a detector is fitted or scored: reading the names and titles
# (the findings, the pages) needs none of it.


def _ledoit_wolf(X, **kwargs):
    from sklearn.covariance import ledoit_wolf as fit

    return fit(X, **kwargs)


def _nearest_neighbors(**kwargs):
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(**kwargs)


def _rows(X, what="features"):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"{what} must be a non-empty array of shape (n_samples, n_features), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    return X


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------
# Output-based scores
# ---------------------------------------------------------------------------------------


def msp(probs):
    """``1 - max_j p_j`` per row; ``probs`` of shape (n_samples, n_classes)."""
    probs = _rows(probs, "probabilities")
    return 1.0 - probs.max(axis=1)


def max_logit(logits):
    """``-max_j z_j`` per row; ``logits`` of shape (n_samples, n_classes)."""
    return -_rows(logits, "logits").max(axis=1)


def energy(logits, *, temperature=1.0):
    """Free energy ``-T logsumexp(z / T)`` per row (larger = more anomalous)."""
    z = _rows(logits, "logits")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    t = float(temperature)
    m = z.max(axis=1, keepdims=True)
    return -t * (np.log(np.exp((z - m) / t).sum(axis=1)) + m[:, 0] / t)


# ---------------------------------------------------------------------------------------
# Feature-based detectors (estimators: fit on training rows, score new rows)
# ---------------------------------------------------------------------------------------


def _shrunk_precision(centered):
    """Precision matrix of Ledoit-Wolf shrunk covariance of already centered rows."""
    cov, _ = _ledoit_wolf(centered, assume_centered=True)
    return np.linalg.pinv(cov, hermitian=True)


class Mahalanobis:
    """Smallest squared Mahalanobis distance to a class mean, tied shrunk covariance.

    Parameters
    ----------
    shrinkage : {"ledoit-wolf"} or float in [0, 1]
        Ledoit-Wolf's formula, or a fixed weight of the scaled identity.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    means_ : ndarray of shape (n_classes, n_features)
    precision_ : ndarray of shape (n_features, n_features)
    """

    def __init__(self, *, shrinkage="ledoit-wolf"):
        self.shrinkage = shrinkage

    def fit(self, X, y):
        X = _rows(X)
        y = np.asarray(y)
        if len(y) != len(X):
            raise ValueError(f"labels must give one class per row: {len(y)} labels for {len(X)} rows")
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        centered = X - self.means_[np.searchsorted(self.classes_, y)]
        if self.shrinkage == "ledoit-wolf":
            self.precision_ = _shrunk_precision(centered)
        else:
            s = float(self.shrinkage)
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"shrinkage must be 'ledoit-wolf' or a number from 0 to 1, got {self.shrinkage!r}")
            cov = centered.T @ centered / len(X)
            mu = np.trace(cov) / len(cov)
            self.precision_ = np.linalg.pinv((1 - s) * cov + s * mu * np.eye(len(cov)), hermitian=True)
        return self

    def distances(self, X):
        """Squared Mahalanobis distance of each row to each class mean, shape (n, n_classes)."""
        X = _rows(X)
        out = np.empty((len(X), len(self.means_)))
        for j, mean in enumerate(self.means_):
            d = X - mean
            out[:, j] = np.einsum("ij,jk,ik->i", d, self.precision_, d)
        return np.maximum(out, 0.0)

    def score(self, X):
        return self.distances(X).min(axis=1)


class KNN:
    """Distance to the k-th nearest training row, rows scaled to unit length.

    Parameters
    ----------
    k : int
        Which neighbour (Sun et al. use 50 with 50,000 training rows; a few per
        thousand training rows works similarly).
    normalize : bool
        Scale every row to unit Euclidean length first (the method's key step).
    """

    def __init__(self, *, k=10, normalize=True):
        self.k = k
        self.normalize = normalize

    def _prep(self, X):
        X = _rows(X)
        if self.normalize:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        return X

    def fit(self, X, y=None):
        k = _positive_int(self.k, "k")
        X = self._prep(X)
        if k > len(X):
            raise ValueError(f"k = {k} is larger than the {len(X)} training rows")
        self.nn_ = _nearest_neighbors(n_neighbors=k).fit(X)
        return self

    def score(self, X, *, exclude_self=False):
        """k-th neighbour distance; ``exclude_self`` for rows that are themselves training rows."""
        k = int(self.k) + (1 if exclude_self else 0)
        dist, _ = self.nn_.kneighbors(self._prep(X), n_neighbors=k)
        return dist[:, -1]


class DkNN:
    """Deep k-nearest neighbours nonconformity over several layers, calibrated.

    Parameters
    ----------
    k : int
        Neighbours per layer.

    Notes
    -----
    ``fit(layers_train, y_train, layers_cal, y_cal)``: per layer a neighbour index of the
    training rows; the calibration rows' nonconformity with their true label is the
    reference. ``score`` returns ``1 - max_j p_j`` where ``p_j`` is the share of calibration
    nonconformities at least as large as the input's nonconformity with label ``j``.
    """

    def __init__(self, *, k=10):
        self.k = k

    def _alpha(self, layers):
        """Nonconformity with every class, shape (n, n_classes)."""
        total = None
        for name, nn in self.nn_.items():
            _, idx = nn.kneighbors(_rows(layers[name]), n_neighbors=self.k_)
            labels = self.y_[idx]  # (n, k)
            counts = np.stack([(labels == c).sum(axis=1) for c in self.classes_], axis=1)
            alpha = self.k_ - counts
            total = alpha if total is None else total + alpha
        return total

    def fit(self, layers_train, y_train, layers_cal, y_cal):
        self.k_ = _positive_int(self.k, "k")
        self.y_ = np.asarray(y_train)
        self.classes_ = np.unique(self.y_)
        self.nn_ = OrderedDict((name, _nearest_neighbors(n_neighbors=self.k_).fit(_rows(X)))
                               for name, X in layers_train.items())
        y_cal = np.asarray(y_cal)
        alpha = self._alpha(layers_cal)
        self.calibration_ = np.sort(alpha[np.arange(len(y_cal)), np.searchsorted(self.classes_, y_cal)])
        return self

    def score(self, layers):
        alpha = self._alpha(layers)
        n = len(self.calibration_)
        # share of calibration nonconformities >= alpha (credibility of each label)
        p = (n - np.searchsorted(self.calibration_, alpha, side="left")) / n
        return 1.0 - p.max(axis=1)


# ---------------------------------------------------------------------------------------
# Conformal p-values and the signature score
# ---------------------------------------------------------------------------------------


def conformal_pvalues(reference, scores, *, leave_one_out=False):
    """``p = (1 + #{reference >= s}) / (1 + n)`` per score (larger score = more anomalous).

    With ``leave_one_out`` the scores are the reference itself, each left out of its own
    reference, so that held-out inputs get calibrated p-values too.
    """
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    n = len(ref)
    if n == 0:
        raise ValueError("the reference holds no scores")
    at_least = n - np.searchsorted(ref, s, side="left")
    if leave_one_out:
        if len(s) != n:
            raise ValueError("leave_one_out needs the reference's own scores")
        return at_least / n  # (1 + #others >= s) / (1 + (n - 1)), the input itself counted once
    return (1.0 + at_least) / (1.0 + n)


class SignatureScore:
    """How unlike the known paths an input is, layer by layer, with calibrated p-values.

    At every layer (the input itself may be one, as the first), two statistics of an input:

    - its negative log-likelihood under a Gaussian mixture whose components are the
      layer's clusters (k-means on the training rows; the experiment's own clusters,
      refined to at least ``n_components`` when they are fewer), each with its own mean,
      Ledoit-Wolf shrunk covariance and share of the training rows;
    - the distance to its ``k``-th nearest training row, rows scaled to unit length.

    Each statistic becomes a conformal p-value against the held-out inputs of the trained
    classes. They are combined by a weighted Fisher statistic ``sum_j w_j (-2 log p_j)``,
    which is calibrated once more against the held-out inputs (leave-one-out), so the final
    p-value is calibrated whatever the weights: for an input drawn like the held-out ones,
    ``P(p <= alpha) <= alpha`` (up to the weights' own dependence on the held-out inputs).
    Layers wider than ``max_features`` are reduced by a PCA fitted on the training rows
    first.

    The weights (``weighting="leave-one-class-out"``, with the classes of the training and
    held-out rows given and at least three of them) come from the known classes only: each
    known class in turn is left out, the statistics are fitted on the other classes, and a
    statistic's weight is how much better than chance it tells the left-out class's held-out
    inputs from the others' (``max(AUROC - 0.5, 0)``, averaged over the left-out classes).
    A layer whose statistics do not tell a known class apart from the others (a CNN's
    pooled 8-filter map, say) thus counts little, instead of diluting the strong ones. With
    fewer than three known classes, without classes, or with ``weighting="equal"``, every
    statistic weighs the same (Fisher's plain statistic).

    Parameters
    ----------
    n_components : int
        Least number of mixture components per layer.
    k : int
        Which neighbour's distance (0 turns the neighbour statistic off).
    min_cluster : int
        A component with fewer training rows uses the layer's pooled covariance.
    max_features : int
        Widest layer taken as it is.
    weighting : {"leave-one-class-out", "equal"}
        How the statistics are weighted in the combination.
    random_state : int
        Seeds the refining k-means and the PCA.

    Attributes
    ----------
    statistics_ : list of str
        ``"<layer>:density"`` and ``"<layer>:neighbours"`` in layer order.
    weights_ : ndarray of shape (n_statistics,)
        Weight of each statistic (sum 1).
    weighting_ : str
        The weighting used (``"equal"`` where leave-one-class-out was not possible).
    class_aurocs_ : ndarray of shape (n_classes, n_statistics) or None
        Leave-one-class-out AUROC of each statistic, per left-out class.

    Notes
    -----
    ``fit(layers_train, layers_cal, clusters=None, *, y_train=None, y_cal=None)``: ordered
    dicts layer -> rows; ``clusters`` layer -> cluster id of each training row; ``y_train``,
    ``y_cal`` the class of each training and held-out row. ``pvalues(layers)`` gives the
    combined calibrated p-values, ``layer_pvalues(layers)`` the per-statistic ones, and
    ``score`` is ``-log p``.
    """

    WEIGHTINGS = ("leave-one-class-out", "equal")

    def __init__(self, *, n_components=20, k=10, min_cluster=10, max_features=64, weighting="leave-one-class-out",
                 random_state=0):
        self.n_components = n_components
        self.k = k
        self.min_cluster = min_cluster
        self.max_features = max_features
        self.weighting = weighting
        self.random_state = random_state

    # -- per layer -------------------------------------------------------------------
    def _features(self, name, X):
        X = _rows(X, f"rows of layer {name!r}")
        pca = self.pca_.get(name)
        return X if pca is None else pca.transform(X)

    def _fit_layer(self, name, X, labels):
        from sklearn.cluster import KMeans

        if labels is None or len(np.unique(labels)) < self.n_components:
            k = min(int(self.n_components), len(np.unique(X, axis=0)))
            labels = KMeans(k, n_init=4, random_state=self.random_state).fit(X).labels_
        labels = np.asarray(labels)
        ids = np.unique(labels)
        means = np.stack([X[labels == c].mean(axis=0) for c in ids])
        pooled, _ = _ledoit_wolf(X - means[np.searchsorted(ids, labels)], assume_centered=True)
        parts = []
        for i, c in enumerate(ids):
            member = labels == c
            cov = (_ledoit_wolf(X[member] - means[i], assume_centered=True)[0]
                   if member.sum() >= self.min_cluster else pooled)
            _, logdet = np.linalg.slogdet(cov + 1e-9 * np.eye(len(cov)))
            parts.append((means[i], np.linalg.pinv(cov, hermitian=True), logdet, np.log(member.mean())))
        knn = None
        if self.k:
            knn = KNN(k=min(int(self.k), len(X))).fit(X)
        return parts, knn

    def _nll(self, parts, X):
        logp = np.stack([weight - 0.5 * (np.einsum("ij,jk,ik->i", X - mean, precision, X - mean) + logdet)
                         for mean, precision, logdet, weight in parts], axis=1)
        top = logp.max(axis=1)
        return -(top + np.log(np.exp(logp - top[:, None]).sum(axis=1)))

    def _statistics(self, name, X, *, exclude_self=False):
        parts, knn = self.layers_[name]
        X = self._features(name, X)
        out = [self._nll(parts, X)]
        if knn is not None:
            out.append(knn.score(X, exclude_self=exclude_self))
        return out

    # -- estimator ------------------------------------------------------------------
    def fit(self, layers_train, layers_cal, clusters=None, *, y_train=None, y_cal=None):
        from sklearn.decomposition import PCA

        for what in ("n_components", "min_cluster", "max_features"):
            _positive_int(getattr(self, what), what)
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 0:
            raise ValueError(f"k must be a whole number >= 0, got {self.k!r}")
        if self.weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {list(self.WEIGHTINGS)}, got {self.weighting!r}")
        names = list(layers_train)
        if not names:
            raise ValueError("give at least one layer")
        missing = [n for n in names if n not in layers_cal]
        if missing:
            raise ValueError(f"layers {missing} have no held-out rows")
        if (y_train is None) != (y_cal is None):
            raise ValueError("give the classes of both the training rows (y_train) and the held-out rows (y_cal), or neither")
        n_train, n_cal = len(layers_train[names[0]]), len(layers_cal[names[0]])
        if y_train is not None:
            y_train, y_cal = np.asarray(y_train), np.asarray(y_cal)
            if len(y_train) != n_train or len(y_cal) != n_cal:
                raise ValueError(f"y_train and y_cal must give one class per row: {len(y_train)} and {len(y_cal)} "
                                 f"classes for {n_train} training and {n_cal} held-out rows")
        clusters = clusters or {}
        self.pca_, self.layers_, self.statistics_ = {}, OrderedDict(), []
        reference = []
        for name in names:
            X = _rows(layers_train[name], f"training rows of layer {name!r}")
            if X.shape[1] > self.max_features:
                self.pca_[name] = PCA(self.max_features, random_state=self.random_state).fit(X)
                X = self.pca_[name].transform(X)
            self.layers_[name] = self._fit_layer(name, X, clusters.get(name))
            stats = self._statistics(name, layers_cal[name])
            self.statistics_ += [f"{name}:density"] + ([f"{name}:neighbours"] if len(stats) > 1 else [])
            reference += stats
        self.reference_ = reference
        self.weights_, self.weighting_, self.class_aurocs_ = self._weights(layers_train, layers_cal, clusters,
                                                                           y_train, y_cal)
        self.combined_reference_ = self._combine(self._pvalues_of(reference, reference, leave_one_out=True))
        return self

    def _weights(self, layers_train, layers_cal, clusters, y_train, y_cal):
        """Weights of the statistics: leave-one-class-out AUROC above chance, or equal."""
        equal = np.full(len(self.statistics_), 1.0 / len(self.statistics_))
        if self.weighting == "equal" or y_train is None:
            return equal, "equal", None
        classes = np.unique(y_train)
        if len(classes) < 3 or not all((y_cal == c).any() and (y_cal != c).any() for c in classes):
            return equal, "equal", None
        from sklearn.metrics import roc_auc_score

        aurocs = []
        for c in classes:
            fit, ref, out = y_train != c, y_cal != c, y_cal == c
            part = SignatureScore(n_components=self.n_components, k=self.k, min_cluster=self.min_cluster,
                                  max_features=self.max_features, weighting="equal",
                                  random_state=self.random_state)
            part.fit({n: np.asarray(v)[fit] for n, v in layers_train.items()},
                     {n: np.asarray(v)[ref] for n, v in layers_cal.items()},
                     {n: np.asarray(v)[fit] for n, v in clusters.items()})
            p_ref = part._pvalues_of(part.reference_, part.reference_, leave_one_out=True)
            p_out = part.layer_pvalues({n: np.asarray(v)[out] for n, v in layers_cal.items()})
            positive = np.r_[np.zeros(len(p_ref)), np.ones(len(p_out))]
            aurocs.append([roc_auc_score(positive, -np.log(np.r_[p_ref[:, j], p_out[:, j]]))
                           for j in range(p_ref.shape[1])])
        aurocs = np.asarray(aurocs)
        above = np.maximum(aurocs.mean(axis=0) - 0.5, 0.0)
        if above.sum() <= 0:
            return equal, "equal", aurocs
        return above / above.sum(), "leave-one-class-out", aurocs

    def _pvalues_of(self, reference, stats, *, leave_one_out=False):
        return np.stack([conformal_pvalues(r, s, leave_one_out=leave_one_out) for r, s in zip(reference, stats)],
                        axis=1)

    def _combine(self, p):
        return -2.0 * np.log(p) @ self.weights_

    def layer_pvalues(self, layers):
        """Calibrated p-value of each statistic (see ``statistics_``), shape (n, n_statistics)."""
        stats = [s for name in self.layers_ for s in self._statistics(name, layers[name])]
        return self._pvalues_of(self.reference_, stats)

    def pvalues(self, layers, *, calibration=False):
        """Combined calibrated p-values; ``calibration=True`` for the held-out rows themselves."""
        if calibration:
            return conformal_pvalues(self.combined_reference_, self.combined_reference_, leave_one_out=True)
        return conformal_pvalues(self.combined_reference_, self._combine(self.layer_pvalues(layers)))

    def score(self, layers, *, calibration=False):
        return -np.log(self.pvalues(layers, calibration=calibration))


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def fpr_at_tpr(scores, is_positive, *, tpr=0.95):
    """False-positive rate at the first threshold reaching ``tpr`` of the positives."""
    from sklearn.metrics import roc_curve

    fpr, tprs, _ = roc_curve(np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=np.float64))
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])


def detection_metrics(scores, is_positive):
    """AUROC, FPR at 95% TPR and AUPR of one score (unseen inputs are the positives).

    Returns None for each metric when only one kind of input is present.
    """
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) != len(s):
        raise ValueError(f"scores and labels differ in length: {len(s)} and {len(y)}")
    if y.all() or not y.any():
        return {"auroc": None, "fpr95": None, "aupr": None}
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"auroc": float(roc_auc_score(y, s)), "fpr95": fpr_at_tpr(s, y), "aupr": float(average_precision_score(y, s))}


# ---------------------------------------------------------------------------------------
# All detectors over one experiment's rows
# ---------------------------------------------------------------------------------------

#: Detector names in the order tables show them (layer-wise ones get ``:<layer>``).
BASELINES = ("msp", "maxlogit", "energy", "mahalanobis", "knn", "dknn")


def _fisher_calibrated(per_layer_cal, per_layer_new):
    """Fisher-combine per-layer scores through conformal p-values against the held-out rows.

    Returns combined scores (``-log`` of the calibrated combined p-value) for the held-out
    rows (leave-one-out) and for the new rows.
    """
    p_cal = np.stack([conformal_pvalues(c, c, leave_one_out=True) for c in per_layer_cal], axis=1)
    p_new = np.stack([conformal_pvalues(c, s) for c, s in zip(per_layer_cal, per_layer_new)], axis=1)
    f_cal, f_new = -2 * np.log(p_cal).sum(axis=1), -2 * np.log(p_new).sum(axis=1)
    return (-np.log(conformal_pvalues(f_cal, f_cal, leave_one_out=True)),
            -np.log(conformal_pvalues(f_cal, f_new)))


def detector_scores(hidden, labels, split, *, probs, logits=None, clusters=None, inputs=None, k=10,
                    signature=True, random_state=0):
    """Every detector's score of the held-out and unseen rows.

    Parameters
    ----------
    hidden : dict[str, ndarray of shape (n, n_units)]
        Activations of every row, per layer, in layer order.
    labels, split : ndarray of shape (n,)
        True class; 0 training, 1 held-out of the trained classes, 2 unseen classes.
    probs : ndarray of shape (n, n_classes)
    logits : ndarray of shape (n, n_classes), optional
        For MaxLogit and energy (left out without them).
    clusters : dict[str, ndarray of shape (n_train,)], optional
        The cluster of every training row per layer (the experiment's paths), which the
        signature score refines into its mixture components.
    inputs : ndarray of shape (n, ...), optional
        The inputs themselves (pixels), taken by the signature score as its first layer.
    k : int
        Neighbours of kNN and DkNN.
    signature : bool
        Also compute the signature score (:class:`SignatureScore`).
    random_state : int

    Returns
    -------
    rows : ndarray of int
        The scored rows (split 1 and 2), in order.
    scores : OrderedDict[str, ndarray]
        Detector -> score per scored row (larger = more anomalous). Layer-wise detectors
        appear once per layer (``mahalanobis:hidden_1``) and combined over layers
        (``mahalanobis``: Fisher's combination of calibrated per-layer p-values; ``knn``:
        the last layer, as Sun et al.).
    """
    split = np.asarray(split)
    labels = np.asarray(labels)
    train, cal = split == 0, split == 1
    rows = np.flatnonzero(split != 0)
    is_cal = split[rows] == 1
    names = list(hidden)
    if not names:
        raise ValueError("give at least one layer")
    if not cal.any() or not train.any():
        raise ValueError("the detectors need training rows (split 0) and held-out rows (split 1)")
    scores = OrderedDict()
    scores["msp"] = msp(np.asarray(probs)[rows])
    if logits is not None:
        scores["maxlogit"] = max_logit(np.asarray(logits)[rows])
        scores["energy"] = energy(np.asarray(logits)[rows])
    maha, kn = {}, {}
    for name in names:
        X = np.asarray(hidden[name], dtype=np.float64)
        maha[name] = Mahalanobis().fit(X[train], labels[train]).score(X[rows])
        kn[name] = KNN(k=min(k, int(train.sum()))).fit(X[train]).score(X[rows])
    combined_cal, combined_new = _fisher_calibrated([maha[n][is_cal] for n in names],
                                                    [maha[n][~is_cal] for n in names])
    combined = np.empty(len(rows))
    combined[is_cal], combined[~is_cal] = combined_cal, combined_new
    scores["mahalanobis"] = combined
    scores["knn"] = kn[names[-1]]
    dknn = DkNN(k=min(k, int(train.sum()))).fit(
        {n: hidden[n][train] for n in names}, labels[train], {n: hidden[n][cal] for n in names}, labels[cal])
    scores["dknn"] = dknn.score({n: hidden[n][rows] for n in names})
    if signature:
        layers = OrderedDict(hidden)
        if inputs is not None:
            layers = OrderedDict([("input", np.asarray(inputs, dtype=np.float64).reshape(len(split), -1))]
                                 + list(layers.items()))
        sig = SignatureScore(random_state=random_state).fit(
            {n: v[train] for n, v in layers.items()}, {n: v[cal] for n, v in layers.items()}, clusters,
            y_train=labels[train], y_cal=labels[cal])
        s = np.empty(len(rows))
        s[is_cal] = sig.score(None, calibration=True)
        s[~is_cal] = sig.score({n: v[rows[~is_cal]] for n, v in layers.items()})
        scores["signature"] = s
    for name in names:
        scores[f"mahalanobis:{name}"] = maha[name]
        scores[f"knn:{name}"] = kn[name]
    return rows, scores


def detector_table(rows, scores, labels, split):
    """Metrics of every detector, overall and per unseen class.

    Returns
    -------
    dict
        ``{"overall": {detector: metrics}, "per_class": {class: {detector: metrics}},
        "n_heldout": int, "n_unseen": {class: int}}`` with metrics as :func:`detection_metrics`.
    """
    labels, split = np.asarray(labels)[rows], np.asarray(split)[rows]
    unseen = split == 2
    out = {"overall": {}, "per_class": {}, "n_heldout": int((~unseen).sum()),
           "n_unseen": {int(c): int(((labels == c) & unseen).sum()) for c in np.unique(labels[unseen])}}
    for name, s in scores.items():
        out["overall"][name] = detection_metrics(s, unseen)
    for c in out["n_unseen"]:
        keep = ~unseen | (labels == c)
        out["per_class"][c] = {name: detection_metrics(s[keep], unseen[keep]) for name, s in scores.items()}
    return out


#: Detectors whose ROC curves and table rows the pages and the report show, in order.
SHOWN = ("signature", "msp", "maxlogit", "energy", "mahalanobis", "knn", "dknn", "mc_entropy", "mc_mi")
#: Plain names of the detectors, as the pages show them.
TITLES = {
    "signature": "signature score (this tool)", "msp": "max softmax", "maxlogit": "max logit", "energy": "energy",
    "mahalanobis": "Mahalanobis (all layers)", "knn": "kNN (last layer)", "dknn": "deep kNN",
    "mc_entropy": "MC-dropout entropy", "mc_mi": "MC-dropout mutual information",
}


def _spearman(a, b):
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # a constant score has no rank correlation
    return float(spearmanr(a, b).statistic)


def uncertainty_correlations(uncertainty, others):
    """Spearman correlation of each Monte-Carlo-dropout quantity with each other score, on the same rows.

    Parameters
    ----------
    uncertainty : dict[str, ndarray of shape (n,)]
        E.g. ``{"mc_entropy": ..., "mc_mi": ...}``.
    others : dict[str, ndarray of shape (n,)]
        E.g. the path rarity and the signature score.

    Returns
    -------
    dict[str, dict[str, float or None]]
        ``[uncertainty name][other name]``; None where a score is constant.
    """
    return {u: {o: _spearman(values, other) for o, other in others.items()} for u, values in uncertainty.items()}


def _roc_points(scores, positive, n=60):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(positive, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(n, len(fpr))).round().astype(int))
    return {"fpr": [round(float(v), 4) for v in fpr[keep]], "tpr": [round(float(v), 4) for v in tpr[keep]]}


def experiment_detectors(exp, *, unseen=None, k=10, random_state=0):
    """Every detector of an experiment, told apart on its held-out and unseen rows.

    Parameters
    ----------
    exp : Experiment
    unseen : list of int, optional
        The unseen classes taken as positives (default: every unseen class stored).

    Returns
    -------
    dict or None
        None without held-out or unseen rows; else :func:`detector_table`'s dict for the
        detectors in :data:`SHOWN` plus the per-layer ones, with ``unseen`` (the classes),
        ``roc`` (detector -> ``fpr``/``tpr`` points for :data:`SHOWN`), ``best_baseline``
        and ``calibration`` (share of held-out inputs whose signature p-value is below 0.01,
        0.05 and 0.1).
    """
    unseen = list(exp.unseen) if unseen is None else [int(c) for c in unseen]
    keep = (exp.split != 2) | np.isin(exp.labels, unseen)
    if not unseen or not (exp.split[keep] == 1).any() or not (exp.split[keep] == 2).any():
        return None
    rows_all = np.flatnonzero(keep)
    split, labels = exp.split[rows_all], exp.labels[rows_all]
    hidden = OrderedDict((n, exp.hidden[n][rows_all]) for n in exp.layers)
    train = split == 0
    clusters = {n: exp.paths[rows_all][train, j] for j, n in enumerate(exp.layers)}
    logits = None if getattr(exp, "logits", None) is None else exp.logits[rows_all]
    inputs = exp.images[rows_all].reshape(len(rows_all), -1).astype(np.float64) / 255.0
    rows, scores = detector_scores(hidden, labels, split, probs=exp.probs[rows_all], logits=logits,
                                   clusters=clusters, inputs=inputs, k=k, random_state=random_state)
    mc = getattr(exp, "uncertainty", None)
    if mc is not None:  # Monte-Carlo dropout of a model with dropout: the field's uncertainty, beside the rest
        scores["mc_entropy"] = np.asarray(mc["entropy"], dtype=np.float64)[rows_all][rows]
        scores["mc_mi"] = np.asarray(mc["mutual_information"], dtype=np.float64)[rows_all][rows]
    table = detector_table(rows, scores, labels, split)
    if mc is not None:
        from .anomaly import path_rarity

        paths, predicted = exp.paths[rows_all], exp.predicted[rows_all]
        rarity = path_rarity(paths[train], paths[rows], predicted=predicted[rows], train_predicted=predicted[train])
        table["uncertainty"] = {
            "passes": int(mc.get("passes", 0)),
            "spearman": uncertainty_correlations({"mc_entropy": scores["mc_entropy"], "mc_mi": scores["mc_mi"]},
                                                 {"path_rarity": rarity, "signature": scores["signature"]}),
        }
    positive = split[rows] == 2
    table["unseen"] = unseen
    table["roc"] = {name: _roc_points(scores[name], positive) for name in SHOWN if name in scores}
    baselines = [n for n in SHOWN if n != "signature" and n in table["overall"]]
    table["best_baseline"] = max(baselines, key=lambda n: table["overall"][n]["auroc"])
    p_cal = np.exp(-scores["signature"][~positive])
    table["calibration"] = {str(a): float((p_cal < a).mean()) for a in (0.01, 0.05, 0.1)}
    return table
