"""The original study's canonical experiments, built into a store by one command.

``python -m signatures canonical [--store runs]`` builds the ones missing from the store:

========================  ==============  ===============  ==========================
name                      dataset         trained on       anomalies highlighted
========================  ==============  ===============  ==========================
``1v7-mlp``               MNIST           1, 7             3, 4  (MLP 64-32)
``1v3-mlp``               MNIST           1, 3             2     (MLP 64-32)
``1v7-cnn``               MNIST           1, 7             3, 4  (CNN 8-16, dense 32)
``fashion-shirt-trouser-sneaker``  Fashion-MNIST  0, 1, 7  5 (sandal), 8 (bag)
========================  ==============  ===============  ==========================

Each is stored with ``all_unseen=True``: held-out images of every class not trained on
are pushed through the model and assigned to its clusters at build time, so the gallery
can insert any unseen class without TensorFlow.

Every experiment is built as a job on Dask (:mod:`signatures.app.jobs`): on a local
cluster started for the build (``workers`` experiments at once), on a running scheduler
(``scheduler``), or on a :class:`~signatures.app.jobs.JobClient` the caller holds (the
landing page's button uses :func:`submit_canonical`). The caller's process never imports
TensorFlow. :func:`follow_jobs` follows submitted jobs to their end with their progress,
and cancels them on Ctrl-C (:class:`JobsInterrupted`); :func:`open_jobs` starts or joins
the cluster. Both serve ``python -m signatures sweep`` too (:mod:`signatures.sweep`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path

from .experiment import ExperimentConfig

__all__ = ["CANONICAL", "MAX_WORKERS", "JobsInterrupted", "absolute_data_dir", "default_workers",
           "check_cluster_options", "open_jobs", "follow_jobs", "stored_outcome", "what_is_stored", "submit_canonical",
           "build_canonical"]

CANONICAL = (
    ExperimentConfig(name="1v7-mlp", dataset="mnist", digits=(1, 7), anomalies=(3, 4), hidden=(64, 32)),
    ExperimentConfig(name="1v3-mlp", dataset="mnist", digits=(1, 3), anomalies=(2,), hidden=(64, 32)),
    ExperimentConfig(name="1v7-cnn", dataset="mnist", digits=(1, 7), anomalies=(3, 4), arch="cnn",
                     filters=(8, 16), hidden=(32,)),
    ExperimentConfig(name="fashion-shirt-trouser-sneaker", dataset="fashion-mnist", digits=(0, 1, 7),
                     anomalies=(5, 8), n_per_class=2000, hidden=(64, 32)),
)

#: Most workers of a local cluster (each holds TensorFlow, about 1 GiB).
MAX_WORKERS = 64

#: Seconds to wait for a given scheduler to answer.
CONNECT_TIMEOUT = 10

#: Outcome of a job cancelled before its experiment was stored.
CANCELLED = "not built: cancelled"


class JobsInterrupted(KeyboardInterrupt):
    """Ctrl-C while following jobs: the unfinished ones were cancelled.

    Attributes
    ----------
    outcome : dict[str, str]
        Name -> outcome of every job, as :func:`follow_jobs` returns it; the callers
        (:func:`build_canonical`, :func:`signatures.sweep.run_sweep`) replace it with what
        the store holds.
    """

    def __init__(self, outcome):
        super().__init__("interrupted")
        self.outcome = outcome


# ---------------------------------------------------------------------------------------
# The cluster and the jobs
# ---------------------------------------------------------------------------------------


def absolute_data_dir(data_dir):
    """Relative data folders (``"data:../fashion"``) made absolute, so that workers started elsewhere find them."""
    if not isinstance(data_dir, str) or not data_dir.strip():
        return data_dir
    return ":".join(str(Path(part).expanduser().resolve()) for part in data_dir.split(":") if part)


def default_workers():
    """Workers of a local cluster by default: half the cores this process may use, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(1, min(cores // 2, MAX_WORKERS))


def check_cluster_options(workers=None, scheduler=None, *, words=None):
    """Problems with the cluster options, as a list of messages (empty when all is well).

    Parameters
    ----------
    workers : int or None
        Experiments at once on a local cluster, 1 .. :data:`MAX_WORKERS`; None: :func:`default_workers`.
    scheduler : str or None
        Address of a running Dask scheduler (``tcp://HOST:PORT``); then no local cluster is started.
    words : dict, optional
        ``{"workers": ..., "scheduler": ...}``: the words the user sees for the two options.
    """
    w = {"workers": "workers", "scheduler": "scheduler"}
    w.update(words or {})
    problems = []
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= MAX_WORKERS):
        problems.append(f"{w['workers']} must be a whole number from 1 to {MAX_WORKERS} (each worker holds "
                        f"TensorFlow, about 1 GiB), got {workers!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()
                                  or any(c.isspace() for c in scheduler.strip())):
        problems.append(f"{w['scheduler']} must be the address of a running Dask scheduler, e.g. "
                        f"tcp://10.0.0.5:8786, got {scheduler!r}")
    if workers is not None and scheduler is not None and not problems:
        problems.append(f"{w['workers']} sets the size of a local cluster; with {w['scheduler']} the scheduler's "
                        f"own workers run the jobs: give one of the two, got both ({workers!r} and {scheduler!r})")
    return problems


@contextlib.contextmanager
def open_jobs(*, workers=None, scheduler=None, jobs=None):
    """A :class:`~signatures.app.jobs.JobClient` for the length of a ``with`` block.

    ``jobs``, if given, is used as is and left open; else a running ``scheduler`` is joined,
    else a local cluster of ``workers`` worker processes is started (and closed at the end).
    Raises ValueError naming a bad option (see :func:`check_cluster_options`), or a
    scheduler that does not answer within :data:`CONNECT_TIMEOUT` seconds.
    """
    if jobs is not None:
        yield jobs
        return
    problems = check_cluster_options(workers, scheduler)
    if problems:
        raise ValueError(problems[0])
    from .app.jobs import connect, start_cluster

    if scheduler is not None:
        try:
            client = connect(scheduler.strip(), timeout=CONNECT_TIMEOUT)
        except (ConnectionError, TimeoutError) as exc:  # an address nothing answers at: the user's value
            raise ValueError(str(exc)) from None
    else:
        client = start_cluster(n_workers=workers if workers is not None else default_workers())
    try:
        yield client
    finally:
        client.close()


def _ended_outcome(job):
    state = job.state
    if state == "finished":
        return f"built in {float(job.result()['seconds']):.0f} s"
    if state == "failed":
        return f"not built: {job.error()}"
    return CANCELLED


def follow_jobs(submitted, *, progress=None, poll=0.5, cancel_wait=60.0):
    """Wait for submitted jobs to end, handing on their progress as it streams in.

    Parameters
    ----------
    submitted : dict[str, Job or str]
        Name -> :class:`~signatures.app.jobs.Job`, or an outcome already known (a string,
        e.g. "kept"), as :func:`submit_canonical` returns them.
    progress : callable, optional
        ``progress(name, event)`` for every progress event of every job, in order per job:
        ``event`` has ``stage``, ``fraction`` and ``message``. While a job waits, events of
        stage ``"queued"`` give its place in the queue whenever it changes.
    poll : float
        Seconds between looks at the jobs.
    cancel_wait : float
        On Ctrl-C, most seconds to wait for the cancelled jobs to stop.

    Returns
    -------
    dict[str, str]
        Name -> "built in N s", "not built: " and the job's error, or "not built: cancelled";
        known outcomes are passed through. In the order of ``submitted``.

    Raises
    ------
    JobsInterrupted
        On Ctrl-C, after every unfinished job was cancelled and has stopped (or
        ``cancel_wait`` passed); its ``outcome`` says how each job ended.
    """
    outcome = {name: job for name, job in submitted.items() if isinstance(job, str)}
    live = {name: job for name, job in submitted.items() if not isinstance(job, str)}
    next_seq = dict.fromkeys(live, 0)
    places = {}

    def hand_on(name, job):
        for event in job.events():
            if event["seq"] == next_seq[name]:
                next_seq[name] += 1
                if progress is not None:
                    progress(name, event)

    def look():
        waiting = []
        for name, job in live.items():
            if name in outcome:
                continue
            hand_on(name, job)
            state = job.state
            if state in ("finished", "failed", "cancelled"):
                if state == "finished":  # its last events may still be on their way
                    deadline = time.monotonic() + 2.0
                    while time.monotonic() < deadline and not any(
                            e["stage"] == "done" for e in job.events()):
                        time.sleep(0.1)
                    hand_on(name, job)
                outcome[name] = _ended_outcome(job)
            elif state == "waiting":
                waiting.append((name, job))
        if waiting and progress is not None:
            client = waiting[0][1].jobs
            queue, started = client.queue(), client.started()
            for name, job in waiting:
                ahead = [k for k in queue if k < job.id and k not in started]
                place = len(ahead) + 1
                if places.get(name) != place and job.id in queue:
                    places[name] = place
                    progress(name, {"stage": "queued", "fraction": 0.0,
                                    "message": f"waiting, place {place} in the queue"})

    try:
        while True:
            look()
            if len(outcome) == len(submitted):
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        for name, job in live.items():
            if name not in outcome:
                job.cancel()
        deadline = time.monotonic() + cancel_wait
        while time.monotonic() < deadline and any(
                job.state not in ("finished", "failed", "cancelled") for job in live.values()):
            time.sleep(0.2)
        for name, job in live.items():
            if name not in outcome:
                ended = job.state in ("finished", "failed", "cancelled")
                outcome[name] = _ended_outcome(job) if ended else f"{CANCELLED} (still stopping)"
        raise JobsInterrupted({name: outcome[name] for name in submitted}) from None
    return {name: outcome[name] for name in submitted}


def stored_outcome(path, config=None):
    """What is at ``path``, which exists and is not to be overwritten: "kept" if an experiment.

    With ``config``, the stored experiment must be of that config (the same
    :meth:`~signatures.experiment.ExperimentConfig.key`), else it is named as another one.
    Returns "kept" or "not built: " and the reason.
    """
    from .store import is_experiment_folder, read_manifest

    ok, why = is_experiment_folder(path)
    if not ok:
        return f"not built: {str(path)!r} exists but is not an experiment ({why}); move it away first"
    try:
        manifest = read_manifest(path)
    except (ValueError, OSError) as exc:
        return f"not built: {str(path)!r} is a damaged experiment ({exc}); rebuild it with --overwrite"
    if config is not None and manifest.get("key") != _key(config):
        return (f"not built: {str(path)!r} holds another experiment of that name (its config differs); "
                "rebuild it with --overwrite, or choose another name")
    return "kept"


def _key(config):
    try:
        return replace(config).validate().key()  # the stored config is the validated one
    except ValueError:
        return config.key()


# ---------------------------------------------------------------------------------------
# The canonical experiments
# ---------------------------------------------------------------------------------------


def _check_only(only):
    names = [c.name for c in CANONICAL]
    if only is not None and (isinstance(only, str) or not all(isinstance(n, str) for n in only)):
        raise ValueError(f"only must be a list of canonical names {names}, got {only!r}")
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"no canonical experiment named {unknown}; they are {names}")


