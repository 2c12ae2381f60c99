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
from ._checks import check_activation, check_int, is_int, parse_hidden
from .data import DATASETS, check_classes

__all__ = ["ExperimentConfig", "Experiment", "run_experiment", "SPLITS", "print_progress", "FIELD_WORDS"]

#: Codes of the ``split`` column.
SPLITS = {"train": 0, "test": 1, "anomaly": 2}

ARCHITECTURES = ("mlp", "cnn")

# Upper bounds of one experiment's choices. They keep a run within the memory and time of a
# shared server (the site runs visitors' experiments side by side); the messages name them.
#: Most images per trained class (MNIST has at most 7,877 of a digit, Fashion-MNIST 7,000).
MAX_N_PER_CLASS = 10_000
#: Most training epochs.
MAX_EPOCHS = 200
#: Largest training batch.
MAX_BATCH_SIZE = 4096
#: Largest K of the silhouette search.
MAX_K = 100
#: Most rows used to choose K per layer (the silhouette needs their pairwise distances).
MAX_SAMPLE_SIZE = 20_000
#: Smallest, default (at most) and largest memory budget for activations, MiB.
MIN_MEMORY_BUDGET = 16
DEFAULT_MEMORY_BUDGET = 2048
MAX_MEMORY_BUDGET = 1 << 20
#: Most rows projected by UMAP per layer.
MAX_UMAP_POINTS = 20_000
#: Largest seed (seeds are 0 .. 2**31 - 1).
MAX_SEED = 2**31 - 1
#: Fewest rows a UMAP map can be fitted on (:class:`signatures.projection.Projection`).
MIN_UMAP_FIT_ROWS = 4
#: Forward passes of Monte-Carlo dropout for a model with dropout.
MC_PASSES = 20
#: Highest dropout rate a config may ask for.
MAX_DROPOUT = 0.9

#: Field -> the word a user sees for it in messages. Apps and the CLI pass their own words
#: (``problems(words={"n_per_class": "images per digit"})`` or option names); ``k_range``
#: names the K range as a whole.
FIELD_WORDS = {
    "name": "experiment name",
    "dataset": "dataset",
    "digits": "digits",
    "anomalies": "anomaly digits",
    "all_unseen": "keep all unseen classes",
    "n_per_class": "images per class",
    "test_size": "held-out share",
    "arch": "architecture",
    "hidden": "hidden sizes",
    "activation": "activation",
    "dropout": "dropout",
    "filters": "conv filters",
    "epochs": "epochs",
    "batch_size": "batch size",
    "k_min": "smallest K",
    "k_max": "largest K",
    "k_range": "K range",
    "k_criterion": "K criterion",
    "k_fixed": "fixed K",
    "sample_size": "sample size",
    "umap_points": "UMAP points",
    "reduce": "reduce",
    "activations_dtype": "activations dtype",
    "memory_budget": "memory budget",
    "seed": "seed",
    "model_path": "model file",
    "data_dir": "data folder",
}


def activation_file(j):
    """The file of the ``j``-th hidden layer's activations in an experiment folder (``act-<j>.npy``)."""
    return f"act-{int(j)}.npy"


