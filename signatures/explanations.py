"""Why this path: attribution maps of chosen inputs, computed when an experiment is run and stored.

Browsing an experiment needs no TensorFlow, so the maps the pages and the report show are
computed once, at the end of :func:`signatures.experiment.run_experiment`, for a selection of
inputs (:func:`select_rows`), and kept in the experiment folder.

What is stored for each selected input
    ``class/<method>``: a map of the predicted class's logit (:func:`signatures.attribution.attribute`
    with ``target="class"``): which pixels push the network towards the class it chose.
    ``cluster/<layer>/<method>``: a map of the input's membership of its cluster at ``layer``
    (``target="cluster"``, ``membership="margin"``: squared distance to the nearest other
    centre minus squared distance to its own). Positive pixels hold the input in its cluster,
    negative ones pull it towards another: "which pixels make this 7 take the 1s' path".

Methods (:data:`CLASS_METHODS`, :data:`CLUSTER_METHODS`)
    Integrated gradients (signed, complete: a map sums to the target's change from a black
    image) for every network; Grad-CAM of the last conv block for a CNN's class as well.

Which inputs (:func:`select_rows`)
    Every grid of the pages draws its images in the order of :func:`row_priority` (a seeded
    shuffle of the rows), and the selection holds, for every class, the first
    :data:`PER_GROUP` of its members in that order in every cluster of every layer and on each
    of its commonest paths, the crossovers the Layers page and the report show, and as many
    inputs of each unseen class. So every grid, whatever unseen classes are inserted, starts
    with inputs whose maps are stored. At most :data:`MAX_ROWS` inputs (crossovers and cluster
    members first).
"""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["CLASS_METHODS", "CLUSTER_METHODS", "EXPLANATIONS_FILE", "MAX_ROWS", "PER_GROUP", "PATHS_PER_CLASS",
           "CROSSOVERS", "row_priority", "select_rows", "compute_explanations", "map_keys", "short_title", "explain_experiment", "explain_stored",
           "explain_in_background",
           "save_explanations", "load_explanations"]

#: Methods stored for the predicted class (Grad-CAM only for networks with a conv layer).
CLASS_METHODS = ("integrated_gradients", "gradcam")
#: Methods stored for cluster membership at each clustered layer.
CLUSTER_METHODS = ("integrated_gradients",)
#: Most inputs explained per experiment.
MAX_ROWS = 600
#: Inputs of each class explained in every cluster and on each common path.
PER_GROUP = 6
#: Commonest paths of each class whose first inputs are explained.
PATHS_PER_CLASS = 5
#: Crossovers explained (the first ones, as the Layers page and the report list them).
CROSSOVERS = 30
#: Integration steps of the stored integrated-gradients maps.
IG_STEPS = 16
#: The file in an experiment folder that keeps the maps.
EXPLANATIONS_FILE = "explanations.npz"
_FORMAT = 1


def row_priority(n, seed=0):
    """The order in which grids draw their images: ``priority[i]`` is row ``i``'s rank in a seeded shuffle.

    Returns
    -------
    ndarray of shape (n,), int64
        A permutation of ``0 .. n-1``; a grid shows the members with the lowest values.
    """
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 7919])).permutation(int(n))
    priority = np.empty(int(n), dtype=np.int64)
    priority[order] = np.arange(int(n))
    return priority


def _first(rows, priority, k):
    """The ``k`` rows of ``rows`` that come first in ``priority``."""
    if len(rows) <= k:
        return rows
    return rows[np.argpartition(priority[rows], k - 1)[:k]]


