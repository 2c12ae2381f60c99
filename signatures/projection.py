"""UMAP projection of each layer's activations to 2-D, seeded and stored with the results.

The map of a layer is fitted on in-distribution inputs only; other inputs (anomalies)
are placed on it with ``transform``, so unseen digits do not shape the map they are
shown on. With ``random_state`` set, umap-learn runs single-threaded and gives the same
map for the same seed.

Below :data:`EXACT_NEIGHBOURS_BELOW` rows umap-learn finds exact nearest neighbours from
all pairwise distances, but with ``metric="euclidean"`` it gets them from scikit-learn's
``pairwise_distances`` calling a numba metric from Python once per pair. :class:`Projection`
computes that matrix itself, vectorized (``sklearn.metrics.pairwise.euclidean_distances``),
and fits ``umap.UMAP(metric="precomputed")`` on it; new rows are placed from their
distances to the fitted rows. The neighbours are the same exact euclidean ones; fit is
about 2x and transform about 5x faster. The matrix takes at most 64 MiB (4,095 rows) while
the map is held. From that many rows on, umap-learn's approximate nearest-neighbour
descent (``metric="euclidean"``) is used as before.

umap-learn compiles its numba kernels on the first fit in a process (15 to 45 s here).
:func:`import_umap` keeps them compiled on disk, so only the first process on a machine
pays it (0.2 s to load them afterwards); :func:`warm_up` runs the same code path as a real
map on a few points, before a user is waiting.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np

__all__ = ["Projection", "fit_projection", "project_layers", "choose_rows", "warm_up",
           "EXACT_NEIGHBOURS_BELOW", "N_EPOCHS",
           "import_umap", "numba_cache_dir"]

#: Optimisation epochs of a map (umap-learn's own default for maps of more than 10,000 rows; it
#: runs 500 below that). On the canonical experiments' layers (2,000 rows each) 200 epochs keep the
#: map as faithful: trustworthiness (15 neighbours) 0.9677 against 0.9700, and equal to within 0.0006
#: on four other layers, in 1.2-1.4 s a map instead of 2.6-2.8 s. ``transform`` runs a third as many.
N_EPOCHS = 200

#: umap-learn 0.5 computes exact neighbours when fewer rows than this are fitted
#: (``umap_.py``: ``X[index].shape[0] < 4096 and not self.force_approximation_algorithm``).
EXACT_NEIGHBOURS_BELOW = 4096


#: Where umap-learn's compiled numba kernels are kept between processes (see :func:`import_umap`).
NUMBA_CACHE_ENV = "SIGNATURES_NUMBA_CACHE"
_CACHING = {"dir": None, "functions": 0}


def numba_cache_dir():
    """The folder for compiled UMAP kernels: ``$SIGNATURES_NUMBA_CACHE``, else ``$NUMBA_CACHE_DIR``,
    else ``signatures/numba`` in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    import os
    from pathlib import Path

    given = os.environ.get(NUMBA_CACHE_ENV) or os.environ.get("NUMBA_CACHE_DIR")
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "signatures" / "numba"


