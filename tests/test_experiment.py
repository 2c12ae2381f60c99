"""The whole pipeline: config checks, seeds, user models, bad input."""

import numpy as np
import pytest

from signatures.experiment import SPLITS, ExperimentConfig, run_experiment


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"digits": (1,)}, r"at least 2 digits"),
        ({"digits": (1, 7), "anomalies": (7, 3)}, r"\[7\] are both trained and anomalies"),
        ({"digits": (1, 12)}, r"digits must be in 0..9 for mnist, got \[12\]"),
        ({"hidden": ()}, "at least one layer size"),
        ({"hidden": ("64", "x")}, r"positive integers, got 'x'"),
        ({"k_min": 6, "k_max": 3}, "K range is inverted: smallest K = 6 > largest K = 3"),
        ({"k_min": 1}, r"smallest K must be a whole number from 2 to 100 .*, got 1"),
        ({"epochs": 0}, "epochs must be a whole number from 1 to 200, got 0"),
        ({"n_per_class": 1}, r"images per class must be a whole number from 2 to 10000, or none for all images, got 1"),
        ({"dataset": "cifar"}, "dataset must be one of"),
        ({"arch": "rnn"}, "architecture must be one of"),
        ({"activation": "wiggle"}, "activation must be one of"),
    ],
)
def test_config_bad_input(changes, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**changes).validate()


def test_config_key_ignores_name_and_folder():
    a = ExperimentConfig(name="a", data_dir="/x").validate()
    b = ExperimentConfig(name="b").validate()
    c = ExperimentConfig(name="a", seed=1).validate()
    assert a.key() == b.key() != c.key()
    assert ExperimentConfig.from_dict(a.to_dict()) == a


def test_more_images_than_available():
    config = ExperimentConfig(digits=(1, 7), n_per_class=5000)
    with pytest.raises(ValueError, match=r"images per class = 5000 but digit 1 has only 1135 images, digit 7 has only "
                                         r"1028 images in the data; choose images per class <= 1028"):
        run_experiment(config)


def test_small_experiment_shape(small_experiment):
    exp = small_experiment
    assert exp.layers == ["hidden_1", "hidden_2"]
    n_train, n_test = len(exp.rows("train")), len(exp.rows("test"))
    assert (n_train, n_test) == (240, 60)
    assert len(exp.rows("anomaly")) == 60  # as many per anomaly digit as held-out per digit
    assert exp.paths.shape == (exp.n_rows, 2)
    assert exp.metrics["accuracy"] > 0.9
    assert np.array(exp.metrics["confusion"]).sum() == n_test
    for name in exp.layers:
        emb = exp.embeddings[name]
        projected = ~np.isnan(emb[:, 0])
        assert projected.sum() == 300  # umap_points, stratified over the 4 digits
        assert projected[exp.split == SPLITS["anomaly"]].any()
    assert set(exp.timings) >= {"loading", "training", "extraction", "clustering", "projection"}


def test_same_seed_same_result():
    config = dict(digits=(1, 7), anomalies=(4,), n_per_class=60, hidden=(8,), epochs=1, k_max=4, umap_points=80)
    a = run_experiment(ExperimentConfig(seed=3, **config))
    b = run_experiment(ExperimentConfig(seed=3, **config))
    np.testing.assert_array_equal(a.paths, b.paths)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.embeddings["hidden_1"], b.embeddings["hidden_1"])


def test_users_own_model_is_used_untrained(trained_mlp, tmp_path):
    from signatures.models import save_model

    path = save_model(trained_mlp, tmp_path / "mine.keras")
    exp = run_experiment(ExperimentConfig(digits=(1, 7), n_per_class=60, k_max=4, umap_points=60,
                                          model_path=str(path)))
    assert exp.metrics["history"] == {}
    assert exp.layers == ["hidden_1", "hidden_2"]
    assert exp.hidden["hidden_1"].shape[1] == 16


def test_users_model_that_does_not_fit(tmp_path):
    from signatures.models import build_mlp, save_model

    path = save_model(build_mlp(64, 2, hidden=(8,)), tmp_path / "digits8x8.keras")
    with pytest.raises(ValueError, match=r"expects inputs of shape \(64,\), the data has rows of shape \(784,\)"):
        run_experiment(ExperimentConfig(digits=(1, 7), n_per_class=20, model_path=str(path)))
    three = save_model(build_mlp(784, 3, hidden=(8,)), tmp_path / "three.keras")
    with pytest.raises(ValueError, match="has 3 outputs but 2 digits are chosen"):
        run_experiment(ExperimentConfig(digits=(1, 7), n_per_class=20, model_path=str(three)))


def test_cnn_experiment_on_digits_dataset():
    exp = run_experiment(ExperimentConfig(dataset="digits", digits=(0, 1, 2), arch="cnn", filters=(4,),
                                          hidden=(8,), n_per_class=100, epochs=2, k_max=5, umap_points=90))
    assert exp.layers == ["conv_1", "hidden_1"]
    assert exp.hidden["conv_1"].shape == (exp.n_rows, 4)  # mean over positions: one value per filter
    assert exp.images.shape[1:] == (8, 8)


def test_problems_lists_every_bad_field():
    config = ExperimentConfig(digits=(1,), anomalies=(1,), hidden=("x",), k_min=5, k_max=2, epochs=0)
    problems = config.problems()
    assert set(problems) == {"digits", "anomalies", "hidden", "k_range", "epochs"}
    assert "at least 2 digits" in problems["digits"] and "inverted" in problems["k_range"]
    assert ExperimentConfig().problems() == {}