def select_rows(labels, paths, predicted, *, crossovers=(), seed=0, per_group=PER_GROUP,
                paths_per_class=PATHS_PER_CLASS, max_rows=MAX_ROWS):
    """The inputs whose maps are stored (see the module notes).

    Parameters
    ----------
    labels : ndarray of shape (n,)
        True class of each row (trained and unseen classes alike: each is a group).
    paths : ndarray of shape (n, n_layers)
        Cluster id of each row per layer.
    predicted : ndarray of shape (n,)
        Predicted class of each row (the last step of a path).
    crossovers : sequence of int
        Rows on another class's dominant path, in the order they are shown; the first
        :data:`CROSSOVERS` are taken.
    seed : int
        The seed of :func:`row_priority`.
    per_group, paths_per_class, max_rows : int

    Returns
    -------
    ndarray of shape (m,), int64
        Sorted rows, ``m <= max_rows``.
    """
    labels, paths, predicted = np.asarray(labels), np.asarray(paths), np.asarray(predicted)
    n = len(labels)
    if paths.ndim != 2 or len(paths) != n or len(predicted) != n:
        raise ValueError(f"labels, paths and predicted must have one row per input ({n}); got paths of shape "
                         f"{paths.shape} and {len(predicted)} predictions")
    priority = row_priority(n, seed)
    chosen = [np.asarray(list(crossovers)[:CROSSOVERS], dtype=np.int64)]
    extra = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        for j in range(paths.shape[1]):
            for c in np.unique(paths[rows, j]):
                chosen.append(_first(rows[paths[rows, j] == c], priority, per_group))
        full = np.column_stack([paths[rows], predicted[rows]])
        kinds, inverse, counts = np.unique(full, axis=0, return_inverse=True, return_counts=True)
        inverse = np.ravel(inverse)
        for p in np.argsort(-counts, kind="stable")[:paths_per_class]:
            extra.append(_first(rows[inverse == p], priority, per_group))
    first = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    if len(first) > max_rows:  # keep the crossovers, then cluster members in grid order
        keep = np.unique(chosen[0])
        rest = np.setdiff1d(first, keep)
        rest = rest[np.argsort(priority[rest], kind="stable")][:max(0, max_rows - len(keep))]
        return np.sort(np.concatenate([keep[:max_rows], rest])).astype(np.int64)
    more = np.setdiff1d(np.concatenate(extra), first) if extra else np.zeros(0, np.int64)
    more = more[np.argsort(priority[more], kind="stable")][:max_rows - len(first)]
    return np.sort(np.concatenate([first, more])).astype(np.int64)


def map_keys(layers, *, conv):
    """The keys of the stored maps, in the order the pages show them."""
    keys = [f"class/{m}" for m in CLASS_METHODS if conv or m != "gradcam"]
    keys += [f"cluster/{layer}/{m}" for layer in layers for m in CLUSTER_METHODS]
    return keys


def short_title(key):
    """A map's key in a few words for a figure's column: ``"class/integrated_gradients"`` -> ``"class<br>IG"``."""
    parts = key.split("/")
    method = {"integrated_gradients": "IG", "gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++", "saliency": "saliency",
              "smoothgrad": "SmoothGrad"}.get(parts[-1], parts[-1])
    what = "class" if parts[0] == "class" else f"cluster at<br>{'/'.join(parts[1:-1])}"
    return f"{what}<br>{method}"


