"""The Builder page, driven in-process: choices checked next to their controls, runs submitted as
jobs to a real Dask LocalCluster (queue place, progress in order, cancel, errors, results), and a
page kernel that never imports TensorFlow (checked in a subprocess)."""

import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signatures.app import BuilderApp
from signatures.store import list_experiments, save_experiment

#: Stages a job reports, in the order the page must show them.
ORDER = ["warming", "started", "loading", "startup", "training", "extraction", "evaluation", "clustering", "projection",
         "saving", "explanation", "analysis", "done"]


@pytest.fixture(scope="module")
def store(small_experiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    save_experiment(small_experiment, root / "small", save_model=False)
    return root


@pytest.fixture(scope="module")
def jobs():
    """A real LocalCluster of one worker: one job runs at a time, the others wait in its queue."""
    from signatures.app.jobs import start_cluster

    client = start_cluster(n_workers=1)
    yield client
    client.close()


def errors(app):
    return {k: html.unescape(w.value) for k, w in app.errors.items() if w.value}


def text(widget):
    return html.unescape(widget.value)


def wait_for(predicate, timeout=240, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def tiny(app, name):
    """Set the page to a tiny experiment: sklearn's digits 1 vs 7, one layer of 8, 2 epochs, K up to 4."""
    app.dataset.value = "digits"
    app.digit_toggles.value = [1, 7]
    app.anomaly_toggles.value = [3]
    app.hidden.value = "8"
    app.epochs.value = 2
    app.k_max.value = 4
    app.name.value = name
    return app


def long_run(app, name):
    """Set the page to a run of minutes: every real MNIST 1 and 7 of the test set for 150 epochs."""
    app.dataset.value = "mnist"
    app.digit_toggles.value = [1, 7]
    app.hidden.value = "8"
    app.epochs.value = 150
    app.name.value = name
    return app


# --------------------------------------------------------------------------- the form


def test_builder_defaults_are_valid(store):
    app = BuilderApp(store)
    assert app.check() == {} and errors(app) == {}
    config = app.config().validate()
    assert config.digits == (1, 7) and config.anomalies == (3, 4) and config.all_unseen
    assert config.dropout == 0.0, "no dropout unless asked for"
    app.dropout.value = 0.2
    assert app.config().validate().dropout == 0.2 and app.check() == {}


def set_value(control, value):
    return lambda a: setattr(getattr(a, control), "value", value)


# (change, field, start, text): the message next to the control ``field`` starts with ``start`` (the
# words on the page) and holds ``text`` (the bad value, or what is allowed).
BAD_CHOICES = [
    (set_value("digit_toggles", [1]), "digits", "", "Train on digits must list at least 2"),
    (set_value("anomaly_toggles", [7]), "anomalies", "", "[7] are both trained"),
    (set_value("n_per_class", "5000"), "n_per_class", "Images per digit", "digit 1 has only 1135"),
    (set_value("n_per_class", "many"), "n_per_class", "Images per digit", "got 'many'"),
    (set_value("n_per_class", "1.5"), "n_per_class", "Images per digit", "got '1.5'"),
    (set_value("n_per_class", "inf"), "n_per_class", "Images per digit", "got 'inf'"),
    (set_value("n_per_class", "nan"), "n_per_class", "Images per digit", "got 'nan'"),
    (set_value("n_per_class", "-3"), "n_per_class", "Images per digit", "got -3"),
    (set_value("n_per_class", "abc"), "n_per_class", "Images per digit", "got 'abc'"),
    (set_value("n_per_class", "10000000"), "n_per_class", "Images per digit", "got 10000000"),
    (set_value("seed", "-1"), "seed", "Seed", "from 0 to 2147483647, got -1"),
    (set_value("seed", "abc"), "seed", "Seed", "got 'abc'"),
    (set_value("seed", "0.5"), "seed", "Seed", "got '0.5'"),
    (set_value("k_min", "abc"), "k_range", "K from", "got 'abc'"),
    (set_value("k_max", "ten"), "k_range", "K to", "got 'ten'"),
    (lambda a: (setattr(a.k_min, "value", 8), setattr(a.k_max, "value", 3)), "k_range", "K range", "inverted"),
    (set_value("hidden", "  "), "hidden", "Dense hidden sizes", "at least one layer size"),
    (set_value("hidden", "0"), "hidden", "Dense hidden sizes", "got 0"),
    (set_value("hidden", "-1"), "hidden", "Dense hidden sizes", "got -1"),
    (set_value("hidden", "abc"), "hidden", "Dense hidden sizes", "got 'abc'"),
    (set_value("hidden", "64 abc"), "hidden", "Dense hidden sizes", "got 'abc'"),
    (set_value("hidden", "100000"), "hidden", "Dense hidden sizes", "got 100000"),
    (set_value("name", "../outside"), "name", "", "not allowed"),
    (set_value("name", "a/b"), "name", "", "not allowed"),
    (set_value("name", "small"), "name", "Experiment name", "exists already"),
    (set_value("epochs", 0), "epochs", "Epochs", "got 0"),
]


@pytest.mark.parametrize("change, field, start, text", BAD_CHOICES,
                         ids=[f"{c[1]}-{c[3]}" for c in BAD_CHOICES])
def test_bad_choice_is_shown_next_to_its_control(store, change, field, start, text):
    app = BuilderApp(store)  # no scheduler is contacted: a refused run never reaches Dask
    change(app)
    assert app.run() is None and app.job is None and app.jobs is None
    shown = errors(app)
    assert list(shown) == [field], shown  # next to its own control, and only there
    message = html.unescape(app.errors[field].value)
    message = message[message.index(">") + 1:]
    assert message.startswith(start) and text in message, message
    assert "Fix the values marked above" in app.error.value
    assert app.progress.value == 0 and app.status.value == "" and app.queue.value == ""  # nothing ran
    assert not app.run_button.disabled
    assert [m["name"] for m in list_experiments(store)] == ["small"]


def test_changing_a_control_clears_its_old_message(store):
    app = BuilderApp(store)
    app.n_per_class.value = "abc"
    app.seed.value = "-1"
    app.digit_toggles.value = [1]
    app.run()
    assert set(errors(app)) == {"n_per_class", "seed", "digits"} and app.error.value
    app.n_per_class.value = "50"
    assert set(errors(app)) == {"seed", "digits"} and app.error.value == ""
    app.seed.value = 3
    assert set(errors(app)) == {"digits"}
    app.digit_toggles.value = [1, 2]
    assert errors(app) == {}
    assert app.check() == {} and app.config().validate().seed == 3


def test_toggles_are_sorted_and_fashion_mnist_shows_class_names_in_the_controls_and_messages(store, tmp_path):
    app = BuilderApp(store)
    assert app.digit_toggles.labels == [str(d) for d in range(10)]
    assert app.digit_toggles.description == "Train on digits" and app.n_per_class.description == "Images per digit"
    app.digit_toggles.value = [7, 1, 7]
    assert app.digit_toggles.value == [1, 7] and app.config().digits == (1, 7)
    app.dataset.value = "fashion-mnist"
    assert app.digit_toggles.labels[:3] == ["T-shirt/top", "Trouser", "Pullover"]
    assert app.anomaly_toggles.labels[9] == "Ankle boot"
    assert app.digit_toggles.description == "Train on classes" and app.n_per_class.description == "Images per class"
    assert app.anomaly_toggles.description == "Insert unseen classes"
    app.n_per_class.value = "many"
    app.digit_toggles.value = [0]
    app.data_dir = str(tmp_path)  # no Fashion-MNIST here: the dataset's problem is named with its control
    problems = app.check()
    assert problems["n_per_class"].startswith("Images per class") and "got 'many'" in problems["n_per_class"]
    assert "Train on classes must list at least 2" in problems["digits"]
    assert problems["dataset"].startswith("Dataset: ") and "fashion-mnist" in problems["dataset"]
    app.dataset.value = "mnist"  # the dataset's, the classes' and the counts' old messages go
    assert errors(app) == {}
    assert app.digit_toggles.labels[0] == "0" and app.digit_toggles.description == "Train on digits"


def test_dataset_not_available_offline(store, monkeypatch, tmp_path):
    monkeypatch.setenv("SIGNATURES_DATA_DIR", str(tmp_path))  # a folder without IDX files
    app = BuilderApp(store)
    app.check()
    assert "no mnist IDX files" in errors(app)["dataset"] and "--dataset digits" in errors(app)["dataset"]


# --------------------------------------------------------------------------- runs as jobs


def test_progress_lines_arrive_in_order_and_the_results_come_from_the_store(store, jobs):
    app = tiny(BuilderApp(store, jobs=jobs), "tiny-run")
    shown, bars = [], []
    real = app._progress

    def record(stage, fraction, message):
        shown.append(stage)
        real(stage, fraction, message)
        bars.append(app.progress.value)

    app._progress = record
    job = app.run()
    assert job is not None and app.run_button.disabled and app.cancel_button.layout.display == ""
    exp = app.wait(300)
    assert exp is not None, (app.error.value, app.status.value)
    assert app.error.value == "" and app.queue.value == ""
    firsts = sorted(set(shown), key=shown.index)
    assert firsts == [s for s in ORDER if s in firsts] and shown[0] in ("warming", "started") and shown[-1] == "done"
    assert {"loading", "training", "clustering", "projection", "saving", "done"} <= set(shown)
    # every event from the worker is shown once, in order; then the page's own last line
    assert shown[:-1] == [e["stage"] for e in job.events()] and shown[-1] == "done"
    assert bars == sorted(bars) and bars[-1] == pytest.approx(1.0)
    status = text(app.status)
    assert "<b>training</b>" in status and "epoch 2" in status.lower()
    assert "saved as 'tiny-run'" in status
    # The results are the stored experiment, shown and scrolled into view; Run works again.
    assert exp.config.name == "tiny-run" and exp.model is None
    assert json.loads((store / "tiny-run" / "manifest.json").read_text())["name"] == "tiny-run"
    assert app.results.children == (app.view.widget,) and app.scroll.count == 1
    assert not app.run_button.disabled and app.cancel_button.layout.display == "none"
    assert app.run() is None and "exists already" in errors(app)["name"]  # the same name again: refused
    assert app.results.children == (app.view.widget,)  # the results stay


class _StoredJob:
    """A job that has saved ``name`` (an "analysis" event) and ends only when told to."""

    class _Future:
        def __init__(self):
            self.ended = False

        def done(self):
            return self.ended

    def __init__(self, name):
        self.id, self.name, self.future = "signatures-job-early", name, self._Future()
        stages = ["started", "training", "clustering", "projection", "saving", "explanation", "analysis"]
        self._events = [{"seq": i, "stage": s, "fraction": 0.0, "message": s, "time": 0.0}
                        for i, s in enumerate(stages)]

    @property
    def state(self):
        return "finished" if self.future.ended else "running"

    def events(self):
        return list(self._events)

    def result(self, timeout=None):
        return {"seconds": 1.0}


def test_a_stored_run_is_shown_at_once_and_its_findings_follow_when_the_job_ends(small_experiment, tmp_path):
    import threading

    save_experiment(small_experiment, tmp_path / "small", save_model=False)  # stored, no findings yet
    app = BuilderApp(tmp_path, poll=0.05)
    job = _StoredJob("small")
    watcher = threading.Thread(target=app._follow, args=(job,), daemon=True)
    watcher.start()
    assert wait_for(lambda: app.results.children, timeout=120), app.error.value
    assert not job.future.done() and watcher.is_alive()  # shown while the job still runs
    assert app.results.children == (app.view.widget,) and app.scroll.count == 1
    assert app.view.analysis is None and app.view._findings.value == ""
    assert "findings follow" in text(app.queue) and app.error.value == ""
    assert [v for _, v in app.view.explain.options] == [None], "no maps stored yet"
    from signatures.explanations import explain_stored

    explain_stored(small_experiment, tmp_path / "small")  # the job stores its maps before its findings
    job.future.ended = True
    watcher.join(120)
    assert not watcher.is_alive() and app.error.value == ""
    assert app.view.analysis is not None and app.view.analysis["findings"]
    assert "<li" in app.view._findings.value  # the findings are now under the title
    assert app.view.explain.value is not None, "the maps stored meanwhile are offered with the findings"
    assert app.scroll.count == 1 and app.queue.value == ""  # scrolled once, not twice
    assert "saved as 'small'" in text(app.status) and app._shown == job.id


def test_queue_place_is_shown_and_cancel_works_for_a_waiting_and_a_running_run(store, jobs):
    running = long_run(BuilderApp(store, jobs=jobs, poll=0.1), "long-page-run")
    first = tiny(BuilderApp(store, jobs=jobs, poll=0.1), "queued-first")
    second = tiny(BuilderApp(store, jobs=jobs, poll=0.1), "queued-second")
    assert running.run() is not None
    assert wait_for(lambda: "<b>training</b>" in running.status.value), running.status.value
    assert first.run() is not None and second.run() is not None
    assert wait_for(lambda: "next in the queue" in text(first.queue)), text(first.queue)
    assert wait_for(lambda: "1 run ahead of yours" in text(second.queue)), text(second.queue)
    assert first.status.value == "" and first.progress.value == 0

    second.cancel()  # waiting: it never starts
    assert second.wait(60) is None
    assert "Your run was cancelled. Nothing was saved to the store." in text(second.queue)
    assert not second.run_button.disabled and second.cancel_button.layout.display == "none"
    assert "next in the queue" in text(first.queue)

    running.cancel()  # running: it stops at its next step
    assert "Cancelling your run" in text(running.queue)
    assert running.wait(120) is None
    assert "Your run was cancelled. Nothing was saved to the store." in text(running.queue)
    assert running.error.value == "" and running.results.children == ()

    assert first.wait(300) is not None, first.error.value
    names = {m["name"] for m in list_experiments(store)}
    assert "queued-first" in names and not names & {"long-page-run", "queued-second"}
    assert not [p for p in store.iterdir() if p.name.startswith(".")], "no half-written folder is left"


def test_a_failing_job_error_reaches_the_page_and_run_works_again(store, jobs):
    blocker = long_run(BuilderApp(store, jobs=jobs, poll=0.1), "blocker")
    app = tiny(BuilderApp(store, jobs=jobs, poll=0.1), "taken-meanwhile")
    blocker.run()
    assert app.run() is not None  # checked here: the name is free
    assert wait_for(lambda: "in the queue" in text(app.queue))
    (store / "taken-meanwhile").mkdir()  # someone else takes the name before the worker starts it
    (store / "taken-meanwhile" / "notes.txt").write_text("mine")
    blocker.cancel()
    assert app.wait(300) is None
    shown = text(app.error)
    said = "Experiment name: an experiment named 'taken-meanwhile' was stored by someone else while your run waited"
    assert shown.count("The run failed:") == 1 and said in shown, shown
    assert "Nothing was saved to the store" in shown and "Traceback" not in shown
    assert list(errors(app)) == ["name"] and said in errors(app)["name"]  # next to its control, in its words
    assert (store / "taken-meanwhile" / "notes.txt").read_text() == "mine"
    assert not app.run_button.disabled and app.results.children == ()
    app.name.value = "taken-then-free"
    assert app.error.value == "" and errors(app) == {}  # the old errors go when their control changes
    assert app.run() is not None and app.wait(300) is not None
    assert app.error.value == "" and "taken-then-free" in {m["name"] for m in list_experiments(store)}


def test_an_unreachable_scheduler_is_said_in_the_page(store, monkeypatch):
    monkeypatch.setenv("SIGNATURES_SCHEDULER", "tcp://127.0.0.1:9")  # nothing listens on the discard port
    app = tiny(BuilderApp(store), "nowhere")
    assert app.run() is None
    shown = text(app.error)
    assert shown.startswith('<div class="sig-error"') and "The run could not start" in shown
    assert "tcp://127.0.0.1:9" in shown and "Nothing was saved" in shown
    assert not app.run_button.disabled and "nowhere" not in {m["name"] for m in list_experiments(store)}


# --------------------------------------------------------------------------- the kernel stays light

KERNEL = r"""
import json, sys
from signatures.app import build_builder

app = build_builder(sys.argv[1])
assert "distributed" not in sys.modules, "Dask is imported on the first Run only"
app.dataset.value = "mnist"
app.check()  # mnist with no IDX folder would come from keras.datasets: the page leaves its counts to the worker
app.dataset.value = "digits"
app.digit_toggles.value = [1, 7]
app.anomaly_toggles.value = [3]
app.hidden.value = "8"
app.epochs.value = 2
app.k_max.value = 4
app.name.value = "from-a-kernel"
job = app.run()
status = app.cluster_note.value
exp = app.wait(600)
app.close()
print(json.dumps({"finished": exp is not None, "error": app.error.value, "status": status,
                  "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")),
                  "umap": "umap" in sys.modules, "layers": exp.layers if exp is not None else None}))
"""


def test_builder_kernel_never_imports_tensorflow_and_starts_its_own_cluster_without_a_scheduler(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SIGNATURES_SCHEDULER", "SIGNATURES_DATA_DIR")}
    proc = subprocess.run([sys.executable, "-c", KERNEL, str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] == "" and out["finished"], out
    assert "starts its own cluster of 1 worker" in out["status"]
    assert out["tensorflow"] == [] and not out["umap"]
    assert out["layers"] == ["hidden_1"]
    assert [m["name"] for m in list_experiments(tmp_path)] == ["from-a-kernel"]

