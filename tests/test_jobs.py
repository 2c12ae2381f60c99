"""Experiments as jobs on a real Dask LocalCluster: queue places, progress in order, cancel, errors."""

import os
import time

import pytest

from signatures.app.jobs import JobCancelled, JobFailed, start_cluster, worker_threads
from signatures.experiment import ExperimentConfig
from signatures.store import list_experiments, read_manifest

#: Pipeline stages in the order a job reports them.
ORDER = ["warming", "started", "loading", "startup", "training", "extraction", "evaluation", "clustering", "projection",
         "saving", "explanation", "analysis", "done"]


def _config(name, epochs=2, **kw):
    return ExperimentConfig(name=name, dataset="digits", digits=(1, 7), hidden=(8,), epochs=epochs, k_max=4,
                            umap_points=200, **kw)


def _wait(predicate, timeout=240, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


@pytest.fixture(scope="module")
def jobs():
    client = start_cluster(n_workers=1)
    yield client
    client.close()


def test_workers_share_the_cores_for_their_numeric_libraries(jobs):
    assert worker_threads(1, cores=2) == 2 and worker_threads(2, cores=2) == 1 and worker_threads(4, cores=2) == 1
    assert worker_threads(3, cores=16) == 5
    seen = jobs.client.run(lambda: (os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS")))
    share = str(worker_threads(1))
    assert list(seen.values()) == [(share, share)]  # the lone worker gets every core, not Dask's one
    daemonic = jobs.client.run(lambda: __import__("multiprocessing").current_process().daemon)
    assert list(daemonic.values()) == [False]  # so that it may start its side process


def test_a_job_stores_the_experiment_and_reports_progress_in_order(jobs, tmp_path):
    job = jobs.submit(_config("first"), tmp_path)
    result = job.result(timeout=300)
    assert job.state == "finished" and job.error() is None
    assert result["name"] == "first" and 0.0 <= result["accuracy"] <= 1.0
    manifest = read_manifest(tmp_path / "first")
    assert manifest["metrics"]["accuracy"] == pytest.approx(result["accuracy"])
    assert (tmp_path / "first" / "report.html").is_file() and (tmp_path / "first" / "analysis.json").is_file()
    events = job.events()
    assert [e["seq"] for e in events] == list(range(len(events))), "every event arrives, in order"
    stages = [e["stage"] for e in events]
    firsts = sorted(set(stages), key=stages.index)
    assert firsts == [s for s in ORDER if s in firsts], stages
    assert stages[0] in ("warming", "started") and stages[-1] == "done"  # warming: the worker was still loading
    assert {"training", "clustering", "projection", "saving"} <= set(stages)
    maps = [e["message"] for e in events if e["stage"] == "projection"]
    if (os.cpu_count() or 1) >= 2:  # one core: no side process, the maps are fitted in the job
        assert len(maps) == 1 and "fitted in a side process" in maps[0], maps  # the worker's, beside the clustering
    epochs = [e["message"] for e in events if e["stage"] == "training" and "epoch" in e["message"]]
    assert len(epochs) >= 2, "every epoch is reported"
    times = [e["time"] for e in events]
    assert times == sorted(times)


def test_waiting_jobs_know_their_place_and_a_waiting_job_can_be_cancelled(jobs, tmp_path):
    # All 2,163 real MNIST 1s and 7s for 150 epochs: minutes of work, stopped long before the end.
    long = ExperimentConfig(name="long", dataset="mnist", digits=(1, 7), hidden=(8,), epochs=150,
                            data_dir=os.environ.get("SIGNATURES_DATA_DIR"))
    running = jobs.submit(long, tmp_path)
    second = jobs.submit(_config("second"), tmp_path)
    third = jobs.submit(_config("third"), tmp_path)
    assert _wait(lambda: running.state == "running"), running.state
    assert second.state == "waiting" and third.state == "waiting"
    assert second.position() == 1 and third.position() == 2
    assert running.position() is None
    second.cancel()
    assert _wait(lambda: third.position() == 1)
    assert second.state == "cancelled"
    # A running job stops at its next step; nothing of it is stored.
    assert _wait(lambda: any(e["stage"] == "training" for e in running.events()))
    running.cancel()
    with pytest.raises(JobCancelled):
        running.result(timeout=120)
    assert running.state == "cancelled"
    third.result(timeout=300)
    assert [m["name"] for m in list_experiments(tmp_path)] == ["third"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["third"], "no half-written folder is left"


def test_a_failing_job_brings_its_message_back(jobs, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    job = jobs.submit(_config("taken"), tmp_path)
    with pytest.raises(JobFailed, match="exists already"):
        job.result(timeout=300)
    assert job.state == "failed" and "exists already" in job.error()
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    missing = jobs.submit(_config("nodata").__class__(name="nodata", dataset="mnist", digits=(1, 7),
                                                       data_dir=str(tmp_path / "nowhere")), tmp_path)
    with pytest.raises(JobFailed) as info:
        missing.result(timeout=300)
    assert "nowhere" in str(info.value) or "MNIST" in str(info.value)


def test_a_bad_config_is_refused_before_it_is_queued(jobs, tmp_path):
    with pytest.raises(ValueError, match="digit"):
        jobs.submit(ExperimentConfig(name="bad", dataset="digits", digits=(1,)), tmp_path)
    with pytest.raises(ValueError, match="not allowed"):
        jobs.submit(_config("../escape"), tmp_path)
    assert jobs.queue() == []