def _path_like(value):
    import os

    return isinstance(value, (str, os.PathLike))


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
        Images per trained class (2 .. :data:`MAX_N_PER_CLASS`); ``None`` takes all of them.
    test_size : float
        Held-out share of each trained class, strictly between 0 and 1.
    arch : {"mlp", "cnn"}
    hidden : tuple of int
        Dense hidden layer sizes (MLP), or the dense layers after the conv blocks (CNN);
        each 1 .. :data:`~signatures._checks.MAX_UNITS`, at most
        :data:`~signatures._checks.MAX_LAYERS` layers.
    activation : str
    dropout : float
        Dropout rate after each dense hidden layer (after the flattened conv maps of a CNN
        without dense layers), 0 .. :data:`MAX_DROPOUT`; 0 (default) adds no dropout layer.
        With dropout, the run also measures Monte-Carlo-dropout uncertainty
        (:mod:`signatures.uncertainty`).
    filters : tuple of int
        Conv filters per block (CNN only), bounded as ``hidden``.
    epochs : int
        1 .. :data:`MAX_EPOCHS`.
    batch_size : int
        1 .. :data:`MAX_BATCH_SIZE`.
    k_min, k_max : int
        K range of the silhouette search, inclusive, 2 .. :data:`MAX_K`; ``k_max`` must be
        below the number of training rows.
    k_criterion : {"silhouette", "classes", "faithfulness", "fixed"}
        How K is chosen per layer (see :mod:`signatures.clustering`): the best silhouette
        (default), the best silhouette with at least as many clusters as classes, the K whose
        clusters best predict the model's output, or ``k_fixed``.
    k_fixed : int or None
        The K of ``k_criterion="fixed"``, 1 .. :data:`MAX_K`.
    sample_size : int
        Rows used to choose K per layer, ``k_max + 1`` .. :data:`MAX_SAMPLE_SIZE`.
    umap_points : int
        Most rows projected per layer (stratified sample; anomalies included),
        :data:`MIN_UMAP_FIT_ROWS` .. :data:`MAX_UMAP_POINTS`; the sample must hold at
        least :data:`MIN_UMAP_FIT_ROWS` in-distribution rows to fit the map on.
    reduce : {"mean", "flatten"}
        How conv feature maps become rows.
    activations_dtype : {"float32", "float16"}
        How activations are kept; float16 halves their size (about 3 significant digits).
    memory_budget : int or None
        MiB the activations may take in memory (:data:`MIN_MEMORY_BUDGET` ..
        :data:`MAX_MEMORY_BUDGET`); larger activations are streamed to files beside the
        experiment and read memory-mapped (see :func:`run_experiment`). None: a quarter of
        the memory available when the run starts, at most 2,048 MiB. It changes where the
        activations are held, never the results, so it is not part of the config key.
    seed : int
        0 .. :data:`MAX_SEED`.
    model_path : str or None
        A user's own trained ``.keras`` model (an existing file): used as is, not trained.
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
    dropout: float = 0.0
    filters: tuple = (8, 16)
    epochs: int = 5
    batch_size: int = 64
    k_min: int = 2
    k_max: int = 10
    k_criterion: str = "silhouette"
    k_fixed: int | None = None
    sample_size: int = 2000
    umap_points: int = 3000
    reduce: str = "mean"
    activations_dtype: str = "float32"
    memory_budget: int | None = None
    seed: int = 0
    model_path: str | None = None
    data_dir: str | None = None

    # ------------------------------------------------------------------ one field each

    def _class_names(self):
        return DATASETS.get(self.dataset) if isinstance(self.dataset, str) else None

    def _check_dataset(self, w):
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            raise ValueError(f"{w['dataset']} must be one of {sorted(DATASETS)}, got {self.dataset!r}")

    def _check_classes(self, what, w):
        word = w[what]
        names = self._class_names()
        n_classes = len(names) if names else 10
        context = f"for {self.dataset}" if names else ""
        allowed = f"whole numbers from 0 to {n_classes - 1}" + (f" {context}" if context else "")
        values = getattr(self, what)
        if not isinstance(values, (list, tuple)) and not (isinstance(values, np.ndarray) and values.ndim == 1):
            raise ValueError(f"{word} must be a list of {allowed}, e.g. [1, 7]; got {values!r}")
        bad = [v for v in values if not is_int(v)]
        if bad:
            raise ValueError(f"{word} must be {allowed}, got {bad[0]!r}")
        setattr(self, what, check_classes([int(v) for v in values], set(range(n_classes)), word, context=context))

    def _check_digits(self, w):
        self._check_classes("digits", w)
        if len(self.digits) < 2:
            raise ValueError(f"train on at least 2 digits (classes): {w['digits']} must list at least 2, "
                             f"got {list(self.digits)}")

    def _check_anomalies(self, w):
        self._check_classes("anomalies", w)

    def _check_all_unseen(self, w):
        if not isinstance(self.all_unseen, (bool, np.bool_)):
            raise ValueError(f"{w['all_unseen']} must be True or False, got {self.all_unseen!r}")
        self.all_unseen = bool(self.all_unseen)

    def _check_n_per_class(self, w):
        if self.n_per_class is not None:
            self.n_per_class = check_int(self.n_per_class, w["n_per_class"], low=2, high=MAX_N_PER_CLASS,
                                         allow_float=True, hint=", or none for all images")

    def _check_test_size(self, w):
        t = self.test_size
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)) \
                or not np.isfinite(t) or not 0.0 < float(t) < 1.0:
            raise ValueError(f"{w['test_size']} must be a number between 0 and 1 (exclusive), got {t!r}")
        self.test_size = float(t)

    def _check_arch(self, w):
        if not isinstance(self.arch, str) or self.arch not in ARCHITECTURES:
            raise ValueError(f"{w['arch']} must be one of {list(ARCHITECTURES)}, got {self.arch!r}")

    def _check_hidden(self, w):
        h = self.hidden
        empty = isinstance(h, (list, tuple)) and len(h) == 0 or isinstance(h, str) and not h.strip()
        self.hidden = () if (empty and self.arch == "cnn") else parse_hidden(h, what=w["hidden"])

    def _check_filters(self, w):
        self.filters = parse_hidden(self.filters, what=w["filters"])

    def _check_activation(self, w):
        check_activation(self.activation, what=w["activation"])

    def _check_dropout(self, w):
        d = self.dropout
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, float, np.integer, np.floating)) \
                or not np.isfinite(d) or not 0.0 <= float(d) <= MAX_DROPOUT:
            raise ValueError(f"{w['dropout']} must be a rate from 0 (none) to {MAX_DROPOUT}, got {d!r}")
        self.dropout = float(d)

    def _check_epochs(self, w):
        self.epochs = check_int(self.epochs, w["epochs"], low=1, high=MAX_EPOCHS)

    def _check_batch_size(self, w):
        self.batch_size = check_int(self.batch_size, w["batch_size"], low=1, high=MAX_BATCH_SIZE)

    def _check_k_range(self, w):
        hint = " (a silhouette needs at least two clusters)"
        self.k_min = check_int(self.k_min, w["k_min"], low=2, high=MAX_K, hint=hint)
        self.k_max = check_int(self.k_max, w["k_max"], low=2, high=MAX_K, hint=hint)
        if self.k_min > self.k_max:
            raise ValueError(f"{w['k_range']} is inverted: {w['k_min']} = {self.k_min} > {w['k_max']} = {self.k_max}")

    def _check_k_criterion(self, w):
        from .clustering import CRITERIA

        if not isinstance(self.k_criterion, str) or self.k_criterion not in CRITERIA:
            raise ValueError(f"{w['k_criterion']} must be one of {list(CRITERIA)}, got {self.k_criterion!r}")
        if self.k_criterion == "fixed":
            if self.k_fixed is None:
                raise ValueError(f"{w['k_criterion']} 'fixed' needs {w['k_fixed']} (1 .. {MAX_K})")
            self.k_fixed = check_int(self.k_fixed, w["k_fixed"], low=1, high=MAX_K)
        elif self.k_fixed is not None:
            raise ValueError(f"{w['k_fixed']} = {self.k_fixed!r} is used only with {w['k_criterion']} 'fixed', "
                             f"not {self.k_criterion!r}")

    def _check_sample_size(self, w):
        self.sample_size = check_int(self.sample_size, w["sample_size"], low=3, high=MAX_SAMPLE_SIZE)

    def _check_umap_points(self, w):
        self.umap_points = check_int(self.umap_points, w["umap_points"], low=MIN_UMAP_FIT_ROWS,
                                     high=MAX_UMAP_POINTS)

    def _check_reduce(self, w):
        if not isinstance(self.reduce, str) or self.reduce not in ("mean", "flatten"):
            raise ValueError(f"{w['reduce']} must be 'mean' or 'flatten', got {self.reduce!r}")

    def _check_activations_dtype(self, w):
        if not isinstance(self.activations_dtype, str) or self.activations_dtype not in ("float32", "float16"):
            raise ValueError(f"{w['activations_dtype']} must be 'float32' or 'float16', got {self.activations_dtype!r}")

    def _check_memory_budget(self, w):
        if self.memory_budget is not None:
            self.memory_budget = check_int(self.memory_budget, w["memory_budget"], low=MIN_MEMORY_BUDGET,
                                           high=MAX_MEMORY_BUDGET)

    def _check_seed(self, w):
        self.seed = check_int(self.seed, w["seed"], low=0, high=MAX_SEED)

    def _check_model_path(self, w):
        import os

        if self.model_path is None:
            return
        if not _path_like(self.model_path) or not str(self.model_path).strip():
            raise ValueError(f"{w['model_path']} must be the path of a trained .keras model, got {self.model_path!r}")
        if not os.path.isfile(self.model_path):
            raise ValueError(f"{w['model_path']} {os.fspath(self.model_path)!r} does not exist or is not a file; "
                             "give the path of a trained .keras model")
        self.model_path = os.fspath(self.model_path)

    def _check_data_dir(self, w):
        import os

        if self.data_dir is None:
            return
        if not _path_like(self.data_dir) or not str(self.data_dir).strip():
            raise ValueError(f"{w['data_dir']} must be a folder path (or several joined by ':'), "
                             f"got {self.data_dir!r}")
        self.data_dir = os.fspath(self.data_dir)

    #: Field (as an app names its control) -> check, in the order they are reported.
    _CHECKS = (
        ("dataset", "_check_dataset"), ("digits", "_check_digits"), ("anomalies", "_check_anomalies"),
        ("all_unseen", "_check_all_unseen"), ("n_per_class", "_check_n_per_class"),
        ("test_size", "_check_test_size"), ("arch", "_check_arch"), ("hidden", "_check_hidden"),
        ("filters", "_check_filters"), ("activation", "_check_activation"), ("dropout", "_check_dropout"),
        ("epochs", "_check_epochs"),
        ("batch_size", "_check_batch_size"), ("k_range", "_check_k_range"), ("k_criterion", "_check_k_criterion"),
        ("sample_size", "_check_sample_size"),
        ("umap_points", "_check_umap_points"), ("reduce", "_check_reduce"),
        ("activations_dtype", "_check_activations_dtype"), ("memory_budget", "_check_memory_budget"),
        ("seed", "_check_seed"),
        ("model_path", "_check_model_path"), ("data_dir", "_check_data_dir"),
    )

    # ------------------------------------------------------------------ across fields

    def _class_label(self, c):
        names = self._class_names() or ()
        if self.dataset in ("mnist", "digits"):
            return f"digit {c}"
        return f"class {c} ({names[c]})" if c < len(names) else f"class {c}"

    def unseen_classes(self):
        """Classes whose held-out images become anomaly rows: ``anomalies``, or every class not
        trained on when ``all_unseen``."""
        if self.all_unseen:
            return tuple(c for c in range(len(DATASETS[self.dataset])) if c not in self.digits)
        return tuple(self.anomalies)

    def _rows_problems(self, w, counts):
        """Problems of the rows this config draws: images per class against the held-out share
        and the data, the K range against the training rows, the UMAP sample against the rows."""
        out = {}
        if self.n_per_class is None and counts is None:
            return out  # how many rows is known only from the data
        counts = None if counts is None else {int(c): int(n) for c, n in counts.items()}
        if counts is not None and self.n_per_class is not None:
            short = {d: counts.get(d, 0) for d in self.digits if counts.get(d, 0) < self.n_per_class}
            if short:
                out["n_per_class"] = (
                    f"{w['n_per_class']} = {self.n_per_class} but "
                    + ", ".join(f"{self._class_label(d)} has only {n} images" for d, n in short.items())
                    + f" in the data; choose {w['n_per_class']} <= {min(short.values())}")
                return out
        sizes = {d: self.n_per_class if self.n_per_class is not None else counts.get(d, 0) for d in self.digits}
        split = {d: _held_out(n, self.test_size) for d, n in sizes.items()}
        bad = {d: n for d, n in sizes.items() if not 1 <= split[d] < n}
        if bad:
            d, n = next(iter(bad.items()))
            need = _fewest_images(self.test_size)
            if self.n_per_class is not None:
                key, fix = "n_per_class", (f"use {w['n_per_class']} >= {need}" if need else
                                           f"choose another {w['test_size']}")
            else:
                key, fix = "digits", "train on classes with more images"
            out[key] = (f"{self._class_label(d)} would have {n} images: too few to hold out a "
                        f"{w['test_size']} of {self.test_size} of them ({split[d]} images) and train on the rest; "
                        f"{fix}")
            return out
        n_train = {d: sizes[d] - split[d] for d in self.digits}
        n_test = {d: split[d] for d in self.digits}
        default_n = max(n_test.values())
        unseen = {c: (default_n if counts is None else min(default_n, counts.get(c, 0)))
                  for c in self.unseen_classes()}
        out.update(_k_umap_problems(self, n_train, n_test, unseen, w))
        return out

    def problems(self, *, words=None, counts=None):
        """Every bad value at once: dict of field -> message (empty when all is well).

        Normalises the good values on the way (``"64 32"`` becomes ``(64, 32)``, digits are
        sorted). Fields are those of :attr:`_CHECKS`: ``dataset``, ``digits``, ``anomalies``,
        ``all_unseen``, ``n_per_class``, ``test_size``, ``arch``, ``hidden``, ``filters``,
        ``activation``, ``epochs``, ``batch_size``, ``k_range`` (``k_min`` and ``k_max``),
        ``sample_size``, ``umap_points``, ``reduce``, ``seed``, ``model_path`` and ``data_dir``;
        an app shows each message next to its control.

        Parameters
        ----------
        words : dict[str, str], optional
            Field -> the word the user sees for it (e.g. ``{"n_per_class": "images per digit"}``
            in a page, ``{"n_per_class": "--n-per-class"}`` in the CLI); every message names
            the field with it. Fields not given keep :data:`FIELD_WORDS`.
        counts : dict[int, int], optional
            Images per class in the loaded dataset (:meth:`signatures.data.Dataset.counts`).
            With them, images per class are checked against the data, and the K range and the
            UMAP sample against the training rows even when all images are taken; without them
            these are checked only when ``n_per_class`` is set.

        Returns
        -------
        dict[str, str]
        """
        if words is not None and not isinstance(words, dict):
            raise ValueError(f"words must be a dict of field -> word, got {words!r}")
        w = dict(FIELD_WORDS)
        w.update(words or {})
        out = {}
        for field_name, check in self._CHECKS:
            try:
                getattr(self, check)(w)
            except ValueError as exc:
                out.setdefault(field_name, str(exc))
        digits_known = isinstance(self.digits, tuple) and all(is_int(d) for d in self.digits)
        if digits_known and not out.keys() & {"anomalies", "dataset"}:
            both = sorted(set(self.digits) & set(self.anomalies))
            if both:
                out["anomalies"] = (f"{both} are both trained and anomalies: {w['anomalies']} must not list any "
                                    f"of the {w['digits']} (an anomaly must be unseen in training)")
        if not out.keys() & {"k_range", "sample_size"} and self.sample_size <= self.k_max:
            out["sample_size"] = (f"{w['sample_size']} must be larger than {w['k_max']} = {self.k_max} "
                                  f"(a silhouette of K clusters needs more than K rows), got {self.sample_size}")
        needed = {"dataset", "digits", "anomalies", "all_unseen", "n_per_class", "test_size", "k_range",
                  "umap_points"}
        if not out.keys() & needed:
            for key, message in self._rows_problems(w, counts).items():
                out.setdefault(key, message)
        return out

    def validate(self, *, words=None, counts=None):
        """Normalise the values and raise ValueError naming the first bad one.

        ``words`` and ``counts`` are those of :meth:`problems`. Returns ``self``.
        """
        problems = self.problems(words=words, counts=counts)
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
        d.pop("memory_budget")  # where activations are held, not what they are
        if d["activations_dtype"] == "float32":  # the keys of experiments made before the option
            d.pop("activations_dtype")
        if not d["dropout"]:  # likewise: no dropout is what every earlier experiment had
            d.pop("dropout")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _held_out(n, test_size):
    """Held-out images of a class of ``n`` images, as :func:`signatures.data.prepare` counts them."""
    return int(round(n * float(test_size)))


