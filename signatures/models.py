"""Build, train, evaluate, save and load the small Keras models the study uses.

Layers get stable names so that results stay readable: ``hidden_1``, ``hidden_2``, ...
for dense hidden layers, ``conv_1``/``pool_1``, ... for conv blocks, ``output`` for the
softmax layer.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ._checks import ACTIVATIONS, check_activation as _check_activation, parse_hidden  # noqa: E402

__all__ = [
    "build_mlp",
    "build_cnn",
    "train",
    "evaluate",
    "save_model",
    "load_model",
    "check_input_shape",
    "parse_hidden",
]

def build_mlp(input_dim, n_classes, *, hidden=(64, 32), activation="relu", seed=0):
    """A dense classifier: ``Input -> hidden_1 .. hidden_N -> output (softmax)``.

    Parameters
    ----------
    input_dim : int
        Number of input features (784 for flattened MNIST).
    n_classes : int
    hidden : sequence of int
    activation : str
        One of ``ACTIVATIONS``.
    seed : int
        Seeds the weight initialisers.

    Returns
    -------
    keras.Sequential, compiled with Adam and categorical cross-entropy.
    """
    hidden = parse_hidden(hidden)
    _check_activation(activation)
    layers = [keras.Input(shape=(int(input_dim),), name="pixels")]
    for i, units in enumerate(hidden, start=1):
        layers.append(
            keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
                name=f"hidden_{i}",
            )
        )
    layers.append(
        keras.layers.Dense(
            int(n_classes),
            activation="softmax",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            name="output",
        )
    )
    model = keras.Sequential(layers, name="mlp_" + "_".join(map(str, hidden)))
    _compile(model)
    return model


def build_cnn(
    input_shape,
    n_classes,
    *,
    filters=(8, 16),
    kernel_size=3,
    pool_size=2,
    dense=(32,),
    activation="relu",
    seed=0,
):
    """A small conv net: ``[conv_i -> pool_i] * len(filters) -> flatten -> hidden_j -> output``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(height, width, channels)``, e.g. ``(28, 28, 1)``.
    n_classes : int
    filters : sequence of int
        Filters of each conv block.
    kernel_size, pool_size : int
    dense : sequence of int
        Dense hidden layers after the conv blocks (may be empty).
    activation : str
    seed : int

    Returns
    -------
    keras.Sequential, compiled.
    """
    filters = parse_hidden(filters)
    dense = parse_hidden(dense) if len(dense) else ()
    _check_activation(activation)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    layers = [keras.Input(shape=tuple(int(s) for s in input_shape), name="pixels")]
    size = min(input_shape[:2])
    for i, f in enumerate(filters, start=1):
        layers.append(
            keras.layers.Conv2D(
                f, kernel_size, padding="same", activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 100 + i),
                name=f"conv_{i}",
            )
        )
        if size // pool_size >= 1:
            layers.append(keras.layers.MaxPooling2D(pool_size, name=f"pool_{i}"))
            size //= pool_size
    layers.append(keras.layers.Flatten(name="flatten"))
    for j, units in enumerate(dense, start=1):
        layers.append(
            keras.layers.Dense(
                units, activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + j),
                name=f"hidden_{j}",
            )
        )
    layers.append(
        keras.layers.Dense(
            int(n_classes), activation="softmax",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            name="output",
        )
    )
    model = keras.Sequential(layers, name="cnn_" + "_".join(map(str, filters)))
    _compile(model)
    return model


def _compile(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])


class _ProgressCallback(keras.callbacks.Callback):
    def __init__(self, progress, epochs):
        super().__init__()
        self._progress = progress
        self._epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self._epochs}"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if key in logs:
                parts.append(f"{key} {logs[key]:.4f}")
        self._progress("training", (epoch + 1) / self._epochs, ", ".join(parts))


def train(model, X, Y, *, epochs=5, batch_size=64, validation_split=0.1, seed=0, progress=None):
    """Fit ``model`` with a validation split and a fixed seed.

    Parameters
    ----------
    model : keras.Model
        Compiled.
    X : ndarray of shape (n_samples, ...)
    Y : ndarray of shape (n_samples, n_classes)
        One-hot targets.
    epochs, batch_size : int
    validation_split : float
    seed : int
        Seeds Keras' shuffling and dropout (``keras.utils.set_random_seed``), so the
        same seed trains the same weights.
    progress : callable, optional
        ``progress(stage, fraction, message)`` after every epoch.

    Returns
    -------
    dict
        The training history: metric name -> list of per-epoch values.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    check_input_shape(model, X)
    n_out = model.outputs[0].shape[-1]
    if Y.ndim != 2 or Y.shape[1] != n_out:
        raise ValueError(f"targets must be one-hot of shape (n, {n_out}), got {Y.shape}")
    keras.utils.set_random_seed(int(seed))
    callbacks = [_ProgressCallback(progress, epochs)] if progress else []
    history = model.fit(
        X, Y, epochs=int(epochs), batch_size=int(batch_size), validation_split=validation_split,
        shuffle=True, verbose=0, callbacks=callbacks,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def evaluate(model, X, y, classes, *, batch_size=512):
    """Accuracy and confusion matrix on labelled inputs.

    Parameters
    ----------
    X : ndarray of shape (n_samples, ...)
    y : ndarray of shape (n_samples,)
        Original labels, each in ``classes``.
    classes : sequence of int
        Sorted trained classes; output unit ``j`` predicts ``classes[j]``.

    Returns
    -------
    dict with ``accuracy`` (float), ``confusion`` (list of lists, rows = true,
    columns = predicted, in ``classes`` order) and ``predicted`` (ndarray of labels).
    """
    from sklearn.metrics import confusion_matrix

    check_input_shape(model, X)
    classes = np.asarray(sorted(classes))
    probs = model.predict(X, batch_size=batch_size, verbose=0)
    predicted = classes[np.argmax(probs, axis=1)]
    cm = confusion_matrix(y, predicted, labels=classes)
    return {
        "accuracy": float(np.mean(predicted == np.asarray(y))),
        "confusion": cm.tolist(),
        "predicted": predicted,
    }


def save_model(model, path):
    """Save ``model`` to a ``.keras`` file (written to a temporary name, then moved)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model files must end in .keras, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def load_model(path):
    """Load a ``.keras`` model with Keras ``safe_mode`` on.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a readable ``.keras`` archive, or a model that needs unsafe
        deserialization (a ``Lambda`` layer holding Python code): such files are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ValueError(
            f"model file {str(path)!r} is not a Keras 3 '.keras' archive (corrupted, or another format); "
            "save models with model.save('name.keras')"
        )
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "unsafe" in text.lower() or "lambda" in text.lower():
            raise ValueError(
                f"model file {str(path)!r} needs unsafe deserialization (it holds Python code, e.g. a "
                "Lambda layer); signatures loads models with safe_mode=True and refuses it"
            ) from exc
        raise ValueError(f"model file {str(path)!r} could not be loaded: {text}") from exc
    except (OSError, KeyError, zipfile.BadZipFile, TypeError) as exc:
        raise ValueError(f"model file {str(path)!r} is corrupted or incomplete: {exc}") from exc


def check_input_shape(model, X):
    """Raise ValueError if the rows of ``X`` do not fit ``model``'s input."""
    try:
        expected = tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, ValueError):
        return
    got = tuple(np.shape(X)[1:])
    if len(expected) != len(got) or any(e is not None and e != g for e, g in zip(expected, got)):
        hint = ""
        if int(np.prod([g for g in got])) == int(np.prod([e or 1 for e in expected])):
            hint = " (the same pixels in another layout: use flat inputs for dense models, (h, w, 1) for conv models)"
        raise ValueError(
            f"model {model.name!r} expects inputs of shape {expected}, the data has rows of shape {got}{hint}"
        )
