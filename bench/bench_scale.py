"""Scale: whole pipelines on all 70,000 Fashion-MNIST images, and a fresh CLI run without UMAP's compile.

Run from the repository root::

    python bench/bench_scale.py                               # the three 70,000-image cases and the CLI
    python bench/bench_scale.py --cases cnn-mean --n-per-class 1000   # one case, smaller
    python bench/bench_scale.py --cases cli                   # only the CLI run before / after

Each case is one ``python -m signatures run`` in a fresh process (train, extract, cluster, project,
save, analyse, report), on the 10 Fashion-MNIST classes with every image (``--n-per-class`` to
draw fewer), default options otherwise:

- ``cnn-flatten``: the canonical CNN (8, 16 filters, dense 32), ``--reduce flatten`` (every
  position x channel of the conv maps kept: 6,272 + 1,936 values per image);
- ``cnn-mean``: the same CNN, ``--reduce mean``;
- ``mlp``: an MLP 512-256-128.

The bench samples the RSS of the run's process every 0.5 s (all of it, and its anonymous part:
``RssAnon``, the memory that is not file pages of memory-mapped activations, which the kernel can
drop), and reads the stage times from the experiment's manifest and the analysis's parts from
``analysis.json``. Targets (issue 11): each case at most 5 minutes and 4 GiB.

``cli``: a 1 vs 7 MLP run on the MNIST test set (2,163 images), as ``python -m signatures run
--out DIR`` with the defaults, in a fresh process: once with an empty UMAP kernel cache (what every
run paid before the cache: the numba compile) and once with the cache the first run left; then twice
with ``--scheduler`` on a one-worker ``LocalCluster`` that has imported TensorFlow and loaded UMAP
(the command itself imports neither). Target: at most 15 s.

Data is read offline: Fashion-MNIST from ``--fashion-dir`` (default Debian's
``/usr/share/datasets/fashion-mnist``), MNIST from ``$SIGNATURES_DATA_DIR`` (default
``../shared/data``). Results go to ``bench/results/scale.json``; ``docs/performance-scale.md``
describes a run.
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

from _common import other_load, say, table, verdict  # noqa: E402  (bench/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "scale.json"
TARGET_S, TARGET_GIB, TARGET_CLI_S = 300.0, 4.0, 15.0
CASES = {
    "cnn-flatten": ["--arch", "cnn", "--reduce", "flatten"],
    "cnn-mean": ["--arch", "cnn", "--reduce", "mean"],
    "mlp": ["--arch", "mlp", "--hidden", "512", "256", "128"],
}


def _anon_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def timed(cmd, env=None):
    """Run ``cmd``; wall seconds, peak RSS and peak anonymous RSS (MiB) of it and its children."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss": 0.0, "anon": 0.0}

    def watch():
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
                rss = sum(p.memory_info().rss for p in procs) / 2**20
                anon = sum(_anon_mib(p.pid) for p in procs)
            except psutil.Error:
                break
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    watcher.join(2)
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak["rss"]),
            "peak_anon_mib": round(peak["anon"]), "exit": proc.returncode, "tail": output[-1500:]}


def run_case(name, store, args):
    out = store / name
    cmd = [sys.executable, "-m", "signatures", "run", "--out", str(out), "--dataset", "fashion-mnist",
           "--data-dir", args.fashion_dir, "--digits", *map(str, range(10)), "--quiet", *CASES[name]]
    if args.n_per_class:
        cmd += ["--n-per-class", str(args.n_per_class)]
    res = timed(cmd)
    if res["exit"] == 0:
        manifest = json.loads((out / "manifest.json").read_text())
        analysis = json.loads((out / "analysis.json").read_text())
        res.update(rows=manifest["n_rows"], stages=manifest["timings"], analysis_s=analysis["seconds"],
                   sample=analysis.get("sample"), activations=manifest["info"].get("activations"),
                   clustering={k: v.get("fitted_rows") for k, v in manifest["clustering"].items()},
                   folder_mib=round(sum(p.stat().st_size for p in out.iterdir()) / 2**20, 1),
                   report_mib=round((out / "report.html").stat().st_size / 2**20, 2))
    return res


