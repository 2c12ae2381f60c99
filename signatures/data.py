"""Load MNIST-like datasets and cut them into the subsets an experiment needs.

Three real datasets are known: ``"mnist"`` (the default), ``"fashion-mnist"`` and
``"digits"`` (scikit-learn's bundled 8x8 handwritten digits).

Where MNIST and Fashion-MNIST come from, in this order:

1. ``data_dir`` given to :func:`load_dataset` (the CLI's ``--data-dir``);
2. the environment variable ``SIGNATURES_DATA_DIR``;
3. ``keras.datasets``, which downloads the full set once and caches it under
   ``~/.keras/datasets``.

A data directory holds the standard IDX files (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-...``), either directly or in a subfolder
named after the dataset (``<dir>/mnist/``). The train pair, the t10k pair or both
may be present. Several directories may be given, separated by ``os.pathsep``; a
directory named after one dataset (``.../fashion-mnist``) is never read as another; a
directory of the list that does not exist is skipped (and named in the dataset's
``source``). If no source works, :class:`DataUnavailableError` names the ways out; there
is no silent fallback to another dataset. A damaged IDX file (truncated, corrupted,
mismatched) is a ValueError that names the file and what to do.

This module imports no TensorFlow unless it has to download through Keras.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "Dataset",
    "Subset",
    "load_dataset",
    "prepare",
    "max_value",
    "model_inputs",
    "one_hot",
    "read_idx",
]

ENV_DATA_DIR = "SIGNATURES_DATA_DIR"

_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: Known datasets: name -> class names (index = label).
DATASETS = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": _FASHION_NAMES,
    "digits": tuple(str(d) for d in range(10)),
}

_IDX_SUBDIRS = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fashion-mnist", "fashion_mnist", "fashion")}


class DataUnavailableError(RuntimeError):
    """No source of the requested dataset could be read."""


_REPLACE = ("Replace it with an intact copy (download the dataset again), or remove it and point "
            f"--data-dir / {ENV_DATA_DIR} at a folder with intact IDX files.")


@dataclass(frozen=True)
class Dataset:
    """A whole labelled image dataset as loaded from its source.

    Attributes
    ----------
    name : str
        One of :data:`DATASETS`.
    images : ndarray of shape (n_samples, height, width), uint8
        Raw pixel values, ``0..max_value``.
    labels : ndarray of shape (n_samples,), int
    class_names : tuple of str
        ``class_names[label]`` is the readable name of a label.
    max_value : float
        The largest possible pixel value (255 for MNIST, 16 for digits).
    source : str
        Where the data came from, for the record.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    max_value: float
    source: str

    @property
    def image_shape(self):
        return tuple(self.images.shape[1:])

    def counts(self):
        """Number of images per label, as a dict."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


@dataclass
class Subset:
    """The part of a dataset one experiment uses.

    Attributes
    ----------
    classes : tuple of int
        Trained classes, sorted; column ``j`` of a one-hot target is ``classes[j]``.
    anomalies : tuple of int
        Classes never seen in training, inserted afterwards.
    X_train, X_test, X_anomaly : ndarray of shape (n, n_features) or (n, h, w, 1), float32
        Images scaled to [0, 1]; flat for dense models, with a channel axis for conv models.
    y_train, y_test, y_anomaly : ndarray of shape (n,), int
        Original dataset labels (not indices into ``classes``).
    idx_train, idx_test, idx_anomaly : ndarray of shape (n,), int
        Row of each image in the full :class:`Dataset`.
    image_shape : tuple of int
        ``(height, width)`` of one image, for display.
    """

    dataset: str
    class_names: tuple
    classes: tuple
    anomalies: tuple
    X_train: np.ndarray
    y_train: np.ndarray
    idx_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    idx_test: np.ndarray
    X_anomaly: np.ndarray
    y_anomaly: np.ndarray
    idx_anomaly: np.ndarray
    image_shape: tuple
    info: dict = field(default_factory=dict)

    @property
    def Y_train(self):
        """One-hot training targets of shape (n_train, n_classes)."""
        return one_hot(self.y_train, self.classes)

    @property
    def Y_test(self):
        return one_hot(self.y_test, self.classes)


# --------------------------------------------------------------------------- IDX


def read_idx(path):
    """Read one IDX file (optionally gzipped) into an ndarray.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray
        uint8 array with the shape written in the file's header.

    Raises
    ------
    ValueError
        The file cannot be read as an IDX file: a damaged or truncated gzip stream, a
        bad magic number, or a size other than the header announces. The message names
        the file and what to do.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except EOFError:
        raise ValueError(f"{path} is truncated (the gzip stream ends early). {_REPLACE}") from None
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} is damaged and cannot be read ({exc}). {_REPLACE}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'}). {_REPLACE}")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files (type code 0x8) are supported, got type code "
                         f"{dtype_code:#x}. {_REPLACE}")
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise ValueError(f"{path}: header announces {ndim} dimensions but the file is {len(raw)} bytes long. "
                         f"{_REPLACE}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header announces {expected} values, file holds {len(raw) - header}. {_REPLACE}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx_pair(folder, prefix):
    """Return (images_path, labels_path) for ``prefix`` ('train' or 't10k') or None."""
    found = {}
    for kind, dims in (("images", 3), ("labels", 1)):
        for sep in ("-", "."):
            for ext in (".gz", ""):
                candidate = folder / f"{prefix}-{kind}{sep}idx{dims}-ubyte{ext}"
                if candidate.is_file():
                    found[kind] = candidate
                    break
            if kind in found:
                break
    if len(found) == 2:
        return found["images"], found["labels"]
    return None


def _idx_folder(roots, name):
    """The folder that holds ``name``'s IDX files: a root's subfolder named after it, or a root
    itself unless that root is named after another dataset. None if there is none."""
    others = {sub.lower() for key, subs in _IDX_SUBDIRS.items() if key != name for sub in subs}
    for root in roots:
        root = Path(root)
        candidates = [root / sub for sub in _IDX_SUBDIRS[name]]
        if root.name.lower() not in others:
            candidates.append(root)
        for folder in candidates:
            if folder.is_dir() and (_find_idx_pair(folder, "train") or _find_idx_pair(folder, "t10k")):
                return folder
    return None


def _split_dirs(data_dir):
    """A data directory option as a list of folders (``os.pathsep`` separates several)."""
    if isinstance(data_dir, (list, tuple)):
        return [Path(d) for d in data_dir]
    return [Path(d) for d in str(data_dir).split(os.pathsep) if d]


def _load_idx_dir(name, roots, *, skipped=()):
    folder = _idx_folder(roots, name)
    if folder is None:
        missing = f" (skipped, not a folder: {', '.join(map(str, skipped))})" if skipped else ""
        raise DataUnavailableError(
            f"no {name} IDX files (train-/t10k-images-idx3-ubyte[.gz] with matching labels) "
            f"found in {os.pathsep.join(map(str, roots))} or subfolders named {', '.join(_IDX_SUBDIRS[name])}"
            f"{missing}. " + _ways_out(name)
        )
    images, labels, parts = [], [], []
    n_classes = len(DATASETS[name])
    for prefix in ("train", "t10k"):
        pair = _find_idx_pair(folder, prefix)
        if pair is None:
            continue
        img, lab = read_idx(pair[0]), read_idx(pair[1])
        if img.ndim != 3 or lab.ndim != 1 or len(img) != len(lab):
            raise ValueError(
                f"{pair[0]} and {pair[1]} do not match: an images file holds (n, height, width) values and "
                f"its labels file (n,), got images {img.shape} and labels {lab.shape}. Put the images and labels "
                "files of the same part (train or t10k) of one dataset side by side, intact."
            )
        if images and img.shape[1:] != images[0].shape[1:]:
            raise ValueError(f"{pair[0]} holds images of {img.shape[1:]} pixels, the train images "
                             f"{images[0].shape[1:]}: both must come from the same dataset")
        if lab.size and int(lab.max()) >= n_classes:
            raise ValueError(f"{pair[1]} holds label {int(lab.max())}, but {name} labels must be in "
                             f"0..{n_classes - 1}: the file is damaged or of another dataset. {_REPLACE}")
        images.append(img)
        labels.append(lab)
        parts.append(f"{prefix} ({len(lab)})")
    source = f"IDX files in {folder}: {' + '.join(parts)}"
    if skipped:
        source += f"; skipped missing data folder(s) {', '.join(map(str, skipped))}"
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), source


