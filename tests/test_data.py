"""Data loading and subsets, on the real MNIST test set (and Fashion-MNIST / digits where present)."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from signatures.data import (
    DataUnavailableError,
    load_dataset,
    one_hot,
    prepare,
    read_idx,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
README_COUNTS = {0: 980, 1: 1135, 2: 1032, 3: 1010, 4: 982, 5: 892, 6: 958, 7: 1028, 8: 974, 9: 1009}


def test_mnist_folder_with_only_t10k_pair(mnist):
    assert mnist.images.shape == (10000, 28, 28)
    assert mnist.images.dtype == np.uint8
    assert mnist.counts() == README_COUNTS
    assert "t10k" in mnist.source and "train" not in mnist.source


def test_data_dir_may_be_the_idx_folder_itself():
    root = Path(os.environ["SIGNATURES_DATA_DIR"])
    direct = load_dataset("mnist", data_dir=root / "mnist")
    via_parent = load_dataset("mnist", data_dir=root)
    assert np.array_equal(direct.labels, via_parent.labels)


def test_read_idx_rejects_a_corrupted_file(tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + b"\x00" * 20))
    with pytest.raises(ValueError, match="header announces"):
        read_idx(bad)


def test_folder_without_idx_files_names_the_ways_out(tmp_path):
    with pytest.raises(DataUnavailableError, match="SIGNATURES_DATA_DIR") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert "--dataset digits" in str(info.value)


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")


def test_no_source_at_all_names_three_ways_out(monkeypatch, tmp_path):
    """Offline, no cache, no folder: the keras download fails and the error says what to do."""
    import keras

    def offline():
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.delenv("SIGNATURES_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataUnavailableError) as info:
        load_dataset("mnist")
    text = str(info.value)
    assert "internet" in text and "SIGNATURES_DATA_DIR" in text and "--dataset digits" in text


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("cifar")


def test_digits_dataset_is_bundled():
    d = load_dataset("digits")
    assert d.images.shape == (1797, 8, 8)
    assert d.max_value == 16
    sub = prepare(d, (0, 1), n_per_class=150, random_state=0)
    assert sub.X_train.max() <= 1.0 and sub.X_train.min() >= 0.0
    assert sub.X_train.shape[1] == 64


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_folder():
    d = load_dataset("fashion-mnist", data_dir=FASHION_DIR)
    assert d.images.shape == (70000, 28, 28)
    assert d.counts() == {c: 7000 for c in range(10)}
    assert d.class_names[9] == "Ankle boot"


def test_one_hot_follows_sorted_classes():
    Y = one_hot([7, 1, 3, 1], (7, 1, 3))
    assert Y.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match=r"labels \[5\]"):
        one_hot([5], (1, 7))


def test_prepare_balanced_stratified_scaled(mnist):
    sub = prepare(mnist, (7, 1), n_per_class=100, anomalies=(3, 4), test_size=0.2, random_state=0)
    assert sub.classes == (1, 7)
    assert np.bincount(sub.y_train, minlength=8)[[1, 7]].tolist() == [80, 80]
    assert np.bincount(sub.y_test, minlength=8)[[1, 7]].tolist() == [20, 20]
    assert sub.X_train.shape == (160, 784) and sub.X_train.dtype == np.float32
    assert 0.0 <= sub.X_train.min() and sub.X_train.max() <= 1.0 and sub.X_train.max() > 0.99
    assert set(sub.y_anomaly.tolist()) == {3, 4}
    assert not set(sub.idx_train) & set(sub.idx_test)
    assert not set(sub.idx_anomaly) & (set(sub.idx_train) | set(sub.idx_test))
    assert np.array_equal(sub.Y_train.argmax(1), (sub.y_train == 7).astype(int))
    # pixels are the dataset's own, scaled by 255
    assert np.allclose(sub.X_train[0] * 255, mnist.images[sub.idx_train[0]].reshape(-1))


def test_prepare_conv_layout_and_seed(mnist):
    a = prepare(mnist, (1, 7), n_per_class=50, flatten=False, random_state=3)
    b = prepare(mnist, (1, 7), n_per_class=50, flatten=False, random_state=3)
    c = prepare(mnist, (1, 7), n_per_class=50, flatten=False, random_state=4)
    assert a.X_train.shape == (80, 28, 28, 1)
    assert np.array_equal(a.idx_train, b.idx_train)
    assert not np.array_equal(a.idx_train, c.idx_train)


def test_all_images_when_n_is_none(mnist):
    sub = prepare(mnist, (1, 7), random_state=0)
    assert len(sub.y_train) + len(sub.y_test) == 1135 + 1028


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": (1, 10)}, r"classes must be in 0..9, got \[10\]"),
        ({"classes": (1,)}, r"at least 2 classes"),
        ({"classes": (1, 7), "anomalies": (7,)}, r"\[7\] are both trained and anomalies"),
        ({"classes": (1, 7), "n_per_class": 1100}, r"n_per_class=1100 but class 7 .* has only 1028"),
        ({"classes": (1, 7), "n_per_class": 0}, r"positive integer"),
        ({"classes": ("a", 7)}, r"must be integers"),
    ],
)
def test_prepare_bad_input(mnist, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare(mnist, **kwargs)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_several_data_dirs_and_no_mixing():
    both = os.pathsep.join([os.environ["SIGNATURES_DATA_DIR"], str(FASHION_DIR)])
    assert load_dataset("mnist", data_dir=both).counts() == README_COUNTS
    assert len(load_dataset("fashion-mnist", data_dir=both).labels) == 70000
    with pytest.raises(DataUnavailableError, match="no mnist IDX files"):
        load_dataset("mnist", data_dir=FASHION_DIR)  # a fashion-mnist folder is never read as MNIST