def compute_explanations(model, x, rows, *, layers, clusterers, paths, reduce="mean", seed=0, progress=None):
    """The maps of ``X[rows]`` (imports TensorFlow).

    Parameters
    ----------
    model : keras.Model
    x : ndarray of shape (m, ...)
        The inputs to explain, as the model takes them.
    rows : ndarray of shape (m,)
        Their rows in the experiment (:func:`select_rows`).
    layers : list of str
        The clustered layers.
    clusterers : dict[str, LayerKMeans]
        Their fitted clusterings (``centers_``, ``status_``).
    paths : ndarray of shape (n, n_layers)
        Cluster id of every input per layer.
    reduce : {"mean", "flatten"}
        How the experiment reduced conv maps to rows.
    seed : int
    progress : callable, optional
        ``progress(stage, fraction, message)``, stage ``"explanation"``.

    Returns
    -------
    dict
        ``rows`` (m,), ``maps`` (key -> float16 array (m, h, w), see :func:`map_keys`; layers
        whose clustering is constant have none), ``methods`` (key -> words), ``seconds``.
    """
    from . import attribution as A

    report = progress or (lambda *a: None)
    rows = np.asarray(rows, dtype=np.int64)
    if len(x) != len(rows):
        raise ValueError(f"x must hold one input per explained row ({len(rows)}), got {len(x)}")
    conv = bool(A.conv_layers(model))
    jobs = []
    for key in map_keys(layers, conv=conv):
        parts = key.split("/")
        if parts[0] == "cluster":
            layer = "/".join(parts[1:-1])
            if clusterers[layer].status_ == "constant" or clusterers[layer].k_ < 2:
                continue
        jobs.append((key, parts))
    maps, methods = {}, {}
    start = time.perf_counter()
    for i, (key, parts) in enumerate(jobs):
        method = parts[-1]
        report("explanation", i / max(1, len(jobs)), f"{key.replace('/', ' ')} maps of {len(rows)} inputs")
        options = dict(method=method, reduce=reduce, seed=seed, steps=IG_STEPS)
        if parts[0] == "cluster":
            layer = "/".join(parts[1:-1])
            j = layers.index(layer)
            options.update(target="cluster", layer=layer, centers=np.asarray(clusterers[layer].centers_),
                           clusters=np.asarray(paths)[rows, j], membership="margin")
            methods[key] = f"{_words(method)} of the margin of its cluster at {layer}"
        else:
            methods[key] = f"{_words(method)} of the predicted class"
        maps[key] = A.attribute(model, x, **options).astype(np.float16)
    report("explanation", 1.0, f"{len(maps)} maps of {len(rows)} inputs")
    return {"rows": rows, "maps": maps, "methods": methods, "seconds": round(time.perf_counter() - start, 3)}


def _words(method):
    return {"integrated_gradients": "integrated gradients", "gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++",
            "saliency": "gradient saliency", "smoothgrad": "SmoothGrad"}[method]


def _stamp(folder):
    from .store import read_manifest

    manifest = read_manifest(folder)
    return {"format": _FORMAT, "key": manifest.get("key"), "created": manifest.get("created"),
            "n_rows": manifest.get("n_rows")}


def _crossover_rows(exp):
    """In-distribution rows on another class's dominant path, as the analysis lists them."""
    from .characteristic import crossovers

    rows = exp.rows("train", "test")
    cross = crossovers(exp.paths[rows], exp.labels[rows], predicted=exp.predicted[rows])
    return rows[np.asarray(cross["rows"], dtype=np.int64)]


def explain_experiment(exp, folder=None, *, progress=None, max_rows=MAX_ROWS):
    """The maps of an experiment that holds its model (after a run), kept in ``folder`` if given.

    Parameters
    ----------
    exp : Experiment
        With ``model`` (``run_experiment`` leaves it there).
    folder : str or Path, optional
        The folder it is saved in: the maps are written there atomically as
        :data:`EXPLANATIONS_FILE`. A folder that cannot be written gives a warning.
    progress : callable, optional
    max_rows : int

    Returns
    -------
    dict
        As :func:`compute_explanations`.
    """
    from .data import model_inputs

    if getattr(exp, "model", None) is None:
        raise ValueError("the experiment holds no model (it was loaded for browsing); explanations are computed "
                         "when it is run")
    model = exp.model
    flat = len(model.inputs[0].shape) == 2
    rows = select_rows(exp.labels, exp.paths, exp.predicted, crossovers=_crossover_rows(exp), seed=exp.config.seed,
                       max_rows=max_rows)
    x = model_inputs(exp.images[rows], exp.config.dataset, flatten=flat)
    result = compute_explanations(model, x, rows, layers=list(exp.layers),
                                  clusterers=exp.clusterers, paths=exp.paths, reduce=exp.config.reduce,
                                  seed=exp.config.seed, progress=progress)
    if folder is not None:
        try:
            save_explanations(folder, result)
        except OSError as exc:
            warnings.warn(f"the explanations could not be kept in {Path(folder) / EXPLANATIONS_FILE}: "
                          f"{exc.strerror or exc}", RuntimeWarning, stacklevel=2)
    return result