# --------------------------------------------------------------------------- sources


def _ways_out(name):
    return (
        "Ways out: (1) connect to the internet once so keras.datasets can download and cache it "
        "under ~/.keras/datasets; (2) point --data-dir or the environment variable "
        f"{ENV_DATA_DIR} at a folder of IDX files (for example ../shared/data, or "
        "/usr/share/datasets/fashion-mnist after 'apt-get install dataset-fashion-mnist'); "
        "(3) use --dataset digits, which ships inside scikit-learn."
    )


def _keras_cache_file(name):
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    if name == "mnist":
        return home / "datasets" / "mnist.npz"
    return home / "datasets" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"


def _load_keras(name):
    cached = _keras_cache_file(name)
    try:
        from keras import datasets  # imported lazily: this pulls in TensorFlow

        module = datasets.mnist if name == "mnist" else datasets.fashion_mnist
        (x_tr, y_tr), (x_te, y_te) = module.load_data()
    except Exception as exc:  # keras wraps network failures in a plain Exception
        raise DataUnavailableError(
            f"could not load {name} through keras.datasets (no cached copy at {cached} and the "
            f"download failed: {exc}). " + _ways_out(name)
        ) from exc
    return (
        np.concatenate([x_tr, x_te]),
        np.concatenate([y_tr, y_te]).astype(np.int64),
        f"keras.datasets.{name.replace('-', '_')} (train {len(y_tr)} + test {len(y_te)})",
    )


