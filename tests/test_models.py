"""Model building, training, saving and safe loading."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from signatures.models import (  # noqa: E402
    build_cnn,
    build_mlp,
    check_input_shape,
    evaluate,
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
    with pytest.raises(ValueError, match=r"expects inputs of shape \(784,\).*\(28, 28, 1\).*another layout"):
        check_input_shape(trained_mlp, np.zeros((3, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(784,\), the data has rows of shape \(64,\)"):
        check_input_shape(trained_mlp, np.zeros((3, 64)))
