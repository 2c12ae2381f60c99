"""Activation extraction: exact values from hand-set weights, one pass, batching, conv reductions."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from signatures.activations import build_extractor, default_hidden_layers, extract  # noqa: E402

W1 = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -1.0]], dtype=np.float32)
B1 = np.array([0.0, 1.0, -0.5], dtype=np.float32)
W2 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
B2 = np.array([0.5, -0.5], dtype=np.float32)
W3 = np.array([[1.0, -1.0], [-1.0, 1.0]], dtype=np.float32)
B3 = np.zeros(2, dtype=np.float32)
X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0], [3.0, -2.0]], dtype=np.float32)


def relu(z):
    return np.maximum(z, 0.0)


def expected():
    h1 = relu(X @ W1 + B1)
    h2 = relu(h1 @ W2 + B2)
    z = h2 @ W3 + B3
    p = np.exp(z - z.max(1, keepdims=True))
    return h1, h2, p / p.sum(1, keepdims=True)


def hand_set_sequential():
    model = keras.Sequential([
        keras.Input(shape=(2,)),
        keras.layers.Dense(3, activation="relu", name="h1"),
        keras.layers.Dense(2, activation="relu", name="h2"),
        keras.layers.Dense(2, activation="softmax", name="out"),
    ])
    for layer, (w, b) in zip(model.layers, [(W1, B1), (W2, B2), (W3, B3)]):
        layer.set_weights([w, b])
    return model


def hand_set_functional():
    inputs = keras.Input(shape=(2,), name="x")
    h1 = keras.layers.Dense(3, activation="relu", name="h1")(inputs)
    h2 = keras.layers.Dense(2, activation="relu", name="h2")(h1)
    out = keras.layers.Dense(2, activation="softmax", name="out")(h2)
    model = keras.Model(inputs, out)
    for name, (w, b) in zip(["h1", "h2", "out"], [(W1, B1), (W2, B2), (W3, B3)]):
        model.get_layer(name).set_weights([w, b])
    return model


@pytest.mark.parametrize("make", [hand_set_sequential, hand_set_functional])
def test_known_activations(make):
    hidden, output = extract(make(), X)
    h1, h2, p = expected()
    assert list(hidden) == ["h1", "h2"]
    np.testing.assert_allclose(hidden["h1"], h1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hidden["h2"], h2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(output, p, rtol=1e-5)


def test_single_multi_output_model_over_the_same_weights():
    model = hand_set_sequential()
    extractor, names = build_extractor(model)
    assert names == ["h1", "h2"]
    assert len(extractor.outputs) == 4  # two hidden layers + the output + its logits, one graph
    assert {id(w) for w in extractor.weights} == {id(w) for w in model.weights}


@pytest.mark.parametrize("make", [hand_set_sequential, hand_set_functional])
def test_logits_behind_a_softmax_dense_are_exact(make):
    hidden, output, logits = extract(make(), X, logits=True)
    h1, h2, p = expected()
    np.testing.assert_allclose(logits, h2 @ W3 + B3, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(output, p, rtol=1e-5)


def test_logits_of_a_separate_softmax_and_none_without_softmax():
    def build(last):
        inputs = keras.Input(shape=(2,))
        h = keras.layers.Dense(2, activation="relu", name="h1")(inputs)
        z = keras.layers.Dense(2, name="z")(h)
        model = keras.Model(inputs, last(z))
        model.get_layer("h1").set_weights([W1[:, :2], B1[:2]])
        model.get_layer("z").set_weights([W3, np.array([0.5, -0.5], dtype=np.float32)])
        return model

    expected_z = relu(X @ W1[:, :2] + B1[:2]) @ W3 + np.array([0.5, -0.5])
    for last in (keras.layers.Softmax(), keras.layers.Activation("softmax")):
        _, _, logits = extract(build(last), X, logits=True)
        np.testing.assert_allclose(logits, expected_z, rtol=1e-6, atol=1e-6)
    _, _, none = extract(build(keras.layers.Activation("sigmoid")), X, logits=True)
    assert none is None


def test_batches_do_not_change_values(trained_mlp, subset_1v7):
    a, pa = extract(trained_mlp, subset_1v7.X_test, batch_size=7)
    b, pb = extract(trained_mlp, subset_1v7.X_test, batch_size=512)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pa, trained_mlp.predict(subset_1v7.X_test, verbose=0), rtol=1e-5, atol=1e-6)


def test_choose_layers_and_reject_output():
    model = hand_set_sequential()
    hidden, _ = extract(model, X, layers=["h2"])
    assert list(hidden) == ["h2"]
    with pytest.raises(ValueError, match="output layer"):
        extract(model, X, layers=["h1", "out"])
    with pytest.raises(ValueError, match=r"\['nope'\] are not in model"):
        extract(model, X, layers=["nope"])


def test_nan_activations_are_named():
    model = hand_set_sequential()
    w, b = model.get_layer("h2").get_weights()
    w[0, 0] = np.nan  # NaN * 0 is NaN too: every input is hit
    model.get_layer("h2").set_weights([w, b])
    with pytest.raises(ValueError, match=r"layer 'h2' gives NaN or infinite activations for 4 of 4"):
        extract(model, X)


def test_wrong_input_shape():
    with pytest.raises(ValueError, match=r"expects inputs of shape \(2,\)"):
        extract(hand_set_sequential(), np.zeros((3, 5), dtype=np.float32))


def conv_model():
    model = keras.Sequential([
        keras.Input(shape=(5, 5, 1)),
        keras.layers.Conv2D(2, 3, padding="valid", activation="relu", name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(2, activation="softmax", name="out"),
    ])
    k = np.zeros((3, 3, 1, 2), dtype=np.float32)
    k[1, 1, 0, 0] = 1.0  # channel 0 copies the centre pixel of each 3x3 window
    k[:, :, 0, 1] = 1.0 / 9.0  # channel 1 is the window mean
    model.get_layer("conv").set_weights([k, np.zeros(2, dtype=np.float32)])
    return model


def test_conv_maps_mean_and_flatten():
    images = np.arange(2 * 25, dtype=np.float32).reshape(2, 5, 5, 1) / 50.0
    model = conv_model()
    assert default_hidden_layers(model) == ["conv"]
    centre = images[:, 1:4, 1:4, 0]  # channel 0 map, shape (2, 3, 3)
    window_means = np.stack([
        np.stack([images[n, i:i + 3, j:j + 3, 0].mean() for i in range(3) for j in range(3)]) for n in range(2)
    ])
    mean, _ = extract(model, images, reduce="mean")
    np.testing.assert_allclose(mean["conv"][:, 0], centre.reshape(2, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(mean["conv"][:, 1], window_means.mean(1), rtol=1e-5)
    flat, _ = extract(model, images, reduce="flatten")
    assert flat["conv"].shape == (2, 3 * 3 * 2)
    np.testing.assert_allclose(flat["conv"][:, 0::2], centre.reshape(2, -1), rtol=1e-5)
    with pytest.raises(ValueError, match="reduce must be one of"):
        extract(model, images, reduce="max")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": "h1"}, "layers must be a list of layer names \\(strings\\), got 'h1'"),
        ({"layers": [0]}, "layers must be a list of layer names \\(strings\\), got \\[0\\]"),
        ({"layers": []}, "layers must name at least one layer of \\['h1', 'h2', 'out'\\], got \\[\\]"),
        ({"layers": ["h1", "h1"]}, "layers must name each layer once, got \\['h1'\\] more than once"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
    ],
)
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract(hand_set_sequential(), X, **kwargs)


def test_not_a_model_and_a_model_without_hidden_layers():
    with pytest.raises(ValueError, match="model must be a keras.Model, got ndarray"):
        extract(np.zeros(3), X)
    bare = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax", name="out")], name="bare")
    with pytest.raises(ValueError, match=r"model 'bare' has no hidden layer .* its layers are \['out'\]"):
        default_hidden_layers(bare)


def test_sequential_built_by_a_call_without_input():
    model = keras.Sequential([keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ValueError, match="has no defined input; build it with keras.Input"):
        extract(model, X)
    model(X[:1])
    model.layers[0].set_weights([W1, B1])
    hidden, _ = extract(model, X)
    np.testing.assert_allclose(next(iter(hidden.values())), expected()[0], rtol=1e-6, atol=1e-6)


def test_a_model_loaded_from_a_keras_file_has_the_same_hidden_layers_and_logits(tmp_path):
    """A Sequential read back from .keras need not link its layers into one graph; it is traced again."""
    import keras

    from signatures.activations import default_hidden_layers, extract

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.Activation("relu", name="act"),
                              keras.layers.Dense(2, activation="softmax", name="out")])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert default_hidden_layers(loaded) == default_hidden_layers(model) == ["act"]
    X = np.random.default_rng(0).random((5, 4)).astype("float32")
    (h1, p1, z1), (h2, p2, z2) = extract(model, X, logits=True), extract(loaded, X, logits=True)
    assert z2 is not None and np.allclose(z1, z2) and np.allclose(h1["act"], h2["act"])
    d, out = model.get_layer("d"), model.get_layer("out")
    want = np.maximum(X @ d.kernel.numpy() + d.bias.numpy(), 0) @ out.kernel.numpy() + out.bias.numpy()
    assert np.allclose(z2, want, atol=1e-5), "the logits are the output layer's pre-activation"
