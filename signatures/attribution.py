"""Attribution maps: which pixels make an input's class, or its cluster at a hidden layer.

Every map has the image's shape, ``(n_samples, height, width)``; an MLP's flat input is
reshaped to the image. Inputs are given as the model takes them (floats scaled as
:func:`signatures.data.prepare` scales them), or in another layout of the same pixels
(:func:`signatures.models.fit_input`).

Methods (:data:`METHODS`)
    ``"saliency"``: the gradient of the target with respect to the pixels (Simonyan et
    al. 2014), signed: positive where more ink would raise the target.
    ``"smoothgrad"``: the mean gradient over ``n_samples`` copies of the input with
    Gaussian noise of standard deviation ``noise`` x (max - min of the input) added
    (Smilkov et al. 2017), signed. The noise of input ``i`` of ``X`` comes from a generator
    seeded by ``(seed, i)``, so a map depends neither on the batch size nor on the other inputs.
    ``"integrated_gradients"``: (input - baseline) x the mean gradient along the straight
    path from the baseline to the input (Sundararajan et al. 2017), by the trapezoidal rule
    over ``steps`` intervals (``steps + 1`` gradients). Completeness: a map sums to
    target(input) - target(baseline), up to the rule's error. Default baseline: a black image.
    ``"gradcam"``: Grad-CAM (Selvaraju et al. 2017) at a conv layer: the layer's maps
    weighted by the spatial mean of the target's gradient per channel, summed, then ReLU;
    bilinearly upsampled to the input's size. Non-negative, in the target's units x the
    layer's activations (not normalised: maps of different inputs compare).
    ``"gradcam_pp"``: Grad-CAM++ (Chattopadhyay et al. 2018), whose channel weights
    ``sum_ij alpha_ij relu(g_ij)`` with ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (the
    closed form for an exponential of the target) credit several separate parts of an
    object instead of the largest one. Non-negative.

    The gradient methods work for MLPs and CNNs; Grad-CAM and Grad-CAM++ need a layer whose
    output is a 4-D conv map (batch, height, width, channels). Channels of the input are
    summed (``absolute=True``: their absolute values are summed, the usual display of a
    saliency map as magnitude); a grey-scale image has one.

Targets
    ``target="class"``: the pre-softmax logit of the predicted class (or of
    ``classes[i]``, an output unit index, per input), taken from the logits that
    :func:`signatures.activations.build_extractor` exposes; a model without logits
    behind its output (no softmax) uses the output itself. The logit rather than the
    probability: a saturated softmax has a vanishing gradient.
    ``target="cluster"``: membership of the cluster an input falls in at hidden ``layer``,
    whose activations are reduced to rows exactly as the experiment reduced them
    (``reduce``, the same code as :func:`signatures.activations.extract`). With the
    layer's k-means ``centers`` (k, units) and each input's cluster ``c`` (``clusters``, or
    by default its nearest centre, as :meth:`signatures.clustering.LayerKMeans.predict`
    assigns it), ``membership="margin"`` is ``min_{j != c} |r - mu_j|^2 - |r - mu_c|^2``,
    positive inside the cluster and zero on its border: a pixel with positive attribution
    holds the input in its cluster. ``membership="distance"`` is ``-|r - mu_c|^2`` (needs
    only the own centre; with k = 1, the only choice). The clustering uses the raw
    activations (no scaling), so the distances here are the k-means distances.

Cost
    One gradient pass per map for saliency and the Grad-CAMs, ``n_samples`` for
    SmoothGrad, ``steps + 1`` for integrated gradients; ``batch_size`` bounds the rows that
    go through the network at once (so memory), whatever the number of inputs. The
    gradient step is compiled (``tf.function``) once per model and target kind and kept
    while the model lives. ``bench/bench_attribution.py`` measures the cost per 1,000
    inputs (``docs/attribution.md``).

Sanity check and deletion
    :func:`sanity_check` compares the maps of a model with those of a copy whose weights
    are all re-initialised (:func:`randomized_model`; Adebayo et al. 2018): a method whose
    maps barely change explains the input, not the model. :func:`deletion_curve` removes
    the most attributed pixels first and follows accuracy and the true class's probability,
    against removal in random order.
"""

from __future__ import annotations

import copy
import math
import os
import weakref

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .models import keras  # noqa: E402  (imported as models imports it: faster outside a notebook)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import activations as _act  # noqa: E402
from ._checks import check_int, is_int  # noqa: E402
from .models import check_model, fit_input  # noqa: E402

__all__ = [
    "METHODS",
    "TARGETS",
    "MEMBERSHIPS",
    "ORDERS",
    "DEFAULT_FRACTIONS",
    "attribute",
    "target_scores",
    "conv_layers",
    "randomized_model",
    "sanity_check",
    "deletion_curve",
]