def run_cli(store, data_dir):
    """The 1 vs 7 CLI run in a fresh process: with an empty UMAP kernel cache, then with it filled."""
    cache = Path(tempfile.mkdtemp(prefix="bench-numba-"))
    env = dict(os.environ, SIGNATURES_NUMBA_CACHE=str(cache), SIGNATURES_DATA_DIR=data_dir)
    out = {}
    try:
        for label in ("compiling (empty cache)", "cached"):
            folder = store / f"cli-{len(out)}"
            res = timed([sys.executable, "-m", "signatures", "run", "--out", str(folder), "--data-dir", data_dir],
                        env=env)
            if res["exit"] == 0:
                res["stages"] = json.loads((folder / "manifest.json").read_text())["timings"]
            out[label] = res
        out.update(run_cli_on_worker(store, data_dir, env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out


def _warmed():
    from signatures.app.jobs import _WARMING

    with _WARMING:  # held by the worker's warm-up until TensorFlow and UMAP are loaded
        return True


def run_cli_on_worker(store, data_dir, env):
    """``run --scheduler``: the same run as a job on a one-worker cluster that has warmed up, twice."""
    from signatures.app.jobs import start_cluster

    out = {}
    jobs = start_cluster(n_workers=1, warm=True)
    try:
        jobs.client.submit(_warmed, pure=False).result(timeout=300)
        for label in ("warm worker, its first run", "warm worker, next run"):
            folder = store / f"cli-{len(out) + 2}"
            res = timed([sys.executable, "-m", "signatures", "run", "--out", str(folder), "--data-dir", data_dir,
                         "--scheduler", jobs.address], env=env)
            if res["exit"] == 0:
                res["stages"] = json.loads((folder / "manifest.json").read_text())["timings"]
            out[label] = res
    finally:
        jobs.close()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=[*CASES, "cli"], choices=[*CASES, "cli"])
    p.add_argument("--n-per-class", type=int, help="images per class (default: all 7,000)")
    p.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--data-dir", default=os.environ.get("SIGNATURES_DATA_DIR") or str(REPO.parent / "shared" / "data"))
    p.add_argument("--keep", help="keep the experiments in this folder (default: a temporary one, removed)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    store = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    store.mkdir(parents=True, exist_ok=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": other_load(), "cases": {},
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True).stdout.strip()}
    try:
        for name in args.cases:
            if name == "cli":
                say("CLI 1 vs 7 in a fresh process: compiling, then cached")
                res["cli"] = run_cli(store, args.data_dir)
                for label, r in res["cli"].items():
                    say(f"  {label}: {r['wall_s']} s (exit {r['exit']})")
                continue
            say(f"{name}: whole pipeline, Fashion-MNIST, 10 classes")
            r = res["cases"][name] = run_case(name, store, args)
            say(f"  {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB (anonymous {r['peak_anon_mib']} MiB), "
                f"exit {r['exit']}")
            if r["exit"] != 0:
                say(r["tail"])
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    res["load_after"] = other_load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))

    rows = []
    for name, r in res["cases"].items():
        ok = r["exit"] == 0 and r["wall_s"] <= TARGET_S and r["peak_rss_mib"] <= TARGET_GIB * 1024
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r.get("stages", {}).items() if v >= 1)
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r.get("analysis_s", {}).items() if v >= 1)
        rows.append([name, r.get("rows", "-"), r["wall_s"], r["peak_rss_mib"], r["peak_anon_mib"],
                     f"{stages}; analysis: {parts}", verdict(ok)])
    if rows:
        table("Whole pipelines (s, MiB)", ["case", "rows", "wall", "peak RSS", "anon", "stages", "5 min, 4 GiB"], rows)
    if "cli" in res:
        table("CLI 1 vs 7, fresh process (s)", ["UMAP kernels", "wall", "projection stage", "15 s"],
              [[label, r["wall_s"], r.get("stages", {}).get("projection", "-"), verdict(r["wall_s"] <= TARGET_CLI_S)]
               for label, r in res["cli"].items()])
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
