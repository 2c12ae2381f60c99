"""Every choice of an experiment checked before any work, each message naming the field as the user sees it."""

import re

import numpy as np
import pytest

from signatures._checks import MAX_LAYERS, MAX_UNITS, check_int, parse_hidden
from signatures.experiment import (
    FIELD_WORDS,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_K,
    MAX_N_PER_CLASS,
    MAX_SAMPLE_SIZE,
    MAX_SEED,
    MAX_UMAP_POINTS,
    ExperimentConfig,
    check_subset_rows,
)

NAN, INF = float("nan"), float("inf")

#: (changes, problem key, message pattern with the default words)
BAD = [
    # digits
    ({"digits": (1.5, 7)}, "digits", r"digits must be whole numbers from 0 to 9 for mnist, got 1\.5"),
    ({"digits": (True, 7)}, "digits", r"digits must be whole numbers from 0 to 9 for mnist, got True"),
    ({"digits": ("1", 7)}, "digits", r"digits must be whole numbers from 0 to 9 for mnist, got '1'"),
    ({"digits": "1 7"}, "digits", r"digits must be a list of whole numbers from 0 to 9 for mnist, e\.g\. \[1, 7\]; "
                                  r"got '1 7'"),
    ({"digits": None}, "digits", r"digits must be a list of whole numbers .* got None"),
    ({"digits": 7}, "digits", r"digits must be a list of whole numbers .* got 7"),
    ({"digits": (1, NAN)}, "digits", r"digits must be whole numbers from 0 to 9 for mnist, got nan"),
    ({"digits": (1, np.float64(7.0))}, "digits", r"digits must be whole numbers from 0 to 9 for mnist, got "),
    ({"digits": (1, 12)}, "digits", r"digits must be in 0\.\.9 for mnist, got \[12\]"),
    ({"digits": (-1, 7)}, "digits", r"digits must be in 0\.\.9 for mnist, got \[-1\]"),
    ({"digits": (1, 1)}, "digits", r"digits lists \[1\] more than once"),
    ({"digits": (1,)}, "digits", r"train on at least 2 digits \(classes\): digits must list at least 2, got \[1\]"),
    ({"digits": ()}, "digits", r"digits must list at least 2, got \[\]"),
    # anomalies
    ({"anomalies": (3.5,)}, "anomalies", r"anomaly digits must be whole numbers from 0 to 9 for mnist, got 3\.5"),
    ({"anomalies": (False,)}, "anomalies", r"anomaly digits must be whole numbers .* got False"),
    ({"anomalies": ("3",)}, "anomalies", r"anomaly digits must be whole numbers .* got '3'"),
    ({"anomalies": (10,)}, "anomalies", r"anomaly digits must be in 0\.\.9 for mnist, got \[10\]"),
    ({"anomalies": (7, 3)}, "anomalies", r"\[7\] are both trained and anomalies: anomaly digits must not list any "
                                         r"of the digits"),
    ({"anomalies": None}, "anomalies", r"anomaly digits must be a list .* got None"),
    # all_unseen
    ({"all_unseen": "yes"}, "all_unseen", r"keep all unseen classes must be True or False, got 'yes'"),
    ({"all_unseen": 1}, "all_unseen", r"keep all unseen classes must be True or False, got 1"),
    # images per class
    ({"n_per_class": INF}, "n_per_class", r"images per class must be a whole number from 2 to 10000, or none for "
                                          r"all images, got inf"),
    ({"n_per_class": NAN}, "n_per_class", r"images per class must be a whole number .* got nan"),
    ({"n_per_class": -INF}, "n_per_class", r"images per class must be a whole number .* got -inf"),
    ({"n_per_class": 2.5}, "n_per_class", r"images per class must be a whole number .* got 2\.5"),
    ({"n_per_class": "100"}, "n_per_class", r"images per class must be a whole number .* got '100'"),
    ({"n_per_class": True}, "n_per_class", r"images per class must be a whole number .* got True"),
    ({"n_per_class": 1}, "n_per_class", r"images per class must be a whole number from 2 to 10000.* got 1$"),
    ({"n_per_class": -5}, "n_per_class", r"images per class must be a whole number .* got -5"),
    ({"n_per_class": MAX_N_PER_CLASS + 1}, "n_per_class", r"from 2 to 10000, or none for all images, got 10001"),
    # held-out share
    ({"test_size": NAN}, "test_size", r"held-out share must be a number between 0 and 1 \(exclusive\), got nan"),
    ({"test_size": INF}, "test_size", r"held-out share must be a number between 0 and 1 .* got inf"),
    ({"test_size": 0}, "test_size", r"held-out share must be a number between 0 and 1 .* got 0"),
    ({"test_size": 1.0}, "test_size", r"held-out share must be a number between 0 and 1 .* got 1\.0"),
    ({"test_size": -0.1}, "test_size", r"held-out share must be a number between 0 and 1 .* got -0\.1"),
    ({"test_size": "0.2"}, "test_size", r"held-out share must be a number between 0 and 1 .* got '0\.2'"),
    ({"test_size": True}, "test_size", r"held-out share must be a number between 0 and 1 .* got True"),
    ({"test_size": None}, "test_size", r"held-out share must be a number between 0 and 1 .* got None"),
    # dataset, architecture, activation, reduce
    ({"dataset": "cifar"}, "dataset", r"dataset must be one of \['digits', 'fashion-mnist', 'mnist'\], got 'cifar'"),
    ({"dataset": ["mnist"]}, "dataset", r"dataset must be one of .* got \['mnist'\]"),
    ({"dataset": None}, "dataset", r"dataset must be one of .* got None"),
    ({"arch": "rnn"}, "arch", r"architecture must be one of \['mlp', 'cnn'\], got 'rnn'"),
    ({"arch": None}, "arch", r"architecture must be one of .* got None"),
    ({"activation": "wiggle"}, "activation", r"activation must be one of \[.*\], got 'wiggle'"),
    ({"activation": None}, "activation", r"activation must be one of .* got None"),
    ({"reduce": "max"}, "reduce", r"reduce must be 'mean' or 'flatten', got 'max'"),
    # hidden sizes
    ({"hidden": ()}, "hidden", r"hidden sizes must list at least one layer size, e\.g\. 64 32; got none"),
    ({"hidden": ("64", "x")}, "hidden", r"hidden sizes must be positive integers, got 'x' in 64 x"),
    ({"hidden": (0,)}, "hidden", r"hidden sizes must be positive integers, got 0$"),
    ({"hidden": (-3,)}, "hidden", r"hidden sizes must be positive integers, got -3"),
    ({"hidden": (MAX_UNITS + 1,)}, "hidden", r"hidden sizes must be at most 4096 .* got 4097"),
    ({"hidden": (100_000_000,)}, "hidden", r"hidden sizes must be at most 4096 .* got 100000000"),
    ({"hidden": (INF,)}, "hidden", r"hidden sizes must be positive integers, got inf"),
    ({"hidden": (NAN,)}, "hidden", r"hidden sizes must be positive integers, got nan"),
    ({"hidden": (1.5,)}, "hidden", r"hidden sizes must be positive integers, got 1\.5"),
    ({"hidden": (True,)}, "hidden", r"hidden sizes must be positive integers, got True"),
    ({"hidden": None}, "hidden", r"hidden sizes must be a list of layer sizes, e\.g\. 64 32; got None"),
    ({"hidden": 64}, "hidden", r"hidden sizes must be a list of layer sizes, e\.g\. 64 32; got 64"),
    ({"hidden": (8,) * (MAX_LAYERS + 1)}, "hidden", r"hidden sizes may list at most 16 layers, got 17"),
    # conv filters (named as filters, never as hidden sizes)
    ({"filters": (0,)}, "filters", r"conv filters must be positive integers, got 0"),
    ({"filters": ("x",)}, "filters", r"conv filters must be positive integers, got 'x'"),
    ({"filters": (MAX_UNITS + 1,)}, "filters", r"conv filters must be at most 4096 .* got 4097"),
    ({"filters": ()}, "filters", r"conv filters must list at least one layer size"),
    ({"arch": "cnn", "filters": (100_000,)}, "filters", r"conv filters must be at most 4096"),
    # counts with bounds
    ({"epochs": 0}, "epochs", r"epochs must be a whole number from 1 to 200, got 0"),
    ({"epochs": MAX_EPOCHS + 1}, "epochs", r"epochs must be a whole number from 1 to 200, got 201"),
    ({"epochs": 1.5}, "epochs", r"epochs must be a whole number from 1 to 200, got 1\.5"),
    ({"epochs": "5"}, "epochs", r"epochs must be a whole number from 1 to 200, got '5'"),
    ({"epochs": NAN}, "epochs", r"epochs must be a whole number from 1 to 200, got nan"),
    ({"batch_size": 0}, "batch_size", r"batch size must be a whole number from 1 to 4096, got 0"),
    ({"batch_size": MAX_BATCH_SIZE + 1}, "batch_size", r"batch size must be a whole number from 1 to 4096, got 4097"),
    ({"batch_size": True}, "batch_size", r"batch size must be a whole number from 1 to 4096, got True"),
    ({"sample_size": 2}, "sample_size", r"sample size must be a whole number from 3 to 20000, got 2"),
    ({"sample_size": MAX_SAMPLE_SIZE + 1}, "sample_size", r"sample size must be a whole number from 3 to 20000, "
                                                          r"got 20001"),
    ({"sample_size": 8}, "sample_size", r"sample size must be larger than largest K = 10 .* got 8"),
    ({"umap_points": 3}, "umap_points", r"UMAP points must be a whole number from 4 to 20000, got 3"),
    ({"umap_points": MAX_UMAP_POINTS + 1}, "umap_points", r"UMAP points must be a whole number from 4 to 20000, "
                                                          r"got 20001"),
    ({"umap_points": INF}, "umap_points", r"UMAP points must be a whole number from 4 to 20000, got inf"),
    # K range
    ({"k_min": 1}, "k_range", r"smallest K must be a whole number from 2 to 100 .* got 1$"),
    ({"k_min": NAN}, "k_range", r"smallest K must be a whole number from 2 to 100 .* got nan"),
    ({"k_min": "2"}, "k_range", r"smallest K must be a whole number .* got '2'"),
    ({"k_min": 2.0}, "k_range", r"smallest K must be a whole number .* got 2\.0"),
    ({"k_min": True}, "k_range", r"smallest K must be a whole number .* got True"),
    ({"k_max": NAN}, "k_range", r"largest K must be a whole number from 2 to 100 .* got nan"),
    ({"k_max": "x"}, "k_range", r"largest K must be a whole number .* got 'x'"),
    ({"k_max": 10.5}, "k_range", r"largest K must be a whole number .* got 10\.5"),
    ({"k_max": MAX_K + 1}, "k_range", r"largest K must be a whole number from 2 to 100 .* got 101"),
    ({"k_min": 6, "k_max": 3}, "k_range", r"K range is inverted: smallest K = 6 > largest K = 3"),
    # dropout
    ({"dropout": 0.95}, "dropout", r"dropout must be a rate from 0 \(none\) to 0\.9, got 0\.95"),
    ({"dropout": -0.1}, "dropout", r"dropout must be a rate from 0 \(none\) to 0\.9, got -0\.1"),
    ({"dropout": "half"}, "dropout", r"dropout must be a rate from 0 \(none\) to 0\.9, got 'half'"),
    ({"dropout": NAN}, "dropout", r"dropout must be a rate from 0 \(none\) to 0\.9, got nan"),
    ({"dropout": True}, "dropout", r"dropout must be a rate from 0 \(none\) to 0\.9, got True"),
    # seed
    ({"seed": -1}, "seed", r"seed must be a whole number from 0 to 2147483647, got -1"),
    ({"seed": MAX_SEED + 1}, "seed", r"seed must be a whole number from 0 to 2147483647, got 2147483648"),
    ({"seed": 1.5}, "seed", r"seed must be a whole number from 0 to 2147483647, got 1\.5"),
    ({"seed": "0"}, "seed", r"seed must be a whole number from 0 to 2147483647, got '0'"),
    ({"seed": NAN}, "seed", r"seed must be a whole number from 0 to 2147483647, got nan"),
    ({"seed": None}, "seed", r"seed must be a whole number from 0 to 2147483647, got None"),
    # files
    ({"model_path": "no/such/model.keras"}, "model_path", r"model file 'no/such/model\.keras' does not exist or is "
                                                          r"not a file; give the path of a trained \.keras model"),
    ({"model_path": 5}, "model_path", r"model file must be the path of a trained \.keras model, got 5"),
    ({"model_path": ""}, "model_path", r"model file must be the path of a trained \.keras model, got ''"),
    ({"data_dir": 5}, "data_dir", r"data folder must be a folder path \(or several joined by ':'\), got 5"),
    # rows: known from images per class, before any data is loaded
    ({"n_per_class": 5}, "k_range", r"K range goes up to largest K = 10 but only 8 training images are clustered "
                                    r"\(4 of digit 1, 4 of digit 7\); K must be below the number of clustered "
                                    r"images: choose largest K <= 7 or use more images per class"),
    ({"n_per_class": 2}, "n_per_class", r"digit 1 would have 2 images: too few to hold out a held-out share of 0\.2 "
                                        r"of them \(0 images\) and train on the rest; use images per class >= 3"),
    ({"n_per_class": 10, "test_size": 0.99}, "n_per_class", r"too few to hold out a held-out share of 0\.99 of them "
                                                            r"\(10 images\)"),
    ({"n_per_class": 3, "k_max": 3, "anomalies": (2, 3, 4, 5, 6, 8), "umap_points": 4}, "umap_points",
     r"UMAP points = 4 leaves only 2 trained-class images to fit the UMAP map on \(the sample is shared with 6 "
     r"unseen classes\); at least 4 are needed: use UMAP points >= 6"),
    ({"n_per_class": 100, "all_unseen": True, "umap_points": 5}, "umap_points",
     r"UMAP points = 5 leaves only 2 trained-class images .* 8 unseen classes\); .* use UMAP points >= 6"),
]


