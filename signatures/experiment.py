"""One whole experiment: data -> model -> activations -> clusters -> paths -> projections.

:class:`ExperimentConfig` holds every choice and checks it before any work starts;
:func:`run_experiment` carries it out and returns an :class:`Experiment`, the single
object the store saves, the report draws and the apps browse.

All inputs of an experiment live in one table of rows: training images (``split`` 0),
held-out images of the trained classes (1) and anomaly images of classes never trained
on (2). Clusters are fitted on the training rows only; held-out and anomaly rows are
assigned to the fitted clusters with ``predict``, so all paths are comparable. UMAP maps
are fitted on a sample of the in-distribution rows (training and held-out); anomaly rows
are placed on them with ``transform``.

This module imports TensorFlow only inside :func:`run_experiment`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import paths as _paths
from ._checks import check_activation, parse_hidden
from .clustering import check_k_range
from .data import DATASETS, check_classes

__all__ = ["ExperimentConfig", "Experiment", "run_experiment", "SPLITS", "print_progress"]

#: Codes of the ``split`` column.
SPLITS = {"train": 0, "test": 1, "anomaly": 2}

ARCHITECTURES = ("mlp", "cnn")


def _ints(values, what):
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be integers, got {values!r}") from None


@dataclass
class ExperimentConfig:
    """Every choice of an experiment. ``validate()`` checks them all at once.

    Parameters
    ----------
    name : str
    dataset : {"mnist", "fashion-mnist", "digits"}
    digits : tuple of int
        Classes to train on (at least two).
    anomalies : tuple of int
        Classes never trained on, inserted after training.
    all_unseen : bool
        Also keep held-out images of every other class not trained on (as anomaly rows),
        so that any unseen class can be inserted later from stored activations;
        ``anomalies`` stay the ones highlighted by default.
    n_per_class : int or None
        Images per trained class; ``None`` takes all of them.
    test_size : float
        Held-out share of each trained class.
    arch : {"mlp", "cnn"}
    hidden : tuple of int
        Dense hidden layer sizes (MLP), or the dense layers after the conv blocks (CNN).
    activation : str
    filters : tuple of int
        Conv filters per block (CNN only).
    epochs, batch_size : int
    k_min, k_max : int
        K range of the silhouette search, inclusive.
    sample_size : int
        Rows used to choose K per layer.
    umap_points : int
        Most rows projected per layer (stratified sample; anomalies included).
    reduce : {"mean", "flatten"}
        How conv feature maps become rows.
    seed : int
    model_path : str or None
        A user's own trained ``.keras`` model: used as is, not trained.
    data_dir : str or None
        Folder of IDX files (see :mod:`signatures.data`); not part of the config key.
    """

    name: str = "experiment"
    dataset: str = "mnist"
    digits: tuple = (1, 7)
    anomalies: tuple = ()
    all_unseen: bool = False
    n_per_class: int | None = None
    test_size: float = 0.2
    arch: str = "mlp"
    hidden: tuple = (64, 32)
    activation: str = "relu"
    filters: tuple = (8, 16)
    epochs: int = 5
    batch_size: int = 64
    k_min: int = 2
    k_max: int = 10
    sample_size: int = 2000
    umap_points: int = 3000
    reduce: str = "mean"
    seed: int = 0
    model_path: str | None = None
    data_dir: str | None = None

    def _check_dataset(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")

    def _check_classes(self, what):
        known = set(range(len(DATASETS.get(self.dataset, range(10)))))
        setattr(self, what, check_classes(_ints(getattr(self, what), what), known, what,
                                          context=f"for {self.dataset}"))

    def _check_digits(self):
        self._check_classes("digits")
        if len(self.digits) < 2:
            raise ValueError(f"train on at least 2 digits (classes), got {list(self.digits)}")

    def _check_anomalies(self):
        self._check_classes("anomalies")
        both = sorted(set(_ints(self.digits, "digits")) & set(self.anomalies))
        if both:
            raise ValueError(f"digits {both} are both trained and anomalies; an anomaly must be unseen in training")

    def _check_n_per_class(self):
        if self.n_per_class is not None:
            n = self.n_per_class
            if isinstance(n, bool) or not isinstance(n, (int, np.integer, float)) or int(n) != n or n < 2:
                raise ValueError(f"n_per_class (images per class) must be an integer >= 2, or empty for all images; got {n!r}")
            self.n_per_class = int(n)

    def _check_arch(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {list(ARCHITECTURES)}, got {self.arch!r}")

    def _check_hidden(self):
        self.hidden = parse_hidden(self.hidden) if (self.arch != "cnn" or len(self.hidden)) else ()

    def _check_filters(self):
        self.filters = parse_hidden(self.filters)

    def _check_activation(self):
        check_activation(self.activation)

    def _check_counts(self):
        for what in ("epochs", "batch_size", "sample_size", "umap_points"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
            setattr(self, what, int(value))

    def _check_k_range(self):
        if self.k_min > self.k_max:
            raise ValueError(f"K range is inverted: k_min = {self.k_min} > k_max = {self.k_max}")
        check_k_range(range(self.k_min, self.k_max + 1))

    def _check_rest(self):
        if not 0.0 < float(self.test_size) < 1.0:
            raise ValueError(f"test_size must be between 0 and 1 (exclusive), got {self.test_size}")
        if self.reduce not in ("mean", "flatten"):
            raise ValueError(f"reduce must be 'mean' or 'flatten', got {self.reduce!r}")

    #: Field (as an app names its control) -> check, in the order they are reported.
    _CHECKS = (
        ("dataset", "_check_dataset"), ("digits", "_check_digits"), ("anomalies", "_check_anomalies"),
        ("n_per_class", "_check_n_per_class"), ("arch", "_check_arch"), ("hidden", "_check_hidden"),
        ("filters", "_check_filters"), ("activation", "_check_activation"), ("epochs", "_check_counts"),
        ("k_range", "_check_k_range"), ("other", "_check_rest"),
    )

    def problems(self):
        """Every bad value at once: dict of field -> message (empty when all is well).

        Fields are ``dataset``, ``digits``, ``anomalies``, ``n_per_class``, ``arch``,
        ``hidden``, ``filters``, ``activation``, ``epochs`` (and the other counts),
        ``k_range`` and ``other``; an app shows each message next to its control.
        """
        out = {}
        for field_name, check in self._CHECKS:
            try:
                getattr(self, check)()
            except ValueError as exc:
                out[field_name] = str(exc)
        return out

    def validate(self):
        """Normalise the values and raise ValueError naming the first bad one."""
        problems = self.problems()
        if problems:
            raise ValueError(next(iter(problems.values())))
        return self

    @property
    def k_range(self):
        return range(int(self.k_min), int(self.k_max) + 1)

    def to_dict(self):
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    def key(self):
        """Hash of everything that changes the results (not the name or data folder)."""
        d = self.to_dict()
        d.pop("name")
        d.pop("data_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Experiment:
    """An experiment's results: one row per input, one entry per hidden layer.

    Attributes
    ----------
    config : ExperimentConfig
    layers : list of str
        Hidden layers, in order.
    classes, anomalies : tuple of int
    class_names : tuple of str
    labels : ndarray of shape (n,)
        True class of each row.
    split : ndarray of shape (n,)
        :data:`SPLITS` code of each row.
    images : ndarray of shape (n, h, w), uint8
    probs : ndarray of shape (n, n_classes)
        Network output; column ``j`` is ``classes[j]``.
    hidden : OrderedDict[str, ndarray of shape (n, n_units)]
        Activations (the signatures).
    clusterers : OrderedDict[str, LayerKMeans]
        Fitted on the training rows.
    paths : ndarray of shape (n, n_layers)
        Cluster id per layer.
    embeddings : OrderedDict[str, ndarray of shape (n, 2)]
        UMAP coordinates; NaN for rows not projected.
    metrics : dict
        ``accuracy`` and ``confusion`` on the held-out rows, ``history`` of training.
    timings : dict[str, float]
        Seconds per stage.
    dataset_rows : ndarray of shape (n,)
        Row of each input in the loaded dataset.
    model : keras.Model or None
        Present after a run; ``None`` when loaded for browsing.
    """

    config: ExperimentConfig
    layers: list
    classes: tuple
    anomalies: tuple
    class_names: tuple
    labels: np.ndarray
    split: np.ndarray
    images: np.ndarray
    probs: np.ndarray
    hidden: OrderedDict
    clusterers: OrderedDict
    paths: np.ndarray
    embeddings: OrderedDict
    metrics: dict
    timings: dict = field(default_factory=dict)
    dataset_rows: np.ndarray = None
    info: dict = field(default_factory=dict)
    model: object = None

    @property
    def predicted(self):
        """Predicted class label of each row, shape (n,)."""
        return np.asarray(self.classes)[np.argmax(self.probs, axis=1)]

    @property
    def n_rows(self):
        return len(self.labels)

    def rows(self, *splits):
        """Row indices of the named splits ("train", "test", "anomaly"); all rows if none named."""
        if not splits:
            return np.arange(self.n_rows)
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"splits must be among {list(SPLITS)}, got {unknown}")
        return np.flatnonzero(np.isin(self.split, [SPLITS[s] for s in splits]))

    @property
    def unseen(self):
        """Classes that have anomaly rows (never trained on), sorted."""
        return tuple(int(c) for c in np.unique(self.labels[self.split == SPLITS["anomaly"]]))

    def rows_with(self, anomalies):
        """All in-distribution rows plus the anomaly rows of the classes in ``anomalies``."""
        anomalies = [int(a) for a in anomalies]
        missing = sorted(set(anomalies) - set(self.unseen))
        if missing:
            raise ValueError(
                f"anomaly classes {missing} have no stored rows in this experiment; stored: {list(self.unseen)}"
            )
        keep = (self.split != SPLITS["anomaly"]) | np.isin(self.labels, anomalies)
        return np.flatnonzero(keep)

    def is_anomaly(self):
        return self.split == SPLITS["anomaly"]

    def _selected(self, splits, rows):
        if rows is not None and splits:
            raise ValueError("give either splits or rows, not both")
        return np.asarray(rows) if rows is not None else self.rows(*splits)

    def path_counts(self, *splits, rows=None, with_prediction=True):
        """:func:`signatures.paths.path_counts` over the rows of ``splits`` (or the given ``rows``)."""
        rows = self._selected(splits, rows)
        return _paths.path_counts(
            self.paths[rows], self.labels[rows], predicted=self.predicted[rows] if with_prediction else None
        )

    def flows(self, *splits, rows=None, with_prediction=True):
        """:func:`signatures.paths.flows` over the rows of ``splits`` (or the given ``rows``)."""
        rows = self._selected(splits, rows)
        return _paths.flows(
            self.paths[rows], self.labels[rows], predicted=self.predicted[rows] if with_prediction else None
        )

    def cluster_members(self, layer, cluster, *splits):
        """Row indices in ``cluster`` of ``layer`` (a name) among ``splits``."""
        if layer not in self.layers:
            raise ValueError(f"layer must be one of {self.layers}, got {layer!r}")
        rows = self.rows(*splits)
        return rows[_paths.cluster_members(self.paths[rows], layer=self.layers.index(layer), cluster=cluster)]

    def path_members(self, path, *splits, rows=None):
        """Row indices taking ``path`` (cluster ids, optionally + predicted class)."""
        rows = self._selected(splits, rows)
        predicted = self.predicted[rows] if len(path) == len(self.layers) + 1 else None
        return rows[_paths.path_members(self.paths[rows], path, predicted=predicted)]

    def insert(self, hidden):
        """Paths of new inputs' activations through this experiment's fitted clusters."""
        return _paths.assign_paths(self.clusterers, hidden)


def prepare_subset(config, dataset, *, flatten=None):
    """The :class:`~signatures.data.Subset` of ``dataset`` that ``config`` describes.

    Unseen classes are ``config.anomalies``, or every class not trained on when
    ``config.all_unseen``. ``flatten`` defaults to the architecture (flat rows for an MLP).
    """
    from . import data as _data

    unseen = config.anomalies
    if config.all_unseen:
        unseen = tuple(c for c in range(len(dataset.class_names)) if c not in config.digits)
    return _data.prepare(
        dataset, config.digits, n_per_class=config.n_per_class, anomalies=unseen, test_size=config.test_size,
        flatten=config.arch == "mlp" if flatten is None else flatten, random_state=config.seed,
    )


def build_and_train(config, subset, *, seed=None, progress=None):
    """Build ``config``'s network and train it on ``subset`` (imports TensorFlow).

    ``seed`` (default ``config.seed``) seeds the weights and the training only; the data
    are ``subset``'s. Returns ``(model, history)``.
    """
    from . import models as _models

    seed = config.seed if seed is None else seed
    if config.arch == "mlp":
        model = _models.build_mlp(subset.X_train.shape[1], len(subset.classes), hidden=config.hidden,
                                  activation=config.activation, seed=seed)
    else:
        model = _models.build_cnn(subset.X_train.shape[1:], len(subset.classes), filters=config.filters,
                                  dense=config.hidden, activation=config.activation, seed=seed)
    if progress:
        progress("training", 0.0, f"training {model.name} for {config.epochs} epochs")
    history = _models.train(model, subset.X_train, subset.Y_train, epochs=config.epochs,
                            batch_size=config.batch_size, seed=seed, progress=progress)
    return model, history


def print_progress(stage, fraction, message):
    """A progress callback for terminals: ``[stage  42%] message``."""
    print(f"[{stage:<10} {fraction:4.0%}] {message}", flush=True)


def run_experiment(config, *, progress=None, model=None, dataset=None):
    """Carry out an experiment from start to end.

    Parameters
    ----------
    config : ExperimentConfig
    progress : callable, optional
        ``progress(stage, fraction, message)``; stages are loading, training, extraction,
        clustering, projection.
    model : keras.Model, optional
        An already trained model to use instead of training (as does ``config.model_path``).
    dataset : Dataset, optional
        ``config.dataset`` already loaded (an app that checked it keeps it); loaded if not given.

    Returns
    -------
    Experiment
    """
    from . import data as _data
    from .projection import project_layers, choose_rows

    config.validate()
    report = progress or (lambda *a: None)
    timings = OrderedDict()
    t0 = time.perf_counter()

    def lap(stage):
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = round(now - t0, 3)
        t0 = now

    report("loading", 0.0, f"loading {config.dataset}")
    if dataset is None:
        dataset = _data.load_dataset(config.dataset, data_dir=config.data_dir)
    elif dataset.name != config.dataset:
        raise ValueError(f"the given dataset is {dataset.name!r} but the config asks for {config.dataset!r}")
    report("loading", 0.3, dataset.source)
    lap("loading")

    report("startup", 0.0, "importing TensorFlow")
    from . import models as _models  # TensorFlow from here on
    from .activations import extract

    lap("startup")

    if model is None and config.model_path:
        model = _models.load_model(config.model_path)
    if model is not None:
        flatten = len(model.inputs[0].shape) == 2
    else:
        flatten = config.arch == "mlp"
    subset = prepare_subset(config, dataset, flatten=flatten)
    if model is not None:
        _models.check_input_shape(model, subset.X_train)
        n_out = model.outputs[0].shape[-1]
        if n_out != len(subset.classes):
            raise ValueError(
                f"model {model.name!r} has {n_out} outputs but {len(subset.classes)} digits are chosen "
                f"({list(subset.classes)}); choose as many digits as the model has outputs"
            )
    report("loading", 1.0,
           f"{len(subset.y_train)} training, {len(subset.y_test)} held-out, {len(subset.y_anomaly)} anomaly images")
    lap("subset")

    history = {}
    if model is None:
        model, history = build_and_train(config, subset, progress=report)
    else:
        report("training", 1.0, f"using the given model {model.name!r}; no training")
    lap("training")

    X = np.concatenate([subset.X_train, subset.X_test, subset.X_anomaly])
    labels = np.concatenate([subset.y_train, subset.y_test, subset.y_anomaly])
    split = np.concatenate([
        np.full(len(subset.y_train), SPLITS["train"], dtype=np.int8),
        np.full(len(subset.y_test), SPLITS["test"], dtype=np.int8),
        np.full(len(subset.y_anomaly), SPLITS["anomaly"], dtype=np.int8),
    ])
    dataset_rows = np.concatenate([subset.idx_train, subset.idx_test, subset.idx_anomaly])
    report("extraction", 0.0, f"one forward pass over {len(X)} inputs")
    hidden, probs = extract(model, X, reduce=config.reduce, progress=report)
    lap("extraction")

    test = split == SPLITS["test"]
    classes = np.asarray(subset.classes)
    predicted = classes[np.argmax(probs, axis=1)]
    from sklearn.metrics import confusion_matrix

    metrics = {
        "accuracy": float(np.mean(predicted[test] == labels[test])),
        "confusion": confusion_matrix(labels[test], predicted[test], labels=classes).tolist(),
        "train_accuracy": float(np.mean(predicted[split == 0] == labels[split == 0])),
        "history": history,
    }
    report("evaluation", 1.0, f"held-out accuracy {metrics['accuracy']:.4f}")

    from .clustering import cluster_layers

    train = split == SPLITS["train"]
    clusterers = cluster_layers(
        OrderedDict((name, values[train]) for name, values in hidden.items()),
        k_range=config.k_range, sample_size=config.sample_size, random_state=config.seed, progress=report,
    )
    paths = np.empty((len(X), len(hidden)), dtype=np.int64)
    paths[train] = _paths.paths_from_labels(OrderedDict((n, est.labels_) for n, est in clusterers.items()))
    if (~train).any():
        paths[~train] = _paths.assign_paths(
            clusterers, OrderedDict((n, v[~train]) for n, v in hidden.items())
        )
    lap("clustering")

    fit_rows, transform_rows = choose_rows(
        labels, split != SPLITS["anomaly"], max_points=config.umap_points, random_state=config.seed
    )
    skip = {name for name, est in clusterers.items() if est.status_ == "constant"}
    embeddings = project_layers(hidden, fit_rows, transform_rows, skip=skip, random_state=config.seed,
                                progress=report)
    lap("projection")

    images = dataset.images[dataset_rows]
    return Experiment(
        config=config,
        layers=list(hidden),
        classes=tuple(subset.classes),
        anomalies=tuple(config.anomalies),
        class_names=tuple(dataset.class_names),
        labels=labels,
        split=split,
        images=images,
        probs=probs,
        hidden=hidden,
        clusterers=clusterers,
        paths=paths,
        embeddings=embeddings,
        metrics=metrics,
        timings=dict(timings),
        dataset_rows=dataset_rows,
        info={"source": dataset.source, "model_name": model.name, "n_params": int(model.count_params())},
        model=model,
    )
