"""Every hidden layer's activations for every input, in one forward pass.

The exchange format is an ordered ``dict[layer_name, ndarray (n_samples, n_units)]``
in layer order. The network's output layer is the prediction and is returned
separately, never among the hidden layers.

Which layers are hidden
    By default every layer with a kernel (``Dense``, ``Conv*``) except the output
    layer: for ``build_mlp`` that is ``hidden_1 .. hidden_N``, for ``build_cnn``
    ``conv_1, conv_2, ..., hidden_1, ...``. Pass ``layers=[...]`` to choose others
    (pooling, activation or any named layer).

How conv feature maps become rows
    ``reduce="mean"`` (default) averages each channel over the spatial positions,
    giving one value per filter: small, and insensitive to where a stroke sits.
    ``reduce="flatten"`` keeps every position x channel. The reduction is part of the
    extraction graph, so full feature maps never pile up in memory: only one batch
    of them exists at a time.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from .models import check_input_shape  # noqa: E402

__all__ = ["default_hidden_layers", "build_extractor", "extract"]

REDUCTIONS = ("mean", "flatten")


def _output_layer(model):
    return model.layers[-1]


def default_hidden_layers(model):
    """Names of the layers counted as hidden: those with a kernel, output excluded.

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    list of str, in layer order.
    """
    out = _output_layer(model)
    names = [
        layer.name
        for layer in model.layers
        if layer is not out and getattr(layer, "kernel", None) is not None
    ]
    if not names:
        raise ValueError(
            f"model {model.name!r} has no hidden layer with weights between input and output; "
            f"its layers are {[layer.name for layer in model.layers]}"
        )
    return names


def _graph_outputs(model, names):
    """Symbolic outputs of the named layers and of the output layer."""
    try:
        inputs = model.inputs
        by_name = {layer.name: layer.output for layer in model.layers}
        return inputs, [by_name[n] for n in names], model.outputs[0]
    except (AttributeError, ValueError):
        pass
    # A Sequential model built without an Input: re-trace its layers once.
    if not isinstance(model, keras.Sequential) or not model.built:
        raise ValueError(
            f"model {model.name!r} has no defined input; build it with keras.Input(...) or call it once"
        )
    shape = model.layers[0].input.shape[1:] if hasattr(model.layers[0], "input") else None
    x = inp = keras.Input(shape=shape)
    by_name = {}
    for layer in model.layers:
        x = layer(x)
        by_name[layer.name] = x
    return [inp], [by_name[n] for n in names], x


def _to_rows(tensor, reduce, name):
    """Symbolically turn one layer output into (batch, units)."""
    rank = len(tensor.shape)
    if rank == 2:
        return tensor
    if rank < 2:
        raise ValueError(f"layer {name!r} has output shape {tensor.shape}; expected (batch, ...) ")
    if reduce == "mean":
        return keras.ops.mean(tensor, axis=tuple(range(1, rank - 1)))
    return keras.ops.reshape(tensor, (-1, int(np.prod(tensor.shape[1:]))))


def build_extractor(model, *, layers=None, reduce="mean"):
    """A multi-output ``keras.Model`` sharing ``model``'s graph and weights.

    Its outputs are the chosen hidden layers, reduced to rows, then the model's output.

    Returns
    -------
    extractor : keras.Model
    names : list of str
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {list(REDUCTIONS)}, got {reduce!r}")
    known = [layer.name for layer in model.layers]
    names = list(layers) if layers is not None else default_hidden_layers(model)
    if not names:
        raise ValueError("layers must name at least one layer")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"layers {unknown} are not in model {model.name!r}; its layers are {known}")
    if _output_layer(model).name in names:
        raise ValueError(
            f"layer {_output_layer(model).name!r} is the output layer (the prediction); it is returned "
            "separately and cannot be a hidden layer"
        )
    inputs, hidden, output = _graph_outputs(model, names)
    rows = [_to_rows(t, reduce, n) for t, n in zip(hidden, names)]
    extractor = keras.Model(inputs=inputs, outputs=rows + [output], name=f"{model.name}_extractor")
    return extractor, names


_EXTRACTORS = weakref.WeakKeyDictionary()


def _cached_extractor(model, layers, reduce):
    """:func:`build_extractor` once per model, layers and reduction (models are kept weakly)."""
    key = (tuple(layers) if layers is not None else None, reduce)
    per_model = _EXTRACTORS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build_extractor(model, layers=layers, reduce=reduce)
    return per_model[key]


class _PredictProgress(keras.callbacks.Callback):
    def __init__(self, progress, n_batches):
        super().__init__()
        self._progress = progress
        self._n = max(n_batches, 1)

    def on_predict_batch_end(self, batch, logs=None):
        if (batch + 1) % 10 == 0 or batch + 1 == self._n:
            self._progress("extraction", (batch + 1) / self._n, f"batch {batch + 1}/{self._n}")


def extract(model, X, *, layers=None, reduce="mean", batch_size=512, progress=None, extractor=None):
    """Activations of the hidden layers and the predictions, in one forward pass.

    Parameters
    ----------
    model : keras.Model
        Sequential or functional.
    X : ndarray of shape (n_samples, ...)
        Inputs as the model expects them.
    layers : list of str, optional
        Hidden layers to return; default :func:`default_hidden_layers`.
    reduce : {"mean", "flatten"}
        How feature maps of rank > 2 become rows (see the module notes).
    batch_size : int
        Inputs per forward batch; bounds the memory of intermediate maps.
    progress : callable, optional
        ``progress(stage, fraction, message)``.
    extractor : tuple, optional
        A ``(keras.Model, names)`` pair from :func:`build_extractor`; by default one is
        built on the first call for a model and kept for later calls.

    Returns
    -------
    hidden : OrderedDict[str, ndarray of shape (n_samples, n_units)], float32
    output : ndarray of shape (n_samples, n_classes)
        The model's output (class probabilities).

    Raises
    ------
    ValueError
        Inputs that do not fit the model, or NaN / infinite activations.
    """
    X = np.asarray(X)
    check_input_shape(model, X)
    if len(X) == 0:
        raise ValueError("X holds no inputs")
    extractor, names = extractor or _cached_extractor(model, layers, reduce)
    n_batches = int(np.ceil(len(X) / batch_size))
    callbacks = [_PredictProgress(progress, n_batches)] if progress else []
    outs = extractor.predict(X, batch_size=int(batch_size), verbose=0, callbacks=callbacks)
    hidden = OrderedDict()
    for name, values in zip(names, outs[:-1]):
        values = np.asarray(values, dtype=np.float32)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise ValueError(
                f"layer {name!r} gives NaN or infinite activations for {int(bad.sum())} of {len(values)} "
                f"inputs (first: input {int(np.flatnonzero(bad)[0])}); check the model's weights and "
                "that inputs are finite and scaled to [0, 1]"
            )
        hidden[name] = values
    output = np.asarray(outs[-1], dtype=np.float32)
    return hidden, output
