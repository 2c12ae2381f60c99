"""The field's detectors and the signature score, each on data with a known answer."""

import numpy as np
import pytest

from signatures.detectors import (
    KNN,
    DkNN,
    Mahalanobis,
    SignatureScore,
    conformal_pvalues,
    detection_metrics,
    energy,
    fpr_at_tpr,
    max_logit,
    msp,
)


def test_output_scores_on_set_logits():
    logits = np.array([[2.0, 0.0], [0.0, 0.0], [10.0, -10.0]])
    np.testing.assert_allclose(max_logit(logits), [-2.0, 0.0, -10.0])
    np.testing.assert_allclose(energy(logits), [-np.log(np.exp(2) + 1), -np.log(2), -np.log(np.exp(10) + np.exp(-10))])
    np.testing.assert_allclose(energy(logits, temperature=2.0), -2.0 * np.log(np.exp(logits / 2).sum(axis=1)))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(msp(probs), 1 - probs.max(axis=1))
    with pytest.raises(ValueError, match="temperature"):
        energy(logits, temperature=0)
    with pytest.raises(ValueError, match="NaN"):
        max_logit([[np.nan, 1.0]])


def test_mahalanobis_equals_the_closed_form():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.8], [0.8, 1.0]])
    means = np.array([[0.0, 0.0], [6.0, 1.0]])
    X = np.concatenate([rng.multivariate_normal(m, cov, size=4000) for m in means])
    y = np.repeat([0, 1], 4000)
    query = np.array([[1.0, 1.0], [6.0, -1.0], [3.0, 0.5]])
    # Without shrinkage: exactly the pooled sample covariance's precision.
    det = Mahalanobis(shrinkage=0.0).fit(X, y)
    centered = X - det.means_[y]
    precision = np.linalg.inv(centered.T @ centered / len(X))
    expected = np.stack([np.einsum("ij,jk,ik->i", query - m, precision, query - m) for m in det.means_], axis=1)
    np.testing.assert_allclose(det.distances(query), expected, rtol=1e-10)
    np.testing.assert_allclose(det.score(query), expected.min(axis=1), rtol=1e-10)
    # With the true parameters' closed form, within sampling error.
    truth = np.stack([np.einsum("ij,jk,ik->i", query - m, np.linalg.inv(cov), query - m) for m in means], axis=1)
    np.testing.assert_allclose(det.distances(query), truth, rtol=0.05, atol=0.05)
    # Ledoit-Wolf shrinkage of a well-conditioned 2-D covariance changes little.
    np.testing.assert_allclose(Mahalanobis().fit(X, y).score(query), truth.min(axis=1), rtol=0.1)


def test_knn_on_points_on_a_line():
    train = np.arange(10, dtype=float)[:, None] * np.array([[1.0, 0.0]])
    query = np.array([[12.5, 0.0], [4.2, 0.0]])
    np.testing.assert_allclose(KNN(k=1, normalize=False).fit(train).score(query), [3.5, 0.2])
    np.testing.assert_allclose(KNN(k=3, normalize=False).fit(train).score(query), [5.5, 1.2])
    # Normalised: every point of the ray is the same unit vector; one off the ray is far.
    knn = KNN(k=2).fit(train[1:])
    np.testing.assert_allclose(knn.score([[100.0, 0.0], [0.0, 3.0]]), [0.0, np.sqrt(2)], atol=1e-12)
    with pytest.raises(ValueError, match="larger than the 9 training rows"):
        KNN(k=20).fit(train[1:])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        KNN(k=0).fit(train)


def test_dknn_counts_disagreeing_neighbours_and_calibrates():
    # Two classes on a line per layer; the same layout in two layers.
    train = {"a": np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]]),
             "b": np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])}
    y = np.array([0, 0, 0, 1, 1, 1])
    cal = {"a": np.array([[0.05], [5.05], [0.15], [5.15]]), "b": np.array([[0.05], [5.05], [0.15], [5.15]])}
    det = DkNN(k=3).fit(train, y, cal, np.array([0, 1, 0, 1]))
    np.testing.assert_array_equal(det.calibration_, [0, 0, 0, 0])
    # An input among the 0s: all 6 neighbours agree with label 0 -> credibility 1, score 0.
    assert det.score({"a": np.array([[0.1]]), "b": np.array([[0.1]])})[0] == 0.0
    # An input whose layers disagree: no label has zero nonconformity -> credibility 0, score 1.
    assert det.score({"a": np.array([[0.1]]), "b": np.array([[5.1]])})[0] == 1.0