def explain_stored(exp, folder, *, progress=None):
    """:func:`explain_experiment` for a run just saved in ``folder`` (or not yet saved:
    ``folder=None``); never fails the run.

    A model the maps cannot be computed for (a ValueError naming why) leaves the experiment
    without maps, said through ``progress``; the pages then say there are none.
    """
    say = progress or (lambda *a: None)
    say("explanation", 0.0, "why each path: attribution maps of chosen inputs")
    try:
        result = explain_experiment(exp, folder, progress=say)
    except ValueError as exc:
        say("explanation", 1.0, f"no attribution maps: {exc}")
        return None
    say("explanation", 1.0, f"{len(result['maps'])} maps of {len(result['rows'])} inputs in {result['seconds']:.1f} s")
    return result


def explain_in_background(exp, folder=None):
    """:func:`explain_stored` in a thread, so that the analysis runs beside it (TensorFlow's kernels
    release the GIL). Returns a ``concurrent.futures.Future`` of ``(result or None, message)``,
    ``message`` saying what was computed, in words. With ``folder=None`` (the experiment not
    saved yet) the maps are only computed: keep them with :func:`save_explanations` once it is."""
    from ._threads import in_thread

    said = []

    def task():
        try:
            return explain_stored(exp, folder, progress=lambda *a: said.append(a[2])), said[-1]
        except Exception as exc:  # the maps are extra: their failure never fails a run already stored
            return None, f"no attribution maps: {type(exc).__name__}: {exc}"

    return in_thread(task, name="signatures-explain")


def save_explanations(folder, result):
    """Keep ``result`` (:func:`compute_explanations`) in ``folder`` (atomically, stamped with its manifest)."""
    from .store import write_file_atomic

    folder = Path(folder)
    arrays = {"rows": np.asarray(result["rows"], dtype=np.int64)}
    arrays.update({f"map/{key}": np.asarray(values, dtype=np.float16) for key, values in result["maps"].items()})
    meta = {"stamp": _stamp(folder), "methods": result["methods"], "keys": list(result["maps"]),
            "seconds": result.get("seconds")}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_file_atomic(folder / EXPLANATIONS_FILE, buffer.getvalue())


def load_explanations(folder, *, n_rows=None, image_shape=None):
    """The maps kept in ``folder``, or None when there are none or they are not this experiment's.

    Parameters
    ----------
    folder : str or Path
    n_rows : int, optional
    image_shape : tuple of int, optional
        With them the arrays are checked against the experiment (a damaged file is None,
        with a warning naming it).

    Returns
    -------
    dict or None
        ``rows`` (m,), ``maps`` (key -> float32 (m, h, w)), ``methods`` (key -> words),
        ``seconds``, ``index`` (row -> position in ``rows``).
    """
    path = Path(folder) / EXPLANATIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("stamp") != _stamp(folder):
                return None
            rows = np.asarray(data["rows"], dtype=np.int64)
            maps = {key: np.asarray(data[f"map/{key}"], dtype=np.float32) for key in meta["keys"]}
        result = {"rows": rows, "maps": maps, "methods": meta["methods"], "seconds": meta.get("seconds")}
        if n_rows is not None and image_shape is not None:
            check_explanations(result, n_rows, tuple(image_shape), path)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        warnings.warn(f"{path} cannot be read ({exc}); the maps are not shown. Run the experiment again to "
                      "compute them", RuntimeWarning, stacklevel=2)
        return None
    result["index"] = {int(r): i for i, r in enumerate(rows)}
    return result


def check_explanations(explanations, n_rows, image_shape, where):
    """ValueError naming ``where`` unless stored explanations fit the experiment (rows, shapes)."""
    rows = np.asarray(explanations["rows"])
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= n_rows)):
        raise ValueError(f"{where}: the explained rows lie outside 0..{n_rows - 1}: the experiment is damaged")
    for key, values in explanations["maps"].items():
        if values.shape != (len(rows), *image_shape):
            raise ValueError(f"{where}: the '{key}' maps have shape {values.shape}, expected "
                             f"{(len(rows), *image_shape)}: the experiment is damaged")