def _plan(store, *, only, overwrite, data_dir):
    """Name -> config to build, or the outcome already known ("kept", "not built: ...")."""
    from .store import StoreError, check_output, experiment_path

    _check_only(only)
    plan = {}
    for base in CANONICAL:
        if only and base.name not in only:
            continue
        path = experiment_path(store, base.name)
        try:
            check_output(path, overwrite=overwrite)
        except FileExistsError:
            plan[base.name] = stored_outcome(path)
            continue
        except (ValueError, StoreError) as exc:
            plan[base.name] = f"not built: {exc}"
            continue
        plan[base.name] = replace(base, all_unseen=True, data_dir=absolute_data_dir(data_dir))
    return plan


def _submit(jobs, plan, store, *, overwrite):
    out = {}
    for name, config in plan.items():
        if isinstance(config, str):
            out[name] = config
            continue
        try:
            out[name] = jobs.submit(config, store, overwrite=overwrite)
        except ValueError as exc:
            out[name] = f"not built: {exc}"
    return out


def submit_canonical(jobs, store, *, only=None, overwrite=False, data_dir=None):
    """Queue the canonical experiments that the store lacks as jobs; returns at once.

    Parameters
    ----------
    jobs : signatures.app.jobs.JobClient
    store : str or Path
        The store folder the workers save into (workers on other machines need the same path).
    only : collection of str, optional
        Names to build; all by default. An unknown name raises ValueError before anything is queued.
    overwrite : bool
        Rebuild those already stored (only a complete experiment is ever replaced).
    data_dir : str, optional
        Folder(s) of IDX files, as the workers see them (default: their ``$SIGNATURES_DATA_DIR``).

    Returns
    -------
    dict[str, Job or str]
        Name -> the queued :class:`~signatures.app.jobs.Job`, or, for one not queued, "kept"
        (stored already) or "not built: " and the reason (a folder in the way that is not an
        experiment, a damaged one, a store that cannot be written). Follow the jobs with
        :func:`follow_jobs`, or poll each job's ``state``, ``position()`` and ``events()``.
    """
    return _submit(jobs, _plan(store, only=only, overwrite=overwrite, data_dir=data_dir), store,
                   overwrite=overwrite)