@pytest.mark.parametrize("changes, key, pattern", BAD)
def test_each_bad_choice_is_refused_naming_its_field(changes, key, pattern):
    problems = ExperimentConfig(**changes).problems()
    assert key in problems, problems
    assert re.search(pattern, problems[key]), problems[key]
    with pytest.raises(ValueError):
        ExperimentConfig(**changes).validate()


#: Words as the command line shows them: each message must name the option, never the field.
OPTIONS = {field: "--" + field.replace("_", "-") for field in FIELD_WORDS}
OPTIONS.update({"k_range": "the K range (--k-min .. --k-max)", "model_path": "--model"})
WORD_OF_KEY = {"k_range": ("--k-min", "--k-max", "the K range")}


@pytest.mark.parametrize("changes, key, pattern", BAD)
def test_each_message_uses_the_given_words(changes, key, pattern):
    message = ExperimentConfig(**changes).problems(words=OPTIONS)[key]
    expected = WORD_OF_KEY.get(key, (OPTIONS[key],))
    assert any(word in message for word in expected), message
    assert not re.search(r"\b(n_per_class|k_min|k_max|k_range|test_size|batch_size|sample_size|umap_points|"
                         r"all_unseen|model_path|data_dir)\b", message), message


def test_page_words_replace_the_defaults():
    config = ExperimentConfig(n_per_class=NAN, k_min=5, k_max=2, seed=-1)
    problems = config.problems(words={"n_per_class": "images per digit", "k_min": "K from", "k_max": "K to",
                                      "seed": "Seed"})
    assert problems["n_per_class"].startswith("images per digit must be a whole number")
    assert problems["k_range"] == "K range is inverted: K from = 5 > K to = 2"
    assert problems["seed"] == "Seed must be a whole number from 0 to 2147483647, got -1"


