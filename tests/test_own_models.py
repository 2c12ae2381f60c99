"""A user's own trained model: which layers are hidden, nested models, inputs of another layout.

Every model here has hand-set weights, so the activations it must give can be written down.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from signatures.activations import build_extractor, default_hidden_layers, extract  # noqa: E402
from signatures.models import check_input_shape, fit_input, load_model, save_model  # noqa: E402

W1 = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -1.0]], dtype=np.float32)
B1 = np.array([0.0, 1.0, -0.5], dtype=np.float32)
W2 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]], dtype=np.float32)
B2 = np.array([0.5, -0.5], dtype=np.float32)
W3 = np.array([[1.0, -1.0], [-1.0, 1.0]], dtype=np.float32)
B3 = np.array([0.25, 0.0], dtype=np.float32)
X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0], [3.0, -2.0], [-2.0, -1.0]], dtype=np.float32)


def relu(z):
    return np.maximum(z, 0.0)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def set_weights(model, weights):
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
    return model


def test_separate_activation_layers_give_the_activated_output_and_never_the_logits():
    model = keras.Sequential([
        keras.Input((2,)),
        L.Dense(3, name="d1"), L.Activation("relu", name="a1"),
        L.Dense(2, name="d2"), L.Activation("relu", name="a2"),
        L.Dense(2, name="logits"), L.Activation("softmax", name="probs"),
    ])
    set_weights(model, {"d1": [W1, B1], "d2": [W2, B2], "logits": [W3, B3]})
    h1 = relu(X @ W1 + B1)
    h2 = relu(h1 @ W2 + B2)
    assert (X @ W1 + B1).min() < 0 and h1.min() == 0  # the relu did cut negative values
    assert default_hidden_layers(model) == ["a1", "a2"]
    hidden, output = extract(model, X)
    assert list(hidden) == ["a1", "a2"]
    np.testing.assert_allclose(hidden["a1"], h1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hidden["a2"], h2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(output, softmax(h2 @ W3 + B3), rtol=1e-5)
    # The pre-activation values and the logits stay reachable by name, the output does not.
    pre, _ = extract(model, X, layers=["d1", "logits"])
    np.testing.assert_allclose(pre["d1"], X @ W1 + B1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pre["logits"], h2 @ W3 + B3, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="'probs' is the output layer"):
        extract(model, X, layers=["probs"])


def test_batchnorm_and_dropout_between_blocks():
    gamma, beta = np.array([2.0, 1.0, 0.5], np.float32), np.array([-1.0, 0.0, 0.5], np.float32)
    mean, var = np.array([0.5, 1.0, -1.0], np.float32), np.array([4.0, 1.0, 0.25], np.float32)
    model = keras.Sequential([
        keras.Input((2,)),
        L.Dense(3, name="d1"), L.BatchNormalization(name="bn1"), L.ReLU(name="r1"), L.Dropout(0.5, name="drop1"),
        L.Dense(2, activation="relu", name="d2"), L.BatchNormalization(name="bn2"), L.Dropout(0.5, name="drop2"),
        L.Dense(2, activation="softmax", name="out"),
    ])
    set_weights(model, {
        "d1": [W1, B1], "bn1": [gamma, beta, mean, var], "d2": [W2, B2],
        "bn2": [np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32), np.ones(2, np.float32)],
        "out": [W3, B3],
    })
    z1 = (X @ W1 + B1 - mean) / np.sqrt(var + 1e-3) * gamma + beta
    h1 = relu(z1)
    assert z1.min() < 0  # BN's output is the pre-activation value, not what is taken
    h2 = relu(h1 @ W2 + B2)
    assert default_hidden_layers(model) == ["r1", "d2"]  # d2 applies its relu itself; bn2 comes after it
    hidden, output = extract(model, X)
    np.testing.assert_allclose(hidden["r1"], h1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hidden["d2"], h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(output, softmax((h2 / np.sqrt(1 + 1e-3)) @ W3 + B3), rtol=1e-5)


def test_softmax_dense_output_and_dense_then_softmax_output_are_both_the_prediction():
    a = keras.Sequential([keras.Input((2,)), L.Dense(3, activation="relu", name="h"),
                          L.Dense(2, activation="softmax", name="out")])
    b = keras.Sequential([keras.Input((2,)), L.Dense(3, activation="relu", name="h"), L.Dropout(0.1, name="drop"),
                          L.Dense(2, name="logits"), L.Softmax(name="sm")])
    set_weights(a, {"h": [W1, B1], "out": [W2[:3] @ np.eye(2, dtype=np.float32), B2]})
    set_weights(b, {"h": [W1, B1], "logits": [W2, B2]})
    assert default_hidden_layers(a) == default_hidden_layers(b) == ["h"]
    (ha, pa), (hb, pb) = extract(a, X), extract(b, X)
    np.testing.assert_allclose(ha["h"], relu(X @ W1 + B1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hb["h"], relu(X @ W1 + B1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pa, pb, rtol=1e-6)


def nested_model():
    """Functional outer model around a Sequential: Input -> [d1 relu, d2, a2 relu] -> out softmax."""
    inner = keras.Sequential([
        keras.Input((2,)), L.Dense(3, activation="relu", name="d1"),
        L.Dense(2, name="d2"), L.Activation("relu", name="a2"),
    ], name="block")
    x = keras.Input((2,), name="x")
    out = L.Dense(2, activation="softmax", name="out")(inner(x))
    model = keras.Model(x, out, name="outer")
    inner.get_layer("d1").set_weights([W1, B1])
    inner.get_layer("d2").set_weights([W2, B2])
    model.get_layer("out").set_weights([W3, B3])
    return model


def check_nested(model):
    h1 = relu(X @ W1 + B1)
    h2 = relu(h1 @ W2 + B2)
    assert default_hidden_layers(model) == ["block/d1", "block/a2"]
    hidden, output = extract(model, X)
    np.testing.assert_allclose(hidden["block/d1"], h1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hidden["block/a2"], h2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(output, softmax(h2 @ W3 + B3), rtol=1e-5)
    np.testing.assert_allclose(output, model.predict(X, verbose=0), rtol=1e-6)


def test_nested_sequential_in_functional_is_looked_into():
    model = nested_model()
    check_nested(model)
    extractor, names = build_extractor(model)
    assert {id(w) for w in extractor.weights} == {id(w) for w in model.weights}  # the same weights, not copies
    with pytest.raises(ValueError, match=r"'block/d9'\] are not in model 'outer'; its layers are \['block/d1'"):
        extract(model, X, layers=["block/d9"])
    with pytest.raises(ValueError, match="'out' is the output layer"):
        extract(model, X, layers=["out"])


def test_nested_model_survives_save_and_load(tmp_path):
    path = save_model(nested_model(), tmp_path / "nested.keras")
    check_nested(load_model(path))


def test_functional_nested_in_functional_and_output_inside_the_nested_model():
    xi = keras.Input((2,))
    inner = keras.Model(xi, L.Activation("tanh", name="t")(L.Dense(3, name="d")(xi)), name="enc")
    head = keras.Sequential([keras.Input((3,)), L.Dense(2, name="logits"), L.Activation("softmax", name="p")],
                            name="head")
    x = keras.Input((2,))
    model = keras.Model(x, head(inner(x)), name="two_parts")
    inner.get_layer("d").set_weights([W1, B1])
    head.get_layer("logits").set_weights([W2, B2])
    assert default_hidden_layers(model) == ["enc/t"]  # head/logits feed the output: the prediction
    hidden, output = extract(model, X)
    h = np.tanh(X @ W1 + B1)
    np.testing.assert_allclose(hidden["enc/t"], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(output, softmax(h @ W2 + B2), rtol=1e-5)


def keras_mnist_example():
    """Keras' MNIST example shape: Input((28, 28)) -> Flatten -> Dense relu -> Dense softmax."""
    model = keras.Sequential([
        keras.Input((28, 28)), L.Flatten(name="flat"),
        L.Dense(2, activation="relu", name="h"), L.Dense(2, activation="softmax", name="out"),
    ], name="mnist_example")
    k = np.zeros((784, 2), dtype=np.float32)
    k[0, 0] = 1.0  # unit 0: pixel (0, 0)
    k[28 * 27 + 27, 1] = -1.0  # unit 1: minus pixel (27, 27)
    model.get_layer("h").set_weights([k, np.array([-0.5, 1.0], np.float32)])
    model.get_layer("out").set_weights([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
    return model


def test_input_28x28_with_flatten_takes_rows_of_28x28x1():
    model = keras_mnist_example()
    images = np.zeros((3, 28, 28, 1), dtype=np.float32)
    images[:, 0, 0, 0] = [0.25, 0.75, 1.0]
    images[:, 27, 27, 0] = [0.0, 0.5, 1.5]
    expected = relu(np.stack([images[:, 0, 0, 0] - 0.5, 1.0 - images[:, 27, 27, 0]], axis=1))
    check_input_shape(model, images)  # accepted: the same 784 pixels
    assert fit_input(model, images).shape == (3, 28, 28)
    np.testing.assert_array_equal(fit_input(model, images)[:, 27, 27], images[:, 27, 27, 0])
    for rows in (images, images.reshape(3, 784), images[..., 0]):
        hidden, output = extract(model, rows)
        np.testing.assert_allclose(hidden["h"], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(output, softmax(expected), rtol=1e-5)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((3, 8, 8, 1), r"expects inputs of shape \(28, 28\), the data has rows of shape \(8, 8, 1\) "
                       r"\(64 values per row; the model takes 784\)"),
        ((3, 14, 56), r"expects inputs of shape \(28, 28\), the data has rows of shape \(14, 56\) "
                      r"\(the same number of values \(784\) in a layout that is not the same image\)"),
        ((784,), r"one row per example, shape \(n_samples, 28, 28\); got an array of shape \(784,\)"),
    ],
)
def test_rows_that_do_not_fit_name_both_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        extract(keras_mnist_example(), np.zeros(shape, dtype=np.float32))


def test_conv_with_separate_relu():
    model = keras.Sequential([
        keras.Input((4, 4, 1)), L.Conv2D(2, 3, padding="valid", name="conv"), L.ReLU(name="relu"),
        L.Flatten(name="flat"), L.Dense(2, activation="softmax", name="out"),
    ])
    k = np.zeros((3, 3, 1, 2), dtype=np.float32)
    k[1, 1, 0, 0] = 1.0  # channel 0: the centre pixel of each window, minus 0.5
    k[1, 1, 0, 1] = -1.0  # channel 1: minus the centre pixel, plus 0.5
    model.get_layer("conv").set_weights([k, np.array([-0.5, 0.5], np.float32)])
    images = np.arange(2 * 16, dtype=np.float32).reshape(2, 4, 4, 1) / 32.0  # 0 .. 0.97
    centre = images[:, 1:3, 1:3, 0].reshape(2, 4)
    assert default_hidden_layers(model) == ["relu"]
    mean, _ = extract(model, images, reduce="mean")
    np.testing.assert_allclose(mean["relu"][:, 0], relu(centre - 0.5).mean(1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mean["relu"][:, 1], relu(0.5 - centre).mean(1), rtol=1e-5, atol=1e-7)
    flat, _ = extract(model, images, reduce="flatten")
    np.testing.assert_allclose(flat["relu"][:, 0::2], relu(centre - 0.5), rtol=1e-5, atol=1e-7)


def test_end_to_end_experiment_on_a_users_nested_model(tmp_path):
    """run_experiment with model_path: Input((8, 8)) -> Flatten -> nested [Dense, relu] -> logits -> softmax."""
    from signatures.experiment import ExperimentConfig, run_experiment
    from signatures.store import load_experiment, save_experiment

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(64, 4)).astype(np.float32)
    bias = np.array([-1.0, 0.0, 0.5, -0.25], np.float32)
    block = keras.Sequential([keras.Input((64,)), L.Dense(4, name="dense"), L.Activation("relu", name="act")],
                             name="block")
    x = keras.Input((8, 8), name="pixels")
    logits = L.Dense(3, name="logits")(block(L.Flatten(name="flat")(x)))
    model = keras.Model(x, L.Activation("softmax", name="probs")(logits), name="users_model")
    block.get_layer("dense").set_weights([kernel, bias])
    model.get_layer("logits").set_weights([rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32)])
    path = save_model(model, tmp_path / "users.keras")

    config = ExperimentConfig(name="own", dataset="digits", digits=(0, 1, 2), anomalies=(3,), n_per_class=30,
                              k_max=3, umap_points=60, model_path=str(path))
    exp = run_experiment(config)
    assert exp.layers == ["block/act"]
    rows = exp.images.reshape(len(exp.images), 64).astype(np.float32) / 16.0
    np.testing.assert_allclose(exp.hidden["block/act"], relu(rows @ kernel + bias), rtol=1e-5, atol=1e-5)
    assert exp.paths.shape == (exp.n_rows, 1) and exp.metrics["history"] == {}
    save_experiment(exp, tmp_path / "store" / "own")
    again = load_experiment(tmp_path / "store" / "own")
    assert again.layers == ["block/act"]
    np.testing.assert_array_equal(again.hidden["block/act"], exp.hidden["block/act"])