#: Attribution methods, in order of cost for one map (Grad-CAMs need a conv layer).
METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam", "gradcam_pp")
_CAM_METHODS = METHODS[3:]
#: What a map explains: a class's logit, or membership of a cluster at a hidden layer.
TARGETS = ("class", "cluster")
#: The cluster-membership target: margin to the nearest other centre, or minus the distance to the own.
MEMBERSHIPS = ("margin", "distance")
#: Orders in which :func:`deletion_curve` removes pixels.
ORDERS = ("attribution", "random")
#: Shares of the pixels removed by :func:`deletion_curve` by default.
DEFAULT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4)
_MAX_SEED = 2**31 - 1
_MAX_REPEATS = 1000  # most SmoothGrad samples or integration steps per input


# --------------------------------------------------------------------------- checks


def _check_choice(value, allowed, what):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")
    return value


def _check_positive_float(value, what, *, allow_zero=False):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be a finite number {bound}, got {value!r}")
    return value


def _check_inputs(model, X):
    """``X`` in the model's input layout as float32, refusing integers (unscaled images)."""
    check_model(model)
    raw = np.asarray(X)
    if raw.dtype.kind in "biu":
        raise ValueError(
            f"X holds integers (dtype {raw.dtype}): give the inputs as the model takes them, floats "
            "scaled as signatures.data.prepare scales them (pixel / max_value, in [0, 1])"
        )
    Xm = fit_input(model, raw)
    if len(Xm) == 0:
        raise ValueError("X holds no inputs")
    Xm = np.asarray(Xm, dtype=np.float32)
    if not np.isfinite(Xm).all():
        raise ValueError("X holds NaN or infinite values; inputs must be finite pixel values")
    return raw, Xm


def _image_shape(raw, Xm, image_shape):
    """(height, width) of the image behind the model's input rows."""
    values = int(np.prod(Xm.shape[1:]))
    if image_shape is not None:
        ok = isinstance(image_shape, (tuple, list)) and len(image_shape) == 2 and all(
            is_int(s) and s >= 1 for s in image_shape)
        if not ok or values % (int(image_shape[0]) * int(image_shape[1])):
            raise ValueError(
                f"image_shape must be (height, width) whose pixels hold the {values} values of an input, "
                f"got {image_shape!r}"
            )
        hw = (int(image_shape[0]), int(image_shape[1]))
    elif Xm.ndim >= 3:
        hw = tuple(int(s) for s in Xm.shape[1:3])
    elif raw.ndim >= 3:
        hw = tuple(int(s) for s in raw.shape[1:3])
    else:
        side = math.isqrt(values)
        if side * side != values:
            raise ValueError(
                f"the model's input is flat ({values} values) and not a square image; give "
                "image_shape=(height, width)"
            )
        hw = (side, side)
    return hw


# --------------------------------------------------------------------------- the graph


def _graph_parts(model):
    """The model as one graph of leaf layers: the extraction's own walk (nested models opened)."""
    return _act._flat_graph(model)


def _conv_names(calls):
    return [c.name for c in calls if c.tensor is not None and len(c.tensor.shape) == 4]


def conv_layers(model):
    """Names of the layers whose output is a 4-D conv map, in layer order (Grad-CAM's choices).

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    list of str
        Names as :func:`signatures.activations.default_hidden_layers` gives them; empty for an MLP.
    """
    _, calls, _ = _graph_parts(model)
    return _conv_names(calls)


def _resolve_conv_layer(model, calls, output, conv_layer):
    convs = _conv_names(calls)
    if conv_layer is None:
        if not convs:
            raise ValueError(
                f"Grad-CAM needs a conv layer with a 4-D output (batch, height, width, channels); model "
                f"{model.name!r} has none (its layers are {[c.name for c in calls]}); use method='saliency', "
                "'smoothgrad' or 'integrated_gradients'"
            )
        hidden = [n for n in _act._hidden_calls(calls, output) if n in convs]
        return (hidden or convs)[-1]
    if not isinstance(conv_layer, str) or conv_layer not in convs:
        known = [c.name for c in calls]
        why = "is not in the model" if conv_layer not in known else "has no 4-D conv output"
        allowed = f"its conv layers are {convs}" if convs else "it has no conv layer (use a gradient method)"
        raise ValueError(f"conv_layer {conv_layer!r} {why} of model {model.name!r}; {allowed}")
    return conv_layer


