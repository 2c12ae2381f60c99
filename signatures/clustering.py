"""Per-layer k-means with K chosen by silhouette score (or another criterion).

Criteria for K (``criterion=``)
    ``"silhouette"`` (the design's default): the K of the best silhouette, as below.
    ``"classes"``: the best silhouette among K >= the number of classes (``fit(X, y)``), so
    that every class can have a cluster of its own.
    ``"faithfulness"``: the K whose clusters best predict the model's output (``fit(X, y)``
    with ``y`` the predicted class): each cluster predicts its most common class, and the
    share predicted right is measured on the half of the sample the vote did not see
    (two-fold, seeded); the smallest K within ``FAITHFUL_MARGIN`` (0.005) of the best wins,
    since more clusters never hurt this measure much.
    ``"fixed"``: ``k`` clusters.
    ``criterion_scores_`` holds the curve the choice was made on (K -> score).

Choosing K
    For each K in ``k_range``, k-means is fitted on a seeded random sample of at most
    ``sample_size`` rows (default 2,000) and scored by the silhouette on that sample;
    the K with the best score wins (ties go to the smaller K). Only then is k-means fitted
    once on all rows with the chosen K. The silhouette costs O(n^2), so at n = 12,000
    the sample makes K selection about 20-40 times faster on one thread. ``bench/bench_core.py`` measures
    both the speed-up and how often the sampled choice equals the exhaustive one
    (k-means with n_init=10 and the silhouette on every row, for every K); the figures
    are in ``docs/performance.md``.

Threads
    k-means runs on ``n_threads`` OpenMP threads (default 1). On a shared 2-core machine
    (a web server with several kernels, a test run beside it) multi-threaded k-means on
    a 2,000-row sample spends most of its time spin-waiting for the other core: measured
    here, the clustering stage of a 1-vs-7 experiment took 7-18 s on 2 threads and 3.4 s
    on one (``docs/performance.md``).

Large layers
    A layer of more than :data:`MAX_FIT_CELLS` values (rows x units: wide conv maps kept
    whole over tens of thousands of inputs) gets its k-means fitted on a seeded sample of
    ``MAX_FIT_CELLS // units`` rows, and every row is assigned to its nearest center a
    block at a time; memory-mapped activations are never read whole. ``fitted_rows_`` and
    ``note_`` say so, and the stored clustering state keeps it.

Layers with few distinct rows
    K may be as large as the number of distinct activation vectors ``d``: at K = d the
    best k-means partition puts each distinct vector in a cluster of its own, every cluster
    is a set of identical points, and the silhouette is exact (1 for a point that shares
    its cluster with copies of itself, 0 for a point alone). The sweep scores that
    partition directly rather than asking k-means for it, and skips (NaN) every K above
    the number of distinct rows of the sample it scores. So ``np.repeat(np.eye(3), 10,
    axis=0)`` gets K = 3 with silhouette 1.0. The silhouette itself needs
    ``K <= n_samples - 1``, which :func:`check_k_range` enforces.

    A layer whose activations are all equal (a dead layer) or that has fewer distinct
    rows than the smallest K is not an error: the fit records what happened in
    ``status_`` (``"ok"``, ``"constant"`` or ``"few-distinct"``) and ``note_``, and
    assigns clusters that are still well defined (one cluster, or one per distinct row).
    A K range cut short by the number of distinct rows keeps ``status_ = "ok"`` and says
    so in ``note_``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import inspect
from contextlib import contextmanager

import numpy as np
from threadpoolctl import threadpool_limits

from ._mapped import drop_pages

# scikit-learn (with scipy, ~1 s and ~90 MiB) is imported only to fit: a page kernel that reads
# stored clusterings (LayerKMeans.from_dict, predict) never loads it.

__all__ = ["check_k_range", "silhouette_sweep", "faithfulness_sweep", "select_k", "LayerKMeans", "cluster_layers", "each_layer",
           "CRITERIA"]

DEFAULT_K_RANGE = range(2, 11)
#: Ways to choose K (see the module notes).
CRITERIA = ("silhouette", "classes", "faithfulness", "fixed")
#: Faithfulness within this of the best counts as a tie; the smallest such K wins.
FAITHFUL_MARGIN = 0.005
#: A layer with more values than this (rows x units) gets its k-means fitted on a seeded sample
#: of rows, and every row assigned to its nearest center afterwards (about 150 MiB as float64).
MAX_FIT_CELLS = 20_000_000


def _shape(X):
    """The shape of an array (a memory-mapped one is not read) or of an array-like."""
    shape = getattr(X, "shape", None)
    return tuple(shape) if shape is not None else np.shape(X)


def check_k_range(k_range, n_samples=None):
    """Validate a K range and return it as a sorted tuple of ints.

    Parameters
    ----------
    k_range : iterable of int
    n_samples : int, optional
        Rows to be clustered: the silhouette needs ``2 <= K <= n_samples - 1``.
    """
    try:
        ks = sorted({int(k) for k in k_range})
    except (TypeError, ValueError):
        raise ValueError(f"K range must hold integers, got {k_range!r}") from None
    if not ks:
        raise ValueError(f"K range is empty ({k_range!r}); give at least one K >= 2, e.g. 2..10")
    if ks[0] < 2:
        raise ValueError(f"K range must have K >= 2 (a silhouette needs two clusters), got K = {ks[0]}")
    if n_samples is not None and ks[-1] > n_samples - 1:
        raise ValueError(
            f"K range goes up to K = {ks[-1]} but only {n_samples} inputs are clustered; "
            f"K must be <= n - 1 = {n_samples - 1}"
        )
    return tuple(ks)


def _check_X(X):
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must hold numbers (activations), got an array of dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must hold at least one row and one column, got shape {X.shape}")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise ValueError(f"X has NaN or infinite values in {bad} of {len(X)} rows; cannot cluster")
    return X


def _positive_int(value, what, *, minimum=1, allow_none=False):
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{what} must be an integer >= {minimum}{extra}, got {value!r}")
    return int(value)


def _check_options(sample_size, n_init, random_state, n_threads):
    _positive_int(sample_size, "sample_size", minimum=2, allow_none=True)
    _positive_int(n_init, "n_init")
    _positive_int(random_state, "random_state", minimum=0)
    _positive_int(n_threads, "n_threads", allow_none=True)


def _kmeans(k, n_init, random_state):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=random_state)


@contextmanager
def _quiet_fit(n_threads):
    """k-means on ``n_threads`` OpenMP threads, its ConvergenceWarning (duplicate rows) silenced."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(), threadpool_limits(limits=n_threads, user_api="openmp"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


