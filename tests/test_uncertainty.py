"""Monte-Carlo dropout: exact zeros without dropout, real masks with it, seeds, and
BatchNormalization kept in inference mode."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from signatures.uncertainty import dropout_layers, has_dropout, mc_dropout  # noqa: E402


def entropy(p):
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)


def test_without_dropout_the_mutual_information_is_exactly_zero(trained_mlp, subset_1v7):
    X = subset_1v7.X_test[:50]
    result = mc_dropout(trained_mlp, X, T=20, seed=0)
    plain = trained_mlp.predict(X, verbose=0)
    assert not has_dropout(trained_mlp) and result["has_dropout"] is False
    assert result["T"] == 20 and result["passes"] == 1 and result["dropout_layers"] == []
    np.testing.assert_array_equal(result["mutual_information"], np.zeros(50))
    np.testing.assert_allclose(result["probabilities"], plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result["entropy"], entropy(plain), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(result["entropy"], result["expected_entropy"])


def one_unit_dropout():
    """x -> Dropout(0.5) -> softmax(2x, -2x): a pass keeps x (scaled by 2) or drops it."""
    model = keras.Sequential([
        keras.Input(shape=(1,), name="pixels"),
        keras.layers.Dropout(0.5, name="drop"),
        keras.layers.Dense(2, activation="softmax", name="output"),
    ])
    model.get_layer("output").set_weights([np.array([[2.0, -2.0]], np.float32), np.zeros(2, np.float32)])
    return model


def test_each_pass_draws_a_mask_and_the_mutual_information_follows():
    """Every pass gives p_keep = softmax(4, -4) or p_drop = (1/2, 1/2), so the mean is
    q p_drop + (1 - q) p_keep with q a whole number of passes out of T, and the mutual
    information is H[mean] - (q H[p_drop] + (1 - q) H[p_keep]) exactly."""
    model, T = one_unit_dropout(), 40
    X = np.ones((6, 1), np.float32)
    result = mc_dropout(model, X, T=T, seed=0)
    assert result["has_dropout"] and result["passes"] == T and result["dropout_layers"] == ["drop"]
    z = np.array([4.0, -4.0])
    p_keep, p_drop = np.exp(z) / np.exp(z).sum(), np.array([0.5, 0.5])
    q = (result["probabilities"][:, 0] - p_keep[0]) / (p_drop[0] - p_keep[0])
    np.testing.assert_allclose(q * T, np.round(q * T), atol=1e-6)  # a whole number of dropped passes
    assert ((q > 0.1) & (q < 0.9)).all()  # rate 0.5: neither never nor always dropped
    assert len(set(np.round(q * T).tolist())) > 1  # each input its own masks
    mixed = entropy(result["probabilities"]) - (q * entropy(p_drop) + (1 - q) * entropy(p_keep))
    np.testing.assert_allclose(result["mutual_information"], mixed, rtol=1e-6, atol=1e-9)
    assert (result["mutual_information"] > 0.05).all()
    np.testing.assert_allclose(result["std"][:, 0], np.sqrt(q * (1 - q)) * (p_keep[0] - p_drop[0]), rtol=1e-6)


def test_the_same_seed_gives_the_same_numbers():
    model = one_unit_dropout()
    state = keras.ops.convert_to_numpy(model.get_layer("drop").seed_generator.state).copy()
    X = np.linspace(0.1, 2.0, 30, dtype=np.float32)[:, np.newaxis]
    a = mc_dropout(model, X, T=10, seed=3, batch_size=64)
    b = mc_dropout(model, X, T=10, seed=3, batch_size=64)
    c = mc_dropout(model, X, T=10, seed=4, batch_size=64)
    for key in ("probabilities", "entropy", "expected_entropy", "mutual_information", "std"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["probabilities"], c["probabilities"])
    # the model's own dropout layer is never called: its random state has not moved
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("drop").seed_generator.state), state)


def batch_norm_then_dropout():
    """x -> hidden (identity) -> BatchNormalization (moving mean 0.5, variance 1) -> Dropout(0.5) -> output.

    In inference mode an input equal to the moving mean is normalised to exactly 0, so
    dropout has nothing to drop and every pass gives the same probabilities; with batch
    statistics (``training=True``) it would not be 0 in a batch of other inputs.
    """
    inputs = keras.Input(shape=(2,), name="pixels")
    h = keras.layers.Dense(2, name="hidden_1")(inputs)
    h = keras.layers.BatchNormalization(name="bn", epsilon=1e-3)(h)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    outputs = keras.layers.Dense(2, activation="softmax", name="output")(h)
    model = keras.Model(inputs, outputs)
    model.get_layer("hidden_1").set_weights([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
    model.get_layer("bn").set_weights([np.ones(2, np.float32), np.zeros(2, np.float32), np.full(2, 0.5, np.float32),
                                       np.ones(2, np.float32)])
    model.get_layer("output").set_weights([np.array([[3.0, -3.0], [1.0, 2.0]], np.float32),
                                           np.array([0.2, -0.1], np.float32)])
    return model


def test_batch_normalization_stays_in_inference_mode():
    model = batch_norm_then_dropout()
    before = [w.copy() for w in model.get_weights()]
    X = np.array([[0.5, 0.5], [2.0, -1.0], [0.5, 0.5], [0.0, 3.0], [1.5, 1.0]], np.float32)
    at_mean = np.array([True, False, True, False, False])
    result = mc_dropout(model, X, T=30, seed=0)
    plain = model.predict(X, verbose=0)
    # inputs at the moving mean: the plain prediction, and no disagreement between passes
    np.testing.assert_allclose(result["probabilities"][at_mean], plain[at_mean], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result["mutual_information"][at_mean], 0.0, atol=1e-12)
    # the others: dropout is on
    assert (result["mutual_information"][~at_mean] > 1e-3).all()
    # the moving statistics (and every other weight) are untouched
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_dropout_layers_are_found_in_nested_models_and_rate_zero_is_not_dropout():
    inner = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.GaussianDropout(0.3, name="gd")], name="block")
    inputs = keras.Input(shape=(4,))
    h = keras.layers.Dropout(0.0, name="off")(inputs)
    h = inner(h)
    outputs = keras.layers.Dense(2, activation="softmax", name="output")(keras.layers.Dropout(0.1, name="on")(h))
    model = keras.Model(inputs, outputs)
    assert dropout_layers(model) == ["block/gd", "on"]
    assert has_dropout(model)
    result = mc_dropout(model, np.random.default_rng(0).random((8, 4)).astype(np.float32), T=5, seed=0)
    assert result["dropout_layers"] == ["block/gd", "on"] and (result["mutual_information"] > 0).any()


def test_bad_options_are_refused_with_what_is_allowed():
    model = one_unit_dropout()
    X = np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match=r"T \(the number of passes\) must be a whole number from 1 to 1000, got 0"):
        mc_dropout(model, X, T=0)
    with pytest.raises(ValueError, match=r"seed must be a whole number from 0 to 2147483647, got -1"):
        mc_dropout(model, X, seed=-1)
    with pytest.raises(ValueError, match=r"batch_size must be a whole number from 1 to 65536, got 2.5"):
        mc_dropout(model, X, batch_size=2.5)
    with pytest.raises(ValueError, match=r"expects inputs of shape \(1,\), the data has rows of shape \(3,\)"):
        mc_dropout(model, np.ones((2, 3), np.float32))