def _fewest_images(test_size):
    """Fewest images per class that leave at least one held-out and one training image."""
    for n in range(2, MAX_N_PER_CLASS + 1):
        if 1 <= _held_out(n, test_size) < n:
            return n
    return None


def _umap_fit_rows(in_counts, out_counts, max_points):
    """How many in-distribution rows :func:`signatures.projection.choose_rows` fits a map on."""
    in_counts = [c for c in in_counts if c > 0]
    n = sum(in_counts) + sum(c for c in out_counts if c > 0)
    if n <= max_points:
        return sum(in_counts)
    return sum(min(max(1, int(round(max_points * c / n))), c) for c in in_counts)


def _k_umap_problems(config, n_train, n_test, n_unseen, w):
    """The K range and the UMAP sample against the rows per class.

    ``n_train`` / ``n_test``: trained class -> training / held-out rows; ``n_unseen``:
    unseen class -> anomaly rows.
    """
    out = {}
    total_train = sum(n_train.values())
    if config.k_max > total_train - 1:
        per_class = ", ".join(f"{n} of {config._class_label(d)}" for d, n in n_train.items())
        fix = (f"choose {w['k_max']} <= {total_train - 1}" if total_train - 1 >= config.k_min else "")
        fix = " or ".join(x for x in (fix, f"use more {w['n_per_class']}") if x)
        out["k_range"] = (f"{w['k_range']} goes up to {w['k_max']} = {config.k_max} but only {total_train} "
                          f"training images are clustered ({per_class}); K must be below the number of "
                          f"clustered images: {fix}")
    in_counts = [n_train[d] + n_test[d] for d in n_train]
    out_counts = list(n_unseen.values())
    fit = _umap_fit_rows(in_counts, out_counts, config.umap_points)
    if fit < MIN_UMAP_FIT_ROWS:
        total = sum(in_counts) + sum(out_counts)
        need = next((p for p in range(config.umap_points + 1, max(total, config.umap_points) + 1)
                     if _umap_fit_rows(in_counts, out_counts, p) >= MIN_UMAP_FIT_ROWS), None)
        fix = f"use {w['umap_points']} >= {need}" if need else f"use more {w['n_per_class']}"
        out["umap_points"] = (f"{w['umap_points']} = {config.umap_points} leaves only {fit} trained-class images "
                              f"to fit the UMAP map on (the sample is shared with {len(out_counts)} unseen "
                              f"classes); at least {MIN_UMAP_FIT_ROWS} are needed: {fix}")
    return out


