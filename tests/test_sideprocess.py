"""The side process of a run: UMAP maps fitted on the other core, the same maps, and a way back."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from signatures.experiment import ExperimentConfig, run_experiment
from signatures.projection import project_layers, submit_projection
from signatures.sideprocess import start_side_process, stop_side_process, working

REPO = Path(__file__).resolve().parents[1]

#: A machine with one core starts no side process (start_side_process gives None): nothing to test.
pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: runs start no side process")

#: As ``small_experiment`` in conftest.py: the same config, so the same run.
SMALL = dict(name="small", digits=(1, 7), anomalies=(3, 4), n_per_class=150, hidden=(16, 8), epochs=2, k_max=6,
             umap_points=300, seed=0)


@pytest.fixture(scope="module")
def side():
    pool = start_side_process()
    assert pool is not None, "a machine with 2 cores starts a side process"
    yield pool
    stop_side_process(pool)


def test_a_run_with_a_side_process_gives_the_same_maps(side, small_experiment):
    exp = run_experiment(ExperimentConfig(**SMALL), projector=side)
    assert exp.embeddings == {} and exp.pending_maps is not None  # pending until asked for
    said = []
    exp.wait_for_maps(progress=lambda *a: said.append(a))
    assert exp.pending_maps is None and exp.timings["projection"] > 0
    assert said[0][:2] == ("projection", 1.0) and "side process" in said[0][2]
    np.testing.assert_array_equal(exp.paths, small_experiment.paths)
    assert list(exp.embeddings) == list(small_experiment.embeddings)
    for name, emb in small_experiment.embeddings.items():
        np.testing.assert_array_equal(exp.embeddings[name], emb)  # bit for bit, NaN where not projected
    assert np.isnan(emb).any() and not np.isnan(emb).all()
    from signatures.separation import input_separation

    row = exp.input_separation_row()  # measured in the side process while TensorFlow was imported
    assert row == input_separation(small_experiment) and row["kind"] == "input"
    assert exp.input_separation_row() is None  # handed over once


def _layers(rng):
    hidden = {"a": rng.normal(size=(120, 5)).astype(np.float32), "b": rng.normal(size=(120, 3)).astype(np.float32)}
    return hidden, np.arange(0, 100, 2), np.arange(1, 100, 2)  # fitted rows, placed rows; the last 20 neither


def test_maps_are_fitted_here_when_the_side_process_has_ended(rng):
    hidden, fit_rows, transform_rows = _layers(rng)
    expected = project_layers(hidden, fit_rows, transform_rows, random_state=0)
    pool = start_side_process()
    try:
        os.kill(pool.submit(os.getpid).result(timeout=120), signal.SIGKILL)
        pending = submit_projection(pool, hidden, fit_rows, transform_rows, random_state=0)
        maps = pending.result()
        assert "maps fitted here" in pending.fallback
        assert not working(pool)
    finally:
        stop_side_process(pool)
    for name in hidden:
        np.testing.assert_array_equal(maps[name], expected[name])
    assert np.isnan(maps["a"][100:]).all() and not np.isnan(maps["a"][:100]).any()


def test_a_stopped_side_process_takes_no_task_and_the_maps_are_the_same(side, rng):
    hidden, fit_rows, transform_rows = _layers(rng)
    there = submit_projection(side, hidden, fit_rows, transform_rows, random_state=5)
    pool = start_side_process()
    stop_side_process(pool)
    here = submit_projection(pool, hidden, fit_rows, transform_rows, random_state=5)
    assert "takes no task" in here.fallback and there.fallback is None
    assert working(side) and not working(pool)
    for name in hidden:
        np.testing.assert_array_equal(here.result()[name], there.result()[name])
    assert there.seconds > 0


def test_no_side_process_when_it_is_turned_off(monkeypatch):
    monkeypatch.setenv("SIGNATURES_SIDE_PROCESS", "0")
    assert start_side_process() is None
    pending = submit_projection(None, {"a": np.zeros((10, 2))}, np.arange(8))
    assert pending.fallback.startswith("no side process")
    assert not pending.result()["a"][:8].any()  # all-equal rows: nothing to map, all zeros


def test_umap_loads_without_tensorflow():
    code = ("import sys; from signatures.projection import import_umap, warm_up; import_umap(); warm_up(); "
            "print('tensorflow' in sys.modules, 'umap.parametric_umap' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]  # no TensorFlow, and its module still importable by name


_RUN = ["run", "--digits", "1", "7", "--anomalies", "3", "--n-per-class", "60", "--hidden", "12", "6", "--epochs", "1",
        "--k-max", "4", "--umap-points", "80", "--seed", "2"]


def test_the_command_fits_the_maps_in_a_side_process_and_stores_what_a_plain_run_stores(tmp_path):
    from signatures.cli import _config_from_args, build_parser
    from signatures.explanations import load_explanations
    from signatures.store import load_experiment

    out = tmp_path / "side"
    result = subprocess.run([sys.executable, "-m", "signatures", *_RUN, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fitted in a side process" in result.stdout
    assert result.stdout.rstrip().endswith(f"wrote {out}/ and {out / 'report.html'}")  # flushed before the quick exit
    stored = load_experiment(out)
    assert {"analysis.json", "plots.zip", "explanations.npz", "report.html"} <= {p.name for p in out.iterdir()}
    assert load_explanations(out, n_rows=stored.n_rows) is not None  # stamped with this experiment
    assert json.loads((out / "analysis.json").read_text())["findings"]

    config = _config_from_args(build_parser().parse_args([*_RUN, "--out", str(out)]))
    plain = run_experiment(config)  # this process, no side process
    np.testing.assert_array_equal(stored.paths, plain.paths)
    for name, emb in plain.embeddings.items():
        np.testing.assert_array_equal(stored.embeddings[name], emb)
    from signatures.analysis import analyze

    analysis = json.loads((out / "analysis.json").read_text())
    here = json.loads(json.dumps(analyze(plain)))
    assert analysis["separation"] == here["separation"]  # the input's row measured in the side process, the same
    assert analysis["findings"] == here["findings"]


def test_the_quick_exit_keeps_the_status_the_output_and_the_exit_handlers(tmp_path):
    code = ("import atexit; from signatures.cli import entry; "
            "atexit.register(lambda: print('handlers ran', flush=True)); "
            f"entry(['list', {str(tmp_path / 'none')!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2
    assert "does not exist" in out.stderr and out.stdout == "handlers ran\n"


def test_activations_over_the_budget_are_mapped_here_and_the_side_process_let_go(tmp_path):
    pool = start_side_process()
    try:  # 1,797 digits x 4,096 units in float32: 28 MiB, over a 16 MiB budget
        config = ExperimentConfig(name="big", dataset="digits", digits=tuple(range(10)), hidden=(4096,), epochs=1,
                                  k_max=3, umap_points=200, memory_budget=16)
        exp = run_experiment(config, projector=pool, workdir=tmp_path)
        exp.release_work_folder()
        assert exp.info["activations"]["held"] == "on disk"
        assert exp.pending_maps is None and list(exp.embeddings) == exp.layers  # fitted here, within the budget
        assert not working(pool)  # let go before the activations were extracted
    finally:
        stop_side_process(pool)


def test_ctrl_c_during_the_maps_ends_the_command_and_its_side_process_in_one_line(tmp_path):
    import psutil

    out = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-u", "-m", "signatures", *_RUN, "--n-per-class", "300",
                             "--umap-points", "600", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    side = []
    try:
        for line in proc.stdout:  # the maps are submitted to the side process right after extraction
            if not side:  # started before the first line
                side = [c for c in psutil.Process(proc.pid).children() if "multiprocessing.spawn" in " ".join(c.cmdline())]
            if line.startswith("[clustering"):
                break
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    said = [line for line in err.splitlines() if line.strip() and not line.startswith(("W0000", "I0000", "WARNING: All"))
            and "cpu_feature_guard" not in line and "rebuild TensorFlow" not in line]
    assert said == ["interrupted"], err[-3000:]  # no traceback, from the command or its side process
    assert len(side) == 1  # it ended with the command (a zombie here only if nothing reaps orphans)
    assert not side[0].is_running() or side[0].status() == psutil.STATUS_ZOMBIE
    assert not out.exists()  # interrupted before it was saved: nothing stored


def test_a_failing_analysis_still_lets_the_experiment_reach_the_store_whole(small_experiment, tmp_path, monkeypatch):
    import signatures.analysis
    from signatures.app.finish import finish_run
    from signatures.store import load_experiment

    def broken(*args, **kwargs):
        raise ValueError("analysis broke")

    import time

    import signatures.store

    save = signatures.store.save_experiment

    def slow_save(*args, **kwargs):  # still saving when the analysis fails
        time.sleep(1.0)
        return save(*args, **kwargs)

    monkeypatch.setattr(signatures.analysis, "analyze", broken)
    monkeypatch.setattr(signatures.store, "save_experiment", slow_save)
    with pytest.raises(ValueError, match="analysis broke"):
        finish_run(small_experiment, tmp_path / "kept")
    stored = load_experiment(tmp_path / "kept")  # saved beside the analysis, and waited for
    np.testing.assert_array_equal(stored.paths, small_experiment.paths)
    assert not (tmp_path / "kept" / "analysis.json").exists()