def test_every_bad_field_is_reported_at_once():
    config = ExperimentConfig(digits=(1.5, 7), n_per_class=INF, seed=-1, hidden=(5000,), filters=(0,), k_max="x",
                              epochs=0, umap_points=1)
    assert set(config.problems()) == {"digits", "n_per_class", "seed", "hidden", "filters", "k_range", "epochs",
                                      "umap_points"}


def test_good_values_are_normalised():
    config = ExperimentConfig(digits=np.array([7, 1]), anomalies=[4, 3], hidden="64, 32", filters=["8", 16.0],
                              n_per_class=100.0, test_size=np.float32(0.25), seed=np.int64(3)).validate()
    assert config.digits == (1, 7) and config.anomalies == (3, 4)
    assert config.hidden == (64, 32) and config.filters == (8, 16)
    assert config.n_per_class == 100 and type(config.n_per_class) is int
    assert config.test_size == 0.25 and type(config.seed) is int
    # bounds themselves are allowed
    ExperimentConfig(hidden=(MAX_UNITS,) * MAX_LAYERS, seed=MAX_SEED, epochs=MAX_EPOCHS, k_max=MAX_K,
                     batch_size=MAX_BATCH_SIZE, umap_points=MAX_UMAP_POINTS).validate()


def test_k_range_against_rows_is_exact():
    # 6 images per class, 0.2 held out: round(1.2) = 1 held out, 5 trained; 2 classes -> 10 rows, K <= 9
    assert ExperimentConfig(n_per_class=6, k_max=9).problems() == {}
    assert "choose largest K <= 9" in ExperimentConfig(n_per_class=6, k_max=10).problems()["k_range"]