def check_subset_rows(config, subset, *, words=None):
    """Raise ValueError if ``subset``'s rows cannot carry ``config``'s K range or UMAP sample.

    The exact check, once the subset is drawn and before any training (``config`` validated).
    """
    w = dict(FIELD_WORDS)
    w.update(words or {})
    n_train = {int(d): int(np.sum(subset.y_train == d)) for d in subset.classes}
    n_test = {int(d): int(np.sum(subset.y_test == d)) for d in subset.classes}
    unseen = {int(c): int(np.sum(subset.y_anomaly == c)) for c in np.unique(subset.y_anomaly)}
    problems = _k_umap_problems(config, n_train, n_test, unseen, w)
    if problems:
        raise ValueError(next(iter(problems.values())))


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
    logits : ndarray of shape (n, n_classes) or None
        The logits behind a softmax output (for MaxLogit and energy scores); None when the
        model has none or for experiments stored before they were kept.
    uncertainty : dict or None
        Monte-Carlo dropout of a model with dropout (:func:`signatures.uncertainty.mc_dropout`):
        ``entropy`` and ``mutual_information`` (ndarray of shape (n,), nats) and ``passes``;
        None for a model without dropout.
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
    logits: np.ndarray = None
    info: dict = field(default_factory=dict)
    uncertainty: dict = None
    model: object = None
    #: The temporary folder its activations were streamed to (None: held in memory, or loaded).
    work_folder: str = field(default=None, repr=False, compare=False)
    #: The maps still being fitted elsewhere (``run_experiment(projector=)``), until :meth:`wait_for_maps`.
    pending_maps: object = field(default=None, repr=False, compare=False)
    #: The raw input's separation row computed elsewhere (``run_experiment(projector=)``): a Future.
    pending_input: object = field(default=None, repr=False, compare=False)

    def input_separation_row(self):
        """The raw input's separation row computed beside the run (for ``analyze(input_row=)``),
        or None when there is none or it failed (the analysis then computes it)."""
        pending, self.pending_input = self.pending_input, None
        if pending is None:
            return None
        try:
            return pending.result()
        except Exception:  # cancelled, or the side process ended: computed again by the analysis
            return None

    def wait_for_maps(self, progress=None):
        """Fill :attr:`embeddings` with the maps fitted elsewhere (``run_experiment(projector=)``).

        Nothing to do for an experiment whose maps are there. ``progress(stage, fraction,
        message)`` hears when they arrive. Returns ``self``.
        """
        pending = self.pending_maps
        if pending is None:
            return self
        self.embeddings = pending.result()
        self.pending_maps = None
        self.timings["projection"] = pending.seconds
        if progress:
            where = pending.fallback or "fitted in a side process, beside the clustering"
            progress("projection", 1.0, f"UMAP of {len(self.embeddings)} layers ({where}, {pending.seconds:.1f} s)")
        return self

    def release_work_folder(self):
        """Remove :attr:`work_folder` once the experiment is saved (its arrays stay readable: the
        stored files are links to the same data, and open maps outlive the names)."""
        import shutil

        if self.work_folder:
            shutil.rmtree(self.work_folder, ignore_errors=True)
            self.work_folder = None

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
                                  activation=config.activation, dropout=config.dropout, seed=seed)
    else:
        model = _models.build_cnn(subset.X_train.shape[1:], len(subset.classes), filters=config.filters,
                                  dense=config.hidden, activation=config.activation, dropout=config.dropout,
                                  seed=seed)
    if progress:
        progress("training", 0.0, f"training {model.name} for {config.epochs} epochs")
    history = _models.train(model, subset.X_train, subset.Y_train, epochs=config.epochs,
                            batch_size=config.batch_size, seed=seed, progress=progress)
    return model, history