def _resolve_layer(model, calls, output, layer):
    known = [c.name for c in calls]
    hidden = _act._hidden_calls(calls, output)
    if layer is None:
        raise ValueError(
            f"target='cluster' needs layer=<the clustered layer>; the hidden layers of model {model.name!r} "
            f"are {hidden}"
        )
    if not isinstance(layer, str) or layer not in known:
        raise ValueError(
            f"layer {layer!r} is not in model {model.name!r}; its hidden layers are {hidden} (all layers: {known})"
        )
    call = next(c for c in calls if c.name == layer)
    if any(t is output for t in keras.tree.flatten(call.output)):
        raise ValueError(f"layer {layer!r} is the output layer; choose a hidden layer of {hidden}")
    if call.tensor is None:
        raise ValueError(f"layer {layer!r} has several outputs; choose a hidden layer of {hidden}")
    return layer


class _Graph:
    """A model of the tensors a target needs, and its compiled gradient steps."""

    def __init__(self, model, *, target, layer, reduce, conv_layer):
        inputs, calls, output = _graph_parts(model)
        by_name = {c.name: c for c in calls}
        if target == "class":
            score = _act._logits_tensor(inputs, calls, output)  # None: no softmax, explain the output
            score = output if score is None else score
            self.layer = None
        else:
            self.layer = _resolve_layer(model, calls, output, layer)
            score = _act._to_rows(by_name[self.layer].tensor, reduce, self.layer)  # as the extraction reduces it
        outputs = [score]
        self.conv_layer = None
        if conv_layer is not False:
            self.conv_layer = _resolve_conv_layer(model, calls, output, conv_layer)
            conv = by_name[self.conv_layer]
            outputs.append(conv.tensor)
            self.channels_first = getattr(conv.layer, "data_format", "channels_last") == "channels_first"
        self.width = int(score.shape[-1])
        self.input_shape = tuple(int(s) for s in inputs[0].shape[1:])
        self.model = keras.Model(inputs=inputs[0] if len(inputs) == 1 else inputs, outputs=outputs,
                                 name=f"{model.name}_attribution")
        if self.conv_layer is not None and self.layer is not None:
            x = tf.zeros((1,) + self.input_shape)
            with tf.GradientTape() as tape:
                outs = keras.tree.flatten(self.model(x, training=False))
                total = tf.reduce_sum(outs[0])
            if tape.gradient(total, outs[1]) is None:
                convs = _conv_names(calls)
                before = convs[:convs.index(self.layer) + 1] if self.layer in convs else []
                raise ValueError(
                    f"the clustered layer {self.layer!r} does not depend on conv_layer {self.conv_layer!r} (it comes "
                    f"before it); choose a conv layer at or before {self.layer!r}: one of {before}"
                )
        self._steps = {}

    def forward(self, x):
        """The score tensor (logits, output or rows) of a batch, as numpy (compiled, inference mode)."""
        return np.asarray(keras.tree.flatten(self.model.predict_on_batch(x))[0])

    def step(self, target, membership):
        """A compiled ``step(x, index, centers) -> (target values, gradients...)``."""
        key = (target, membership)
        if key not in self._steps:
            self._steps[key] = self._compile(target, membership)
        return self._steps[key]

    def _compile(self, target, membership):
        model, wrt_conv = self.model, self.conv_layer is not None
        signature = [
            tf.TensorSpec((None,) + self.input_shape, tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None, None), tf.float32),
        ]

        @tf.function(input_signature=signature)
        def step(x, index, centers):
            with tf.GradientTape() as tape:
                tape.watch(x)
                outs = keras.tree.flatten(model(x, training=False))
                values = _target_values(outs[0], index, centers, target, membership)
            if not wrt_conv:
                return values, tape.gradient(values, x)
            return values, outs[1], tape.gradient(values, outs[1])

        return step


def _target_values(score, index, centers, target, membership):
    """Per-row target values (batch,), symbolically.

    Squared distances by |r|^2 - 2 r.c + |c|^2: memory of (batch, k), not (batch, k, units), for
    wide flattened conv rows; the gradient, 2 (r - c), is exact either way.
    """
    if target == "class":
        return tf.gather(score, index, axis=1, batch_dims=1)
    d2 = (tf.reduce_sum(score * score, axis=1, keepdims=True) - 2.0 * tf.matmul(score, centers, transpose_b=True)
          + tf.reduce_sum(centers * centers, axis=1)[tf.newaxis, :])
    own = tf.gather(d2, index, axis=1, batch_dims=1)
    if membership == "distance":
        return -own
    mine = tf.equal(tf.range(tf.shape(centers)[0])[tf.newaxis, :], index[:, tf.newaxis])
    other = tf.reduce_min(tf.where(mine, tf.constant(np.inf, tf.float32), d2), axis=1)
    return other - own


_GRAPHS = weakref.WeakKeyDictionary()


def _graph(model, *, target, layer, reduce, conv_layer):
    """:class:`_Graph` once per model and target kind (models are kept weakly)."""
    key = (target, layer if target == "cluster" else None, reduce if target == "cluster" else None, conv_layer)
    per_model = _GRAPHS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _Graph(model, target=target, layer=layer, reduce=reduce, conv_layer=conv_layer)
    return per_model[key]


