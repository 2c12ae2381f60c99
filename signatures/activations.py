"""Every hidden layer's activations for every input, in one forward pass.

The exchange format is an ordered ``dict[layer_name, ndarray (n_samples, n_units)]``
in layer order. The network's output layer is the prediction and is returned
separately, never among the hidden layers.

Which layers are hidden
    A *block* is a layer with weights (a kernel: ``Dense``, ``Conv*``) followed by the
    chain of elementwise layers it feeds alone: activations (``Activation``, ``ReLU``,
    ``LeakyReLU``, ``PReLU``, ``ELU``, ``Softmax``), normalisations (``BatchNormalization``,
    ``LayerNormalization``, ...) and noise or dropout layers (identities at inference). Each
    block gives one hidden layer, its *activated output*: the last activation layer of the
    chain, or the kernel layer itself when no activation layer follows it (its own
    ``activation=`` applies). So ``Dense -> Activation('relu')`` is reported as the ``Activation`` layer,
    ``Dense -> BatchNormalization -> ReLU -> Dropout`` as the ``ReLU`` (never the
    normalised pre-activation value), ``Dense(activation='relu') -> Dropout`` as the
    ``Dense``. The *prediction* is not hidden: the model's output layer and, walking back
    from it through layers without weights, the last layer with weights, so the logits of
    ``Dense -> Activation('softmax')`` are not hidden either. Models nested in a model
    (a ``Sequential`` inside a functional model, or the reverse) are looked into: their
    layers are named ``<nested model>/<layer>``, e.g. ``block/act`` (Keras forbids ``/`` in
    a layer's own name, so the names stay unique). For ``build_mlp`` the hidden layers are ``hidden_1 .. hidden_N``,
    for ``build_cnn`` ``conv_1, conv_2, ..., hidden_1, ...``. Pass ``layers=[...]`` to
    choose others (pooling, the pre-activation ``Dense``, any named layer but the output).

Inputs of another layout
    A model whose declared input holds the same values as the data's rows in another
    layout, such as Keras' MNIST example ``Input((28, 28)) -> Flatten`` given rows of shape
    (28, 28, 1), gets the rows reshaped to its input (see
    :func:`signatures.models.fit_input`).

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
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .models import keras  # noqa: E402  (imported as models imports it: faster outside a notebook)
import numpy as np  # noqa: E402

from ._mapped import drop_pages  # noqa: E402
from .experiment import activation_file  # noqa: E402
from .models import check_model, fit_input  # noqa: E402

__all__ = ["default_hidden_layers", "build_extractor", "extract", "activation_file", "DTYPES"]

REDUCTIONS = ("mean", "flatten")
#: How activations may be kept.
DTYPES = ("float32", "float16")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _layer_types(*names):
    return tuple(t for t in (getattr(keras.layers, n, None) for n in names) if isinstance(t, type))


_ACTIVATION_LAYERS = _layer_types("ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax")
_PASS_THROUGH = _ACTIVATION_LAYERS + _layer_types(
    "Activation", "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
    "RMSNormalization", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
)


@dataclass
class _Call:
    """One call of a layer in the (flattened) graph: its name, the layer, input tensor ids and output."""

    name: str
    layer: object
    inputs: tuple
    output: object

    @property
    def tensor(self):
        """The single output tensor, or None for a layer with several outputs."""
        outs = keras.tree.flatten(self.output)
        return outs[0] if len(outs) == 1 else None


def _tensor_ids(structure):
    return tuple(id(t) for t in keras.tree.flatten(structure) if isinstance(t, keras.KerasTensor))


def _has_kernel(layer):
    return not isinstance(layer, keras.Model) and getattr(layer, "kernel", None) is not None


def _is_nonlinear(layer):
    if isinstance(layer, _ACTIVATION_LAYERS):
        return True
    activation = getattr(layer, "activation", None)
    return callable(activation) and getattr(activation, "__name__", "linear") != "linear"


def _is_graph_model(layer):
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and getattr(layer, "_nodes_by_depth", None) is not None
    )


def _model_input(model):
    try:
        return model.inputs[0]
    except (AttributeError, IndexError, ValueError, TypeError):
        raise ValueError(
            f"model {model.name!r} has no defined input; build it with keras.Input(...) or call it once on data"
        ) from None


def _retrace(model, inputs, prefix, calls, used):
    """Call ``model``'s leaf layers on the symbolic ``inputs``, opening nested models; record each call."""

    def operation(op):
        if _is_graph_model(op):
            def nested(*args, **kwargs):  # training / mask keywords do not apply at inference
                return _retrace(op, args[0] if len(args) == 1 else list(args), f"{prefix}{op.name}/", calls, used)
            return nested

        def leaf(*args, **kwargs):
            out = op(*args, **kwargs)
            name = f"{prefix}{op.name}"
            used[name] += 1
            if used[name] > 1:  # a layer called twice (a shared layer): one name per call
                name = f"{name}#{used[name]}"
            calls.append(_Call(name, op, _tensor_ids((args, kwargs)), out))
            return out
        return leaf

    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = operation(layer)(x)
        return x
    # A functional model: Keras' own graph walk, with every operation wrapped (there is no
    # public hook to reach the layers of a nested model in the outer graph).
    return model._run_through_graph(inputs, operation_fn=operation)


