"""The canonical build as jobs on a real Dask LocalCluster (tiny stand-ins for the canonical configs)."""

import time

import pytest

from signatures import canonical
from signatures.app import jobs as jobs_module
from signatures.app.jobs import Job
from signatures.canonical import JobsInterrupted, build_canonical, follow_jobs, submit_canonical
from signatures.cli import main
from signatures.experiment import ExperimentConfig
from signatures.store import list_experiments, load_experiment, read_manifest

SMALL = dict(hidden=(8,), epochs=2, k_max=4, umap_points=200)
TINY = (
    ExperimentConfig(name="tiny-17", dataset="digits", digits=(1, 7), anomalies=(3,), **SMALL),
    ExperimentConfig(name="tiny-08", dataset="digits", digits=(0, 8), **SMALL),
    ExperimentConfig(name="tiny-mnist", dataset="mnist", digits=(1, 7), n_per_class=50, **SMALL),
)

#: Stages every job reports, in this order (some more may come between them).
ORDER = ["started", "loading", "training", "clustering", "projection", "saving", "analysis", "done"]


@pytest.fixture(autouse=True)
def tiny_canonical(monkeypatch):
    """The real canonical experiments take minutes; these take seconds."""
    monkeypatch.setattr(canonical, "CANONICAL", TINY)


@pytest.fixture(scope="module")
def jobs():
    client = jobs_module.start_cluster(n_workers=1)
    yield client
    client.close()


def _wait_for_empty_queue(jobs, timeout=60):
    deadline = time.monotonic() + timeout
    while jobs.queue() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jobs.queue() == [], "no job is left running or waiting"


def _no_cluster(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a cluster was started although nothing was to be built")

    monkeypatch.setattr(jobs_module, "start_cluster", refuse)
    monkeypatch.setattr(jobs_module, "connect", refuse)


def test_submit_queues_only_what_the_store_lacks_and_follow_streams_progress(jobs, tmp_path):
    store = tmp_path / "store"
    (store / "tiny-08").mkdir(parents=True)
    (store / "tiny-08" / "notes.txt").write_text("mine")
    submitted = submit_canonical(jobs, store, only=["tiny-17", "tiny-08"])
    assert list(submitted) == ["tiny-17", "tiny-08"], "only the names asked for, in canonical order"
    assert isinstance(submitted["tiny-17"], Job) and submitted["tiny-17"].name == "tiny-17"
    assert submitted["tiny-08"].startswith("not built: ") and "exists but is not an experiment" in submitted["tiny-08"]
    seen = []
    outcome = follow_jobs(submitted, progress=lambda name, event: seen.append((name, event["stage"])))
    assert list(outcome) == ["tiny-17", "tiny-08"]
    assert outcome["tiny-17"].startswith("built in ") and outcome["tiny-17"].endswith(" s")
    assert outcome["tiny-08"] == submitted["tiny-08"]
    stages = [stage for name, stage in seen if name == "tiny-17" and stage != "queued"]
    firsts = sorted(set(stages), key=stages.index)
    assert [s for s in firsts if s in ORDER] == ORDER, stages
    assert stages.count("done") == 1 and stages[-1] == "done"
    manifest = read_manifest(store / "tiny-17")
    assert manifest["config"]["all_unseen"] is True, "stored with every unseen class, as the gallery needs"
    assert manifest["config"]["anomalies"] == [3]
    assert list(load_experiment(store / "tiny-17").unseen) == [0, 2, 3, 4, 5, 6, 8, 9]
    assert (store / "tiny-17" / "report.html").is_file()
    assert [p.name for p in (store / "tiny-08").iterdir()] == ["notes.txt"], "a foreign folder is left alone"
    with pytest.raises(ValueError, match=r"no canonical experiment named \['nope'\]"):
        submit_canonical(jobs, store, only=["nope"])
    assert submit_canonical(jobs, store, only=["tiny-17"]) == {"tiny-17": "kept"}
    assert jobs.queue() == []


def test_the_cli_builds_as_jobs_prints_progress_and_names_what_was_not_built(jobs, tmp_path, capsys, monkeypatch):
    asked = []

    def start_cluster(*, n_workers):
        asked.append(n_workers)
        return jobs_module.connect(jobs.address)  # a client of the test's cluster, closed on its own

    monkeypatch.setattr(jobs_module, "start_cluster", start_cluster)
    store = tmp_path / "store"
    nowhere = tmp_path / "nowhere"
    status = main(["canonical", "--store", str(store), "--only", "tiny-08", "tiny-mnist", "--data-dir", str(nowhere),
                   "--workers", "1"])
    out = capsys.readouterr().out
    assert status == 2 and asked == [1]
    assert "tiny-08: training, " in out and "tiny-08: done, stored tiny-08" in out
    table = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("tiny-08 ", "tiny-mnist ")))
    assert table["tiny-08"].startswith("built in ")
    assert table["tiny-mnist"].startswith("not built: ") and str(nowhere) in table["tiny-mnist"]
    assert [m["name"] for m in list_experiments(store)] == ["tiny-08"]
    assert sorted(p.name for p in store.iterdir()) == ["tiny-08"], "nothing half-written"
    # Again: what is stored is kept, and no cluster is started for it.
    _no_cluster(monkeypatch)
    assert main(["canonical", "--store", str(store), "--only", "tiny-08"]) == 0
    assert capsys.readouterr().out.split() == ["tiny-08", "kept"]


