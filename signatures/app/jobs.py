"""Experiments as jobs on a Dask cluster (``dask.distributed``).

A job is one whole experiment: train, extract, cluster, project, save it to the store,
analyse it and write its report. It runs on a Dask worker, so the page or command that
submits it never imports TensorFlow, and as many jobs run at once as the cluster has
workers; the rest wait in the scheduler's queue, first come first served.

- :func:`start_cluster` starts a ``LocalCluster`` (worker processes, one thread each, each
  warming TensorFlow and UMAP once through :class:`WarmUp`); :func:`connect` joins a
  running scheduler by address (``--scheduler``, or ``$SIGNATURES_SCHEDULER``).
- :meth:`JobClient.submit` sends an :class:`~signatures.experiment.ExperimentConfig` and
  returns a :class:`Job`: its place in the queue, the stage and epoch progress streamed
  from the worker (Dask events), its result or error, and ``cancel()``.

Workers write into the store folder themselves: workers on other machines need the same
store path (a shared file system). The store's atomic saves make concurrent jobs safe.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

__all__ = [
    "JOB_PREFIX",
    "SCHEDULER_ENV",
    "JobCancelled",
    "JobFailed",
    "WarmUp",
    "run_job",
    "start_cluster",
    "connect",
    "JobClient",
    "Job",
]

JOB_PREFIX = "signatures-job-"
#: Scheduler address handed to the site's kernels and to commands.
SCHEDULER_ENV = "SIGNATURES_SCHEDULER"
#: Topic of the events every job logs when it starts and ends (for queue places).
STATE_TOPIC = "signatures-job-states"


class JobCancelled(RuntimeError):
    """Raised inside a job whose cancel event was set."""


class JobFailed(RuntimeError):
    """A job ended in an error; the message is the one to show the user."""


# ---------------------------------------------------------------------------------------
# On the worker
# ---------------------------------------------------------------------------------------

#: Held by the warm-up for its whole run: a job takes it before its own imports, because
#: importing numpy, scikit-learn and TensorFlow from two threads at once can break them.
_WARMING = threading.Lock()


#: The worker's side process, which fits a job's UMAP maps beside its clustering and analysis
#: (:mod:`signatures.sideprocess`); started by the warm-up.
_SIDE = {"pool": None}


def _side_process():
    """The worker's side process, started again if it ended; None where none can run (a daemonic
    worker of a cluster started elsewhere, one core): the maps are then fitted in the job."""
    from ..sideprocess import start_side_process, working

    pool = _SIDE["pool"]
    if pool is not None and not working(pool):
        pool = _SIDE["pool"] = None
    if pool is None:
        pool = _SIDE["pool"] = start_side_process()
    return pool


def _warm_up():
    """Runs in its own thread, holding :data:`_WARMING`, which :meth:`WarmUp.setup` took."""
    try:
        _side_process()  # loads UMAP in another process while this one imports TensorFlow
        from .. import models  # TensorFlow, once per worker process
        from ..projection import warm_up

        warm_up()
        models.warm_up()  # Keras' first fit and predict: not paid by the worker's first job
    finally:
        _WARMING.release()


def _worker_plugin_base():
    from distributed import WorkerPlugin

    return WorkerPlugin


class WarmUp(_worker_plugin_base()):
    """Worker plugin: import TensorFlow, train a tiny network and compile UMAP once, in a thread, when a worker starts.

    The worker keeps answering its scheduler meanwhile; a job that starts before the warm-up
    ends simply shares it.
    """

    name = "signatures-warm-up"
    idempotent = True

    def setup(self, worker):
        if _WARMING.acquire(blocking=False):  # taken here, so that no job can start its imports first
            threading.Thread(target=_warm_up, name="signatures-warm-up", daemon=True).start()

    def teardown(self, worker):
        from ..sideprocess import stop_side_process

        stop_side_process(_SIDE["pool"])
        _SIDE["pool"] = None


def run_job(config_dict, store, *, job_id, overwrite=False, words=None):
    """Carry out one experiment on a Dask worker and store it; returns a small summary dict.

    Progress goes out as Dask events on the topic ``job_id``: dicts with ``seq`` (0, 1, ...),
    ``stage``, ``fraction``, ``message`` and ``time``. A set cancel event (``job_id + "-cancel"``)
    stops the job at its next progress step with :class:`JobCancelled`; nothing is stored.
    Once the experiment is saved the job no longer stops: it finishes its analysis and
    report, so a stored experiment is always whole. The first ``"explanation"`` or ``"analysis"``
    event says the experiment is stored: a page may show it then, and its findings (and maps)
    when the job ends. ``words`` names the fields in messages
    as the submitting page does (see :meth:`ExperimentConfig.problems`).
    """
    from distributed import Event, get_worker

    seq = iter(range(1 << 62))
    if _WARMING.locked():
        get_worker().log_event(job_id, {"seq": next(seq), "stage": "warming", "fraction": 0.0, "time": time.time(),
                                        "message": "the worker is still loading TensorFlow and compiling UMAP"})
    with _WARMING:  # waits for a warm-up still under way
        pass
    from ..experiment import ExperimentConfig, run_experiment
    from .finish import finish_run
    from ..store import check_output, experiment_path

    worker = get_worker()
    cancel = Event(f"{job_id}-cancel")
    last_check = [0.0]
    cancellable = [True]

    def say(stage, fraction, message):
        now = time.time()
        if cancellable[0] and now - last_check[0] > 0.5:
            last_check[0] = now
            if cancel.is_set():
                raise JobCancelled(f"job {job_id} was cancelled")
        worker.log_event(job_id, {"seq": next(seq), "stage": stage, "fraction": float(fraction),
                                  "message": str(message), "time": now})

    worker.log_event(STATE_TOPIC, {"job": job_id, "state": "started", "worker": worker.address})
    try:
        start = time.perf_counter()
        say("started", 0.0, f"started on worker {worker.name}")
        config = ExperimentConfig.from_dict(config_dict).validate(words=words)
        path = experiment_path(store, config.name)
        check_output(path, overwrite=overwrite)
        from distributed import worker_client

        # Activations over the memory budget: the forward pass and the k-means go to the cluster's workers.
        exp = run_experiment(config, progress=say, words=words, workdir=store, client=worker_client,
                             projector=_side_process())
        cancellable[0] = False  # from here the job ends with its experiment stored

        def stored():  # the first event after it says that the experiment is stored
            say("explanation", 0.0, "why each path: attribution maps of chosen inputs, beside the analysis")

        analysis = finish_run(exp, path, overwrite=overwrite, progress=say, stored=stored)
        say("done", 1.0, f"stored {path.name}")
        return {
            "name": path.name,
            "accuracy": float(exp.metrics["accuracy"]),
            "k": {name: int(est.k_) for name, est in exp.clusterers.items()},
            "notes": {name: f"{est.status_}: {est.note_}" for name, est in exp.clusterers.items()
                      if est.status_ != "ok"},
            "seconds": round(time.perf_counter() - start, 1),
            "timings": dict(exp.timings),
            "findings": list(analysis.get("findings", [])),
        }
    finally:
        worker.log_event(STATE_TOPIC, {"job": job_id, "state": "ended"})


# ---------------------------------------------------------------------------------------
# The cluster
# ---------------------------------------------------------------------------------------


def worker_threads(n_workers, cores=None):
    """Threads each of ``n_workers`` workers gives its numeric libraries: its share of the cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, int(n_workers)))


