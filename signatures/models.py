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


def _import_keras():
    """Import Keras (and TensorFlow); outside a notebook, without the plotting modules it pulls in.

    Keras imports matplotlib (for two plotting helpers) and IPython (for a notebook file editor)
    whenever they are installed, though it needs neither: about 1.7 s of the 7-9 s its import
    takes here, paid by every run. A process without IPython loaded (a command, a Dask worker) is
    no notebook: there Keras is imported with both hidden, and they stay importable by name
    afterwards (only those Keras helpers go without them). A notebook, where IPython is loaded,
    imports Keras as usual.
    """
    import sys

    hide = [] if "IPython" in sys.modules or "keras" in sys.modules else [
        name for name in ("matplotlib", "IPython") if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # an import of it raises ImportError, which Keras expects
    try:
        import keras
    finally:
        for name in hide:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return keras


keras = _import_keras()

import numpy as np  # noqa: E402

from ._checks import ACTIVATIONS, check_activation as _check_activation, parse_hidden  # noqa: E402


def _not_retracing(record):
    """Drop TensorFlow's "triggered tf.function retracing" warning: every run builds new models (and
    their predict functions) on purpose, so a long-lived worker would print it after every few runs."""
    return "triggered tf.function retracing" not in record.getMessage()


def _quiet_retracing():
    import logging

    logger = logging.getLogger("tensorflow")
    if _not_retracing not in logger.filters:
        logger.addFilter(_not_retracing)


_quiet_retracing()

__all__ = [
    "build_mlp",
    "build_cnn",
    "train",
    "evaluate",
    "save_model",
    "load_model",
    "check_input_shape",
    "check_model",
    "fit_input",
    "parse_hidden",
]

def _dropout_layer(rate, name, seed):
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"dropout must be a rate in [0, 1), got {rate!r}")
    return keras.layers.Dropout(float(rate), seed=seed, name=name)


def build_mlp(input_dim, n_classes, *, hidden=(64, 32), activation="relu", dropout=0.0, seed=0):
    """A dense classifier: ``Input -> hidden_1 .. hidden_N -> output (softmax)``.

    Parameters
    ----------
    input_dim : int
        Number of input features (784 for flattened MNIST).
    n_classes : int
    hidden : sequence of int
    activation : str
        One of ``ACTIVATIONS``.
    dropout : float
        Rate of a ``Dropout`` layer (``dropout_i``) after each hidden layer; 0 adds none.
    seed : int
        Seeds the weight initialisers (and the dropout masks' seed generators).

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
        if dropout:
            layers.append(_dropout_layer(dropout, f"dropout_{i}", seed + 200 + i))
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
    dropout=0.0,
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
    dropout : float
        Rate of a ``Dropout`` layer after each dense hidden layer (``dropout_j``), or after
        ``flatten`` when there is none (``dropout_0``); 0 adds none.
    seed : int

    Returns
    -------
    keras.Sequential, compiled.
    """
    filters = parse_hidden(filters, what="conv filters")
    dense = parse_hidden(dense, what="dense sizes") if len(dense) else ()
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
    if dropout and not dense:
        layers.append(_dropout_layer(dropout, "dropout_0", seed + 200))
    for j, units in enumerate(dense, start=1):
        layers.append(
            keras.layers.Dense(
                units, activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + j),
                name=f"hidden_{j}",
            )
        )
        if dropout:
            layers.append(_dropout_layer(dropout, f"dropout_{j}", seed + 200 + j))
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


def warm_up():
    """Train and run a tiny network once, so that a process's first real run does not pay
    TensorFlow's and Keras' one-time start-up costs (about a second); returns the seconds spent."""
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    X = rng.random((64, 16), dtype=np.float32)
    Y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 64)]
    model = build_mlp(16, 2, hidden=(4,), seed=0)
    train(model, X, Y, epochs=1, batch_size=16, seed=0)
    model.predict_on_batch(X)
    return time.perf_counter() - start


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
    X = fit_input(model, X)
    Y = np.asarray(Y)
    n_out = model.outputs[0].shape[-1]
    if Y.ndim != 2 or Y.shape[1] != n_out:
        raise ValueError(f"targets must be one-hot of shape (n, {n_out}), got {Y.shape}")
    if len(Y) != len(X):
        raise ValueError(f"targets must have one row per input: {len(X)} inputs, got {len(Y)} target rows")
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

    X = fit_input(model, X)
    y = np.asarray(y)
    classes = np.asarray(sorted(classes))
    n_out = model.outputs[0].shape[-1]
    if len(classes) != n_out:
        raise ValueError(f"classes must name one class per output unit ({n_out}), got {classes.tolist()}")
    if y.shape != (len(X),):
        raise ValueError(f"y must hold one label per input, shape ({len(X)},); got shape {y.shape}")
    unknown = sorted(set(y.tolist()) - set(classes.tolist()))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes.tolist()}")
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