def _load_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # values 0..16
    return images, bunch.target.astype(np.int64), "sklearn.datasets.load_digits (1797)"


def load_dataset(name="mnist", *, data_dir=None):
    """Load a whole dataset from the first source that has it.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "digits"}
    data_dir : str, Path or list, optional
        Folder of IDX files, or several (a list, or one string with ``os.pathsep``
        between them, e.g. ``../shared/data:/usr/share/datasets/fashion-mnist``).
        Defaults to ``$SIGNATURES_DATA_DIR``; when neither is set, MNIST and
        Fashion-MNIST come from ``keras.datasets``.

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        Unknown dataset name; no data directory exists (a missing folder in a list of
        several is skipped, and named in ``source``); or a damaged IDX file (named, with
        what to do).
    DataUnavailableError
        No source could provide the data; the message lists the ways out.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    if name == "digits":
        images, labels, source = _load_digits()
    else:
        data_dir = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR) or None
        if data_dir is not None:
            roots = _split_dirs(data_dir)
            present = [r for r in roots if r.is_dir()]
            if not present:
                missing = ", ".join(map(str, roots)) or repr(data_dir)
                raise ValueError(f"data directory {missing} does not exist or is not a folder. " + _ways_out(name))
            images, labels, source = _load_idx_dir(name, present, skipped=[r for r in roots if not r.is_dir()])
        else:
            images, labels, source = _load_keras(name)
    return Dataset(name, images, labels, DATASETS[name], max_value(name), source)


def max_value(name):
    """The largest pixel value of dataset ``name``: 16 for scikit-learn's digits, else 255."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return 16.0 if name == "digits" else 255.0


def model_inputs(images, name, *, flatten):
    """Stored images (uint8 or the digits' 0..16) as a network of :func:`prepare` takes them."""
    return _scale(np.asarray(images), max_value(name), flatten)


# --------------------------------------------------------------------------- subsets


def one_hot(y, classes):
    """One-hot encode labels over the sorted ``classes``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Original labels; each must be in ``classes``.
    classes : sequence of int

    Returns
    -------
    ndarray of shape (n_samples, len(classes)), float32
        Column ``j`` stands for ``sorted(classes)[j]``.
    """
    classes = np.array(sorted(int(c) for c in classes))
    y = np.asarray(y)
    idx = np.searchsorted(classes, y)
    idx = np.clip(idx, 0, len(classes) - 1)
    bad = sorted(set(y[classes[idx] != y].tolist()))
    if bad:
        raise ValueError(f"labels {bad} are not among the classes {classes.tolist()}")
    out = np.zeros((len(y), len(classes)), dtype=np.float32)
    out[np.arange(len(y)), idx] = 1.0
    return out


def check_classes(values, known, what, *, context=""):
    """Sorted tuple of distinct class labels, each in ``known``; ValueError naming the bad ones.

    ``context`` (e.g. ``"for mnist"``) is added to the range message.
    """
    try:
        values = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be integers, got {values!r}") from None
    bad = [v for v in values if v not in known]
    if bad:
        where = f" {context}" if context else ""
        raise ValueError(f"{what} must be in {min(known)}..{max(known)}{where}, got {bad}")
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} lists {dupes} more than once")
    return tuple(sorted(values))


def _scale(images, max_value, flatten):
    X = images.astype(np.float32) / np.float32(max_value)
    if flatten:
        return X.reshape(len(X), int(np.prod(images.shape[1:])))
    return X[..., np.newaxis]


