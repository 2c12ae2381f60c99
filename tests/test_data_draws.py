"""Fair draws: the images drawn for a class depend only on the seed and the class, never on which
other classes or anomalies are drawn with it (same config, same images, CLI or canonical build)."""

import numpy as np
import pytest

from signatures.data import prepare



def rows_of(sub, split, cls):
    idx, y = {"train": (sub.idx_train, sub.y_train), "test": (sub.idx_test, sub.y_test),
              "anomaly": (sub.idx_anomaly, sub.y_anomaly)}[split]
    return np.sort(idx[y == cls])


def test_anomaly_images_do_not_depend_on_the_other_anomalies(mnist):
    few = prepare(mnist, (1, 7), n_per_class=100, anomalies=(3, 4), random_state=0)
    every = prepare(mnist, (1, 7), n_per_class=100, anomalies=(0, 2, 3, 4, 5, 6, 8, 9), random_state=0)
    for cls in (3, 4):
        assert len(rows_of(few, "anomaly", cls)) == 20
        assert np.array_equal(rows_of(few, "anomaly", cls), rows_of(every, "anomaly", cls))
    for split in ("train", "test"):
        assert np.array_equal(few.idx_train if split == "train" else few.idx_test,
                              every.idx_train if split == "train" else every.idx_test)
    # the rows of 3 and 4 are the same, and the pixels too
    m3 = few.y_anomaly == 3
    e3 = every.y_anomaly == 3
    assert np.array_equal(few.X_anomaly[m3], every.X_anomaly[e3])


@pytest.mark.parametrize("n_per_class", [100, None])
def test_trained_images_of_a_class_do_not_depend_on_the_other_classes(mnist, n_per_class):
    two = prepare(mnist, (1, 7), n_per_class=n_per_class, random_state=5)
    three = prepare(mnist, (1, 7, 9), n_per_class=n_per_class, random_state=5)
    for cls in (1, 7):
        for split in ("train", "test"):
            assert np.array_equal(rows_of(two, split, cls), rows_of(three, split, cls)), (cls, split)
    other_seed = prepare(mnist, (1, 7), n_per_class=n_per_class, random_state=6)
    assert not np.array_equal(rows_of(two, "test", 1), rows_of(other_seed, "test", 1))


def test_classes_get_different_draws_under_one_seed(mnist):
    """Class generators are distinct streams: the k-th draw of 1s and of 7s are not at the same ranks."""
    sub = prepare(mnist, (1, 7), n_per_class=50, random_state=0)
    ranks = {cls: np.searchsorted(np.flatnonzero(mnist.labels == cls), rows_of(sub, "train", cls))
             for cls in (1, 7)}
    assert not np.array_equal(ranks[1], ranks[7])


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True])
def test_prepare_rejects_a_bad_seed(mnist, seed):
    with pytest.raises(ValueError, match=r"random_state \(the seed\) must be an integer >= 0, got " + repr(seed)
                       .replace("(", r"\(").replace(".", r"\.")):
        prepare(mnist, (1, 7), n_per_class=10, random_state=seed)


def test_cli_and_canonical_configs_draw_the_same_images(mnist):
    """The CLI keeps the chosen anomalies, the canonical build every unseen digit (all_unseen):
    the 1s, 7s, 3s and 4s are the same images either way."""
    from signatures.experiment import ExperimentConfig, prepare_subset

    common = dict(digits=(1, 7), anomalies=(3, 4), n_per_class=200, seed=0)
    cli = prepare_subset(ExperimentConfig(**common).validate(), mnist)
    canonical = prepare_subset(ExperimentConfig(**common, all_unseen=True).validate(), mnist)
    assert set(canonical.anomalies) == {0, 2, 3, 4, 5, 6, 8, 9} and cli.anomalies == (3, 4)
    assert np.array_equal(cli.idx_train, canonical.idx_train)
    assert np.array_equal(cli.idx_test, canonical.idx_test)
    for cls in (3, 4):
        assert np.array_equal(rows_of(cli, "anomaly", cls), rows_of(canonical, "anomaly", cls))