# --------------------------------------------------------------------------- targets


def _check_centers(centers, graph, membership):
    if centers is None:
        raise ValueError(
            f"target='cluster' needs centers=<the k-means centres of layer {graph.layer!r}>, an array of shape "
            f"(k, {graph.width}) (LayerKMeans.centers_)"
        )
    centers = np.asarray(centers)
    if centers.dtype.kind not in "biuf" or centers.ndim != 2 or centers.shape[1] != graph.width or not len(centers):
        raise ValueError(
            f"centers must have shape (k, {graph.width}): layer {graph.layer!r} gives rows of {graph.width} units; "
            f"got shape {centers.shape}; pass the centres fitted on this layer's activations with the same reduce"
        )
    if not np.isfinite(centers).all():
        raise ValueError("centers hold NaN or infinite values")
    if membership == "margin" and len(centers) < 2:
        raise ValueError("membership='margin' needs at least 2 centres (a nearest other cluster); with one, "
                         "use membership='distance'")
    return centers.astype(np.float32)


def _check_index(values, n, high, what, allowed):
    """An int32 array of ``n`` ids in 0..high-1, or a single int repeated."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    integral = arr.dtype.kind in "iu" or (
        arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all())
    if arr.shape != (n,) or not integral:
        raise ValueError(f"{what} must give one {allowed} per input, integers in an array of shape ({n},); "
                         f"got {np.asarray(values)!r:.200}")
    bad = np.flatnonzero((arr < 0) | (arr >= high))
    if len(bad):
        raise ValueError(f"{what} must be in 0..{high - 1} (one {allowed} per input), got {arr[bad[0]].item()!r} at "
                         f"input {int(bad[0])}")
    return arr.astype(np.int32)


def _nearest(rows, centers):
    """Nearest centre of each row, as the experiment assigns clusters."""
    from .clustering import LayerKMeans

    km = LayerKMeans()
    km.centers_ = np.asarray(centers, dtype=np.float64)
    return km.predict(rows).astype(np.int32)


def _resolve(graph, target, classes, clusters, centers, membership, Xm, batch_size):
    """Centres as float32 and the index (class or cluster) of every input of ``Xm``.

    Given ``classes`` / ``clusters`` are checked; otherwise the predicted class (argmax of the
    logits) or the nearest centre of each clean input, a forward pass of ``batch_size`` rows at a time.
    """
    n = len(Xm)
    if target == "class":
        centers, given = np.zeros((1, 1), np.float32), classes
        high, what, allowed, extra = graph.width, "classes", "output unit index", (
            f" (the model has {graph.width} output units)")
    else:
        centers, given = _check_centers(centers, graph, membership), clusters
        high, what, allowed, extra = len(centers), "clusters", "cluster id", (
            f" (layer {graph.layer!r} has {len(centers)} centres)")
    if given is not None:
        try:
            return centers, _check_index(given, n, high, what, allowed)
        except ValueError as exc:
            raise ValueError(f"{exc}{extra}") from None
    index = np.empty(n, np.int32)
    for s in range(0, n, batch_size):
        score = graph.forward(Xm[s:s + batch_size])
        index[s:s + len(score)] = np.argmax(score, axis=1) if target == "class" else _nearest(score, centers)
    return centers, index


# --------------------------------------------------------------------------- attribute


def _batched(step, rows, index, centers, batch_size):
    """``step`` over ``rows`` in chunks; its outputs (after the target values) concatenated."""
    parts = None
    for s in range(0, len(rows), batch_size):
        outs = step(tf.constant(rows[s:s + batch_size]), tf.constant(index[s:s + batch_size]), centers)
        outs = [np.asarray(o) for o in outs[1:]]
        parts = [[o] for o in outs] if parts is None else [p + [o] for p, o in zip(parts, outs)]
    return [np.concatenate(p) for p in parts]


def _baseline(baseline, Xm, hw):
    """A function ``rows(start, stop)`` giving the baseline of those inputs in the model's layout."""
    shape = Xm.shape[1:]
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, bool):
        value = float(baseline)
        if not math.isfinite(value):
            raise ValueError(f"baseline must be finite, got {baseline!r}")
        return lambda start, stop: np.full((stop - start,) + shape, value, np.float32)
    arr = np.asarray(baseline)
    size = int(np.prod(shape))
    if arr.dtype.kind in "biuf" and arr.size == size:
        one = arr.astype(np.float32).reshape(shape)
        rows = lambda start, stop: np.broadcast_to(one, (stop - start,) + shape)  # noqa: E731
    elif arr.dtype.kind in "biuf" and arr.ndim >= 2 and len(arr) == len(Xm) and arr.size == len(Xm) * size:
        many = arr.astype(np.float32).reshape((len(Xm),) + shape)
        rows = lambda start, stop: many[start:stop]  # noqa: E731
    else:
        raise ValueError(
            f"baseline must be a number, one input of shape {shape} (or the {hw[0]}x{hw[1]} image), or one per "
            f"input ({len(Xm)}, ...); got {'an array of shape ' + str(arr.shape) if arr.ndim else repr(baseline)}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("baseline holds NaN or infinite values")
    return rows


def _to_maps(values, hw, absolute):
    """Per-pixel values (n, *input) -> maps (n, height, width), channels summed."""
    values = values.reshape((len(values), hw[0], hw[1], -1))
    return (np.abs(values) if absolute else values).sum(axis=-1, dtype=np.float32)


def _cams(conv, grads, method, channels_first):
    if channels_first:
        conv, grads = np.moveaxis(conv, 1, -1), np.moveaxis(grads, 1, -1)
    conv, grads = conv.astype(np.float64), grads.astype(np.float64)
    if method == "gradcam":
        weights = grads.mean(axis=(1, 2))
    else:
        g2 = grads * grads
        denom = 2.0 * g2 + conv.sum(axis=(1, 2), keepdims=True) * g2 * grads
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
        weights = (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2))
    return np.maximum(np.einsum("bhwk,bk->bhw", conv, weights), 0.0).astype(np.float32)


