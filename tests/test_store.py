"""Experiments on disk: identical reload, atomic writes, no TensorFlow when browsing, safe names."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from signatures.store import (
    check_name,
    experiment_path,
    list_experiments,
    load_experiment,
    read_manifest,
    save_experiment,
)


@pytest.fixture(scope="module")
def saved(small_experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    save_experiment(small_experiment, root / "small")
    return root


def test_reload_is_identical(small_experiment, saved):
    exp, back = small_experiment, load_experiment(saved / "small")
    assert back.layers == exp.layers and back.classes == exp.classes and back.anomalies == exp.anomalies
    assert exp.logits is not None and exp.logits.shape == exp.probs.shape
    for field in ("labels", "split", "images", "probs", "paths", "dataset_rows", "logits"):
        np.testing.assert_array_equal(getattr(back, field), getattr(exp, field))
    for name in exp.layers:
        np.testing.assert_array_equal(back.hidden[name], exp.hidden[name])
        np.testing.assert_array_equal(back.embeddings[name], exp.embeddings[name])
        np.testing.assert_array_equal(back.clusterers[name].centers_, exp.clusterers[name].centers_)
        assert back.clusterers[name].k_ == exp.clusterers[name].k_
        assert back.clusterers[name].silhouette_scores_ == exp.clusterers[name].silhouette_scores_
        rows = exp.rows("anomaly")
        np.testing.assert_array_equal(
            back.clusterers[name].predict(exp.hidden[name][rows]), exp.clusterers[name].predict(exp.hidden[name][rows])
        )
    assert back.metrics == json.loads(json.dumps(exp.metrics))
    assert back.config == exp.config and back.config.key() == exp.config.key()
    assert back.model is None


def test_stored_model_loads_safely_and_predicts_the_same(small_experiment, saved):
    from signatures.models import load_model

    model = load_model(saved / "small" / "model.keras")
    rows = small_experiment.rows("test")[:20]
    X = small_experiment.images[rows].reshape(len(rows), -1).astype(np.float32) / 255.0
    np.testing.assert_allclose(model.predict(X, verbose=0), small_experiment.probs[rows], rtol=1e-5, atol=1e-6)


def test_browsing_imports_no_tensorflow(saved):
    code = (
        "import sys; from signatures.store import load_experiment, list_experiments;"
        f"e = load_experiment({str(saved / 'small')!r}); list_experiments({str(saved)!r});"
        "e.path_counts(); e.flows(); e.insert({n: e.hidden[n][:5] for n in e.layers});"
        "print(sorted(m for m in ('tensorflow', 'keras', 'umap') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_existing_experiment_is_not_overwritten(small_experiment, saved):
    before = (saved / "small" / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="exists already"):
        save_experiment(small_experiment, saved / "small")
    assert (saved / "small" / "manifest.json").read_bytes() == before
    assert not [p for p in saved.iterdir() if p.name.startswith(".")]


def test_overwrite_swaps_whole_folders(small_experiment, tmp_path):
    save_experiment(small_experiment, tmp_path / "e", save_model=False)
    (tmp_path / "e" / "report.html").write_text("report of the old run")
    save_experiment(small_experiment, tmp_path / "e", overwrite=True, save_model=False)
    assert not (tmp_path / "e" / "report.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    assert read_manifest(tmp_path / "e")["complete"] is True


def test_killed_run_leaves_nothing_that_reads_as_complete(small_experiment, tmp_path, monkeypatch):
    import signatures.store as store

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(store, "_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        save_experiment(small_experiment, tmp_path / "half", save_model=False)
    assert not (tmp_path / "half").exists()
    assert list(tmp_path.iterdir()) == []
    # A temp folder left by a hard kill (no cleanup) is ignored and refused.
    (tmp_path / ".half.tmp-123").mkdir()
    np.savez(tmp_path / ".half.tmp-123" / "arrays.npz", labels=np.zeros(3))
    assert list_experiments(tmp_path) == []
    with pytest.raises(ValueError, match="not a complete experiment"):
        load_experiment(tmp_path / ".half.tmp-123")
    assert (tmp_path / ".half.tmp-123").exists()  # not named by a save of this tool: never removed


def test_damaged_experiment_is_refused(small_experiment, tmp_path):
    path = save_experiment(small_experiment, tmp_path / "d", save_model=False)
    arrays = path / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:1000])
    with pytest.raises(ValueError, match="wrong size"):
        read_manifest(path)
    assert list_experiments(tmp_path) == []


def test_list_experiments(saved):
    rows = list_experiments(saved)
    assert [r["name"] for r in rows] == ["small"]
    assert rows[0]["config"]["digits"] == [1, 7] and 0.5 < rows[0]["metrics"]["accuracy"] <= 1.0


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "a" * 65, "x..y", "/abs"])
def test_unsafe_names_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match="not allowed"):
        experiment_path(tmp_path, name)


def test_safe_name_stays_inside(tmp_path):
    assert check_name("1v7_mlp-64.32") == "1v7_mlp-64.32"
    assert experiment_path(tmp_path, "run1").parent == tmp_path.resolve()
    assert os.path.basename(experiment_path(tmp_path, "run1")) == "run1"


def test_atomic_file_is_readable_by_others(tmp_path):
    from signatures.store import write_file_atomic

    path = tmp_path / "report.html"
    write_file_atomic(path, "<html></html>")
    assert path.read_text() == "<html></html>"
    assert path.stat().st_mode & 0o044 == 0o044 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