def _flat_graph(model):
    """The model as one graph of leaf layers.

    Returns
    -------
    inputs : list of KerasTensor
    calls : list of _Call, in layer order
    output : KerasTensor
        The model's output (the prediction).
    """
    check_model(model)
    inp = _model_input(model)
    if not any(_is_graph_model(layer) for layer in model.layers):
        try:
            calls = [
                _Call(layer.name, layer, _tensor_ids(layer.input), layer.output)
                for layer in model.layers
                if not isinstance(layer, keras.layers.InputLayer)
            ]
            # A model loaded from a .keras file may keep layers whose input and output are not
            # linked into one graph: then its layers are traced again, as a nested model's are.
            known = set(_tensor_ids(model.inputs))
            for call in calls:
                if not set(call.inputs) <= known:
                    raise ValueError("layers not chained")
                known.update(_tensor_ids(call.output))
            if id(model.outputs[0]) not in known:
                raise ValueError("output not reached")
            return list(model.inputs), calls, model.outputs[0]
        except (AttributeError, ValueError):
            pass  # a layer without a node in this graph: trace the model again
    calls = []
    new_input = keras.Input(shape=tuple(inp.shape[1:]), dtype=inp.dtype, name=inp.name)
    output = keras.tree.flatten(_retrace(model, new_input, "", calls, defaultdict(int)))[0]
    return [new_input], calls, output


def _prediction_calls(calls, output):
    """Indices of the calls that make the prediction.

    The output layer and, walking back through single-input layers without weights, the
    last layer with weights (the logits of ``Dense -> Activation('softmax')``).
    """
    producer = {}
    for i, call in enumerate(calls):
        for tid in _tensor_ids(call.output):
            producer[tid] = i
    tail = set()
    i = producer.get(id(output))
    while i is not None and i not in tail:
        tail.add(i)
        if _has_kernel(calls[i].layer) or len(calls[i].inputs) != 1:
            break
        i = producer.get(calls[i].inputs[0])
    return tail


def _logits_tensor(inputs, calls, output):
    """The logits behind a softmax output, symbolically, or None when there are none.

    A ``Dense(..., activation="softmax")`` output gives its pre-activation (the same kernel
    and bias, without the softmax); a ``Softmax`` or ``Activation("softmax")`` output gives
    its input.
    """
    tensors = {id(t): t for t in inputs}
    producer = None
    for call in calls:
        for t in keras.tree.flatten(call.output):
            tensors[id(t)] = t
            if t is output:
                producer = call
    if producer is None or len(producer.inputs) != 1 or producer.inputs[0] not in tensors:
        return None
    layer, x = producer.layer, tensors[producer.inputs[0]]
    softmax = getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"
    if isinstance(layer, keras.layers.Softmax) or (isinstance(layer, keras.layers.Activation) and softmax):
        return x
    if isinstance(layer, keras.layers.Dense) and softmax:
        z = keras.ops.matmul(x, layer.kernel)
        return keras.ops.add(z, layer.bias) if layer.use_bias else z
    return None