def _upsample(cams, hw):
    if cams.shape[1:] == tuple(hw):
        return cams
    up = keras.ops.image.resize(cams[..., np.newaxis], hw, interpolation="bilinear", data_format="channels_last")
    return np.asarray(up)[..., 0]


def _check_options(method, target, membership, reduce, batch_size, n_samples, noise, steps, seed, *,
                   classes, layer, centers, clusters, conv_layer):
    _check_choice(method, METHODS, "method")
    _check_choice(target, TARGETS, "target")
    _check_choice(membership, MEMBERSHIPS, "membership")
    _check_choice(reduce, _act.REDUCTIONS, "reduce")
    check_int(batch_size, "batch_size", low=1, high=65536)
    check_int(n_samples, "n_samples", low=1, high=_MAX_REPEATS)
    check_int(steps, "steps", low=1, high=_MAX_REPEATS)
    check_int(seed, "seed", low=0, high=_MAX_SEED)
    _check_positive_float(noise, "noise", allow_zero=True)
    if target == "class":
        named = (("layer", layer), ("centers", centers), ("clusters", clusters))
        given = [name for name, value in named if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to target='cluster' only; with target='class' leave them "
                             "out (or set target='cluster')")
    elif classes is not None:
        raise ValueError("classes applies to target='class' only; with target='cluster' give clusters")
    if conv_layer is not None and method not in _CAM_METHODS:
        raise ValueError(f"conv_layer applies to {list(_CAM_METHODS)} only, not to method={method!r}")