def import_umap():
    """Import umap-learn with its numba kernels cached on disk; returns the module.

    umap-learn compiles its kernels in every new process (15 to 45 s here) because almost none
    is declared ``cache=True``. The first import in a process turns numba's own disk cache on for
    every compiled function of umap-learn and pynndescent (``Dispatcher.enable_caching``), in
    :func:`numba_cache_dir`: the first process compiles and saves them, the next ones load them
    (numba keys each entry on the source file and the CPU, so an upgrade recompiles). A folder
    that cannot be written leaves caching off: maps are the same, only slower to start.
    """
    import importlib
    import sys

    if "umap" not in sys.modules and "tensorflow" not in sys.modules:
        # umap-learn's package imports its ParametricUMAP, hence TensorFlow (6-8 s) when it is
        # installed; a process without TensorFlow (the run's side process) never needs it. The
        # submodule stays importable by name afterwards.
        sys.modules["umap.parametric_umap"] = None
        try:
            importlib.import_module("umap")
        finally:
            if sys.modules.get("umap.parametric_umap", 0) is None:
                del sys.modules["umap.parametric_umap"]
    import umap  # imported lazily: slow, and the gallery never needs it
    import umap.umap_

    own = getattr(umap.umap_, "init_graph_transform", None)
    if own is not None and own is not init_graph_transform:
        _REPLACED["init_graph_transform"] = own  # kept: the tests compare the two
        umap.umap_.init_graph_transform = init_graph_transform  # the same positions, without a Python loop

    if _CACHING["dir"] is None:
        _CACHING["dir"] = ""
        folder = numba_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{id(folder)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            return umap
        import numba
        from numba.core.registry import CPUDispatcher

        numba.config.CACHE_DIR = str(folder)
        count = 0
        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in ("umap", "pynndescent"):
                continue
            for obj in list(vars(module).values()):
                if isinstance(obj, CPUDispatcher) and type(obj._cache).__name__ == "NullCache":
                    obj.enable_caching()
                    count += 1
        _CACHING.update(dir=str(folder), functions=count)
    return umap


#: umap-learn's functions that :func:`import_umap` replaced, by name.
_REPLACED = {}


def init_graph_transform(graph, embedding):
    """Where ``UMAP.transform`` starts each new point: umap-learn's rule, vectorised.

    umap-learn's own ``init_graph_transform`` loops over the new points in Python (a quarter of
    a second for 900 points); :func:`import_umap` puts this one in its place. The rule is the
    same: a point with no neighbour in the fitted data starts at NaN; a point with an edge of
    strength 1 (identical to a fitted point) starts at that point, the first such edge in the
    row's order; any other point starts at its neighbours' positions averaged with the edge
    strengths as weights.

    Parameters
    ----------
    graph : scipy.sparse.csr_matrix of shape (n_new, n_fitted)
        Edge strengths between the new points and the fitted ones.
    embedding : ndarray of shape (n_fitted, n_components)

    Returns
    -------
    ndarray of shape (n_new, n_components), float32
    """
    import scipy.sparse as sp

    graph = sp.csr_matrix(graph)
    embedding = np.asarray(embedding)
    sums = np.asarray(graph.sum(axis=1), dtype=np.float64).ravel()
    weights = sp.diags(np.divide(1.0, sums, out=np.zeros_like(sums), where=sums != 0)) @ graph
    result = np.asarray(weights @ embedding.astype(np.float64), dtype=np.float32)
    counts = np.diff(graph.indptr)
    result[counts == 0] = np.nan
    ones = np.flatnonzero(graph.data == 1)
    if len(ones):
        rows = np.searchsorted(graph.indptr, ones, side="right") - 1
        first = np.unique(rows, return_index=True)[1]  # the first edge of strength 1 in each row
        result[rows[first]] = embedding[graph.indices[ones[first]]]
    return result


def _umap(n_points, *, metric, n_neighbors, min_dist, random_state):
    umap = import_umap()

    return umap.UMAP(
        n_components=2,
        metric=metric,
        n_neighbors=max(2, min(int(n_neighbors), n_points - 1)),
        min_dist=min_dist,
        random_state=random_state,
        n_epochs=N_EPOCHS,
        n_jobs=1,
    )


def _rows(X, what="X"):
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {X.shape}")
    return X


def _distances(X, Y=None):
    """Euclidean distances, vectorized, as float32.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    Y : ndarray of shape (n_other, n_features), optional
        Without it, the distances within ``X``: a symmetric matrix with an exact zero diagonal.

    Returns
    -------
    ndarray of shape (n_samples, n_other or n_samples), float32
    """
    from sklearn.metrics.pairwise import euclidean_distances  # float32 in: summed in float64 blocks

    if Y is not None:
        return np.asarray(euclidean_distances(X, Y), dtype=np.float32)
    D = np.asarray(euclidean_distances(X), dtype=np.float32)
    D = np.maximum(D, D.T)
    np.fill_diagonal(D, 0.0)
    return D


class Projection:
    """A seeded 2-D UMAP map of rows that can place new rows.

    Parameters
    ----------
    n_neighbors : int, default 15
        Capped at ``n_samples - 1``.
    min_dist : float, default 0.1
    random_state : int, default 0

    Attributes
    ----------
    embedding_ : ndarray of shape (n_samples, 2), float32
        The map of the fitted rows.
    metric_ : {"precomputed", "euclidean"}
        ``"precomputed"`` below :data:`EXACT_NEIGHBOURS_BELOW` rows (exact euclidean
        neighbours from a vectorized distance matrix), ``"euclidean"`` from there on
        (umap-learn's nearest-neighbour descent).
    reducer_ : umap.UMAP
        The fitted umap-learn estimator. With ``metric_ == "precomputed"`` its own
        ``transform`` takes distances to the fitted rows, not rows: use :meth:`transform`.
    n_features_in_ : int
    """

    def __init__(self, *, n_neighbors=15, min_dist=0.1, random_state=0):
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state

    def fit(self, X):
        """Fit the map on rows of ``X`` (n_samples, n_features); returns ``self``."""
        X = _rows(X)
        if len(X) < 4:
            raise ValueError(f"UMAP needs at least 4 points, got {len(X)}")
        exact = len(X) < EXACT_NEIGHBOURS_BELOW
        self.metric_ = "precomputed" if exact else "euclidean"
        self.reducer_ = _umap(len(X), metric=self.metric_, n_neighbors=self.n_neighbors,
                              min_dist=self.min_dist, random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seed disables parallelism; no inverse_transform
            self.reducer_.fit(_distances(X) if exact else X)
        self._fit_X = X if exact else None
        self.n_features_in_ = X.shape[1]
        self.embedding_ = self.reducer_.embedding_
        return self

    def transform(self, X):
        """Place new rows ``X`` (n_new, n_features) on the fitted map.

        Returns
        -------
        ndarray of shape (n_new, 2), float32
        """
        X = _rows(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but the map was fitted on {self.n_features_in_}")
        if len(X) == 0:
            return np.empty((0, 2), dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "transforming new data with precomputed metric"
            if self.metric_ == "precomputed":
                return self.reducer_.transform(_distances(X, self._fit_X))
            return self.reducer_.transform(X)


def fit_projection(X, *, n_neighbors=15, min_dist=0.1, random_state=0):
    """Fit a 2-D UMAP on rows of ``X`` (n_samples, n_features).

    Returns
    -------
    Projection
        Fitted; ``.embedding_`` has shape (n_samples, 2) and ``.transform(X_new)`` places
        new rows (n_new, n_features). ``.reducer_`` is the umap-learn estimator.
    """
    return Projection(n_neighbors=n_neighbors, min_dist=min_dist, random_state=random_state).fit(X)


def choose_rows(groups, fit_mask, *, max_points=3000, random_state=0):
    """Which rows to project: a stratified seeded sample of at most ``max_points``.

    Parameters
    ----------
    groups : ndarray of shape (n_samples,)
        Group per row (e.g. label); each group keeps its share of the sample.
    fit_mask : ndarray of bool, shape (n_samples,)
        Rows the map may be fitted on; the others are only transformed.
    max_points : int

    Returns
    -------
    fit_rows, transform_rows : ndarray of int
    """
    groups = np.asarray(groups)
    fit_mask = np.asarray(fit_mask, dtype=bool)
    rng = np.random.default_rng(random_state)
    n = len(groups)
    if n <= max_points:
        chosen = np.arange(n)
    else:
        chosen = []
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            take = max(1, int(round(max_points * len(rows) / n)))
            chosen.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
        chosen = np.sort(np.concatenate(chosen))
    return chosen[fit_mask[chosen]], chosen[~fit_mask[chosen]]


def project_layers(hidden, fit_rows, transform_rows=(), *, skip=(), n_neighbors=15, min_dist=0.1,
                   random_state=0, progress=None):
    """UMAP of every layer: fitted on ``fit_rows``, ``transform_rows`` placed on the map.

    Parameters
    ----------
    hidden : dict[str, ndarray of shape (n_samples, n_units)]
    fit_rows, transform_rows : array-like of int
    skip : collection of str
        Layers not to project: their map is all zeros, as is that of a layer whose fitted rows
        are all equal (a dead or saturated layer: nothing to map).
    progress : callable, optional

    Returns
    -------
    OrderedDict[str, ndarray of shape (n_samples, 2)], float32
        NaN for rows that were not projected.
    """
    fit_rows = np.asarray(fit_rows, dtype=np.int64)
    transform_rows = np.asarray(transform_rows, dtype=np.int64)
    out = OrderedDict()
    names = list(hidden)
    for i, name in enumerate(names, start=1):
        X = hidden[name]  # may be memory-mapped: only the projected rows are read
        emb = np.full((len(X), 2), np.nan, dtype=np.float32)
        if name in skip or _all_equal(X[fit_rows]):
            emb[fit_rows] = 0.0
            emb[transform_rows] = 0.0
        else:
            projection = fit_projection(X[fit_rows], n_neighbors=n_neighbors, min_dist=min_dist,
                                        random_state=random_state)
            emb[fit_rows] = projection.embedding_
            if len(transform_rows):
                emb[transform_rows] = projection.transform(X[transform_rows])
        out[name] = emb
        if progress:
            progress("projection", i / len(names), f"UMAP of layer {name}")
    return out


def _all_equal(rows):
    rows = np.asarray(rows)
    return len(rows) == 0 or not np.any(rows != rows[:1])


def _project_chosen(chosen, n_fit, skip, options):
    """:func:`project_layers` of rows already chosen (fitted ones first); returns (maps, seconds)."""
    import time

    start = time.perf_counter()
    n = len(next(iter(chosen.values()))) if chosen else 0
    maps = project_layers(chosen, np.arange(n_fit), np.arange(n_fit, n), skip=skip, **options)
    return maps, round(time.perf_counter() - start, 3)


class PendingMaps:
    """UMAP maps being fitted by an executor (:func:`submit_projection`).

    :meth:`result` waits for them and returns what :func:`project_layers` returns. If the
    executor failed (its process ended, or it could not take the task), the maps are fitted
    in this process instead, from the same rows with the same seed: the same maps.

    Attributes
    ----------
    seconds : float or None
        How long the fit took where it ran (set by :meth:`result`).
    fallback : str or None
        Why the maps were fitted here instead, in words (set by :meth:`result`).
    """

    def __init__(self, future, chosen, n_fit, n_rows, rows, skip, options, fallback=None):
        self._future, self._chosen, self._n_fit = future, chosen, n_fit
        self._n_rows, self._rows, self._skip, self._options = n_rows, rows, skip, options
        self._maps = None
        self.seconds = None
        self.fallback = fallback

    def result(self):
        """The maps: OrderedDict[str, ndarray of shape (n_rows, 2)], float32, NaN where not projected."""
        if self._maps is not None:
            return self._maps
        from concurrent.futures.process import BrokenProcessPool

        compact = None
        if self._future is not None:
            try:
                compact, self.seconds = self._future.result()
            except (BrokenProcessPool, OSError, RuntimeError) as exc:  # the side process ended: fit here
                self.fallback = f"the side process ended ({type(exc).__name__}: {exc}); maps fitted here"
        if compact is None:
            compact, self.seconds = _project_chosen(self._chosen, self._n_fit, self._skip, self._options)
        maps = OrderedDict()
        for name, emb in compact.items():
            full = np.full((self._n_rows, 2), np.nan, dtype=np.float32)
            full[self._rows] = emb
            maps[name] = full
        self._maps, self._chosen, self._future = maps, None, None
        return maps


def submit_projection(executor, hidden, fit_rows, transform_rows=(), *, skip=(), n_neighbors=15, min_dist=0.1,
                      random_state=0):
    """:func:`project_layers`, fitted by ``executor`` (e.g. a side process); returns :class:`PendingMaps`.

    Only the projected rows are sent (at most the map's sample: ``fit_rows`` then
    ``transform_rows``), so a memory-mapped layer is read row by row here, never whole.
    ``executor=None`` fits the maps here when :meth:`PendingMaps.result` is called.
    """
    fit_rows = np.asarray(fit_rows, dtype=np.int64)
    rows = np.concatenate([fit_rows, np.asarray(transform_rows, dtype=np.int64)])
    chosen = OrderedDict((name, np.ascontiguousarray(X[rows])) for name, X in hidden.items())
    n_rows = len(next(iter(hidden.values()))) if hidden else 0
    skip = set(skip)
    options = dict(n_neighbors=n_neighbors, min_dist=min_dist, random_state=random_state)
    future, fallback = None, "no side process; maps fitted here"
    if executor is not None:
        try:
            future, fallback = executor.submit(_project_chosen, chosen, len(fit_rows), skip, options), None
        except (RuntimeError, OSError) as exc:  # shut down or broken: fitted here on result()
            fallback = f"the side process takes no task ({type(exc).__name__}: {exc}); maps fitted here"
    return PendingMaps(future, chosen, len(fit_rows), n_rows, rows, skip, options, fallback)


def warm_up():
    """Compile umap-learn's numba kernels once; returns the seconds spent.

    Fits a map on 60 seeded points and places 10 more, through :class:`Projection`: the
    precomputed-distance path that every map below :data:`EXACT_NEIGHBOURS_BELOW` rows
    takes. (Larger maps use nearest-neighbour descent, which compiles on first use.)
    """
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(70, 4))
    fit_projection(X[:60], n_neighbors=5, random_state=0).transform(X[60:])
    return time.perf_counter() - start