def _hidden_calls(calls, output):
    """Names of the hidden layers: each block's activated output (see the module notes)."""
    consumers = defaultdict(list)
    for i, call in enumerate(calls):
        for tid in call.inputs:
            consumers[tid].append(i)
    tail = _prediction_calls(calls, output)
    names = []
    for i, call in enumerate(calls):
        if i in tail or not _has_kernel(call.layer):
            continue
        chosen = i
        current = i
        while calls[current].tensor is not None:
            following = consumers[id(calls[current].tensor)]
            if len(following) != 1:
                break
            nxt = following[0]
            if nxt in tail or len(calls[nxt].inputs) != 1 or not isinstance(calls[nxt].layer, _PASS_THROUGH):
                break
            current = nxt
            if _is_nonlinear(calls[nxt].layer):
                chosen = nxt
        if calls[chosen].tensor is not None:
            names.append(calls[chosen].name)
    return names


def default_hidden_layers(model):
    """Names of the layers counted as hidden (see the module notes), output excluded.

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    list of str, in layer order.
    """
    _, calls, output = _flat_graph(model)
    names = _hidden_calls(calls, output)
    if not names:
        raise ValueError(
            f"model {model.name!r} has no hidden layer with weights between input and output; "
            f"its layers are {[call.name for call in calls]}"
        )
    return names


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

    Its outputs are the chosen hidden layers, reduced to rows, then the model's output, then
    the logits behind a softmax output when the model has them (see :func:`extract`).

    Parameters
    ----------
    model : keras.Model
    layers : list of str, optional
        Layer names as :func:`default_hidden_layers` gives them (``outer/inner`` inside a
        nested model); default: those.
    reduce : {"mean", "flatten"}

    Returns
    -------
    extractor : keras.Model
    names : list of str
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {list(REDUCTIONS)}, got {reduce!r}")
    inputs, calls, output = _flat_graph(model)
    known = [call.name for call in calls]
    if layers is None:
        names = _hidden_calls(calls, output)
        if not names:
            raise ValueError(
                f"model {model.name!r} has no hidden layer with weights between input and output; "
                f"its layers are {known}; choose some with layers=[...]"
            )
    elif isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"layers must be a list of layer names (strings), got {layers!r}")
    else:
        names = list(layers)
        if not names:
            raise ValueError(f"layers must name at least one layer of {known}, got {layers!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"layers must name each layer once, got {repeated} more than once in {names}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"layers {unknown} are not in model {model.name!r}; its layers are {known}")
    by_name = {call.name: call for call in calls}
    output_names = [call.name for call in calls if any(t is output for t in keras.tree.flatten(call.output))]
    for name in names:
        if name in output_names:
            raise ValueError(
                f"layer {name!r} is the output layer (the prediction); it is returned "
                "separately and cannot be a hidden layer"
            )
        if by_name[name].tensor is None:
            raise ValueError(f"layer {name!r} has several outputs; choose a layer with one output")
    rows = [_to_rows(by_name[n].tensor, reduce, n) for n in names]
    logits = _logits_tensor(inputs, calls, output)
    outputs = rows + [output] + ([logits] if logits is not None else [])
    extractor = keras.Model(inputs=inputs, outputs=outputs, name=f"{model.name}_extractor")
    return extractor, names


_EXTRACTORS = weakref.WeakKeyDictionary()


def _cached_extractor(model, layers, reduce):
    """:func:`build_extractor` once per model, layers and reduction (models are kept weakly)."""
    key = (tuple(layers) if layers is not None else None, reduce)
    per_model = _EXTRACTORS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build_extractor(model, layers=layers, reduce=reduce)
    return per_model[key]