def attribute(model, X, *, method, target="class", classes=None, layer=None, centers=None, clusters=None,
              membership="margin", conv_layer=None, reduce="mean", image_shape=None, absolute=False,
              batch_size=256, n_samples=25, noise=0.15, steps=32, baseline=0.0, seed=0, progress=None):
    """Attribution maps of ``X`` for a class or for cluster membership at a hidden layer.

    Parameters
    ----------
    model : keras.Model
        Sequential or functional, one input and one output.
    X : ndarray of shape (n_samples, ...)
        Inputs as the model takes them (floats, scaled as :func:`signatures.data.prepare`
        scales them), or the same pixels in another layout.
    method : {"saliency", "smoothgrad", "integrated_gradients", "gradcam", "gradcam_pp"}
        See the module notes.
    target : {"class", "cluster"}
        Explain the class logit, or the membership of the input's cluster at ``layer``.
    classes : int or ndarray of shape (n_samples,), optional
        ``target="class"``: the output unit (column of the model's output, not the dataset
        label) to explain per input; default the predicted one.
    layer : str, optional
        ``target="cluster"``: the clustered hidden layer (a name of
        :func:`signatures.activations.default_hidden_layers`).
    centers : ndarray of shape (k, n_units), optional
        ``target="cluster"``: that layer's k-means centres (``LayerKMeans.centers_``), in the
        row space of the activations extracted with the same ``reduce``.
    clusters : ndarray of shape (n_samples,), optional
        ``target="cluster"``: each input's cluster id in ``0 .. k-1`` (the experiment's path at
        ``layer``); default the nearest centre.
    membership : {"margin", "distance"}
        ``target="cluster"``: see the module notes.
    conv_layer : str, optional
        Grad-CAM's layer (one of :func:`conv_layers`); default the last conv block's activated output.
    reduce : {"mean", "flatten"}
        How the experiment reduced a conv layer to rows (``target="cluster"`` at a conv layer).
    image_shape : (int, int), optional
        ``(height, width)`` of the maps; default the model's input (a flat input of a square
        number of values is taken as a square image).
    absolute : bool
        Gradient methods: sum absolute values over the input's channels (magnitude maps)
        instead of signed values. The Grad-CAMs are non-negative anyway.
    batch_size : int
        Rows through the network at once (noisy copies and path points count as rows).
    n_samples : int
        SmoothGrad: noisy copies per input.
    noise : float
        SmoothGrad: the noise's standard deviation over (max - min) of the input.
    steps : int
        Integrated gradients: intervals of the path (``steps + 1`` gradients per input).
    baseline : float or ndarray
        Integrated gradients: a constant, one input (or image), or one per input.
    seed : int
        SmoothGrad's noise; the same seed gives the same maps.
    progress : callable, optional
        ``progress(stage, fraction, message)`` after every group of inputs.

    Returns
    -------
    maps : ndarray of shape (n_samples, height, width), float32
        Signed for the gradient methods (unless ``absolute``), non-negative for the Grad-CAMs.

    Raises
    ------
    ValueError
        An unknown method, target, membership or reduction; Grad-CAM without a conv layer;
        a layer not in the model; centres of the wrong width; classes or clusters out of
        range; inputs that do not fit the model. Each message names the value and what is allowed.
    """
    _check_options(method, target, membership, reduce, batch_size, n_samples, noise, steps, seed, classes=classes,
                   layer=layer, centers=centers, clusters=clusters, conv_layer=conv_layer)
    raw, Xm = _check_inputs(model, X)
    hw = _image_shape(raw, Xm, image_shape)
    cam = method in _CAM_METHODS
    graph = _graph(model, target=target, layer=layer, reduce=reduce, conv_layer=conv_layer if cam else False)
    centers, indices = _resolve(graph, target, classes, clusters, centers, membership, Xm, batch_size)
    base = _baseline(baseline, Xm, hw) if method == "integrated_gradients" else None
    step = graph.step(target, membership)
    centers_t = tf.constant(centers)
    repeats = {"smoothgrad": n_samples, "integrated_gradients": steps + 1}.get(method, 1)
    group = max(1, batch_size // repeats)
    n, shape = len(Xm), Xm.shape[1:]
    maps = np.empty((n, hw[0], hw[1]), np.float32)
    report = progress or (lambda *a: None)
    for start in range(0, n, group):
        x = Xm[start:start + group]
        g = len(x)
        index = indices[start:start + g]
        if method == "saliency":
            maps[start:start + g] = _to_maps(_batched(step, x, index, centers_t, batch_size)[0], hw, absolute)
        elif method == "smoothgrad":
            rows = np.repeat(x[:, np.newaxis], n_samples, axis=1)
            for j in range(g):
                rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(start + j,)))
                sigma = float(noise) * float(x[j].max() - x[j].min())
                rows[j] += rng.normal(0.0, sigma, size=rows[j].shape).astype(np.float32)
            grads = _batched(step, rows.reshape((g * n_samples,) + shape), np.repeat(index, n_samples),
                             centers_t, batch_size)[0]
            maps[start:start + g] = _to_maps(grads.reshape((g, n_samples) + shape).mean(axis=1), hw, absolute)
        elif method == "integrated_gradients":
            alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
            weights = np.full(steps + 1, 1.0 / steps)
            weights[[0, -1]] *= 0.5
            b = base(start, start + g)
            rows = b[:, np.newaxis] + alphas.reshape((1, -1) + (1,) * len(shape)) * (x - b)[:, np.newaxis]
            grads = _batched(step, rows.reshape((g * (steps + 1),) + shape), np.repeat(index, steps + 1),
                             centers_t, batch_size)[0]
            mean_grad = np.tensordot(weights, grads.reshape((g, steps + 1) + shape).astype(np.float64), axes=(0, 1))
            maps[start:start + g] = _to_maps((x - b) * mean_grad, hw, absolute)
        else:
            conv, grads = _batched(step, x, index, centers_t, batch_size)
            maps[start:start + g] = _upsample(_cams(conv, grads, method, graph.channels_first), hw)
        done = min(n, start + g)
        report("attribution", done / n, f"{method}: {done}/{n} inputs")
    return maps