#: Most rows whose distance matrix :func:`silhouette_sweep` computes once for every K (3,000 rows: 72 MB).
PRECOMPUTE_ROWS = 3000


def silhouette_sweep(X, *, k_range=DEFAULT_K_RANGE, sample_size=2000, n_init=4, random_state=0, n_threads=1):
    """Silhouette score of k-means for every K.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    k_range : iterable of int
    sample_size : int or None
        Fit and score on a seeded random sample of this many rows; ``None`` uses all
        rows (the exhaustive sweep).
    n_init : int
        k-means restarts per K.
    random_state : int
    n_threads : int or None
        OpenMP threads for k-means (``None``: scikit-learn's default, all cores).

    Returns
    -------
    dict[int, float]
        K -> silhouette score (NaN where k-means found fewer than two clusters).
    """
    X = _check_X(X)
    ks = check_k_range(k_range, len(X))
    _check_options(sample_size, n_init, random_state, n_threads)
    if sample_size is not None and len(X) > sample_size:
        rng = np.random.default_rng(random_state)
        X = X[np.sort(rng.choice(len(X), size=int(sample_size), replace=False))]
    distinct, inverse = np.unique(X, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    scores = {}
    distances = []  # every K scores the same rows: their distances are computed once (up to PRECOMPUTE_ROWS)
    for k in ks:
        if k > len(X) - 1 or k > len(distinct):
            scores[k] = float("nan")
            continue
        if k == len(distinct):
            labels = inverse  # one cluster per distinct row: the partition k-means would find, exactly
        else:
            with _quiet_fit(n_threads):
                labels = _kmeans(k, n_init, random_state).fit_predict(X)
        if len(np.unique(labels)) < 2:
            scores[k] = float("nan")
        else:
            from sklearn.metrics import silhouette_score

            if len(X) > PRECOMPUTE_ROWS:
                scores[k] = float(silhouette_score(X, labels))
                continue
            if not distances:
                from sklearn.metrics import pairwise_distances

                d = pairwise_distances(X)
                np.fill_diagonal(d, 0.0)
                distances.append(d)
            scores[k] = float(silhouette_score(distances[0], labels, metric="precomputed"))
    return scores


def faithfulness_sweep(X, y, *, k_range=DEFAULT_K_RANGE, sample_size=2000, n_init=4, random_state=0, n_threads=1):
    """How well each K's clusters predict ``y`` (the model's output), on held-apart halves.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        The class each row is predicted as.

    Returns
    -------
    dict[int, float]
        K -> share of rows whose class is their cluster's majority class, the majority
        taken on the other half of the sample (two-fold, seeded).
    """
    X = _check_X(X)
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"y must give one class per row: {len(y)} for {len(X)} rows")
    rng = np.random.default_rng(random_state)
    rows = np.arange(len(X))
    if sample_size is not None and len(X) > sample_size:
        rows = np.sort(rng.choice(len(X), size=sample_size, replace=False))
    Xs, ys = X[rows], y[rows]
    half = rng.permutation(len(rows)) % 2 == 0
    scores = {}
    for k in check_k_range(k_range, len(Xs)):
        with _quiet_fit(n_threads):
            labels = _kmeans(k, n_init, random_state).fit_predict(Xs)
        right = 0
        for fit, test in ((half, ~half), (~half, half)):
            vote = {}
            for c in np.unique(labels[fit]):
                values, counts = np.unique(ys[fit & (labels == c)], return_counts=True)
                vote[c] = values[np.argmax(counts)]
            fallback = np.unique(ys[fit], return_counts=True)
            fallback = fallback[0][np.argmax(fallback[1])]
            guess = np.array([vote.get(c, fallback) for c in labels[test]])
            right += int((guess == ys[test]).sum())
        scores[k] = right / len(ys)
    return scores


