"""Monte-Carlo dropout (Gal and Ghahramani 2016): how sure is the model of each input?

With dropout kept on at prediction time, each of ``T`` forward passes samples a thinned
network; the spread of their predictions measures the model's uncertainty.

Quantities (natural logarithms, so nats)
    ``probabilities``: the mean class probabilities over the passes, ``p = mean_t p_t``.
    ``entropy``: the predictive entropy ``H[p] = -sum_c p_c log p_c``: total uncertainty,
    high on an ambiguous input whatever its cause (at most ``log n_classes``).
    ``expected_entropy``: ``mean_t H[p_t]``, the uncertainty each sampled network has on its own
    (aleatoric: the input itself is ambiguous).
    ``mutual_information``: ``H[p] - mean_t H[p_t]`` (BALD), clipped at 0 against rounding:
    how much the sampled networks disagree (epistemic: the model has not learned this kind
    of input). High on inputs far from the training data.
    ``std``: the standard deviation of each class's probability over the passes.

How dropout is switched on, and only dropout
    ``model(x, training=True)`` would switch dropout on, but also switch
    ``BatchNormalization`` to the statistics of the batch (and update its moving averages).
    Instead the model is cloned (:func:`keras.models.clone_model`, nested models included)
    with every dropout layer (``Dropout``, ``SpatialDropout1D/2D/3D``, ``GaussianDropout``,
    ``AlphaDropout`` of rate > 0) replaced by a wrapper that calls a fresh copy of it with
    ``training=True``, seeded from ``seed``; the clone gets the model's weights and is called
    with ``training=False``, so every other layer (normalisation included) stays in inference
    mode (``predict_on_batch``, compiled once per call of :func:`mc_dropout`). The model itself
    is never changed. ``GaussianNoise`` is not dropout and stays off.

Determinism
    Same model, inputs, ``T``, ``seed`` and ``batch_size``: the same numbers. Passes run in
    batches of ``batch_size`` rows (inputs x passes); the masks depend on the batch size.

A model without dropout
    Every pass would be the same: one pass is made, ``mutual_information`` is exactly 0,
    ``entropy`` is the plain prediction's, and ``has_dropout`` is False (the models
    :func:`signatures.models.build_mlp` and ``build_cnn`` build have none).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .models import keras  # noqa: E402  (imported as models imports it: faster outside a notebook)
import numpy as np  # noqa: E402

from ._checks import check_int  # noqa: E402
from .models import check_model, fit_input  # noqa: E402

__all__ = ["DROPOUT_TYPES", "dropout_layers", "has_dropout", "mc_dropout"]

#: Layers switched on by :func:`mc_dropout` (the spatial dropouts are subclasses of ``Dropout``).
DROPOUT_TYPES = (keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.AlphaDropout)
_MAX_T = 1000
_MAX_SEED = 2**31 - 1


def _is_dropout(layer):
    return isinstance(layer, DROPOUT_TYPES) and float(getattr(layer, "rate", 0.0)) > 0.0


def _walk(model, prefix=""):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


def dropout_layers(model):
    """Names of the dropout layers of rate > 0 (nested models' as ``outer/inner``), in layer order.

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    list of str
    """
    check_model(model)
    return [name for name, layer in _walk(model) if _is_dropout(layer)]


def has_dropout(model):
    """True if ``model`` holds a dropout layer of rate > 0 (see :data:`DROPOUT_TYPES`)."""
    return bool(dropout_layers(model))


class _AlwaysOn(keras.layers.Layer):
    """Calls its dropout layer with ``training=True`` whatever mode the model is called in."""

    def __init__(self, inner, **kwargs):
        super().__init__(name=inner.name, dtype=inner.dtype_policy, **kwargs)
        self.inner = inner

    def call(self, inputs):
        return self.inner(inputs, training=True)

    def compute_output_shape(self, input_shape):
        return input_shape


def _mc_clone(model, seed):
    """A clone of ``model`` whose dropout layers always drop, with ``model``'s weights."""
    counter = [0]

    def clone_function(layer):
        config = layer.get_config()
        if not _is_dropout(layer):
            return layer.__class__.from_config(config)
        counter[0] += 1
        config["seed"] = int(np.random.SeedSequence(int(seed), spawn_key=(counter[0],)).generate_state(1)[0]
                             % _MAX_SEED)
        return _AlwaysOn(layer.__class__.from_config(config))

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def _entropy(p):
    """Entropy (nats) over the last axis of probabilities; 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=-1)


def mc_dropout(model, X, *, T=20, seed=0, batch_size=512, progress=None):
    """Predict ``X`` with dropout on, ``T`` times, and measure the spread.

    Parameters
    ----------
    model : keras.Model
        Sequential or functional; a softmax output.
    X : ndarray of shape (n_samples, ...)
        Inputs as the model takes them (or the same pixels in another layout).
    T : int
        Forward passes, 1 .. 1000.
    seed : int
        Seeds the dropout masks; the same seed gives the same numbers.
    batch_size : int
        Rows through the network at once (each input counts ``T`` times); bounds memory.
    progress : callable, optional
        ``progress(stage, fraction, message)`` after every batch.

    Returns
    -------
    dict
        ``probabilities`` (n_samples, n_classes) the mean over the passes;
        ``entropy``, ``expected_entropy``, ``mutual_information`` (n_samples,) in nats, see
        the module notes; ``std`` (n_samples, n_classes); ``T``; ``passes`` (``T``, or 1
        without dropout); ``has_dropout`` (bool); ``dropout_layers`` (list of names).

    Raises
    ------
    ValueError
        ``T``, ``seed`` or ``batch_size`` out of range, or inputs that do not fit the model.
    """
    check_model(model)
    T = check_int(T, "T (the number of passes)", low=1, high=_MAX_T)
    seed = check_int(seed, "seed", low=0, high=_MAX_SEED)
    batch_size = check_int(batch_size, "batch_size", low=1, high=65536)
    raw = np.asarray(X)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"X must hold numbers (pixel values), got an array of dtype {raw.dtype}")
    Xm = np.asarray(fit_input(model, raw), dtype=np.float32)
    if len(Xm) == 0:
        raise ValueError("X holds no inputs")
    names = dropout_layers(model)
    report = progress or (lambda *a: None)
    n = len(Xm)
    if not names:
        probs = []
        for s in range(0, n, batch_size):
            probs.append(np.asarray(model.predict_on_batch(Xm[s:s + batch_size]), dtype=np.float64))
            report("mc-dropout", min(n, s + batch_size) / n, f"no dropout: one pass, {min(n, s + batch_size)}/{n}")
        p = np.concatenate(probs)
        h = _entropy(p)
        return {"probabilities": p, "entropy": h, "expected_entropy": h.copy(), "mutual_information": np.zeros(n),
                "std": np.zeros_like(p), "T": T, "passes": 1, "has_dropout": False, "dropout_layers": []}
    clone = _mc_clone(model, seed)
    group = max(1, batch_size // T)
    mean, second, expected = [], [], []
    for s in range(0, n, group):
        x = Xm[s:s + group]
        rows = np.concatenate([x] * T)  # pass t of input i is row t * len(x) + i
        p = np.concatenate([
            np.asarray(clone.predict_on_batch(rows[r:r + batch_size]), dtype=np.float64)
            for r in range(0, len(rows), batch_size)
        ]).reshape((T, len(x), -1))
        mean.append(p.mean(axis=0))
        second.append((p * p).mean(axis=0))
        expected.append(_entropy(p).mean(axis=0))
        done = min(n, s + group)
        report("mc-dropout", done / n, f"{T} passes: {done}/{n} inputs")
    p = np.concatenate(mean)
    h = _entropy(p)
    eh = np.concatenate(expected)
    std = np.sqrt(np.maximum(np.concatenate(second) - p * p, 0.0))
    return {"probabilities": p, "entropy": h, "expected_entropy": eh, "mutual_information": np.maximum(h - eh, 0.0),
            "std": std, "T": T, "passes": T, "has_dropout": True, "dropout_layers": names}
