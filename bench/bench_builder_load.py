"""The Builder under a class: 30 runs submitted at once as Dask jobs, against one run alone.

Run from the repository root::

    python bench/bench_builder_load.py                      # 30 runs on a 2-worker LocalCluster
    python bench/bench_builder_load.py --runs 4 --quick      # a short check
    python bench/bench_builder_load.py --scheduler tcp://HOST:8786   # on a running cluster

What the Builder page does on Run, without the page: each run is the page's config (a 1 vs 7 MLP
64-32, unseen 3 and 4, every unseen class kept, 5 epochs, K 2..10, 2,000 UMAP points; here with
``--n-per-class`` images per class, default 300) submitted through
:class:`signatures.app.jobs.JobClient` into a temporary store. A second client on the same
scheduler (as a page kernel is one) follows every job's queue place and progress events while
they run. The bench records:

- that every run completes (its experiment is stored) and the progress events of each arrive in
  order, ending in ``done``;
- the time from submitting all of them to the last result, and each one's queue wait and run;
- peak RSS of the Dask workers (all of them with their side processes, sampled every 0.5 s) and of
  the submitting process:
  they are bounded by the worker count, not by the number of runs;
- one run alone on the same warmed cluster, with all the 1s and 7s of the MNIST test set
  (2,163 images: the run the issue timed at 7.7 s in a Builder kernel before jobs), and one
  alone with the load's size, for comparison.

MNIST is read offline from ``$SIGNATURES_DATA_DIR`` (default ``../shared/data``). Results go to
``bench/results/builder_load.json``; ``docs/performance-class.md`` describes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import other_load, say, table, verdict  # noqa: E402  (bench/ on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_OUT = REPO / "bench" / "results" / "builder_load.json"
TODAY_SOLO_S = 7.7          # the figure: a 1 vs 7 MLP 64-32 on all 2,163 images, Builder kernel
MAX_RUNS = 100


def default_data_dir():
    return os.environ.get("SIGNATURES_DATA_DIR") or str(REPO.parent / "shared" / "data")


def page_config(name, *, n_per_class, data_dir, seed=0):
    """The Builder page's default config (signatures.app.builder.BuilderApp.config), named ``name``."""
    from signatures.experiment import ExperimentConfig

    return ExperimentConfig(name=name, dataset="mnist", digits=(1, 7), anomalies=(3, 4), all_unseen=True,
                            n_per_class=n_per_class, arch="mlp", hidden=(64, 32), activation="relu", epochs=5,
                            k_min=2, k_max=10, umap_points=2000, seed=seed, data_dir=data_dir)


class PeakRss(threading.Thread):
    """Every ``interval`` s: RSS of each Dask worker process (by pid) with its side process (its
    children), and of this process; keeps the peaks."""

    def __init__(self, worker_pids, interval=0.5):
        super().__init__(daemon=True)
        self.pids, self.interval = list(worker_pids), interval
        self.peak_workers_mb = 0.0
        self.peak_per_worker_mb = 0.0
        self.peak_client_mb = 0.0
        self._halt = threading.Event()

    def run(self):
        import psutil

        me = psutil.Process()
        procs = []
        for pid in self.pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                pass
        while not self._halt.is_set():
            sizes = []
            for p in procs:
                try:
                    family = [p] + p.children(recursive=True)  # the worker and its side process
                    sizes.append(sum(q.memory_info().rss for q in family) / 2**20)
                except psutil.Error:
                    pass
            if sizes:
                self.peak_workers_mb = max(self.peak_workers_mb, sum(sizes))
                self.peak_per_worker_mb = max(self.peak_per_worker_mb, max(sizes))
            self.peak_client_mb = max(self.peak_client_mb, me.memory_info().rss / 2**20)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)


def worker_pids(client):
    """Pids of the worker processes (where jobs run)."""
    return sorted(client.run(os.getpid).values())


def wait_warm(client, timeout=600):
    """Until every worker's warm-up (TensorFlow import, UMAP compile) has ended."""
    def warmed():
        from signatures.app import jobs

        acquired = jobs._WARMING.acquire(blocking=False)
        if acquired:
            jobs._WARMING.release()
        return acquired

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.run(warmed).values()):
            return
        time.sleep(1.0)
    raise TimeoutError("the workers did not warm up")


def follow(jobs, *, timeout, poll=0.5):
    """Poll every job as a page does until all have ended; per job: first place, start, end, events."""
    t0 = time.monotonic()
    seen = {j.id: {"first_position": None, "started_s": None, "ended_s": None, "state": None} for j in jobs}
    while time.monotonic() - t0 < timeout:
        pending = 0
        for j in jobs:
            rec = seen[j.id]
            if rec["ended_s"] is not None:
                continue
            state = j.state
            if state == "waiting":
                if rec["first_position"] is None:
                    rec["first_position"] = j.position()
            elif rec["started_s"] is None and state in ("running", "finished", "failed"):
                rec["started_s"] = round(time.monotonic() - t0, 2)
            if state in ("finished", "failed", "cancelled"):
                rec["ended_s"] = round(time.monotonic() - t0, 2)
                rec["state"] = state
            else:
                pending += 1
        if not pending:
            break
        time.sleep(poll)
    return seen


