"""A second process for a stand-alone run: the UMAP maps, fitted on the other core.

A ``run`` in a fresh process spends its first 6 to 8 seconds importing TensorFlow on one core,
then trains, extracts, clusters, analyses and explains. The maps need none of TensorFlow. So
the run starts a side process first: it loads umap-learn and its cached kernels while
TensorFlow is imported, and later fits every layer's map while this process analyses the
clusters and computes the attribution maps. The maps are the same to the last bit as maps
fitted here (same rows, same seed, same code); only the wall time changes.

The side process is a one-worker :class:`concurrent.futures.ProcessPoolExecutor` started with
``spawn``, so it never inherits TensorFlow's threads. When no process can be started, or it
ends early, the maps are fitted in this process as before (:class:`signatures.projection.PendingMaps`).
This is parallelism inside one run, not a queue of jobs: queued and distributed work goes to
the Dask cluster (:mod:`signatures.app.jobs`).
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

__all__ = ["SIDE_PROCESS_ENV", "start_side_process", "stop_side_process", "working"]

#: Set to ``0`` to fit the maps in the run's own process (for debugging, or a machine with one core).
SIDE_PROCESS_ENV = "SIGNATURES_SIDE_PROCESS"


def _warm():
    """The side process's start: umap-learn imported (without TensorFlow) and its kernels loaded.

    It ignores Ctrl-C (which reaches the whole process group): the run it serves says that it was
    interrupted and lets it go (:func:`stop_side_process`).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .projection import import_umap, warm_up

    import_umap()
    warm_up()


def _started():
    return os.getpid()


def start_side_process():
    """A one-process pool that has begun loading umap-learn, or None.

    None when :data:`SIDE_PROCESS_ENV` is ``0``, when the machine has a single core, or when
    no process can be started (the caller then fits the maps itself).
    """
    if os.environ.get(SIDE_PROCESS_ENV, "").strip() == "0" or (os.cpu_count() or 1) < 2:
        return None
    try:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_warm)
        pool.submit(_started)  # the pool starts its process on the first task: now, beside the imports
    except (OSError, RuntimeError, AssertionError):  # AssertionError: a daemonic Dask worker has no children
        return None
    return pool


def working(pool):
    """Whether ``pool`` still takes tasks (its process did not end)."""
    try:
        pool.submit(_started)
    except (RuntimeError, OSError):  # BrokenProcessPool is a RuntimeError; so is a shut-down pool
        return False
    return True


def stop_side_process(pool):
    """Let the side process end once its task at hand is done, without waiting; None is accepted."""
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