def check_model(model):
    """Raise ValueError unless ``model`` is a Keras model with one input and one output."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}: {model!r}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        return model  # a Sequential without a defined input yet: nothing more to check
    if len(inputs) != 1:
        raise ValueError(
            f"model {model.name!r} has {len(inputs)} inputs; signatures feeds it one image per example, "
            "so it needs a model with exactly one input"
        )
    if len(outputs) != 1:
        raise ValueError(
            f"model {model.name!r} has {len(outputs)} outputs; signatures needs exactly one, the class "
            "probabilities"
        )
    return model


def _declared_input_shape(model):
    try:
        return tuple(None if d is None else int(d) for d in model.inputs[0].shape[1:])
    except (AttributeError, IndexError, ValueError, TypeError):
        return None


def _same_values(expected, got):
    """True if rows of shape ``got`` become rows of shape ``expected`` by a row-major reshape
    that keeps the image: the same sizes once size-1 axes are dropped, or one side flat."""
    if None in expected or int(np.prod(expected)) != int(np.prod(got)):
        return False
    squeezed_e = [d for d in expected if d != 1]
    squeezed_g = [d for d in got if d != 1]
    return squeezed_e == squeezed_g or len(squeezed_e) <= 1 or len(squeezed_g) <= 1


def fit_input(model, X):
    """``X`` with its rows in the layout of ``model``'s declared input.

    Rows that already fit are returned as they are. Rows holding the same values in
    another layout are reshaped (row-major, so pixels keep their order): (28, 28, 1) for
    a model declaring (28, 28) (Keras' MNIST example, ``Input((28, 28)) -> Flatten``) or
    (784,), and (784,) for one declaring (28, 28, 1).

    Parameters
    ----------
    model : keras.Model
    X : array-like of shape (n_samples, ...)

    Returns
    -------
    ndarray of shape (n_samples, *input_shape)

    Raises
    ------
    ValueError
        ``X`` is not numeric or has no sample axis, or its rows hold another number of
        values than the model takes (or the same number in a layout that is not the same
        image, such as (14, 56) for (28, 28)); the message names both shapes.
    """
    check_model(model)
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"inputs must be numbers (pixel values), got an array of dtype {X.dtype}")
    expected = _declared_input_shape(model)
    if X.ndim < 2:
        want = f"(n_samples, {', '.join(map(str, expected))})" if expected else "(n_samples, ...)"
        raise ValueError(
            f"inputs must hold one row per example, shape {want}; got an array of shape {X.shape}"
        )
    if expected is None:
        return X
    got = tuple(int(d) for d in X.shape[1:])
    if len(expected) == len(got) and all(e is None or e == g for e, g in zip(expected, got)):
        return X
    if _same_values(expected, got):
        return X.reshape((len(X),) + expected)
    n_expected = "any number of" if None in expected else str(int(np.prod(expected)))
    if None not in expected and int(np.prod(expected)) == int(np.prod(got)):
        why = f"the same number of values ({n_expected}) in a layout that is not the same image"
    else:
        why = f"{int(np.prod(got))} values per row; the model takes {n_expected}"
    raise ValueError(
        f"model {model.name!r} expects inputs of shape {expected}, the data has rows of shape {got} ({why})"
    )


def check_input_shape(model, X):
    """Raise ValueError if the rows of ``X`` do not fit ``model``'s input, even reshaped.

    Rows of another layout that :func:`fit_input` reshapes to the model's input are accepted.
    """
    fit_input(model, X)