def test_conformal_pvalues_exact():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(conformal_pvalues(ref, [0.0, 2.5, 4.0, 9.0]), [5 / 5, 3 / 5, 2 / 5, 1 / 5])
    # Leave-one-out: each reference score against the other three.
    np.testing.assert_allclose(conformal_pvalues(ref, ref, leave_one_out=True), [4 / 4, 3 / 4, 2 / 4, 1 / 4])


def _blobs(rng, n, centers, scale):
    labels = rng.integers(0, len(centers), size=n)
    return centers[labels] + rng.normal(scale=scale, size=(n, centers.shape[1])), labels


@pytest.mark.parametrize("weighting", ["equal", "leave-one-class-out"])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_signature_score_is_calibrated_on_in_distribution_data(alpha, weighting):
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=4.0, size=(3, 5))
    layers = {}
    for name, (n_train, n_cal, n_test) in {"h1": (3000, 2000, 6000)}.items():
        X, labels = _blobs(rng, n_train + n_cal + n_test, centers, 1.0)
        layers[name] = (X, labels)
    X, labels = layers["h1"]
    W = rng.normal(size=(5, 4))
    second = np.tanh(X @ W)  # a second layer computed from the first
    split = [slice(0, 3000), slice(3000, 5000), slice(5000, None)]
    fit = {"h1": X[split[0]], "h2": second[split[0]]}
    cal = {"h1": X[split[1]], "h2": second[split[1]]}
    test = {"h1": X[split[2]], "h2": second[split[2]]}
    from sklearn.cluster import KMeans

    clusters = {n: KMeans(3, n_init=4, random_state=0).fit(v).labels_ for n, v in fit.items()}
    score = SignatureScore(weighting=weighting).fit(fit, cal, clusters, y_train=labels[split[0]],
                                                    y_cal=labels[split[1]])
    assert score.weighting_ == weighting and score.weights_.sum() == pytest.approx(1.0)
    share = float((score.pvalues(test) < alpha).mean())
    assert abs(share - alpha) <= 0.015, (alpha, share)
    held = score.pvalues(cal, calibration=True)
    assert abs(float((held < alpha).mean()) - alpha) <= 0.015
    assert score.statistics_ == ["h1:density", "h1:neighbours", "h2:density", "h2:neighbours"]
    # Points far from every blob get the smallest p-value there is.
    far = {"h1": centers[:1] + 40.0, "h2": np.tanh((centers[:1] + 40.0) @ W)}
    assert score.pvalues(far)[0] <= 2 / (1 + 2000)


def test_signature_score_sees_an_unseen_blob():
    rng = np.random.default_rng(2)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 6.0]])
    X, labels = _blobs(rng, 3000, centers[:2], 1.0)
    unseen = centers[2] + rng.normal(size=(300, 3))
    fit, cal, test = X[:1500], X[1500:2500], X[2500:]
    score = SignatureScore().fit({"l": fit}, {"l": cal}, {"l": labels[:1500]})
    s = np.concatenate([score.score({"l": test}), score.score({"l": unseen})])
    metrics = detection_metrics(s, np.r_[np.zeros(len(test)), np.ones(len(unseen))])
    assert metrics["auroc"] > 0.99 and metrics["fpr95"] < 0.05 and metrics["aupr"] > 0.95


def test_metrics_exact():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    positive = np.array([0, 0, 1, 0, 1, 1], dtype=bool)
    m = detection_metrics(scores, positive)
    assert m["auroc"] == pytest.approx(8 / 9)
    # 95% of positives needs all three: threshold 0.3 lets 0.3 and 0.4 (one negative of three) through.
    assert m["fpr95"] == pytest.approx(1 / 3) and fpr_at_tpr(scores, positive, tpr=0.6) == 0.0
    assert m["aupr"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert detection_metrics(scores, np.ones(6)) == {"auroc": None, "fpr95": None, "aupr": None}
    with pytest.raises(ValueError, match="differ in length"):
        detection_metrics(scores, positive[:3])


def test_signature_score_mixture_density_is_exact_for_one_gaussian_component():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 2)) * [2.0, 0.5]
    score = SignatureScore(n_components=1, k=0).fit({"l": X}, {"l": X[:50]})
    (mean, precision, logdet, weight), = score.layers_["l"][0]
    from sklearn.covariance import ledoit_wolf

    cov = ledoit_wolf(X - X.mean(0), assume_centered=True)[0]
    q = np.array([[1.0, 1.0], [0.0, 0.0]])
    d = q - X.mean(0)
    expected = 0.5 * (np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d) + np.linalg.slogdet(cov)[1])
    np.testing.assert_allclose(score._nll(score.layers_["l"][0], q), expected, rtol=1e-6)
    assert weight == 0.0  # log of the one component's share