def target_scores(model, X, *, target="class", classes=None, layer=None, centers=None, clusters=None,
                  membership="margin", reduce="mean", batch_size=256):
    """The value each map explains: the class logit, or the cluster margin / minus distance.

    Parameters are those of :func:`attribute`. Useful to read a map's scale, and for
    completeness: an integrated-gradients map sums to
    ``target_scores(X) - target_scores(baseline)`` (with the same ``classes`` / ``clusters``).

    Returns
    -------
    ndarray of shape (n_samples,), float32
    """
    _check_options("saliency", target, membership, reduce, batch_size, 1, 0.0, 1, 0, classes=classes, layer=layer,
                   centers=centers, clusters=clusters, conv_layer=None)
    _, Xm = _check_inputs(model, X)
    graph = _graph(model, target=target, layer=layer, reduce=reduce, conv_layer=False)
    centers, indices = _resolve(graph, target, classes, clusters, centers, membership, Xm, batch_size)
    step = graph.step(target, membership)
    centers_t = tf.constant(centers)
    out = []
    for start in range(0, len(Xm), batch_size):
        x, index = Xm[start:start + batch_size], indices[start:start + batch_size]
        out.append(np.asarray(step(tf.constant(x), tf.constant(index), centers_t)[0]))
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------- sanity check


def _seed_for(seed, counter):
    return int(np.random.SeedSequence(int(seed), spawn_key=(counter,)).generate_state(1)[0] % _MAX_SEED)


def randomized_model(model, *, seed=0):
    """A copy of ``model`` with every weight re-initialised; ``model`` is left untouched.

    Every layer is rebuilt from its config with each random initialiser given a new seed
    derived from ``seed`` (nested models included), so kernels are drawn afresh from their
    initialisers' distributions, biases and normalisation statistics start again from theirs
    (zeros, ones). The architecture, and so the layer names, stay the same.

    Parameters
    ----------
    model : keras.Model
        Sequential or functional.
    seed : int
        The same seed gives the same weights.

    Returns
    -------
    keras.Model
    """
    check_model(model)
    seed = check_int(seed, "seed", low=0, high=_MAX_SEED)
    counter = [0]

    def reseed(obj):
        if isinstance(obj, dict):
            inner = obj.get("config")
            if "class_name" in obj and isinstance(inner, dict) and "seed" in inner:
                counter[0] += 1
                inner["seed"] = _seed_for(seed, counter[0])
            for value in obj.values():
                reseed(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                reseed(value)

    def clone_function(layer):
        config = copy.deepcopy(layer.get_config())
        reseed(config)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_function, recursive=True)


def _spearman(a, b):
    """Row-wise Spearman rank correlation of (n, p) arrays; NaN where a row is constant."""
    from scipy.stats import rankdata

    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def sanity_check(model, X, *, method, seed=0, **options):
    """Model-randomisation test (Adebayo et al. 2018): do the maps depend on the weights?

    Maps of ``model`` and of :func:`randomized_model` (``seed``) are computed for the same
    target (the class or cluster ``model`` gives each input, unless given) and compared
    per input by Spearman rank correlation. A method whose maps explain the model gives
    low correlations; near 1 means the map shows the input (edges, ink), not what the
    network learned.

    Parameters
    ----------
    model : keras.Model
    X : ndarray of shape (n_samples, ...)
    method : str
        One of :data:`METHODS`.
    seed : int
        Seeds the re-initialisation and SmoothGrad's noise.
    **options
        Any other keyword of :func:`attribute` (target, classes, layer, centers, ...).

    Returns
    -------
    dict
        ``method``; ``rank_correlation`` (n_samples,) on the signed maps and
        ``rank_correlation_abs`` on their absolute values, NaN for an input whose map is
        constant in either model; ``mean`` and ``mean_abs`` over the other inputs (NaN if
        none); ``n_constant``; ``maps`` and ``random_maps`` (n_samples, height, width).
    """
    maps = attribute(model, X, method=method, seed=seed, **options)  # checks every option
    options = dict(options)
    target = options.get("target", "class")
    key = "classes" if target == "class" else "clusters"
    if options.get(key) is None:  # the trained model's class or cluster, explained in both models
        _, Xm = _check_inputs(model, X)
        graph = _graph(model, target=target, layer=options.get("layer"), reduce=options.get("reduce", "mean"),
                       conv_layer=False)
        membership = options.get("membership", "margin")
        options[key] = _resolve(graph, target, None, None, options.get("centers"), membership, Xm,
                                options.get("batch_size", 256))[1]
    random_maps = attribute(randomized_model(model, seed=seed), X, method=method, seed=seed, **options)
    flat, rflat = maps.reshape(len(maps), -1), random_maps.reshape(len(maps), -1)
    rho = _spearman(flat, rflat)
    rho_abs = _spearman(np.abs(flat), np.abs(rflat))

    def mean(values):
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    return {
        "method": method,
        "rank_correlation": rho,
        "mean": mean(rho),
        "rank_correlation_abs": rho_abs,
        "mean_abs": mean(rho_abs),
        "n_constant": int(np.isnan(rho).sum()),
        "maps": maps,
        "random_maps": random_maps,
    }


# --------------------------------------------------------------------------- deletion