def prepare(
    dataset,
    classes,
    *,
    n_per_class=None,
    anomalies=(),
    n_per_anomaly=None,
    test_size=0.2,
    flatten=True,
    random_state=0,
):
    """Keep the chosen classes, sample, scale and split into train / held-out.

    Parameters
    ----------
    dataset : Dataset
    classes : sequence of int
        Classes to train on; at least two.
    n_per_class : int, optional
        Images drawn per class (balanced, seeded). ``None`` keeps every image of
        each class. Larger than what a class has is an error.
    anomalies : sequence of int
        Classes never trained on, loaded the same way for insertion later.
    n_per_anomaly : int, optional
        Images per anomaly class. ``None``: as many as the largest held-out class,
        or all the class has if that is fewer.
    test_size : float
        Held-out share of each class, stratified.
    flatten : bool
        ``True`` gives (n, h*w) rows for dense models, ``False`` (n, h, w, 1) for conv models.
    random_state : int
        Seed, ``>= 0``. Each class is drawn (and split) with its own generator derived
        from the seed and the class, so the images of a class are the same whatever
        other classes or anomalies are drawn with it; only the order of the training
        rows depends on all of them.

    Returns
    -------
    Subset
    """
    known = set(range(len(dataset.class_names)))
    classes = check_classes(classes, known, "classes")
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes to train on, got {list(classes)}")
    anomalies = check_classes(anomalies, known, "anomalies")
    both = sorted(set(classes) & set(anomalies))
    if both:
        raise ValueError(f"classes {both} are both trained and anomalies; an anomaly must be unseen in training")
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), got {test_size}")

    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state (the seed) must be an integer >= 0, got {random_state!r}")
    counts = dataset.counts()
    labels = dataset.labels

    def class_rng(cls):
        # One generator per class, derived from the seed and the class alone: the images drawn
        # for a class do not depend on which other classes are drawn with it.
        return np.random.default_rng(np.random.SeedSequence(int(random_state), spawn_key=(int(cls),)))

    def draw(cls, n, what, rng):
        rows = np.flatnonzero(labels == cls)
        if n is None:
            return rows
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{what} must be a positive integer, got {n!r}")
        if n > len(rows):
            raise ValueError(
                f"{what}={n} but class {cls} ({dataset.class_names[cls]}) has only {len(rows)} "
                f"images in {dataset.source}; choose {what} <= {len(rows)}"
            )
        return np.sort(rng.choice(rows, size=n, replace=False))

    train_rows, test_rows = [], []
    for cls in classes:
        rng = class_rng(cls)
        rows = rng.permutation(draw(cls, n_per_class, "n_per_class", rng))
        n_test = int(round(len(rows) * float(test_size)))
        if n_test < 1 or n_test >= len(rows):
            raise ValueError(
                f"class {cls} has {len(rows)} images: too few to hold out test_size={test_size} of them; "
                "use more images per class"
            )
        test_rows.append(rows[:n_test])
        train_rows.append(rows[n_test:])
    # Only the order of the training rows depends on every class: shuffled with the seed itself.
    train_idx = np.random.default_rng(int(random_state)).permutation(np.concatenate(train_rows))
    test_idx = np.sort(np.concatenate(test_rows))

    anomaly_rows = []
    default_n = max(len(r) for r in test_rows)
    for cls in anomalies:
        if n_per_anomaly is None:
            n = min(default_n, counts.get(cls, 0))
        else:
            n = n_per_anomaly
        anomaly_rows.append(draw(cls, n, "n_per_anomaly", class_rng(cls)))
    anomaly_idx = np.concatenate(anomaly_rows) if anomaly_rows else np.zeros(0, dtype=np.int64)

    def take(idx):
        X = _scale(dataset.images[idx], dataset.max_value, flatten)
        return X, labels[idx].astype(np.int64), idx.astype(np.int64)

    X_tr, y_tr, i_tr = take(train_idx)
    X_te, y_te, i_te = take(test_idx)
    X_an, y_an, i_an = take(anomaly_idx)
    return Subset(
        dataset=dataset.name,
        class_names=dataset.class_names,
        classes=classes,
        anomalies=anomalies,
        X_train=X_tr, y_train=y_tr, idx_train=i_tr,
        X_test=X_te, y_test=y_te, idx_test=i_te,
        X_anomaly=X_an, y_anomaly=y_an, idx_anomaly=i_an,
        image_shape=dataset.image_shape,
        info={"source": dataset.source, "available": {c: counts.get(c, 0) for c in classes + anomalies}},
    )