def test_counts_check_images_per_class_and_rows_when_all_images_are_taken():
    counts = {c: 100 for c in range(10)}
    counts[1] = 10
    problems = ExperimentConfig(n_per_class=20).problems(counts=counts)
    assert problems == {"n_per_class": "images per class = 20 but digit 1 has only 10 images in the data; "
                                       "choose images per class <= 10"}
    # all images: 10 of digit 1 -> 8 trained, 100 of digit 7 -> 80 trained; 88 rows carry K up to 87
    assert ExperimentConfig(k_max=87).problems(counts=counts) == {}
    assert "only 88 training images are clustered (8 of digit 1, 80 of digit 7)" in \
        ExperimentConfig(k_max=88).problems(counts=counts)["k_range"]
    assert ExperimentConfig(digits=(1, 5)).problems(counts={1: 10, 5: 0}) == {
        "digits": "digit 5 would have 0 images: too few to hold out a held-out share of 0.2 of them (0 images) and "
                  "train on the rest; train on classes with more images"}
    fashion = ExperimentConfig(dataset="fashion-mnist", digits=(0, 1), n_per_class=20).problems(counts={0: 5, 1: 50})
    assert "class 0 (T-shirt/top) has only 5 images" in fashion["n_per_class"]


def test_subset_rows_checked_exactly_before_training():
    from signatures.data import load_dataset, prepare

    dataset = load_dataset("digits")  # scikit-learn's bundled 8x8 digits
    subset = prepare(dataset, (0, 1), n_per_class=5, anomalies=(2,), random_state=0)
    config = ExperimentConfig(dataset="digits", digits=(0, 1), k_max=10).validate()  # all images: fine
    with pytest.raises(ValueError, match=r"only 8 training images are clustered \(4 of digit 0, 4 of digit 1\); "
                                         r".*choose largest K <= 7"):
        check_subset_rows(config, subset)
    check_subset_rows(ExperimentConfig(dataset="digits", digits=(0, 1), k_max=7).validate(), subset)