def _best_k(scores):
    finite = {k: s for k, s in scores.items() if np.isfinite(s)}
    if not finite:
        return None
    best = max(finite.values())
    return min(k for k, s in finite.items() if s == best)


def select_k(X, *, k_range=DEFAULT_K_RANGE, sample_size=2000, n_init=4, random_state=0, n_threads=1):
    """The K with the best silhouette score (see :func:`silhouette_sweep` for the options).

    Returns
    -------
    k : int
    scores : dict[int, float]
    """
    scores = silhouette_sweep(X, k_range=k_range, sample_size=sample_size, n_init=n_init,
                              random_state=random_state, n_threads=n_threads)
    return _best_k(scores), scores


class LayerKMeans:
    """k-means on one layer's activations, K chosen by silhouette.

    Parameters
    ----------
    k_range : iterable of int, default range(2, 11)
    sample_size : int or None, default 2000
        Rows used to choose K (see the module notes); the final fit uses all rows.
    n_init : int, default 4
        k-means restarts, for the sweep and for the final fit.
    random_state : int, default 0
    n_threads : int or None, default 1
        OpenMP threads for k-means (see the module notes); ``None`` for all cores.
    criterion : {"silhouette", "classes", "faithfulness", "fixed"}, default "silhouette"
        How K is chosen (see the module notes).
    k : int, optional
        The number of clusters for ``criterion="fixed"``.

    Attributes
    ----------
    k_ : int
        Number of clusters.
    labels_ : ndarray of shape (n_samples,)
    centers_ : ndarray of shape (k_, n_features)
    silhouette_scores_ : dict[int, float]
        K -> silhouette score; empty for a constant layer.
    criterion_ : str
        How K was chosen (see the module notes).
    criterion_scores_ : dict[int, float]
        The curve K was chosen on (the silhouette, or the faithfulness); empty for a fixed K.
    status_ : {"ok", "constant", "few-distinct"}
    note_ : str
        What happened, in words, when ``status_`` is not ``"ok"`` or when fewer distinct
        rows than the largest K cut the K range short; empty otherwise.
    """

    def __init__(self, *, k_range=DEFAULT_K_RANGE, sample_size=2000, n_init=4, random_state=0, n_threads=1,
                 criterion="silhouette", k=None, max_fit_cells=MAX_FIT_CELLS):
        self.k_range = k_range
        self.sample_size = sample_size
        self.n_init = n_init
        self.random_state = random_state
        self.n_threads = n_threads
        self.criterion = criterion
        self.k = k
        self.max_fit_cells = max_fit_cells

    # scikit-learn's estimator protocol, written here so that reading a stored clustering needs no
    # scikit-learn: ``sklearn.base.clone`` and parameter grids work as with its own estimators.
    def get_params(self, deep=True):
        """The constructor's parameters, by name."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    def set_params(self, **params):
        """Set constructor parameters by name; an unknown name is refused."""
        known = self.get_params()
        for name, value in params.items():
            if name not in known:
                raise ValueError(f"LayerKMeans has no parameter {name!r}; it has {sorted(known)}")
            setattr(self, name, value)
        return self

    def fit_predict(self, X, y=None):
        """:meth:`fit`, then the cluster of every row of ``X``."""
        return self.fit(X, y).labels_

    def __repr__(self):
        changed = {name: value for name, value in self.get_params().items()
                   if value is not inspect.signature(type(self).__init__).parameters[name].default}
        return f"LayerKMeans({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def _check_criterion(self, y, n_rows):
        if self.criterion not in CRITERIA:
            raise ValueError(f"the K criterion must be one of {list(CRITERIA)}, got {self.criterion!r}")
        if self.criterion in ("classes", "faithfulness"):
            if y is None:
                raise ValueError(f"the K criterion {self.criterion!r} needs the class of every row: fit(X, y)")
            if len(y) != n_rows:
                raise ValueError(f"y must give one class per row: {len(y)} for {n_rows} rows")
        if self.criterion == "fixed":
            k = self.k
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n_rows:
                raise ValueError(f"a fixed K must be a whole number from 1 to {n_rows - 1}, got {k!r}")

    def _choose(self, X, y, usable):
        """The K the criterion picks among ``usable``, and the curve it picked it on."""
        options = dict(sample_size=self.sample_size, n_init=self.n_init, random_state=self.random_state,
                       n_threads=self.n_threads)
        if self.criterion == "fixed":
            k = min(int(self.k), usable[-1])
            if k < int(self.k):
                self.note_ = f"only {usable[-1]} distinct activation vectors: fixed K = {self.k} cut to {k}"
            return k, {}
        if self.criterion == "faithfulness":
            curve = faithfulness_sweep(X, y, k_range=usable, **options)
            best = max(curve.values())
            return min(k for k, v in curve.items() if v >= best - FAITHFUL_MARGIN), curve
        if self.criterion == "classes":
            n_classes = len(np.unique(y))
            wanted = [k for k in usable if k >= n_classes]
            if not wanted:
                wanted = [usable[-1]]
                self.note_ = (f"K range ends at {usable[-1]}, below the {n_classes} classes: K = {usable[-1]}")
            usable = wanted
        self.silhouette_scores_ = silhouette_sweep(X, k_range=usable, **options)
        return _best_k(self.silhouette_scores_) or usable[0], dict(self.silhouette_scores_)

    def fit(self, X, y=None):
        """Choose K and fit k-means on the rows of ``X`` (n_samples, n_features).

        ``y`` (the class of each row) is needed by the ``"classes"`` and ``"faithfulness"``
        criteria and ignored otherwise. ``X`` may be memory-mapped: when it holds more than
        ``max_fit_cells`` values (rows x units), k-means is fitted on a seeded random sample of
        ``max_fit_cells // n_units`` rows (at least ``sample_size``) and every row is then
        assigned to its nearest center, a block of rows at a time (``fitted_rows_`` and
        ``note_`` say so). Otherwise on all rows, as before.
        """
        shape = _shape(X)
        if len(shape) == 2 and self.max_fit_cells is not None and shape[0] * shape[1] > self.max_fit_cells:
            _positive_int(self.max_fit_cells, "max_fit_cells")
            rng = np.random.default_rng(self.random_state)
            n_fit = min(shape[0], max(int(self.sample_size or 2), self.max_fit_cells // shape[1]))
            rows = np.sort(rng.choice(shape[0], size=n_fit, replace=False))
            self._fit_rows(_check_X(X[rows]), None if y is None else np.asarray(y)[rows])
            self.labels_ = self.predict(X)
            self.fitted_rows_ = int(n_fit)
            said = (f"k-means fitted on a random sample of {n_fit:,} of the {shape[0]:,} rows ({shape[1]:,} units "
                    f"each); every row then assigned to its nearest center")
            self.note_ = f"{self.note_}; {said}" if self.note_ else said
            return self
        X = _check_X(X)
        self._fit_rows(X, y)
        self.fitted_rows_ = len(X)
        return self

    def _fit_rows(self, X, y):
        ks = check_k_range(self.k_range, len(X))
        _check_options(self.sample_size, self.n_init, self.random_state, self.n_threads)
        y = None if y is None else np.asarray(y)
        self._check_criterion(y, len(X))
        if self.criterion == "fixed":
            ks = tuple(sorted(set(ks) | {int(self.k)})) if self.k >= 2 else ks
        self.criterion_ = self.criterion
        self.criterion_scores_ = {}
        distinct, inverse = np.unique(X, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        self.silhouette_scores_ = {}
        self.status_, self.note_ = "ok", ""
        if len(distinct) == 1:
            self.status_ = "constant"
            self.note_ = "all activations are equal (a dead or saturated layer): one cluster"
            self.k_ = 1
            self.centers_ = distinct.copy()
            self.labels_ = np.zeros(len(X), dtype=np.int64)
            return self
        usable = [k for k in ks if k <= len(distinct)]
        if not usable:
            self.status_ = "few-distinct"
            self.note_ = (
                f"only {len(distinct)} distinct activation vectors, fewer than the smallest K = {ks[0]}: "
                "one cluster per distinct vector"
            )
            self._fit_distinct(distinct, inverse)
            return self
        if len(usable) < len(ks):
            self.note_ = f"only {len(distinct)} distinct activation vectors: K limited to {usable[-1]}"
        k, self.criterion_scores_ = self._choose(X, y, usable)
        if k == 1:
            self.k_, self.centers_ = 1, X.mean(axis=0, keepdims=True)
            self.labels_ = np.zeros(len(X), dtype=np.int64)
            return self
        if k == len(distinct):
            self._fit_distinct(distinct, inverse)
            return self
        with _quiet_fit(self.n_threads):
            km = _kmeans(k, self.n_init, self.random_state).fit(X)
        self.k_ = int(k)
        self.centers_ = km.cluster_centers_
        self.labels_ = km.labels_.astype(np.int64)
        return self

    def _fit_distinct(self, distinct, inverse):
        """One cluster per distinct row: centers are the distinct rows, inertia 0."""
        self.k_ = len(distinct)
        self.centers_ = distinct.copy()
        self.labels_ = inverse.astype(np.int64)

    def _nearest(self, X):
        X = np.asarray(X, dtype=np.float64)
        d = (
            np.einsum("ij,ij->i", X, X)[:, None]
            - 2.0 * X @ self.centers_.T
            + np.einsum("ij,ij->i", self.centers_, self.centers_)[None, :]
        )
        return np.argmin(d, axis=1).astype(np.int64)

    def _blocks(self, X):
        """``X`` checked, a block of rows at a time (at most 32 MiB as float64): memory-mapped
        activations are never read whole."""
        if not hasattr(self, "centers_"):
            raise ValueError("this LayerKMeans is not fitted yet; call fit(X) first")
        shape = _shape(X)
        if len(shape) == 2 and shape[1] != self.centers_.shape[1]:
            raise ValueError(f"X has {shape[1]} features, the clusters were fitted on {self.centers_.shape[1]}")
        if len(shape) != 2 or shape[0] == 0:
            yield _check_X(X)
            return
        step = max(1, (32 << 20) // (8 * max(1, shape[1])))
        for start in range(0, shape[0], step):
            yield _check_X(X[start:start + step])
            drop_pages(X)

    def predict(self, X):
        """Assign rows to the fitted clusters (nearest center), without refitting."""
        return np.concatenate([self._nearest(block) for block in self._blocks(X)])

    def distances(self, X):
        """Euclidean distance of each row to its nearest center, shape (n_samples,)."""
        out = []
        for block in self._blocks(X):
            out.append(np.linalg.norm(block - self.centers_[self._nearest(block)], axis=1))
        return np.concatenate(out)

    def to_dict(self):
        """Fitted state as plain values (centers as a list), for storage."""
        return {
            "params": {
                "k_range": list(check_k_range(self.k_range)),
                "sample_size": self.sample_size,
                "n_init": self.n_init,
                "random_state": self.random_state,
                "n_threads": self.n_threads,
                "max_fit_cells": self.max_fit_cells,
            },
            "fitted_rows": getattr(self, "fitted_rows_", None),
            "k": self.k_,
            "silhouette_scores": {str(k): v for k, v in self.silhouette_scores_.items()},
            "criterion": getattr(self, "criterion_", self.criterion),
            "criterion_scores": {str(k): v for k, v in getattr(self, "criterion_scores_", {}).items()},
            "status": self.status_,
            "note": self.note_,
        }

    @classmethod
    def from_dict(cls, state, centers, labels=None):
        """Rebuild a fitted estimator from :meth:`to_dict` output and its centers."""
        est = cls(**state["params"])
        est.k_ = int(state["k"])
        est.silhouette_scores_ = {int(k): float(v) for k, v in state["silhouette_scores"].items()}
        est.status_ = state["status"]
        est.note_ = state["note"]
        est.criterion_ = state.get("criterion", "silhouette")
        est.criterion_scores_ = {int(k): float(v) for k, v in state.get(
            "criterion_scores", state["silhouette_scores"]).items()}
        est.centers_ = np.asarray(centers, dtype=np.float64)
        if state.get("fitted_rows") is not None:
            est.fitted_rows_ = int(state["fitted_rows"])
        if labels is not None:
            est.labels_ = np.asarray(labels, dtype=np.int64)
        return est


def cluster_layers(hidden, *, k_range=DEFAULT_K_RANGE, sample_size=2000, n_init=4, random_state=0, progress=None,
                   criterion="silhouette", k=None, y=None):
    """Fit one :class:`LayerKMeans` per layer.

    Parameters
    ----------
    hidden : dict[str, ndarray of shape (n_samples, n_units)]
    k_range, sample_size, n_init, random_state, criterion, k
        As for :class:`LayerKMeans`.
    y : ndarray of shape (n_samples,), optional
        The class of every row, for the ``"classes"`` and ``"faithfulness"`` criteria.
    progress : callable, optional
        ``progress(stage, fraction, message)`` after each layer.

    Returns
    -------
    OrderedDict[str, LayerKMeans]
    """
    return each_layer(hidden, lambda X: LayerKMeans(k_range=k_range, sample_size=sample_size, n_init=n_init,
                                                    random_state=random_state, criterion=criterion, k=k).fit(X, y),
                      progress=progress)


def each_layer(hidden, fit, *, progress=None):
    """``fit(activations)`` of every layer, in order, with the layer named in errors and progress.

    Parameters
    ----------
    hidden : dict[str, array of shape (n_samples, n_units)]
    fit : callable
        Returns a fitted :class:`LayerKMeans` for one layer's activations.
    progress : callable, optional
        ``progress("clustering", fraction, "layer NAME: K = k")`` after each layer.

    Returns
    -------
    OrderedDict[str, LayerKMeans]
    """
    out = OrderedDict()
    names = list(hidden)
    if not names:
        raise ValueError("hidden must hold at least one layer's activations, got none")
    for i, name in enumerate(names, start=1):
        try:
            out[name] = est = fit(hidden[name])
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
        if progress:
            extra = f" ({est.status_}: {est.note_})" if est.status_ != "ok" else ""
            progress("clustering", i / len(names), f"layer {name}: K = {est.k_}{extra}")
    return out