def check_events(job):
    """(in order, ends in done, count) of a job's progress events."""
    events = job.events()
    seqs = [e["seq"] for e in events]
    return seqs == list(range(len(seqs))), bool(events) and events[-1]["stage"] == "done", len(events)


def solo_page(client, store, config, *, timeout):
    """The Builder page's side of one run (what its kernel does, in this process): Run, then the
    seconds until the results are shown (the stored run's Sankey, UMAP and the other figures built)
    and until its findings are."""
    from signatures.app import BuilderApp

    app = BuilderApp(store, jobs=client, poll=0.1, data_dir=config.data_dir)
    app.name.value = config.name
    app.config = lambda: config  # the bench's config, as the page's controls would give it
    t = time.perf_counter()
    if app.run() is None:
        raise RuntimeError(f"the page did not run: {app.error.value}")
    shown = None
    deadline = t + timeout
    while app._watcher.is_alive() and time.perf_counter() < deadline:
        if shown is None and app.results.children:
            shown = time.perf_counter() - t
        time.sleep(0.05)
    if app.wait(1) is None:
        raise RuntimeError(f"the page showed no results: {app.error.value}")
    done = time.perf_counter() - t
    return {"results_shown_s": round(shown if shown is not None else done, 2), "findings_shown_s": round(done, 2),
            "early": app._early == app.job.id}