def print_progress(stage, fraction, message):
    """A progress callback for terminals: ``[stage  42%] message``."""
    print(f"[{stage:<10} {fraction:4.0%}] {message}", flush=True)


def memory_budget_bytes(mib=None):
    """Bytes the activations may take in memory: ``mib`` MiB, or by default a quarter of the
    memory available now, at most :data:`DEFAULT_MEMORY_BUDGET` MiB (at least the minimum)."""
    if mib is not None:
        return int(mib) << 20
    try:
        import psutil

        available = psutil.virtual_memory().available
    except (ImportError, OSError):
        available = 4 << 30
    return int(max(MIN_MEMORY_BUDGET << 20, min(DEFAULT_MEMORY_BUDGET << 20, available // 4)))


def _activations_folder(workdir, name):
    """A new folder for activations streamed to disk: in ``workdir`` (an experiment's store, so
    that saving links the files instead of copying them), named as the store names the
    temporary folders of a run (a killed run's is removed by the store's next save or listing);
    default the system's temporary folder. Removed when the process ends."""
    import atexit
    import shutil
    import tempfile

    if workdir is None:
        folder = tempfile.mkdtemp(prefix="signatures-activations-")
    else:
        from .store import work_folder

        folder = str(work_folder(workdir, name))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _extract_on_cluster(client, model, X, out, layers, config, report):
    """:func:`signatures.outofcore.extract_on_cluster` of ``model``, saved beside the activation files."""
    from pathlib import Path

    from . import models as _models
    from .outofcore import extract_on_cluster

    model_file = Path(out) / ".model.keras"  # the workers load it: on the store they all reach
    _models.save_model(model, model_file)
    return extract_on_cluster(client, str(model_file), X, out, layers=layers, reduce=config.reduce, logits=True,
                              dtype=config.activations_dtype, progress=report)


def run_experiment(config, *, progress=None, model=None, dataset=None, words=None, workdir=None, client=None,
                   projector=None):
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
    words : dict[str, str], optional
        The words the user sees for the config's fields (see :meth:`ExperimentConfig.problems`);
        messages about the choices, raised as ValueError before any training, use them.
    workdir : str or Path, optional
        Where activations over ``config.memory_budget`` are streamed (a temporary folder made
        there): give the store the experiment will be saved in, so that saving links the
        files. Default: the system's temporary folder.
    client : distributed.Client, or a callable giving a context manager that yields one, optional
        A Dask cluster for activations over the memory budget: the forward pass and the k-means
        of every layer then run as tasks on its workers (:mod:`signatures.outofcore`), over files
        in ``workdir``, which every worker must reach (the same machine, or a shared file
        system). A job on a worker passes ``distributed.worker_client``. Unused when the
        activations fit the budget.
    projector : concurrent.futures.Executor, optional
        Fits the UMAP maps there, e.g. the side process of a stand-alone run
        (:func:`signatures.sideprocess.start_side_process`), and returns once the layers are
        clustered: the maps are then pending, the experiment's ``embeddings`` empty until
        :meth:`Experiment.wait_for_maps` (which :func:`signatures.store.save_experiment`
        calls). The maps are the same as without it. Activations over the memory budget are
        mapped in this process instead, and the projector is shut down then (another
        process would hold its share outside the budget).

    Returns
    -------
    Experiment
    """
    from . import data as _data
    from .projection import choose_rows, project_layers, submit_projection

    config.validate(words=words)
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
    config.validate(words=words, counts=dataset.counts())  # rows per class known now: still before TensorFlow
    early, pending_input = None, None
    if projector is not None and model is None and not config.model_path:
        # Which rows the run takes does not depend on TensorFlow: the raw input's separation (for
        # the analysis) is measured by the projector while TensorFlow is imported.
        early = prepare_subset(config, dataset)
        pending_input = _submit_input_separation(projector, config, dataset, early)
    lap("loading")

    report("startup", 0.0, "importing TensorFlow")
    from . import models as _models  # TensorFlow from here on
    from .activations import build_extractor, extract

    lap("startup")

    if model is None and config.model_path:
        model = _models.load_model(config.model_path)
    if model is not None:
        flatten = len(model.inputs[0].shape) == 2
    else:
        flatten = config.arch == "mlp"
    subset = early if early is not None else prepare_subset(config, dataset, flatten=flatten)
    if model is not None:
        _models.check_input_shape(model, subset.X_train)
        n_out = model.outputs[0].shape[-1]
        if n_out != len(subset.classes):
            raise ValueError(
                f"model {model.name!r} has {n_out} outputs but {len(subset.classes)} digits are chosen "
                f"({list(subset.classes)}); choose as many digits as the model has outputs"
            )
    check_subset_rows(config, subset, words=words)
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
    labels, split, dataset_rows = _run_rows(subset)
    extractor = build_extractor(model, reduce=config.reduce)
    widths = [int(np.prod(t.shape[1:])) for t in extractor[0].outputs[:len(extractor[1])]]
    need = len(X) * sum(widths) * np.dtype(config.activations_dtype).itemsize
    budget = memory_budget_bytes(config.memory_budget)
    out = _activations_folder(workdir, config.name) if need > budget else None
    held = (f"on disk, memory-mapped ({need / 2**20:,.0f} MiB over the {budget / 2**20:,.0f} MiB budget)"
            if out else f"in memory ({need / 2**20:,.0f} MiB)")
    if out is not None and projector is not None:
        # Over the budget, the maps are fitted here: a second process would hold their rows and its
        # own libraries outside the budget. It is let go now, before the memory is needed.
        shutdown = getattr(projector, "shutdown", None)
        if shutdown is not None:
            shutdown(wait=False, cancel_futures=True)
        projector = None
    import contextlib

    with contextlib.ExitStack() as stack:
        dask_client = None
        if out is not None and client is not None:  # too large for this process: the cluster's workers do it
            dask_client = stack.enter_context(client() if callable(client) and not hasattr(client, "submit")
                                              else contextlib.nullcontext(client))
            held += ", by the Dask cluster's workers"
        report("extraction", 0.0, f"one forward pass over {len(X)} inputs; activations {held}")
        if dask_client is None:
            hidden, probs, logits = extract(model, X, reduce=config.reduce, progress=report, logits=True,
                                            extractor=extractor, out=out, dtype=config.activations_dtype)
        else:
            hidden, probs, logits = _extract_on_cluster(dask_client, model, X, out, extractor[1], config, report)
        lap("extraction")
        # The maps depend on the rows only (not on the clusters): a projector fits them meanwhile.
        fit_rows, transform_rows = choose_rows(
            labels, split != SPLITS["anomaly"], max_points=config.umap_points, random_state=config.seed
        )
        pending = None
        if projector is not None:  # said when they arrive (Experiment.wait_for_maps)
            pending = submit_projection(projector, hidden, fit_rows, transform_rows, random_state=config.seed)

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
        uncertainty = None
        from .uncertainty import has_dropout, mc_dropout

        if has_dropout(model):
            report("uncertainty", 0.0, f"Monte-Carlo dropout: {MC_PASSES} passes over {len(X)} inputs")
            mc = mc_dropout(model, X, T=MC_PASSES, seed=config.seed,
                            progress=lambda _s, f, m: report("uncertainty", f, m))
            uncertainty = {"entropy": mc["entropy"].astype(np.float32),
                           "mutual_information": mc["mutual_information"].astype(np.float32),
                           "passes": int(mc["passes"])}
            lap("uncertainty")

        train = split == SPLITS["train"]
        n_train = len(subset.y_train)  # the training rows come first: slices, never copies of the activations
        # "classes": at least as many clusters as trained classes; "faithfulness": clusters that predict the output.
        y_k = {"classes": labels[train], "faithfulness": predicted[train]}.get(config.k_criterion)
        options = dict(k_range=config.k_range, sample_size=config.sample_size, random_state=config.seed,
                       progress=report, criterion=config.k_criterion, k=config.k_fixed, y=y_k)
        if dask_client is None:
            from .clustering import cluster_layers

            clusterers = cluster_layers(OrderedDict((name, values[:n_train]) for name, values in hidden.items()),
                                        **options)
        else:
            from . import outofcore

            arrays = outofcore.activation_arrays(out, list(hidden))
            clusterers = outofcore.cluster_layers(OrderedDict((n, a[:n_train]) for n, a in arrays.items()),
                                                  client=dask_client, **options)
        paths = np.empty((len(X), len(hidden)), dtype=np.int64)
        paths[:n_train] = _paths.paths_from_labels(OrderedDict((n, est.labels_) for n, est in clusterers.items()))
        if len(X) > n_train and dask_client is None:
            paths[n_train:] = _paths.assign_paths(
                clusterers, OrderedDict((n, v[n_train:]) for n, v in hidden.items())
            )
        elif len(X) > n_train:
            for j, (name, est) in enumerate(clusterers.items()):
                paths[n_train:, j] = dask_client.compute(
                    outofcore.nearest_center(arrays[name][n_train:], est.centers_)).result()
        lap("clustering")

    if pending is None:
        embeddings = project_layers(hidden, fit_rows, transform_rows, random_state=config.seed, progress=report)
        lap("projection")
    else:
        embeddings = OrderedDict()  # until Experiment.wait_for_maps

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
        logits=logits,
        uncertainty=uncertainty,
        info={"source": dataset.source, "model_name": model.name, "n_params": int(model.count_params()),
              "activations": {"held": ("on disk, by the Dask cluster" if dask_client is not None else "on disk")
                                              if out else "in memory", "bytes": int(need),
                              "budget_bytes": int(budget), "dtype": config.activations_dtype}},
        model=model,
        work_folder=out,
        pending_maps=pending,
        pending_input=pending_input,
    )


#: Most input values (rows x pixels) whose separation a projector measures during the imports: past
#: that the analysis samples its rows anyway, and the side process would hold a large copy.
EARLY_INPUT_VALUES = 10_000_000


def _run_rows(subset):
    """The run's rows in order (training, held-out, anomaly): labels, split codes, dataset rows."""
    labels = np.concatenate([subset.y_train, subset.y_test, subset.y_anomaly])
    split = np.concatenate([
        np.full(len(subset.y_train), SPLITS["train"], dtype=np.int8),
        np.full(len(subset.y_test), SPLITS["test"], dtype=np.int8),
        np.full(len(subset.y_anomaly), SPLITS["anomaly"], dtype=np.int8),
    ])
    return labels, split, np.concatenate([subset.idx_train, subset.idx_test, subset.idx_anomaly])


def _input_separation(images, labels, split, classes, config):
    """:func:`signatures.separation.input_separation` of the rows a run will hold (as ``analyze`` calls it)."""
    from types import SimpleNamespace

    from .separation import input_separation

    return input_separation(SimpleNamespace(images=images, labels=labels, split=split, classes=classes,
                                            config=config))


def _submit_input_separation(projector, config, dataset, subset):
    labels, split, rows = _run_rows(subset)
    images = dataset.images[rows]
    if images.size > EARLY_INPUT_VALUES:
        return None
    try:
        return projector.submit(_input_separation, images, labels, split, tuple(subset.classes), config)
    except (RuntimeError, OSError):  # it takes no task: the analysis measures the input itself
        return None