def extract(model, X, *, layers=None, reduce="mean", batch_size=512, progress=None, extractor=None,
            logits=False, out=None, dtype="float32"):
    """Activations of the hidden layers and the predictions, in one forward pass.

    Parameters
    ----------
    model : keras.Model
        Sequential or functional.
    X : ndarray of shape (n_samples, ...)
        Inputs as the model expects them, or the same values in another layout (rows of
        shape (28, 28, 1) for a model declaring (28, 28) or (784,)).
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
    logits : bool
        Also return the logits behind a softmax output (for MaxLogit and energy scores),
        from the same forward pass.
    out : str or Path, optional
        A folder: each layer's activations are written there batch by batch, as new
        ``act-<j>.npy`` files (:func:`activation_file`; an existing one is an error), and
        returned memory-mapped read-only, so that no more than one batch of them is ever held
        in memory. Default: in memory.
    dtype : {"float32", "float16"}
        How activations are kept; float16 halves their size (about 3 significant digits).

    Returns
    -------
    hidden : OrderedDict[str, ndarray of shape (n_samples, n_units)]
        In ``dtype``; ``numpy.memmap`` with ``out``.
    output : ndarray of shape (n_samples, n_classes)
        The model's output (class probabilities).
    logits : ndarray of shape (n_samples, n_classes) or None
        Only with ``logits=True``; None when the output is not a softmax.

    Raises
    ------
    ValueError
        Inputs that do not fit the model, or NaN / infinite activations.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if dtype not in DTYPES:
        raise ValueError(f"activations dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    X = fit_input(model, X)
    if len(X) == 0:
        raise ValueError("X holds no inputs")
    extractor, names = extractor or _cached_extractor(model, layers, reduce)
    n, n_rows, batch_size = len(names), len(X), int(batch_size)
    n_batches = int(np.ceil(n_rows / batch_size))
    report = progress or (lambda *a: None)
    hidden = OrderedDict()
    outputs = []  # the prediction (and logits): small, always in memory
    for start in range(0, n_rows, batch_size):
        outs = extractor.predict_on_batch(X[start:start + batch_size])
        outs = [np.asarray(o) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
        if start == 0:
            for j, (name, values) in enumerate(zip(names, outs[:n])):
                shape = (n_rows,) + values.shape[1:]
                if out is None:
                    hidden[name] = np.empty(shape, dtype=dtype)
                    continue
                file = Path(out) / activation_file(j)
                if file.exists():  # never written over: it may be a stored experiment's
                    raise FileExistsError(f"{str(file)!r} exists already; give extract an empty folder as out")
                hidden[name] = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
            outputs = [[] for _ in outs[n:]]
        for name, values in zip(names, outs[:n]):
            bad = ~np.isfinite(values).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"layer {name!r} gives NaN or infinite activations for {int(bad.sum())} of {n_rows} "
                    f"inputs (first: input {start + int(np.flatnonzero(bad)[0])}); check the model's weights "
                    "and that inputs are finite and scaled to [0, 1]"
                )
            if dtype == "float16" and np.abs(values).max(initial=0.0) > _FLOAT16_MAX:
                raise ValueError(f"layer {name!r} has activations up to {float(np.abs(values).max()):.4g}, beyond "
                                 f"float16's {_FLOAT16_MAX:g}: keep activations as float32")
            hidden[name][start:start + len(values)] = values
            drop_pages(hidden[name])  # written to the file: out of this process's memory
        for kept, values in zip(outputs, outs[n:]):
            kept.append(np.asarray(values, dtype=np.float32))
        batch = start // batch_size + 1
        if batch % 10 == 0 or batch == n_batches:
            report("extraction", batch / n_batches, f"batch {batch}/{n_batches}")
    for name, values in hidden.items():
        if isinstance(values, np.memmap):  # written: read-only from now on (a saved experiment may link the file)
            values.flush()
            hidden[name] = np.load(values.filename, mmap_mode="r")
    output = np.concatenate(outputs[0])
    if not logits:
        return hidden, output
    return hidden, output, (np.concatenate(outputs[1]) if len(outputs) > 1 else None)