@pytest.mark.parametrize("bad", [{"n_components": 0}, {"k": -1}, {"min_cluster": 1.5}, {"max_features": None},
                                 {"weighting": "fisher"}])
def test_signature_score_options_are_named(bad):
    X = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ValueError, match=next(iter(bad))):
        SignatureScore(**bad).fit({"l": X}, {"l": X})


def _signal_and_noise(rng, n, n_classes=3):
    """Layer "signal": one tight blob per class, far apart; layer "noise": the same law for every class."""
    y = np.arange(n) % n_classes
    centers = 10.0 * np.eye(n_classes, 4)
    return {"signal": centers[y] + rng.normal(size=(n, 4)), "noise": rng.normal(size=(n, 4))}, y


def test_leave_one_class_out_weights_a_layer_by_how_it_tells_known_classes_apart():
    rng = np.random.default_rng(5)
    train, y_train = _signal_and_noise(rng, 1500)
    cal, y_cal = _signal_and_noise(rng, 900)
    score = SignatureScore(n_components=3).fit(train, cal, y_train=y_train, y_cal=y_cal)
    assert score.weighting_ == "leave-one-class-out"
    assert score.statistics_ == ["signal:density", "signal:neighbours", "noise:density", "noise:neighbours"]
    # A left-out class's blob lies far from the other two: told apart perfectly in "signal";
    # in "noise" every class looks the same, so chance.
    assert score.class_aurocs_.shape == (3, 4)
    np.testing.assert_allclose(score.class_aurocs_[:, :2], 1.0)
    np.testing.assert_allclose(score.class_aurocs_[:, 2:], 0.5, atol=0.07)
    # weights: max(AUROC - 0.5, 0), normalised: about 1/2 each for the signal, about 0 for the noise.
    above = np.maximum(score.class_aurocs_.mean(axis=0) - 0.5, 0)
    np.testing.assert_allclose(score.weights_, above / above.sum())
    assert score.weights_[:2].min() > 0.42 and score.weights_[2:].max() < 0.08
    # The combination is the weighted Fisher statistic, calibrated against the held-out rows.
    test, _ = _signal_and_noise(rng, 300)
    p = score.layer_pvalues(test)
    np.testing.assert_allclose(score.pvalues(test),
                               conformal_pvalues(score.combined_reference_, -2 * np.log(p) @ score.weights_))
    # An input in a class's blob of "signal" but far out in "noise" is barely flagged; far out in
    # "signal" it is flagged as strongly as the held-out rows allow.
    inside = {"signal": 10.0 * np.eye(3, 4)[:1], "noise": np.full((1, 4), 6.0)}
    outside = {"signal": np.full((1, 4), 30.0), "noise": np.zeros((1, 4))}
    assert score.pvalues(inside)[0] > 0.05
    assert score.pvalues(outside)[0] <= 2 / (1 + 900)


def test_equal_weights_without_three_known_classes_or_without_classes():
    rng = np.random.default_rng(6)
    train, y_train = _signal_and_noise(rng, 600, n_classes=2)
    cal, y_cal = _signal_and_noise(rng, 300, n_classes=2)
    for kwargs in ({"y_train": y_train, "y_cal": y_cal}, {}):
        score = SignatureScore(n_components=2).fit(train, cal, **kwargs)
        assert score.weighting_ == "equal" and score.class_aurocs_ is None
        np.testing.assert_allclose(score.weights_, 0.25)
    with pytest.raises(ValueError, match="y_train.*y_cal.*or neither"):
        SignatureScore().fit(train, cal, y_train=y_train)
    with pytest.raises(ValueError, match="one class per row: 5 and 300 classes for 600 training"):
        SignatureScore().fit(train, cal, y_train=y_train[:5], y_cal=y_cal)
