"""UMAP projection of each layer's activations to 2-D, seeded and stored with the results.

The map of a layer is fitted on in-distribution inputs only; other inputs (anomalies)
are placed on it with ``transform``, so unseen digits do not shape the map they are
shown on. With ``random_state`` set, umap-learn runs single-threaded and gives the same
map for the same seed.

umap-learn compiles its numba kernels on the first fit in a process (about 45 s here);
:func:`warm_up` pays that once, on a few points, before a user is waiting.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np

__all__ = ["fit_projection", "project_layers", "choose_rows", "warm_up"]


def _umap(n_points, *, n_neighbors, min_dist, random_state):
    import umap  # imported lazily: slow, and the gallery never needs it

    return umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(int(n_neighbors), n_points - 1)),
        min_dist=min_dist,
        random_state=random_state,
        n_jobs=1,
    )


def fit_projection(X, *, n_neighbors=15, min_dist=0.1, random_state=0):
    """Fit a 2-D UMAP on rows of ``X`` (n_samples, n_features).

    Returns
    -------
    reducer : umap.UMAP
        Fitted; ``reducer.embedding_`` has shape (n_samples, 2) and
        ``reducer.transform(X_new)`` places new rows.
    """
    X = np.asarray(X, dtype=np.float32)
    if len(X) < 4:
        raise ValueError(f"UMAP needs at least 4 points, got {len(X)}")
    reducer = _umap(len(X), n_neighbors=n_neighbors, min_dist=min_dist, random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that a seed disables parallelism
        reducer.fit(X)
    return reducer


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
        Layers not to project (e.g. constant layers): their map is all zeros.
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
        X = np.asarray(hidden[name], dtype=np.float32)
        emb = np.full((len(X), 2), np.nan, dtype=np.float32)
        if name in skip:
            emb[fit_rows] = 0.0
            emb[transform_rows] = 0.0
        else:
            reducer = fit_projection(X[fit_rows], n_neighbors=n_neighbors, min_dist=min_dist,
                                     random_state=random_state)
            emb[fit_rows] = reducer.embedding_
            if len(transform_rows):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    emb[transform_rows] = reducer.transform(X[transform_rows])
        out[name] = emb
        if progress:
            progress("projection", i / len(names), f"UMAP of layer {name}")
    return out


def warm_up():
    """Compile umap-learn's numba kernels once, on 60 seeded points; returns the seconds spent."""
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    reducer = fit_projection(rng.normal(size=(60, 4)), n_neighbors=5, random_state=0)
    reducer.transform(rng.normal(size=(5, 4)))
    return time.perf_counter() - start