def test_a_given_scheduler_runs_the_jobs_and_its_failures_come_back(jobs, tmp_path):
    outcome = build_canonical(tmp_path, only=["tiny-mnist"], data_dir=str(tmp_path / "gone"), scheduler=jobs.address)
    assert list(outcome) == ["tiny-mnist"]
    assert outcome["tiny-mnist"].startswith("not built: ") and "gone" in outcome["tiny-mnist"]
    assert list_experiments(tmp_path) == []
    assert jobs.n_workers == 1, "joining a scheduler leaves its cluster running"


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers must be a whole number from 1 to 64"),
    (["--workers", "two"], "--workers must be a whole number from 1 to 64 (each worker holds TensorFlow, about 1 GiB), "
                           "got 'two'"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "give one of the two"),
    (["--scheduler", "tcp://a b"], "--scheduler must be the address of a running Dask scheduler"),
])
def test_bad_cluster_options_are_refused_before_anything(argv, message, tmp_path, capsys, monkeypatch):
    _no_cluster(monkeypatch)
    assert main(["canonical", "--store", str(tmp_path / "store"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
    with pytest.raises(ValueError, match="workers must be"):
        build_canonical(tmp_path / "store", workers=True)


def test_ctrl_c_cancels_the_build(jobs, tmp_path, capsys, monkeypatch):
    def interrupt(name, event):
        if event["stage"] == "training":
            raise KeyboardInterrupt

    with pytest.raises(JobsInterrupted) as info:
        build_canonical(tmp_path, only=["tiny-17"], jobs=jobs, progress=interrupt)
    assert info.value.outcome == {"tiny-17": "not built: cancelled"}
    assert list(tmp_path.iterdir()) == [], "nothing stored, nothing half-written"
    _wait_for_empty_queue(jobs)
    # The CLI says so and exits 130.
    monkeypatch.setattr("signatures.sweep.print_event", interrupt)
    monkeypatch.setattr(jobs_module, "start_cluster", lambda *, n_workers: jobs_module.connect(jobs.address))
    assert main(["canonical", "--store", str(tmp_path), "--only", "tiny-17", "tiny-08", "--workers", "1"]) == 130
    captured = capsys.readouterr()
    lines = dict(line.split(None, 1) for line in captured.out.splitlines())
    assert set(lines) == {"tiny-17", "tiny-08"}
    assert all(v.startswith("not built: cancelled") for v in lines.values()), lines
    assert "the unfinished jobs were cancelled; stored: none;" in captured.err
    assert captured.err.rstrip().endswith("interrupted")


def test_a_scheduler_that_does_not_answer_is_named(tmp_path, capsys):
    assert main(["canonical", "--store", str(tmp_path), "--only", "tiny-17", "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "no Dask scheduler answers at 'tcp://127.0.0.1:9'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


TINY_RUN = ["--dataset", "digits", "--digits", "1", "7", "--anomalies", "3", "--hidden", "8", "--epochs", "2",
            "--k-max", "4", "--umap-points", "200"]


def test_run_on_a_scheduler_stores_the_experiment_without_tensorflow_in_the_command(jobs, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "runs" / "tiny-run"
    out.parent.mkdir()
    script = ("import sys\nfrom signatures.cli import main\n"
              f"status = main({['run', '--out', str(out), *TINY_RUN, '--scheduler', jobs.address]!r})\n"
              "print('TF', 'tensorflow' in sys.modules, 'UMAP', 'umap' in sys.modules)\nsys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "TF False UMAP False", "the command itself imports neither TensorFlow nor UMAP"
    stages = [line[1:].split()[0] for line in lines if line.startswith("[")]
    assert [s for s in ORDER if s in stages] == ORDER and stages.index("training") < stages.index("clustering")
    exp = load_experiment(out)
    assert exp.config.name == "tiny-run" and exp.config.hidden == (8,)
    accuracy = next(line for line in lines if line.startswith("held-out accuracy"))
    assert float(accuracy.split()[-1]) == pytest.approx(exp.metrics["accuracy"], abs=5e-5)
    assert any(line.startswith("  hidden_1: K = ") for line in lines)
    assert (out / "report.html").stat().st_size > 0 and f"wrote {out}/" in lines[-2]


def test_run_on_a_scheduler_hands_back_the_workers_error(jobs, tmp_path, capsys):
    out = tmp_path / "tiny-gone"
    argv = ["run", "--out", str(out), "--dataset", "mnist", "--data-dir", str(tmp_path / "gone"), "--n-per-class",
            "50", "--hidden", "8", "--epochs", "2", "--k-max", "4", "--scheduler", jobs.address]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "gone") in err and "Traceback" not in err
    assert not out.exists(), "nothing stored, nothing half-written"
    assert main(argv[:-1] + ["tcp://127.0.0.1:9"]) == 2
    assert "no Dask scheduler answers at 'tcp://127.0.0.1:9'" in capsys.readouterr().err
