"""Shared fixtures: small subsets of real MNIST.

Tests read the official MNIST test set from ``../shared/data`` (beside the repository)
when ``SIGNATURES_DATA_DIR`` is not set and that folder exists. Nothing is downloaded.
"""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if not os.environ.get("SIGNATURES_DATA_DIR") and SHARED_DATA.is_dir():
    os.environ["SIGNATURES_DATA_DIR"] = str(SHARED_DATA)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _require_data():
    if not os.environ.get("SIGNATURES_DATA_DIR"):
        pytest.skip("no MNIST folder: set SIGNATURES_DATA_DIR to a folder of MNIST IDX files")


@pytest.fixture(scope="session")
def mnist():
    """The whole real MNIST dataset found by the data option (10,000 test digits in CI)."""
    _require_data()
    from signatures.data import load_dataset

    return load_dataset("mnist")


@pytest.fixture(scope="session")
def subset_1v7(mnist):
    """1s and 7s, 200 each, with 3s as anomalies; flat rows for an MLP."""
    from signatures.data import prepare

    return prepare(mnist, (1, 7), n_per_class=200, anomalies=(3,), random_state=0)


@pytest.fixture(scope="session")
def trained_mlp(subset_1v7):
    """A 16-8 MLP trained for 5 epochs on the 1-vs-7 subset."""
    from signatures.models import build_mlp, train

    model = build_mlp(subset_1v7.X_train.shape[1], 2, hidden=(16, 8), seed=0)
    train(model, subset_1v7.X_train, subset_1v7.Y_train, epochs=5, seed=0)
    return model


@pytest.fixture(scope="session")
def small_experiment():
    """A complete small 1-vs-7 experiment with 3s and 4s inserted, run once per session."""
    _require_data()
    from signatures.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig(
        name="small", digits=(1, 7), anomalies=(3, 4), n_per_class=150, hidden=(16, 8),
        epochs=2, k_max=6, umap_points=300, seed=0,
    )
    return run_experiment(config)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
