"""Attribution maps: exact values from hand-set models, completeness, Grad-CAM's region, the
sign of cluster membership, the model-randomisation check on real MNIST, deletion curves and
the errors."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from signatures.attribution import (  # noqa: E402
    METHODS,
    attribute,
    conv_layers,
    deletion_curve,
    randomized_model,
    sanity_check,
    target_scores,
)

RNG = np.random.default_rng(0)
W_LINEAR = RNG.normal(size=(784, 3)).astype(np.float32)
B_LINEAR = np.array([0.1, -0.2, 0.3], dtype=np.float32)
X_LINEAR = RNG.random((6, 784)).astype(np.float32)


def linear_model(weights=W_LINEAR, bias=B_LINEAR):
    """``softmax(x @ weights + bias)``: the logit of class c has gradient ``weights[:, c]``."""
    model = keras.Sequential([
        keras.Input(shape=(weights.shape[0],), name="pixels"),
        keras.layers.Dense(weights.shape[1], activation="softmax", name="output"),
    ])
    model.layers[-1].set_weights([weights, bias])
    return model


# --------------------------------------------------------------------------- gradient methods


def test_saliency_of_a_linear_model_is_the_class_weight_column():
    model = linear_model()
    classes = np.array([0, 1, 2, 1, 0, 2])
    maps = attribute(model, X_LINEAR, method="saliency", classes=classes)
    assert maps.shape == (6, 28, 28) and maps.dtype == np.float32
    for i, c in enumerate(classes):
        np.testing.assert_allclose(maps[i], W_LINEAR[:, c].reshape(28, 28), rtol=1e-6, atol=1e-6)
    # by default the predicted class; the image layout of the inputs gives the same maps
    predicted = np.argmax(X_LINEAR @ W_LINEAR + B_LINEAR, axis=1)
    default = attribute(model, X_LINEAR.reshape(6, 28, 28), method="saliency")
    np.testing.assert_allclose(default, W_LINEAR[:, predicted].T.reshape(6, 28, 28), rtol=1e-6, atol=1e-6)
    magnitude = attribute(model, X_LINEAR, method="saliency", classes=1, absolute=True)
    np.testing.assert_allclose(magnitude[3], np.abs(W_LINEAR[:, 1]).reshape(28, 28), rtol=1e-6, atol=1e-6)


def test_smoothgrad_and_integrated_gradients_of_a_linear_model_are_exact():
    model = linear_model()
    smooth = attribute(model, X_LINEAR, method="smoothgrad", classes=2, n_samples=5)
    np.testing.assert_allclose(smooth, np.broadcast_to(W_LINEAR[:, 2].reshape(28, 28), (6, 28, 28)), rtol=1e-5,
                               atol=1e-5)  # the gradient is the same at every noisy copy
    ig = attribute(model, X_LINEAR, method="integrated_gradients", classes=2, steps=4)
    np.testing.assert_allclose(ig, (X_LINEAR * W_LINEAR[:, 2]).reshape(6, 28, 28), rtol=1e-5, atol=1e-6)
    grey = attribute(model, X_LINEAR, method="integrated_gradients", classes=2, steps=4, baseline=0.5)
    np.testing.assert_allclose(grey, ((X_LINEAR - 0.5) * W_LINEAR[:, 2]).reshape(6, 28, 28), rtol=1e-5, atol=1e-6)


def small_tanh_model(seed=3):
    """A 4x4-pixel MLP with smooth (tanh) hidden layers and random weights."""
    model = keras.Sequential([
        keras.Input(shape=(16,), name="pixels"),
        keras.layers.Dense(8, activation="tanh", name="hidden_1",
                           kernel_initializer=keras.initializers.GlorotNormal(seed=seed)),
        keras.layers.Dense(4, activation="tanh", name="hidden_2",
                           kernel_initializer=keras.initializers.GlorotNormal(seed=seed + 1)),
        keras.layers.Dense(3, activation="softmax", name="output",
                           kernel_initializer=keras.initializers.GlorotNormal(seed=seed + 2)),
    ])
    return model


@pytest.mark.parametrize("target", ["class", "cluster"])
def test_integrated_gradients_are_complete(target):
    """Each map sums to target(x) - target(baseline): the difference is split among the pixels."""
    model = small_tanh_model()
    X = np.random.default_rng(1).random((5, 16)).astype(np.float32) * 2.0
    if target == "class":
        options = dict(classes=np.array([0, 1, 2, 0, 1]))
    else:
        centers = np.random.default_rng(2).normal(size=(3, 4))
        options = dict(layer="hidden_2", centers=centers, clusters=np.array([0, 1, 2, 2, 1]), membership="distance")
    maps = attribute(model, X, method="integrated_gradients", target=target, steps=200, **options)
    gap = target_scores(model, X, target=target, **options) - target_scores(model, np.zeros_like(X), target=target,
                                                                            **options)
    assert maps.shape == (5, 4, 4)
    assert np.abs(gap).min() > 0.03  # a real difference to split
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), gap, rtol=2e-3, atol=2e-4)


def test_smoothgrad_is_seeded_and_independent_of_the_batch_size():
    model = small_tanh_model()
    X = np.random.default_rng(4).random((7, 16)).astype(np.float32)
    a = attribute(model, X, method="smoothgrad", n_samples=6, seed=5, batch_size=12)
    b = attribute(model, X, method="smoothgrad", n_samples=6, seed=5, batch_size=1000)
    c = attribute(model, X, method="smoothgrad", n_samples=6, seed=6, batch_size=12)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert np.abs(a - c).max() > 1e-3  # another seed, other noise
    plain = attribute(model, X, method="saliency")
    assert np.abs(a - plain).max() > 1e-3  # the noise does change the gradient of a non-linear model
    # input i's noise comes from a generator seeded by (seed, i): a prefix of X keeps its maps,
    # and an input moved to another position gets other noise
    np.testing.assert_allclose(attribute(model, X[:3], method="smoothgrad", n_samples=6, seed=5), a[:3],
                               rtol=1e-5, atol=1e-7)
    moved = attribute(model, X[3:4], method="smoothgrad", n_samples=6, seed=5)
    assert np.abs(moved[0] - a[3]).max() > 1e-3


def test_progress_is_reported_up_to_the_end():
    calls = []
    attribute(linear_model(), X_LINEAR, method="integrated_gradients", steps=3, batch_size=8,
              progress=lambda *args: calls.append(args))
    assert [c[0] for c in calls] == ["attribution"] * 3  # 2 inputs x 4 path points per batch of 8 rows
    assert calls[-1][1] == 1.0 and calls[-1][2] == "integrated_gradients: 6/6 inputs"


# --------------------------------------------------------------------------- Grad-CAM


def bright_detector(pool=False):
    """8x8 images -> conv_1: relu(x - 0.5) (one 3x3 filter, centre weight 1) [-> pool_1] -> output.

    Every position of the map feeds class 0's logit with weight 1 and class 1's with -1.
    """
    layers = [
        keras.Input(shape=(8, 8, 1), name="pixels"),
        keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="conv_1"),
    ]
    if pool:
        layers.append(keras.layers.MaxPooling2D(2, name="pool_1"))
    layers += [keras.layers.Flatten(name="flatten"), keras.layers.Dense(2, activation="softmax", name="output")]
    model = keras.Sequential(layers)
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0
    model.get_layer("conv_1").set_weights([kernel, np.array([-0.5], np.float32)])
    positions = 16 if pool else 64
    model.get_layer("output").set_weights([np.tile([[1.0, -1.0]], (positions, 1)).astype(np.float32),
                                           np.zeros(2, np.float32)])
    return model


def quadrant_images():
    """Two images bright (1.0) in one quadrant only, grey (0.2) elsewhere."""
    X = np.full((2, 8, 8, 1), 0.2, np.float32)
    X[0, :4, :4] = 1.0  # top left
    X[1, 4:, 4:] = 1.0  # bottom right
    return X


def test_gradcam_lights_the_bright_quadrant_only():
    model, X = bright_detector(), quadrant_images()
    assert conv_layers(model) == ["conv_1"]
    cam = attribute(model, X, method="gradcam", classes=0)
    # d logit_0 / d A = 1 everywhere, so the channel weight is 1 and the map is A = relu(x - 0.5)
    expected = np.maximum(X[..., 0] - 0.5, 0.0)
    np.testing.assert_allclose(cam, expected, rtol=1e-6, atol=1e-6)
    assert cam[0, :4, :4].min() == pytest.approx(0.5) and cam[0, 4:].max() == 0 and cam[0, :, 4:].max() == 0
    # Grad-CAM++: alpha = 1 / (2 + sum A) = 1 / (2 + 16 * 0.5), weight = 64 positions * alpha = 6.4
    cam_pp = attribute(model, X, method="gradcam_pp", classes=0)
    np.testing.assert_allclose(cam_pp, 6.4 * expected, rtol=1e-5, atol=1e-6)
    # class 1 is pushed down by the bright pixels: its map is empty (ReLU of a negative weight)
    assert np.abs(attribute(model, X, method="gradcam", classes=1)).max() == 0.0


def test_gradcam_at_a_pooled_layer_is_upsampled_to_the_image():
    model, X = bright_detector(pool=True), quadrant_images()
    cam = attribute(model, X, method="gradcam", classes=0, conv_layer="pool_1")
    assert cam.shape == (2, 8, 8)
    bright, dark = cam[0, :3, :3], cam[0, 5:, 5:]  # away from the quadrant's border, which bilinear blurs
    assert bright.min() > 0.4 and dark.max() == 0.0
    assert cam[1, 5:, 5:].min() > 0.4 and cam[1, :3, :3].max() == 0.0


# --------------------------------------------------------------------------- cluster membership


def two_unit_layer():
    """A 2x2 image; hidden_1 is the identity on pixels 0 and 1 (pixels 2, 3 do not reach it)."""
    model = keras.Sequential([
        keras.Input(shape=(4,), name="pixels"),
        keras.layers.Dense(2, name="hidden_1"),
        keras.layers.Dense(2, activation="softmax", name="output"),
    ])
    kernel = np.zeros((4, 2), np.float32)
    kernel[0, 0] = kernel[1, 1] = 1.0
    model.get_layer("hidden_1").set_weights([kernel, np.zeros(2, np.float32)])
    return model


CENTERS = np.array([[0.0, 0.0], [1.0, 0.0]])
X_MEMBER = np.array([[0.7, 0.2, 0.9, 0.4]], np.float32)  # row (0.7, 0.2): nearest to centre 1 = (1, 0)


def test_cluster_margin_is_positive_on_the_pixel_that_moves_towards_the_own_centre():
    model = two_unit_layer()
    options = dict(target="cluster", layer="hidden_1", centers=CENTERS)
    # margin = |r - c0|^2 - |r - c1|^2 = 2 r_0 - 1: raising pixel 0 moves r towards its centre (1, 0)
    margin = attribute(model, X_MEMBER, method="saliency", **options)
    np.testing.assert_allclose(margin[0], [[2.0, 0.0], [0.0, 0.0]], atol=1e-6)
    assert target_scores(model, X_MEMBER, **options)[0] == pytest.approx(0.4, abs=1e-6)
    # the same with the cluster given, and integrated gradients split margin(x) - margin(0) = 0.4 - (-1)
    given = attribute(model, X_MEMBER, method="saliency", clusters=[1], **options)
    np.testing.assert_array_equal(given, margin)
    ig = attribute(model, X_MEMBER, method="integrated_gradients", steps=4, **options)
    np.testing.assert_allclose(ig[0], [[1.4, 0.0], [0.0, 0.0]], atol=1e-6)
    # -|r - c1|^2 has gradient -2 (r - c1) = (0.6, -0.4): raising pixel 1 moves r away from (1, 0)
    distance = attribute(model, X_MEMBER, method="saliency", membership="distance", **options)
    np.testing.assert_allclose(distance[0], [[0.6, -0.4], [0.0, 0.0]], atol=1e-6)
    # explaining membership of the other cluster flips the sign: pixel 0 pulls the input out of it
    other = attribute(model, X_MEMBER, method="saliency", clusters=[0], **options)
    np.testing.assert_allclose(other[0], [[-2.0, 0.0], [0.0, 0.0]], atol=1e-6)


def mean_conv_model():
    """4x4 images -> conv_1: one 1x1 filter of weight 1 (the identity) -> flatten -> output."""
    model = keras.Sequential([
        keras.Input(shape=(4, 4, 1), name="pixels"),
        keras.layers.Conv2D(1, 1, name="conv_1"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(2, activation="softmax", name="output"),
    ])
    model.get_layer("conv_1").set_weights([np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)])
    return model


def test_cluster_target_at_a_conv_layer_uses_the_experiments_reduction():
    model = mean_conv_model()
    X = np.full((1, 4, 4, 1), 0.7, np.float32)
    # reduce="mean": the row is the map's mean m (one unit); margin = m^2 - (m - 1)^2 = 2m - 1
    maps = attribute(model, X, method="saliency", target="cluster", layer="conv_1", centers=[[0.0], [1.0]])
    np.testing.assert_allclose(maps[0], np.full((4, 4), 2.0 / 16), atol=1e-6)
    # reduce="flatten": the row is every position; centre 1 is the image's own values
    centers = np.stack([np.zeros(16), np.full(16, 0.75)])
    flat = attribute(model, X, method="saliency", target="cluster", layer="conv_1", centers=centers,
                     reduce="flatten")
    np.testing.assert_allclose(flat[0], np.full((4, 4), 1.5), atol=1e-5)  # 2 (r - 0) - 2 (r - 0.75)
    with pytest.raises(ValueError, match=r"centers must have shape \(k, 16\).*'conv_1'.*\(2, 1\)"):
        attribute(model, X, method="saliency", target="cluster", layer="conv_1", centers=[[0.0], [1.0]],
                  reduce="flatten")


# --------------------------------------------------------------------------- sanity check


def test_randomized_model_redraws_every_kernel_and_leaves_the_model_alone(trained_mlp):
    before = [w.copy() for w in trained_mlp.get_weights()]
    random = randomized_model(trained_mlp, seed=1)
    again = randomized_model(trained_mlp, seed=1)
    other = randomized_model(trained_mlp, seed=2)
    assert [layer.name for layer in random.layers] == [layer.name for layer in trained_mlp.layers]
    for w, r, a, o in zip(trained_mlp.get_weights(), random.get_weights(), again.get_weights(), other.get_weights()):
        assert w.shape == r.shape
        np.testing.assert_array_equal(r, a)  # the same seed, the same weights
        if w.ndim == 2:  # kernels: drawn again (biases start again from zero)
            assert not np.allclose(r, w) and not np.allclose(r, o)
        else:
            np.testing.assert_array_equal(r, 0.0)
    for w, b in zip(trained_mlp.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_sanity_check_tells_a_trained_model_from_a_random_one(trained_mlp, subset_1v7):
    """Maps of a randomised MLP must not rank pixels like the trained one's.

    If randomisation did nothing every correlation would be 1. Two unrelated maps of 784
    pixels have a rank correlation of 0 +- 1/sqrt(783) = 0.036, so a mean below 0.2 is
    more than 5 standard errors of one input's correlation from any real agreement. Measured:
    0.002 for saliency on this model.
    """
    X = subset_1v7.X_test[:40]
    result = sanity_check(trained_mlp, X, method="saliency", seed=0)
    assert result["rank_correlation"].shape == (40,) and result["n_constant"] == 0
    assert abs(result["mean"]) < 0.2
    assert np.abs(result["rank_correlation"]).max() < 0.5
    np.testing.assert_array_equal(result["maps"], attribute(trained_mlp, X, method="saliency"))
    # gradient x input (integrated gradients from black) is dominated by the input's ink: its
    # magnitudes rank pixels alike whatever the weights (Adebayo et al.'s warning), signs do not
    ig = sanity_check(trained_mlp, X, method="integrated_gradients", steps=8, seed=0)
    assert ig["mean_abs"] > 0.9 and abs(ig["mean"]) < 0.2


def test_cluster_targets_on_a_trained_model_follow_the_experiments_clusters(trained_mlp, subset_1v7):
    """Centres fitted by LayerKMeans on extracted activations live in the rows the target uses:
    the default cluster of each input is the one k-means assigns, and every input lies inside
    its own cluster (margin >= 0)."""
    from signatures.activations import extract
    from signatures.clustering import LayerKMeans

    X = subset_1v7.X_test[:40]
    hidden, _ = extract(trained_mlp, X)
    km = LayerKMeans(k_range=range(3, 4)).fit(hidden["hidden_1"])
    options = dict(target="cluster", layer="hidden_1", centers=km.centers_)
    margin = target_scores(trained_mlp, X, **options)
    np.testing.assert_array_equal(margin >= -1e-4, True)
    by_default = attribute(trained_mlp, X, method="saliency", **options)
    given = attribute(trained_mlp, X, method="saliency", clusters=km.labels_, **options)
    np.testing.assert_array_equal(by_default, given)
    result = sanity_check(trained_mlp, X, method="saliency", **options)
    assert abs(result["mean"]) < 0.2


# --------------------------------------------------------------------------- deletion


def test_deleting_the_most_attributed_pixels_hurts_more_than_random_deletion():
    rng = np.random.default_rng(0)
    w = rng.normal(size=784).astype(np.float32) * 0.02  # logits of a few units: a gradual fall
    model = linear_model(np.stack([w, -w], axis=1), np.zeros(2, np.float32))
    X = rng.random((40, 784)).astype(np.float32)
    y = np.argmax(np.stack([X @ w, -(X @ w)], axis=1), axis=1)
    maps = attribute(model, X, method="integrated_gradients", steps=2)  # exactly x_i w_ic: each pixel's share
    fractions = (0.0, 0.05, 0.1, 0.2, 0.4)
    ranked = deletion_curve(model, X, y, maps, fractions=fractions)
    random = deletion_curve(model, X, y, maps, fractions=fractions, order="random", seed=3)
    np.testing.assert_array_equal(ranked["n_removed"], [0, 39, 78, 157, 314])
    assert ranked["accuracy"][0] == random["accuracy"][0] == 1.0  # y is the model's own prediction
    assert ranked["mean_probability"][0] == pytest.approx(random["mean_probability"][0], abs=1e-7)
    # removing the largest shares x_i w_ic first lowers the margin the most: measured 0.60 -> 0.15 at 5 %
    # against 0.60 -> 0.60 at random
    assert (ranked["mean_probability"][1:] < random["mean_probability"][1:] - 0.3).all()
    assert (np.diff(ranked["mean_probability"]) < 0).all()
    assert ranked["accuracy"][-1] < random["accuracy"][-1] and ranked["auc"] < random["auc"]
    again = deletion_curve(model, X, y, maps, fractions=fractions, order="random", seed=3)
    np.testing.assert_array_equal(again["mean_probability"], random["mean_probability"])


# --------------------------------------------------------------------------- errors


def test_errors_name_the_value_and_what_is_allowed():
    mlp, cnn = linear_model(), bright_detector(pool=True)
    X, images = X_LINEAR[:2], quadrant_images()
    with pytest.raises(ValueError, match=r"method must be one of \['saliency', .*'gradcam_pp'\], got 'lime'"):
        attribute(mlp, X, method="lime")
    with pytest.raises(ValueError, match=r"target must be one of \['class', 'cluster'\], got 'neuron'"):
        attribute(mlp, X, method="saliency", target="neuron")
    with pytest.raises(ValueError, match=r"Grad-CAM needs a conv layer.*model 'sequential\w*' has none.*'saliency'"):
        attribute(mlp, X, method="gradcam")
    with pytest.raises(ValueError, match=r"conv_layer 'flatten' has no 4-D conv output.*\['conv_1', 'pool_1'\]"):
        attribute(cnn, images, method="gradcam_pp", conv_layer="flatten")
    with pytest.raises(ValueError, match=r"conv_layer 'conv_9' is not in the model.*\['conv_1', 'pool_1'\]"):
        attribute(cnn, images, method="gradcam", conv_layer="conv_9")
    with pytest.raises(ValueError, match=r"clustered layer 'conv_1' does not depend on conv_layer 'pool_1'.*"
                                         r"one of \['conv_1'\]"):
        attribute(cnn, images, method="gradcam", target="cluster", layer="conv_1", centers=[[0.0], [1.0]],
                  conv_layer="pool_1")
    model = two_unit_layer()
    with pytest.raises(ValueError, match=r"layer 'hidden_7' is not in model .*hidden layers are \['hidden_1'\]"):
        attribute(model, X_MEMBER, method="saliency", target="cluster", layer="hidden_7", centers=CENTERS)
    with pytest.raises(ValueError, match=r"target='cluster' needs layer=.*\['hidden_1'\]"):
        attribute(model, X_MEMBER, method="saliency", target="cluster", centers=CENTERS)
    with pytest.raises(ValueError, match=r"layer 'output' is the output layer"):
        attribute(model, X_MEMBER, method="saliency", target="cluster", layer="output", centers=CENTERS)
    with pytest.raises(ValueError, match=r"centers must have shape \(k, 2\).*'hidden_1'.*got shape \(2, 3\)"):
        attribute(model, X_MEMBER, method="saliency", target="cluster", layer="hidden_1", centers=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"clusters must be in 0\.\.1 .*got 2 at input 0.*has 2 centres"):
        attribute(model, X_MEMBER, method="saliency", target="cluster", layer="hidden_1", centers=CENTERS,
                  clusters=[2])
    with pytest.raises(ValueError, match=r"membership='margin' needs at least 2 centres.*'distance'"):
        attribute(model, X_MEMBER, method="saliency", target="cluster", layer="hidden_1", centers=CENTERS[:1])
    with pytest.raises(ValueError, match=r"membership must be one of \['margin', 'distance'\], got 'soft'"):
        attribute(model, X_MEMBER, method="saliency", target="cluster", layer="hidden_1", centers=CENTERS,
                  membership="soft")
    with pytest.raises(ValueError, match=r"classes must be in 0\.\.2 .*got 3 at input 1.*3 output units"):
        attribute(mlp, X, method="saliency", classes=[0, 3])
    with pytest.raises(ValueError, match=r"layer, centers apply to target='cluster' only"):
        attribute(mlp, X, method="saliency", layer="output", centers=CENTERS)
    with pytest.raises(ValueError, match=r"X holds integers \(dtype uint8\).*scaled"):
        attribute(mlp, (X * 255).astype(np.uint8), method="saliency")
    with pytest.raises(ValueError, match=r"n_samples must be a whole number from 1 to 1000, got 0"):
        attribute(mlp, X, method="smoothgrad", n_samples=0)
    with pytest.raises(ValueError, match=r"baseline must be a number, one input of shape \(784,\).*got an array "
                                         r"of shape \(5,\)"):
        attribute(mlp, X, method="integrated_gradients", baseline=np.zeros(5))
    with pytest.raises(ValueError, match=r"order must be one of \['attribution', 'random'\], got 'reverse'"):
        deletion_curve(mlp, X, [0, 1], np.zeros((2, 28, 28)), order="reverse")
    with pytest.raises(ValueError, match=r"y must be in 0\.\.2 .*got 5 at input 1"):
        deletion_curve(mlp, X, [0, 5], np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match=r"maps must have shape \(2, height, width\).*\(2, 784\)"):
        deletion_curve(mlp, X, [0, 1], np.zeros((2, 784)))
    with pytest.raises(ValueError, match=r"fractions must be shares of the pixels in \[0, 1\], got \[0.0, 1.5\]"):
        deletion_curve(mlp, X, [0, 1], np.zeros((2, 28, 28)), fractions=(0.0, 1.5))
    assert set(METHODS) == {"saliency", "smoothgrad", "integrated_gradients", "gradcam", "gradcam_pp"}
