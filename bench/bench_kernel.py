"""Benchmark of one Gallery kernel: start-to-ready and memory, figures built against read from plots.zip.

Run from the repository root::

    python bench/bench_kernel.py                       # the default store if it holds experiments,
                                                       # else two small experiments built here
    python bench/bench_kernel.py --store runs --repeat 3 --doc docs/performance-kernels.md

A real ipykernel (``jupyter_client``) is started per measurement and runs what a preheated
Gallery kernel and its first request do: import the app, ``build_gallery(store, preload=True)``
(every stored experiment loaded and its figures made ready), then ``select(NAME)`` and the
experiment's widget. Start-to-ready is the time from the kernel's start to the end of that cell;
RSS is the kernel's resident memory then. Two cases on copies of the same store:

- **before**: figures built in the kernel (``plots.zip`` ignored and not written: today's kernels
  before this change);
- **after**: figures read from ``plots.zip`` (written once beforehand with
  :func:`signatures.app.view.write_plots`).

The store is only read (copies are made in a temporary folder). MNIST is read from
``$SIGNATURES_DATA_DIR`` (default ``../shared/data``) when the bench builds its own experiments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import say, table  # noqa: E402  (bench/ is on sys.path when run)

REPO = Path(__file__).resolve().parents[1]
MARK = "BENCH_JSON:"

KERNEL_CODE = r"""
import json, os, time
t0 = time.perf_counter()
from signatures.app import build_gallery
import signatures.app.view as _view
if {before!r}:
    _view.read_plots = lambda folder: (None, "bench: figures built, as before plots.zip")
    _view.ExperimentView._keep_plots = lambda self: None
t1 = time.perf_counter()
app = build_gallery({store!r}, preload=True)
t2 = time.perf_counter()
view = app.select({name!r})
widget = view.widget
t3 = time.perf_counter()
assert app.message.value == "" and not app.failed, (app.message.value, app.failed)
stored = sum(v.stored for v in app._views.values())
print({mark!r} + json.dumps({{"import_s": t1 - t0, "preload_s": t2 - t1, "select_s": t3 - t2,
                              "stored": stored, "views": len(app._views)}}))
"""


def build_small_store(root, *, seed=0):
    """Two small experiments (1 vs 7 and 1 vs 3 MLPs with unseen digits), saved with their analysis."""
    from signatures.analysis import load_or_analyze
    from signatures.experiment import ExperimentConfig, run_experiment
    from signatures.store import save_experiment

    configs = [
        ExperimentConfig(name="bench-1v7", digits=(1, 7), anomalies=(3, 4), n_per_class=600, hidden=(64, 32),
                         epochs=3, all_unseen=True, seed=seed),
        ExperimentConfig(name="bench-1v3", digits=(1, 3), anomalies=(2,), n_per_class=600, hidden=(32, 16),
                         epochs=3, all_unseen=True, seed=seed),
    ]
    for config in configs:
        say(f"building {config.name}")
        exp = run_experiment(config)
        folder = save_experiment(exp, Path(root) / config.name, save_model=False)
        load_or_analyze(exp, folder)
    return Path(root)


def copy_store(src, dst, *, with_plots):
    """A copy of the store's experiments; with plots.zip written for each (or removed)."""
    from signatures.app.view import PLOTS_FILE, write_plots
    from signatures.store import list_experiments, load_experiment

    def link_or_copy(a, b):  # activation files can be gigabytes: link them where the file system allows
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    # plots.zip and the report are left out (rebuilt or not needed); the model stays, as the manifest lists it.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(PLOTS_FILE, "report.html"), copy_function=link_or_copy)
    timings, sizes = {}, {}
    if with_plots:
        for m in list_experiments(dst):
            t = time.perf_counter()
            write_plots(load_experiment(m["path"]), m["path"])
            timings[m["name"]] = time.perf_counter() - t
            sizes[m["name"]] = (Path(m["path"]) / PLOTS_FILE).stat().st_size
    return timings, sizes