def start_cluster(*, n_workers=2, memory_limit="auto", warm=True, dashboard=False):
    """A ``LocalCluster`` for jobs: worker processes with one thread each, and a client.

    Parameters
    ----------
    n_workers : int
        Experiments run at once; each worker holds TensorFlow (about 1 GiB).
    memory_limit : str or int
        Per worker, as Dask takes it (``"auto"``: the machine's memory shared out).
    warm : bool
        Register :class:`WarmUp` so that every worker imports TensorFlow and compiles UMAP
        once, before its first job.
    dashboard : bool
        Serve Dask's dashboard on a free loopback port.

    Returns
    -------
    JobClient
    """
    import dask
    from distributed import Client, LocalCluster

    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or not 1 <= n_workers <= 64:
        raise ValueError(f"workers must be a whole number from 1 to 64, got {n_workers!r}")
    # One job per worker at a time; the others wait on the scheduler, in submission order. Each
    # worker's numeric libraries get its share of the cores (Dask's default is one thread each:
    # a lone worker on 2 cores would leave one idle while a student's run trains).
    share = str(worker_threads(n_workers))
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"),
                   OMP_NUM_THREADS=share, MKL_NUM_THREADS=share, OPENBLAS_NUM_THREADS=share)
    # Dask's statistical profiler walks the job thread's stack every 10 ms: TensorFlow's and UMAP's
    # deep stacks made a run about 8% slower (bench_builder_load: 9.5 s of stages against 8.8 s).
    # Workers are not daemonic processes, so that each may start its side process (the UMAP maps).
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                          "distributed.worker.daemon": False,
                          "distributed.worker.profile.enabled": False,
                          "distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
            host="127.0.0.1", dashboard_address="127.0.0.1:0" if dashboard else None, silence_logs=40,
        )
    client = Client(cluster)
    return JobClient(client, cluster=cluster, warm=warm)


def connect(address=None, *, warm=True, timeout=30):
    """A :class:`JobClient` on a running scheduler (``address``, else ``$SIGNATURES_SCHEDULER``)."""
    from distributed import Client

    address = address or os.environ.get(SCHEDULER_ENV)
    if not address:
        raise ValueError(f"no scheduler address: give one (tcp://HOST:PORT) or set {SCHEDULER_ENV}")
    try:
        client = Client(address, timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"no Dask scheduler answers at {address!r} ({exc}); start one with "
                              "'python -m signatures serve' or 'dask scheduler'") from None
    return JobClient(client, warm=warm)