def deletion_curve(model, X, y, maps, *, fractions=DEFAULT_FRACTIONS, baseline=0.0, order="attribution", seed=0,
                   batch_size=512):
    """Accuracy and true-class probability as the most attributed pixels are removed.

    For each fraction ``f``, the ``round(f * height * width)`` pixels with the largest map
    values of each input (all its channels) are set to ``baseline`` (0: black, the MNIST
    background), and the model predicts again. ``order="random"`` removes pixels in a seeded
    random order instead: the reference a useful map must beat (a faster fall). Ties in a map
    (the zeros of a Grad-CAM) are broken in a seeded random order too.

    Parameters
    ----------
    model : keras.Model
    X : ndarray of shape (n_samples, ...)
        Inputs as the model takes them.
    y : ndarray of shape (n_samples,)
        True output unit of each input (an index into the model's outputs, not a dataset label).
    maps : ndarray of shape (n_samples, height, width)
        From :func:`attribute` (larger = removed first).
    fractions : sequence of float
        Shares of the pixels removed, each in [0, 1].
    baseline : float or ndarray of shape (height, width)
        The value a removed pixel gets.
    order : {"attribution", "random"}
    seed : int
    batch_size : int

    Returns
    -------
    dict
        ``fractions``, ``n_removed`` (pixels per input), ``accuracy`` and ``mean_probability``
        (of the true class), each an ndarray of len(fractions); ``auc``: the area under
        the mean probability over the fractions (trapezoid; lower: the map found the pixels
        the model needs); ``order``.
    """
    _check_choice(order, ORDERS, "order")
    seed = check_int(seed, "seed", low=0, high=_MAX_SEED)
    batch_size = check_int(batch_size, "batch_size", low=1, high=65536)
    raw, Xm = _check_inputs(model, X)
    n = len(Xm)
    maps = np.asarray(maps)
    if maps.ndim != 3 or len(maps) != n or maps.dtype.kind not in "biuf":
        raise ValueError(f"maps must have shape ({n}, height, width), one map per input; got shape {maps.shape}")
    hw = maps.shape[1:]
    pixels = hw[0] * hw[1]
    values = int(np.prod(Xm.shape[1:]))
    if values % pixels:
        raise ValueError(f"maps of {hw[0]}x{hw[1]} pixels do not fit inputs of {values} values")
    n_out = int(model.outputs[0].shape[-1])
    y = _check_index(y, n, n_out, "y", "true output unit")
    fr = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if not len(fr) or not np.isfinite(fr).all() or (fr < 0).any() or (fr > 1).any():
        raise ValueError(
            f"fractions must be shares of the pixels in [0, 1], got {np.asarray(fractions).ravel().tolist()}")
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, bool):
        fill = np.full(pixels, float(baseline), np.float32)
    else:
        fill = np.asarray(baseline, dtype=np.float32)
        if fill.size != pixels:
            raise ValueError(
                f"baseline must be a number or an image of {hw[0]}x{hw[1]} pixels, got shape {fill.shape}")
        fill = fill.reshape(pixels)
    if not np.isfinite(fill).all():
        raise ValueError("baseline holds NaN or infinite values")
    rng = np.random.default_rng(seed)
    tie = rng.random((n, pixels))
    if order == "random":
        ranking = np.argsort(tie, axis=1)
    else:
        flat = maps.reshape(n, pixels).astype(np.float64)
        if not np.isfinite(flat).all():
            raise ValueError("maps hold NaN or infinite values")
        ranking = np.lexsort((tie, -flat), axis=1)  # largest first, ties at random
    rank = np.empty_like(ranking)
    np.put_along_axis(rank, ranking, np.arange(pixels)[np.newaxis, :], axis=1)
    images = Xm.reshape(n, pixels, -1)
    counts = np.rint(fr * pixels).astype(np.int64)
    accuracy, probability = [], []
    for k in counts:
        probs = []
        for s in range(0, n, batch_size):
            part = images[s:s + batch_size].copy()
            removed = rank[s:s + batch_size] < k
            part[removed] = fill[np.nonzero(removed)[1]][:, np.newaxis]
            probs.append(np.asarray(model.predict_on_batch(part.reshape((len(part),) + Xm.shape[1:]))))
        probs = np.concatenate(probs)
        accuracy.append(float(np.mean(np.argmax(probs, axis=1) == y)))
        probability.append(float(np.mean(probs[np.arange(n), y])))
    probability = np.asarray(probability)
    auc = float(np.sum(np.diff(fr) * (probability[1:] + probability[:-1]) / 2.0))  # trapezoid, numpy 1.x too
    return {"fractions": fr, "n_removed": counts, "accuracy": np.asarray(accuracy), "mean_probability": probability,
            "auc": auc, "order": order}
