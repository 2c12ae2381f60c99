"""Model building, training, saving and safe loading."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from signatures.models import (  # noqa: E402
    build_cnn,
    build_mlp,
    check_input_shape,
    check_model,
    evaluate,
    fit_input,
    load_model,
    parse_hidden,
    save_model,
    train,
)


def test_mlp_layer_names_and_sizes():
    model = build_mlp(784, 3, hidden=(64, 32), activation="tanh")
    assert [layer.name for layer in model.layers] == ["hidden_1", "hidden_2", "output"]
    assert [layer.units for layer in model.layers] == [64, 32, 3]
    assert model.layers[0].activation.__name__ == "tanh"


def test_cnn_layers():
    model = build_cnn((28, 28, 1), 2, filters=(4, 8), dense=(16,))
    names = [layer.name for layer in model.layers]
    assert names == ["conv_1", "pool_1", "conv_2", "pool_2", "flatten", "hidden_1", "output"]
    assert model.outputs[0].shape[-1] == 2


def test_dropout_layers_follow_each_dense_hidden_layer_and_none_by_default():
    names = [layer.name for layer in build_mlp(784, 2, hidden=(8, 4), dropout=0.25).layers]
    assert names == ["hidden_1", "dropout_1", "hidden_2", "dropout_2", "output"]
    assert all(layer.rate == 0.25 for layer in build_mlp(784, 2, hidden=(8, 4), dropout=0.25).layers
               if layer.name.startswith("dropout"))
    assert [layer.name for layer in build_cnn((28, 28, 1), 2, filters=(4,), dense=(), dropout=0.5).layers] == [
        "conv_1", "pool_1", "flatten", "dropout_0", "output"]
    assert not any(layer.name.startswith("dropout") for layer in build_mlp(784, 2, hidden=(8, 4)).layers)
    with pytest.raises(ValueError, match=r"dropout must be a rate in \[0, 1\), got 1\.0"):
        build_mlp(784, 2, dropout=1.0)


def test_dropout_is_not_a_hidden_layer_and_a_config_without_it_keeps_its_key():
    from signatures.activations import default_hidden_layers
    from signatures.experiment import ExperimentConfig

    assert default_hidden_layers(build_mlp(784, 2, hidden=(8, 4), dropout=0.25)) == ["hidden_1", "hidden_2"]
    assert ExperimentConfig().key() == ExperimentConfig(dropout=0).key() != ExperimentConfig(dropout=0.2).key()


@pytest.mark.parametrize(
    "hidden, message",
    [((), "at least one layer size"), ("", "at least one layer size"), (("a", 3), "'a'"),
     ((64, -1), "-1"), ((2.5,), "2.5")],
)
def test_parse_hidden_rejects(hidden, message):
    with pytest.raises(ValueError, match=message):
        parse_hidden(hidden)


def test_parse_hidden_accepts_text():
    assert parse_hidden("64, 32") == (64, 32)
    assert parse_hidden(["16", 8]) == (16, 8)


def test_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        build_mlp(10, 2, activation="softsign-ish")


def test_same_seed_same_weights(subset_1v7):
    X, Y = subset_1v7.X_train[:120], subset_1v7.Y_train[:120]
    weights = []
    for _ in range(2):
        model = build_mlp(784, 2, hidden=(8,), seed=5)
        history = train(model, X, Y, epochs=2, seed=5)
        weights.append(model.get_weights())
    assert len(history["loss"]) == 2
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_training_reports_progress(subset_1v7):
    seen = []
    model = build_mlp(784, 2, hidden=(8,))
    train(model, subset_1v7.X_train[:100], subset_1v7.Y_train[:100], epochs=3,
          progress=lambda stage, frac, msg: seen.append((stage, frac, msg)))
    assert [s[1] for s in seen] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert seen[-1][2].startswith("epoch 3/3, loss")


def test_evaluate_confusion(trained_mlp, subset_1v7):
    result = evaluate(trained_mlp, subset_1v7.X_test, subset_1v7.y_test, subset_1v7.classes)
    cm = np.array(result["confusion"])
    assert cm.sum() == len(subset_1v7.y_test)
    assert result["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert result["accuracy"] > 0.9  # 1 vs 7 is easy after 5 epochs


def test_save_load_roundtrip(trained_mlp, subset_1v7, tmp_path):
    path = save_model(trained_mlp, tmp_path / "m.keras")
    loaded = load_model(path)
    np.testing.assert_allclose(
        loaded.predict(subset_1v7.X_test, verbose=0), trained_mlp.predict(subset_1v7.X_test, verbose=0), rtol=1e-6
    )


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "absent.keras")


def test_load_corrupted_file(trained_mlp, tmp_path):
    good = save_model(trained_mlp, tmp_path / "good.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match="not a Keras 3 '.keras' archive|corrupted"):
        load_model(bad)
    text = tmp_path / "text.keras"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="not a Keras 3"):
        load_model(text)


def test_load_refuses_unsafe_lambda(tmp_path):
    inputs = keras.Input(shape=(4,))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="unsafe deserialization"):
        load_model(path)


def test_input_shape_mismatch_is_named(trained_mlp):
    with pytest.raises(ValueError, match=r"expects inputs of shape \(784,\), the data has rows of shape \(64,\) "
                                         r"\(64 values per row; the model takes 784\)"):
        check_input_shape(trained_mlp, np.zeros((3, 64)))
    with pytest.raises(ValueError, match=r"one row per example, shape \(n_samples, 784\); got an array of shape "
                                         r"\(784,\)"):
        check_input_shape(trained_mlp, np.zeros(784))
    with pytest.raises(ValueError, match="inputs must be numbers .* dtype <U1"):
        check_input_shape(trained_mlp, np.full((2, 784), "a"))


def test_fit_input_reshapes_the_same_image_only(trained_mlp):
    images = np.arange(2 * 784, dtype=np.float32).reshape(2, 28, 28, 1)
    flat = fit_input(trained_mlp, images)  # (28, 28, 1) rows for a (784,) model: the same pixels in order
    assert flat.shape == (2, 784)
    np.testing.assert_array_equal(flat[1], images[1].ravel())
    same = np.zeros((2, 784), dtype=np.float32)
    assert fit_input(trained_mlp, same) is same  # rows that fit are not copied
    cnn = build_cnn((28, 28, 1), 2, filters=(2,), dense=())
    np.testing.assert_array_equal(fit_input(cnn, flat), images)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(28, 28, 1\), the data has rows of shape "
                                         r"\(14, 56\) \(the same number of values \(784\) in a layout"):
        fit_input(cnn, np.zeros((2, 14, 56)))


def test_models_signatures_cannot_use():
    with pytest.raises(ValueError, match="model must be a keras.Model, got str: 'model.keras'"):
        check_model("model.keras")
    a, b = keras.Input((2,)), keras.Input((3,))
    two_in = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])), name="two_in")
    with pytest.raises(ValueError, match="model 'two_in' has 2 inputs; .* exactly one input"):
        check_input_shape(two_in, np.zeros((1, 2)))
    x = keras.Input((2,))
    two_out = keras.Model(x, [keras.layers.Dense(2)(x), keras.layers.Dense(3)(x)], name="two_out")
    with pytest.raises(ValueError, match="model 'two_out' has 2 outputs; signatures needs exactly one"):
        check_model(two_out)


def test_evaluate_and_train_name_bad_labels_and_targets(trained_mlp, subset_1v7):
    X, y = subset_1v7.X_test[:5], subset_1v7.y_test[:5]
    with pytest.raises(ValueError, match=r"labels \[3\] are not among the classes \[1, 7\]"):
        evaluate(trained_mlp, X, np.array([1, 7, 3, 1, 7]), (1, 7))
    with pytest.raises(ValueError, match=r"y must hold one label per input, shape \(5,\); got shape \(4,\)"):
        evaluate(trained_mlp, X, y[:4], (1, 7))
    with pytest.raises(ValueError, match=r"classes must name one class per output unit \(2\), got \[1, 3, 7\]"):
        evaluate(trained_mlp, X, y, (1, 7, 3))
    with pytest.raises(ValueError, match="targets must have one row per input: 5 inputs, got 4 target rows"):
        train(trained_mlp, X, subset_1v7.Y_test[:4], epochs=1)


def test_keras_is_imported_without_plotting_modules_outside_a_notebook_and_as_usual_in_one():
    import subprocess
    import sys

    code = ("import sys; {first}import signatures.models; "
            "print('matplotlib' in sys.modules, 'IPython' in sys.modules); import matplotlib.pyplot; print('ok')")
    command = subprocess.run([sys.executable, "-c", code.format(first="")], capture_output=True, text=True, timeout=300)
    assert command.stdout.split() == ["False", "False", "ok"], command.stderr[-2000:]  # hidden, then importable
    notebook = subprocess.run([sys.executable, "-c", code.format(first="import IPython; ")], capture_output=True,
                              text=True, timeout=300)
    assert notebook.stdout.split() == ["True", "True", "ok"], notebook.stderr[-2000:]  # Keras as it always is