class JobClient:
    """Submit experiments as jobs to a Dask cluster and follow them.

    Parameters
    ----------
    client : distributed.Client
    cluster : distributed.LocalCluster, optional
        Closed with the client when this object started it.
    warm : bool
        Register :class:`WarmUp` on the workers (once per worker; idempotent).
    """

    def __init__(self, client, *, cluster=None, warm=True):
        self.client = client
        self.cluster = cluster
        if warm:
            client.register_plugin(WarmUp(), name=WarmUp.name)

    @property
    def address(self):
        """The scheduler's address, for other processes to :func:`connect` to."""
        return self.client.scheduler.address

    @property
    def n_workers(self):
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def submit(self, config, store, *, overwrite=False, words=None):
        """Queue one experiment; returns its :class:`Job` at once.

        ``config`` is checked here, before it is queued (ValueError naming the bad field);
        ``store`` is the folder the worker saves into; ``words`` names fields in messages as
        the caller's page or options do.
        """
        from ..store import check_name

        config = replace(config).validate(words=words)
        check_name(config.name)
        job_id = f"{JOB_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:6]}-{config.name}"
        future = self.client.submit(run_job, config.to_dict(), str(Path(store).resolve()), job_id=job_id,
                                    overwrite=overwrite, words=words, key=job_id, pure=False, retries=0)
        return Job(self, job_id, config.name, future)

    def queue(self):
        """Keys of the jobs the scheduler holds and that have not ended, oldest first."""
        prefix = JOB_PREFIX

        def active(dask_scheduler):
            return sorted(k for k, ts in dask_scheduler.tasks.items()
                          if isinstance(k, str) and k.startswith(prefix)
                          and ts.state in ("released", "waiting", "queued", "no-worker", "processing"))

        return self.client.run_on_scheduler(active)

    def started(self):
        """Ids of jobs that have started and not ended."""
        state = {}
        for _, msg in self.client.get_events(STATE_TOPIC):
            state[msg["job"]] = msg["state"]
        return {job for job, s in state.items() if s == "started"}

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Job:
    """One submitted experiment. Cheap to poll; every method answers at once.

    Attributes
    ----------
    id : str
        The Dask key, which sorts in submission order.
    name : str
        The experiment's name in the store.
    """

    def __init__(self, jobs, job_id, name, future):
        self.jobs, self.id, self.name, self.future = jobs, job_id, name, future
        self._cancelled = False

    @property
    def state(self):
        """``"waiting"``, ``"running"``, ``"finished"``, ``"failed"`` or ``"cancelled"``."""
        status = self.future.status
        if self._cancelled and status != "finished":
            return "cancelled"
        if status == "finished":
            return "finished"
        if status == "error":
            return "cancelled" if isinstance(self.future.exception(), JobCancelled) else "failed"
        if status == "cancelled":
            return "cancelled"
        return "running" if self.events() else "waiting"

    def position(self):
        """Place in the queue (1 = next to start), or None once started or ended."""
        if self.state != "waiting":
            return None
        started = self.jobs.started()
        ahead = [k for k in self.jobs.queue() if k < self.id and k not in started]
        return len(ahead) + 1

    def events(self):
        """Progress so far: dicts with ``seq``, ``stage``, ``fraction``, ``message``, ``time``, in order."""
        return sorted((msg for _, msg in self.jobs.client.get_events(self.id)), key=lambda m: m["seq"])

    def cancel(self):
        """Stop the job: a waiting one never starts, a running one stops at its next step."""
        from distributed import Event

        waiting = self.state == "waiting"
        self._cancelled = True
        Event(f"{self.id}-cancel", client=self.jobs.client).set()
        if waiting:
            self.future.cancel()

    def error(self):
        """The error message of a failed job (in the user's words), else None."""
        if self.future.status != "error":
            return None
        exc = self.future.exception()
        if isinstance(exc, JobCancelled):
            return None
        return _message(exc)

    def result(self, timeout=None):
        """The job's summary dict; raises :class:`JobFailed` with the message, or JobCancelled."""
        from distributed import CancelledError

        try:
            return self.future.result(timeout=timeout)
        except JobCancelled:
            raise
        except CancelledError:
            raise JobCancelled(f"job {self.id} was cancelled") from None
        except TimeoutError:
            raise
        except Exception as exc:  # the worker's error, re-raised here: hand its words on
            raise JobFailed(_message(exc)) from exc


def _message(exc):
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ in ("ResourceExhaustedError", "MemoryError"):
        return f"the worker ran out of memory ({text}); choose smaller layers or fewer images"
    return text