def build_canonical(store, *, data_dir=None, only=None, overwrite=False, progress=None, jobs=None, workers=None,
                    scheduler=None):
    """Build and save the canonical experiments that the store lacks, as jobs on Dask.

    Parameters
    ----------
    store : str or Path
    data_dir : str, optional
        Folder(s) of IDX files (see :func:`signatures.data.load_dataset`).
    only : collection of str, optional
        Names to build; all by default.
    overwrite : bool
        Rebuild those already stored.
    progress : callable, optional
        ``progress(name, event)`` for every progress event of every job (see :func:`follow_jobs`).
    jobs : signatures.app.jobs.JobClient, optional
        Run the jobs there (left open). Without it a cluster is started (or joined) only
        when something is to be built, and closed at the end.
    workers : int, optional
        Workers of the local cluster, 1 .. :data:`MAX_WORKERS` (default :func:`default_workers`).
    scheduler : str, optional
        Address of a running Dask scheduler to use instead of a local cluster; its workers
        must see the same ``store`` path.

    Returns
    -------
    dict[str, str]
        Name -> "built in N s", "kept" (stored already) or "not built: " and the error that
        stopped it (data not available, a folder in the way that is not an experiment, a
        failed save, which leaves what was stored unchanged).

    Raises
    ------
    ValueError
        An unknown name in ``only``, or a bad ``workers`` / ``scheduler``, before any job.
    JobsInterrupted
        On Ctrl-C: the jobs were cancelled; its ``outcome`` says what the store holds.
    """
    problems = check_cluster_options(workers, scheduler)
    if problems:
        raise ValueError(problems[0])
    plan = _plan(store, only=only, overwrite=overwrite, data_dir=data_dir)
    if all(isinstance(v, str) for v in plan.values()):
        return plan
    with open_jobs(workers=workers, scheduler=scheduler, jobs=jobs) as client:
        submitted = _submit(client, plan, store, overwrite=overwrite)
        try:
            return follow_jobs(submitted, progress=progress)
        except JobsInterrupted as exc:
            exc.outcome = what_is_stored(store, plan, exc.outcome)
            raise


def what_is_stored(store, plan, outcome):
    """After an interruption: a cancelled job whose experiment was saved anyway is named stored."""
    from .store import experiment_path

    out = dict(outcome)
    for name, value in outcome.items():
        config = plan.get(name)
        if isinstance(config, str) or config is None or not value.startswith(CANCELLED):
            continue
        path = experiment_path(store, name)
        if path.exists() and stored_outcome(path, config) == "kept":
            out[name] = ("stored, but cancelled before its analysis and report.html were written "
                         f"(python -m signatures report {path} draws them)")
    return out
