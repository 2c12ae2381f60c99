"""Past one machine: a 70,000 x 6,272 layer extracted and clustered on a Dask cluster whose workers hold less.

Run from the repository root::

    python bench/bench_outofcore.py                            # all 70,000 Fashion-MNIST images
    python bench/bench_outofcore.py --n 20000 --memory-limit 256   # smaller
    python bench/bench_outofcore.py --skip-cluster-extraction  # extraction in this process only

What it does, on real activations:

1. Trains the canonical CNN (8, 16 filters, dense 32; ``--epochs`` 1) on ``--n`` Fashion-MNIST
   images (all 70,000 by default, read offline from ``--fashion-dir``) and saves it.
2. Extraction, ``--reduce flatten`` (every position x channel: ``conv_1`` has 6,272 units, 1,675 MiB
   as float32 for 70,000 images): once in this process with
   :func:`signatures.activations.extract` (``out=``, memory-mapped files), once on a
   ``LocalCluster`` of ``--workers`` TensorFlow workers with
   :func:`signatures.outofcore.extract_on_cluster`; wall times, and whether the files are equal.
3. Clustering ``--layer`` (default ``conv_1``) on a fresh ``LocalCluster`` of ``--workers`` workers
   without TensorFlow, each limited to ``--memory-limit`` MiB, together less than the layer:
   :func:`signatures.outofcore.cluster_layer` (K 2..10 by silhouette on the sample LayerKMeans
   uses, then Lloyd over every row). The bench samples every worker's RSS every 0.2 s (and reads
   Dask's own monitor), and checks that no worker was restarted.
4. The single-machine :class:`signatures.clustering.LayerKMeans` on the same memory-mapped file
   (fitted on its sample, every row assigned): wall time, K, the adjusted Rand index between the
   two clusterings, and both inertias (sum of squared distances of every row to its center).

Results go to ``bench/results/outofcore.json`` (``--out``); ``docs/performance-outofcore.md``
describes a run. Activation files go to a temporary folder (``--work``), removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import other_load, say, table  # noqa: E402  (bench/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
OUT = REPO / "bench" / "results" / "outofcore.json"


class RssWatch:
    """Peak RSS (MiB) of a set of processes, sampled every ``every`` seconds in a thread."""

    def __init__(self, pids, every=0.2):
        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = {pid: 0.0 for pid in pids}
        self.every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            for pid, proc in self.procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def self_rss_mib():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def load_images(args):
    import numpy as np

    from signatures.data import load_dataset, model_inputs

    data = load_dataset("fashion-mnist", data_dir=args.fashion_dir)
    rows = np.arange(len(data.labels))
    if args.n < len(rows):
        rows = np.sort(np.random.default_rng(0).choice(len(rows), args.n, replace=False))
    X = model_inputs(data.images[rows], "fashion-mnist", flatten=False).astype(np.float32)
    return X, np.asarray(data.labels)[rows]


def train_model(X, y, args, folder):
    from signatures.data import one_hot
    from signatures.models import build_cnn, save_model, train

    model = build_cnn(X.shape[1:], 10, seed=0)
    train(model, X, one_hot(y, list(range(10))), epochs=args.epochs, seed=0)
    return model, save_model(model, Path(folder) / "cnn.keras")


def inertia(values, centers, labels, step=4096):
    """Sum of squared distances of every row of a memory-mapped layer to its cluster's center."""
    import numpy as np

    from signatures._mapped import drop_pages

    total = 0.0
    for a in range(0, len(values), step):
        block = np.asarray(values[a:a + step], dtype=np.float64)
        total += float(((block - centers[labels[a:a + step]]) ** 2).sum())
        drop_pages(values)
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=70_000, help="images (default all 70,000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--layer", default="conv_1")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", type=int, default=640, help="MiB per clustering worker (default 640)")
    p.add_argument("--chunk-mib", type=int, default=32, help="MiB per chunk of rows (default 32)")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--skip-cluster-extraction", action="store_true")
    p.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--work", help="folder for the activation files (default a temporary one, removed)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    import numpy as np

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-outofcore-"))
    res = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()},
           "load_before": other_load(), "settings": vars(args) | {"out": str(args.out), "work": str(work)}}
    try:
        # 1. a real model -----------------------------------------------------------------------
        say(f"loading {args.n:,} Fashion-MNIST images, training the CNN for {args.epochs} epoch(s)")
        t = time.perf_counter()
        X, y = load_images(args)
        model, model_path = train_model(X, y, args, work)
        res["training_s"] = round(time.perf_counter() - t, 1)

        # 2. extraction --------------------------------------------------------------------------
        from signatures.activations import extract
        from signatures.outofcore import activation_arrays, cluster_layer, extract_on_cluster

        say("extraction in this process (extract, out=)")
        (work / "local").mkdir()
        t = time.perf_counter()
        local, _ = extract(model, X, reduce="flatten", out=work / "local")
        res["extract_local_s"] = round(time.perf_counter() - t, 1)
        names = list(local)
        j = names.index(args.layer)
        layer_bytes = local[args.layer].nbytes
        res["layer"] = {"name": args.layer, "shape": list(local[args.layer].shape),
                        "mib": round(layer_bytes / 2**20, 1), "all_layers": {n: list(v.shape) for n, v in local.items()}}
        say(f"{args.layer}: {local[args.layer].shape}, {layer_bytes / 2**20:,.0f} MiB")

        from signatures.app.jobs import start_cluster

        if not args.skip_cluster_extraction:
            say(f"extraction on a LocalCluster of {args.workers} TensorFlow workers (extract_on_cluster)")
            jobs = start_cluster(n_workers=args.workers, warm=False)
            try:
                t = time.perf_counter()
                remote, _ = extract_on_cluster(jobs.client, model_path, X, work / "cluster", reduce="flatten")
                res["extract_cluster_s"] = round(time.perf_counter() - t, 1)
                equal = all(np.array_equal(remote[n], local[n]) for n in names)
                res["extract_cluster_equal"] = bool(equal)
                say(f"cluster extraction {res['extract_cluster_s']} s (TensorFlow imported by the workers "
                    f"inside it), files equal: {equal}")
                del remote
            finally:
                jobs.close()
            shutil.rmtree(work / "cluster", ignore_errors=True)
        del model

        # 3. clustering on memory-limited workers ------------------------------------------------
        limit = args.memory_limit << 20
        say(f"clustering {args.layer} on {args.workers} workers of {args.memory_limit} MiB "
            f"({args.workers * args.memory_limit} MiB in all, the layer {layer_bytes / 2**20:,.0f} MiB)")
        jobs = start_cluster(n_workers=args.workers, memory_limit=limit, warm=False)
        client = jobs.client
        try:
            pids = client.run(os.getpid)
            array = activation_arrays(work / "local", names, chunk_bytes=args.chunk_mib << 20)[args.layer]
            client_before = self_rss_mib()
            with RssWatch(list(pids.values())) as watch:
                t = time.perf_counter()
                est = cluster_layer(array, client=client, max_iter=args.max_iter)
                wall = time.perf_counter() - t
            monitor = client.run(lambda dask_worker: max(dask_worker.monitor.quantities["memory"]) / 2**20)
            restarted = client.run(os.getpid) != pids
            res["dask"] = {"wall_s": round(wall, 1), "k": est.k_, "n_iter": int(est.n_iter_),
                           "inertia": est.inertia_, "fitted_rows": est.fitted_rows_, "note": est.note_,
                           "silhouette": est.silhouette_scores_, "chunks": len(array.chunks[0]),
                           "worker_peak_rss_mib": {str(k): round(v, 1) for k, v in watch.peak.items()},
                           "worker_peak_monitor_mib": {k: round(v, 1) for k, v in monitor.items()},
                           "memory_limit_mib": args.memory_limit, "restarted": restarted,
                           "client_rss_mib": [round(client_before, 1), round(self_rss_mib(), 1)]}
            say(f"dask: {wall:.1f} s, K = {est.k_}, {est.n_iter_} Lloyd iterations, worker peak RSS "
                f"{max(watch.peak.values()):.0f} MiB, restarted: {restarted}")
        finally:
            jobs.close()

        # 4. the single-machine LayerKMeans on the same file ------------------------------------
        from signatures.clustering import LayerKMeans
        from sklearn.metrics import adjusted_rand_score

        say("LayerKMeans on one machine (sampled fit, every row assigned)")
        values = np.load(work / "local" / f"act-{j}.npy", mmap_mode="r")
        t = time.perf_counter()
        single = LayerKMeans(random_state=0).fit(values)
        res["single"] = {"wall_s": round(time.perf_counter() - t, 1), "k": single.k_,
                         "fitted_rows": single.fitted_rows_, "silhouette": single.silhouette_scores_,
                         "inertia": inertia(values, single.centers_, single.labels_)}
        res["agreement"] = {"ari": float(adjusted_rand_score(single.labels_, est.labels_)),
                            "same_k": single.k_ == est.k_,
                            "same_silhouette_curve": single.silhouette_scores_ == est.silhouette_scores_,
                            "inertia_ratio_dask_to_single": est.inertia_ / res["single"]["inertia"]}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    d, s, a = res["dask"], res["single"], res["agreement"]
    table(f"{args.layer} {res['layer']['shape']} ({res['layer']['mib']:,} MiB), workers of {args.memory_limit} MiB",
          ["path", "wall s", "K", "iterations", "peak worker RSS MiB", "inertia"],
          [["dask (cluster_layer)", d["wall_s"], d["k"], d["n_iter"], f"{max(d['worker_peak_rss_mib'].values()):.0f}",
            f"{d['inertia']:.4g}"],
           ["LayerKMeans", s["wall_s"], s["k"], "-", "-", f"{s['inertia']:.4g}"]])
    print(f"ARI between them {a['ari']:.4f}; same K: {a['same_k']}; inertia dask / single "
          f"{a['inertia_ratio_dask_to_single']:.4f}; extraction: {res['extract_local_s']} s here, "
          f"{res.get('extract_cluster_s', '-')} s on the cluster (equal: {res.get('extract_cluster_equal', '-')})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str))
    say(f"results in {args.out}")


if __name__ == "__main__":
    main()