def one_kernel(store, name, *, before):
    """Start a kernel, run the Gallery cell; returns (seconds from start to ready, RSS MiB, kernel's own times)."""
    import psutil
    from jupyter_client.manager import KernelManager

    env = dict(os.environ, SIGNATURES_PLOTS="widget", VOILA_BASE_URL="/")
    km = KernelManager(kernel_name="python3")
    t0 = time.perf_counter()
    km.start_kernel(env=env)
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        code = KERNEL_CODE.format(before=before, store=str(store), name=name, mark=MARK)
        out = []
        reply = client.execute_interactive(code, timeout=900, output_hook=lambda msg: out.append(msg))
        ready = time.perf_counter() - t0
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the kernel cell failed: {reply['content'].get('evalue')}")
        text = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")
        inner = json.loads(text.split(MARK, 1)[1].splitlines()[0])
        pid = km.provisioner.process.pid
        rss = psutil.Process(pid).memory_info().rss / 2**20
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    return ready, rss, inner


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="a store of experiments (default: the default store, else built here)")
    p.add_argument("--name", help="the experiment a visitor asks for (default: the first stored)")
    p.add_argument("--repeat", type=int, default=3, help="kernels per case (the median is reported)")
    p.add_argument("--doc", help="also write the figures to this Markdown file")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    os.environ.setdefault("SIGNATURES_DATA_DIR", str(REPO.parent / "shared" / "data"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from signatures.store import default_store, list_experiments

    work = Path(tempfile.mkdtemp(prefix="bench-kernel-"))
    try:
        source = Path(args.store).resolve() if args.store else default_store()
        if not list_experiments(source):
            if args.store:
                p.error(f"--store must hold stored experiments, got {args.store!r} (none there)")
            source = build_small_store(work / "built")
        names = [m["name"] for m in list_experiments(source)]
        name = args.name or names[0]
        if name not in names:
            p.error(f"--name must be one of {', '.join(names)}, got {name!r}")
        before_store, after_store = work / "before", work / "after"
        copy_store(source, before_store, with_plots=False)
        write_s, sizes = copy_store(source, after_store, with_plots=True)

        results = {}
        for case, store in (("before", before_store), ("after", after_store)):
            runs = []
            for i in range(args.repeat):
                ready, rss, inner = one_kernel(store, name, before=case == "before")
                say(f"{case} #{i + 1}: ready in {ready:.2f} s, RSS {rss:.0f} MiB, {inner}")
                runs.append((ready, rss, inner))
            results[case] = runs

        def med(case, f):
            return statistics.median(f(r) for r in results[case])

        rows = []
        for case in ("before", "after"):
            rows.append([case, f"{med(case, lambda r: r[0]):.2f}", f"{med(case, lambda r: r[2]['import_s']):.2f}",
                         f"{med(case, lambda r: r[2]['preload_s']):.2f}",
                         f"{med(case, lambda r: r[2]['select_s']) * 1000:.0f}",
                         f"{med(case, lambda r: r[1]):.0f}", str(results[case][0][2]["stored"])])
        header = ["case", "start-to-ready s", "import s", "preload s", "select ms", "RSS MiB", "figures read"]
        table(f"One Gallery kernel, {len(names)} experiments, visitor asks for {name!r} "
              f"(median of {args.repeat})", header, rows)
        speed = med("before", lambda r: r[0]) / med("after", lambda r: r[0])
        preload = med("before", lambda r: r[2]["preload_s"]) / med("after", lambda r: r[2]["preload_s"])
        saved = med("before", lambda r: r[1]) - med("after", lambda r: r[1])
        print(f"start-to-ready {speed:.1f}x faster with plots.zip (the preload {preload:.0f}x); RSS {saved:.0f} MiB less")
        zips = [[n, f"{write_s[n]:.2f}", f"{sizes[n] / 2**20:.2f}"] for n in names]
        table("plots.zip written once per experiment", ["experiment", "write_plots s", "size MiB"], zips)
        if args.doc:
            write_doc(Path(args.doc), header, rows, zips, names=names, name=name, repeat=args.repeat, speed=speed,
                      preload=preload, saved=saved)
            say(f"wrote {args.doc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def write_doc(path, header, rows, zips, *, names, name, repeat, speed, preload, saved):
    import platform

    def md(head, body):
        return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                         + ["| " + " | ".join(r) + " |" for r in body])

    text = f"""# One Gallery kernel: figures built or read from plots.zip

Measured with `python bench/bench_kernel.py` on {platform.machine()}, {os.cpu_count()} cores (shared with other
work), Python {platform.python_version()}; store: {len(names)} experiments ({", ".join(names)}); the visitor asks
for `{name}`. Each case is the median of {repeat} fresh kernels.

A real ipykernel is started and runs what a preheated Gallery kernel and its first request do: import the
app, `build_gallery(store, preload=True)` (every stored experiment loaded and its figures made ready), then
`select(NAME)` and its widget. *Start-to-ready* runs from the kernel's start to the end of that cell; *RSS*
is the kernel's resident memory then. *before*: every figure built in the kernel (`plots.zip` ignored, as
kernels did before it existed); *after*: the figures read from `plots.zip`, written once when the
experiment was saved (`run`, the Builder's jobs) or by the first kernel that found it missing, damaged or
stale.

{md(header, rows)}

Start-to-ready is {speed:.1f}x faster with `plots.zip`; the preload alone {preload:.0f}x; the kernel holds
{saved:.0f} MiB less. What remains is the import of the app (numpy, scikit-learn, plotly, ipywidgets): a page
kernel's preload now only reads bytes (the arrays, the analysis and the encoded figures).

{md(["experiment", "write_plots s", "size MiB"], zips)}
"""
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