def test_run_refuses_a_k_range_the_data_cannot_carry_before_training(monkeypatch):
    from signatures import experiment

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "build_and_train", no_training)
    # sklearn digits: 8 unseen classes share a 5-point UMAP sample with the 2 trained ones
    config = ExperimentConfig(dataset="digits", digits=(0, 1), all_unseen=True, umap_points=5)
    with pytest.raises(ValueError, match=r"UMAP points = 5 leaves only 2 trained-class images"):
        experiment.run_experiment(config)


def test_parse_hidden_names_its_own_field_and_bounds():
    assert parse_hidden("8, 16", what="--filters") == (8, 16)
    with pytest.raises(ValueError, match=r"^--filters must be positive integers, got 0$"):
        parse_hidden(["0"], what="--filters")
    with pytest.raises(ValueError, match=r"^conv filters must be at most 64 "):
        parse_hidden((65,), what="conv filters", max_size=64)
    with pytest.raises(ValueError, match=r"^hidden sizes must be a list of layer sizes"):
        parse_hidden(np.zeros((2, 2)))


@pytest.mark.parametrize("value", [True, NAN, INF, "3", 3.5, None, [3]])
def test_check_int_refuses_non_integers(value):
    with pytest.raises(ValueError, match=r"^count must be a whole number from 0 to 9, got "):
        check_int(value, "count", low=0, high=9)


def test_check_int_accepts_integral_floats_only_when_asked():
    assert check_int(4.0, "n", low=2, allow_float=True) == 4
    assert check_int(np.int32(4), "n") == 4
    with pytest.raises(ValueError, match=r"n must be a whole number >= 2, got 4\.0"):
        check_int(4.0, "n", low=2)
    assert check_int(7, "n", high=7) == 7