def solo(client, store, config, *, timeout):
    t = time.perf_counter()
    job = client.submit(config, store)
    result = job.result(timeout=timeout)
    return {"wall_s": round(time.perf_counter() - t, 2), "job_s": result["seconds"],
            "timings": {k: round(v, 2) for k, v in result["timings"].items()}, "accuracy": result["accuracy"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=30, help="runs submitted at once (default 30)")
    p.add_argument("--workers", type=int, default=2, help="workers of the local cluster (default 2)")
    p.add_argument("--scheduler", help="a running Dask scheduler instead of a local cluster (its workers must see "
                                       "the temporary store: same machine or a shared file system)")
    p.add_argument("--n-per-class", type=int, default=300, help="images per class of each loaded run (default 300)")
    p.add_argument("--data-dir", default=default_data_dir())
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for all runs together")
    p.add_argument("--quick", action="store_true", help="no solo run on all images")
    p.add_argument("--solo-only", action="store_true", help="only the runs alone on all images (job and page)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if not 1 <= args.runs <= MAX_RUNS:
        p.error(f"--runs must be a whole number from 1 to {MAX_RUNS}, got {args.runs}")

    from signatures.app.jobs import connect, start_cluster

    load = other_load()
    say(f"machine: load {load['loadavg']} on {load['cores']} cores, {load['available_gib']} GiB free, "
        f"other processes {load['other_cpu_percent']}% CPU")
    tmp = Path(tempfile.mkdtemp(prefix="bench_builder_load_"))
    store = tmp / "store"
    store.mkdir()
    t = time.perf_counter()
    jobs = connect(args.scheduler) if args.scheduler else start_cluster(n_workers=args.workers)
    watcher = None
    try:
        pids = worker_pids(jobs.client)
        say(f"cluster: {len(pids)} workers ({'scheduler ' + args.scheduler if args.scheduler else 'local'}); "
            "waiting for their warm-up")
        wait_warm(jobs.client)
        warm_s = round(time.perf_counter() - t, 1)
        base = PeakRss(pids)
        base.start()
        time.sleep(1.2)
        base.stop()
        say(f"warm after {warm_s} s; workers' RSS {base.peak_workers_mb:.0f} MiB")
        res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": load, "workers": len(pids),
               "runs": args.runs, "n_per_class": args.n_per_class, "cluster_warm_s": warm_s,
               "warm_workers_mb": round(base.peak_workers_mb),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                        text=True).stdout.strip()}

        if not args.quick:
            say("one run alone, all 1s and 7s of the MNIST test set")
            res["solo_all"] = solo(jobs, store, page_config("solo-all", n_per_class=None, data_dir=args.data_dir),
                                   timeout=900)
            say(f"alone, all images: {res['solo_all']['wall_s']} s ({res['solo_all']['timings']})")
            say("one run alone through the Builder page (its kernel's side), all 1s and 7s")
            res["solo_page"] = solo_page(jobs, store, page_config("solo-page", n_per_class=None,
                                                                  data_dir=args.data_dir), timeout=900)
            say(f"page: results shown after {res['solo_page']['results_shown_s']} s, findings after "
                f"{res['solo_page']['findings_shown_s']} s")
            if args.solo_only:
                return finish(args, res)
        say(f"one run alone, {args.n_per_class} per class")
        res["solo_small"] = solo(jobs, store, page_config("solo-small", n_per_class=args.n_per_class,
                                                          data_dir=args.data_dir), timeout=900)
        say(f"alone, {args.n_per_class} per class: {res['solo_small']['wall_s']} s")

        # The load: every run submitted at once, as 30 Builder pages would; a second client follows them.
        configs = [page_config(f"load-{i:03d}", n_per_class=args.n_per_class, data_dir=args.data_dir, seed=i)
                   for i in range(args.runs)]
        watcher = PeakRss(pids)
        watcher.start()
        t0 = time.perf_counter()
        submitted = [jobs.submit(c, store) for c in configs]
        submit_s = time.perf_counter() - t0
        say(f"submitted {len(submitted)} runs in {submit_s:.2f} s; following them")
        seen = follow(submitted, timeout=args.timeout)
        last_s = time.perf_counter() - t0
        watcher.stop()
        rows = []
        for job in submitted:
            rec = seen[job.id]
            in_order, done, n_events = check_events(job)
            result = job.future.result() if job.state == "finished" else None
            rows.append({"name": job.name, "state": rec["state"] or job.state, "first_position": rec["first_position"],
                         "started_s": rec["started_s"], "ended_s": rec["ended_s"],
                         "job_s": result["seconds"] if result else None, "events": n_events,
                         "events_in_order": in_order, "ends_in_done": done, "error": job.error()})
        stored = sorted(p.name for p in store.iterdir() if (p / "manifest.json").is_file())
        finished = [r for r in rows if r["state"] == "finished"]
        res["load"] = {
            "submit_s": round(submit_s, 3), "last_result_s": round(last_s, 1),
            "finished": len(finished), "stored": len([n for n in stored if n.startswith("load-")]),
            "events_in_order": all(r["events_in_order"] and r["ends_in_done"] for r in finished),
            "job_s_median": sorted(r["job_s"] for r in finished)[len(finished) // 2] if finished else None,
            "peak_workers_mb": round(watcher.peak_workers_mb), "peak_per_worker_mb": round(watcher.peak_per_worker_mb),
            "peak_client_mb": round(watcher.peak_client_mb), "errors": sorted({r["error"] for r in rows if r["error"]}),
            "jobs": rows,
        }
        say(f"{len(finished)}/{args.runs} finished, last result after {last_s:.1f} s; peak RSS workers "
            f"{watcher.peak_workers_mb:.0f} MiB (one worker at most {watcher.peak_per_worker_mb:.0f}), "
            f"client {watcher.peak_client_mb:.0f} MiB")
    finally:
        if watcher is not None:
            watcher.stop()
        jobs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    finish(args, res)


def finish(args, res):
    res["load_after"] = other_load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    rows = []
    if "solo_all" in res:
        rows.append(["one run alone, all 2,163 images: job's result", res["solo_all"]["wall_s"], ""])
        page = res["solo_page"]
        rows.append(["  through the Builder page: results shown", page["results_shown_s"],
                     f"{verdict(page['results_shown_s'] <= TODAY_SOLO_S)} against {TODAY_SOLO_S} s"])
        rows.append(["  through the Builder page: findings shown", page["findings_shown_s"], ""])
    if "load" not in res:
        table("One Builder run alone (s)", ["what", "seconds", "compare"], rows)
        return
    ld = res["load"]
    rows.append([f"one run alone, {args.n_per_class} per class", res["solo_small"]["wall_s"], ""])
    rows.append([f"{args.runs} runs at once: last result", ld["last_result_s"],
                 f"{ld['last_result_s'] / max(res['solo_small']['wall_s'], 1e-9):.1f} x one alone"])
    rows.append(["  median job (on its worker)", ld["job_s_median"], ""])
    table(f"Builder runs as jobs on {res['workers']} workers (s)", ["what", "seconds", "compare"], rows)
    worst_wait = max((r["started_s"] or 0 for r in ld["jobs"]), default=0)
    table("Memory (RSS MiB) and completion", ["what", "measured", "verdict"], [
        ["runs finished and stored", f"{ld['finished']}/{args.runs}, {ld['stored']} stored",
         verdict(ld["finished"] == args.runs == ld["stored"])],
        ["progress events in order, ending in 'done'", ld["events_in_order"], verdict(ld["events_in_order"])],
        ["RSS of all workers, warm and idle", res["warm_workers_mb"], ""],
        ["peak RSS of all workers", ld["peak_workers_mb"], ""],
        ["peak RSS of one worker", ld["peak_per_worker_mb"], ""],
        ["peak RSS of the submitting process", ld["peak_client_mb"], ""],
        ["longest wait in the queue (s)", worst_wait, ""],
    ])
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
