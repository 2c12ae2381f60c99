"""Benchmark of the web site: UMAP warm-up, Gallery kernel and page, Builder run, memory.

Run from the repository root::

    python bench/bench_site.py --store /tmp/site_runs            # full run
    python bench/bench_site.py --store /tmp/site_runs --quick    # fewer cases, a smaller Builder run

The store is only read (the server gets a copy in a temporary folder). MNIST is read from
``$SIGNATURES_DATA_DIR`` (default ``../shared/data``). Results go to
``bench/results/site.json``; what is measured and the figures of a run are described in
``docs/performance-site.md``.

1. UMAP's numba compile (``signatures.projection.warm_up``) in a fresh process, and a real
   fit after it.
2. The Gallery's kernel work: import + ``build_gallery(store, preload=True)`` (preheat),
   ``select(name)`` (request time), and every view change (layer, colour, inserted unseen
   digits, selection), timed per assignment, in a plain process and in a real ipykernel
   (where every widget update is serialized and sent on the IOPub channel). Plots use the
   site's renderer (``SIGNATURES_PLOTS=widget``).
3. The Gallery page in Chromium (Playwright), served with preheated pools (Gallery 2,
   Builder 1, Layers 1): the first screen (1300x900) and all six plots (1300x2800), with
   the page's performance marks; control changes as seen by the browser; several
   visitors at once; a cold visit on a server with ``--pool-size 0``.
4. The Builder: a 1 vs 7 MLP 64-32 run on all available images with the default epochs and
   K range, on a warmed-up kernel (in a process, then through the page).
5. Memory (RSS, with children) of the server and of each kind of kernel, and how many
   Gallery visitors fit in the machine's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from _common import free_port, other_load, say, table, verdict  # noqa: E402  (bench/ is on sys.path when run)

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = REPO / "bench" / "results" / "site.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MARK = "BENCH_JSON:"

TARGET_VIEW_MS = 200.0      # server time of one view change in the Gallery
TARGET_PAGE_S = 3.0         # Gallery page interactive (first screen drawn), preheated kernel
TARGET_BUILDER_S = 15.0     # Builder: Run to results shown, warm kernel
RESERVED_GIB = 2.0          # memory left to the OS when counting visitors

POOL_SIZE = 1               # --pool-size of the served site: Builder and Layers 1, Gallery 2 (twice)
GALLERY_POOL = 2 * POOL_SIZE
NOTEBOOKS = ("gallery.ipynb", "builder.ipynb", "layers.ipynb")
GALLERY_URL = "voila/render/gallery.ipynb?experiment=1v7-mlp"
N_PLOTS = 6                 # a Gallery page: confusion, training, sankey, umap, silhouette, images
SCREEN = (1300, 900)        # first screen
TALL = (1300, 2800)         # all six plots in sight
BUILDER_VIEW = (1300, 4500)  # the Builder's results (below the form) in sight without scrolling

#: Console messages an offline Voilà page logs without harm (as in tests/test_browser.py).
HARMLESS = (re.compile(r"Failed to load resource.*(fonts|cdn|googleapis|unpkg|jsdelivr)", re.I),
            re.compile(r"setData", re.I), re.compile(r"favicon", re.I))

# Added to every page before its own scripts: records (performance.now(), ms from navigation)
# when every plot on the first screen (top above min(innerHeight, 900 px)) and when all six
# are drawn, from the plots' data-state attribute (signatures.plotview sets "drawn").
RECORDER_JS = """(() => {
  if (window.__sigBench) return;
  const b = window.__sigBench = {screen: null, all: null, screenPlots: null};
  const check = () => {
    const divs = document.querySelectorAll('.sig-plot');
    if (divs.length < %(n)d) return;
    const h = Math.min(innerHeight, %(screen)d);
    let drawn = 0, inside = 0, insideDrawn = 0;
    for (const d of divs) {
      const ok = d.dataset.state === 'drawn';
      if (ok) drawn++;
      if (b.screen === null && d.getBoundingClientRect().top < h) { inside++; if (ok) insideDrawn++; }
    }
    const now = performance.now();
    if (b.screen === null && inside > 0 && inside === insideDrawn) { b.screen = now; b.screenPlots = inside; }
    if (b.all === null && drawn >= divs.length) b.all = now;
  };
  new MutationObserver(check).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-state']});
  setInterval(check, 100);
})();""" % {"n": N_PLOTS, "screen": SCREEN[1]}

PLOT_STATES_JS = """() => [...document.querySelectorAll('.sig-plot')].map(d => ({
  state: d.dataset.state || '', draws: Number(d.dataset.draws || 0),
  top: Math.round(d.getBoundingClientRect().top),
  title: ((d.querySelector('.gtitle') || {}).textContent || '').slice(0, 60)}))"""

TIMELINE_JS = """() => {
  const marks = (n) => performance.getEntriesByName(n).map((e) => e.startTime);
  const nav = performance.getEntriesByType('navigation')[0];
  const plotly = performance.getEntriesByType('resource').filter((e) => e.name.includes('plotly.min.js'))
    .map((e) => ({start: e.startTime, end: e.responseEnd, transfer: e.transferSize, body: e.encodedBodySize,
                  initiator: e.initiatorType}));
  return {now: performance.now(), timeOrigin: performance.timeOrigin, dcl: nav.domContentLoadedEventEnd,
          load: nav.loadEventEnd, responseEnd: nav.responseEnd, htmlKb: nav.transferSize / 1024,
          view: marks('signatures:view'), requested: marks('signatures:plotly-requested'),
          ready: marks('signatures:plotly-ready'), drawn: marks('signatures:drawn'), plotly,
          bench: window.__sigBench};
}"""

BUILDER_DONE_JS = """() => {
  const drawn = [...document.querySelectorAll('.sig-plot[data-state=drawn]')];
  return drawn.some((d) => d.querySelector('.sankey'))
    && drawn.some((d) => ((d.querySelector('.gtitle') || {}).textContent || '').startsWith('UMAP of'));
}"""

#: Which plots a control change redraws (signatures.app.view.ExperimentView).
REDRAWS = {"layer": 2, "color_by": 1, "selection": 1, "inserted": 3}


def default_data_dir():
    return os.environ.get("SIGNATURES_DATA_DIR") or str(REPO.parent / "shared" / "data")


# --------------------------------------------------------------------------- small helpers


def rss_mb(pid=None):
    """Resident memory of a process and all its children, in MiB."""
    import psutil

    try:
        p = psutil.Process(pid or os.getpid())
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return round(total / 2**20, 1)


def ms(seconds):
    return round(seconds * 1000.0, 2)


def summary(values):
    values = list(values)
    if not values:
        return {"n": 0}
    return {"n": len(values), "median_ms": round(statistics.median(values), 2), "max_ms": round(max(values), 2),
            "min_ms": round(min(values), 2)}


def run_worker(kind, *args, timeout=900):
    """Run ``bench_site.py --worker KIND ARGS`` in a fresh process; return its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *map(str, args)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", SIGNATURES_PLOTS="widget")
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads(lines[-1][len(MARK):])
    result["process_wall_s"] = round(wall, 2)
    return result


# --------------------------------------------------------------------------- 1. UMAP compile


def projection_worker():
    """In a fresh process: import umap, compile (warm_up), then fit a real-sized map."""
    import numpy as np

    res = {}
    t = time.perf_counter()
    import umap  # noqa: F401

    res["import_umap_s"] = round(time.perf_counter() - t, 2)
    from signatures.projection import fit_projection, warm_up

    res["warm_up_s"] = round(warm_up(), 2)
    res["second_warm_up_s"] = round(warm_up(), 3)
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=4.0, size=(6, 64))
    X = (centers[rng.integers(0, 6, 3000)] + rng.normal(size=(3000, 64))).astype(np.float32)
    X = np.maximum(X, 0)  # relu-like activations
    for attempt in ("first", "second"):  # equal times: nothing was left to compile in the first
        t = time.perf_counter()
        reducer = fit_projection(X[:2000])
        res[f"{attempt}_fit_2000x64_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        reducer.transform(X[2000:])
        res[f"{attempt}_transform_1000_s"] = round(time.perf_counter() - t, 2)
    res["rss_mb"] = rss_mb()
    return res


# --------------------------------------------------------------------------- 2. Gallery kernel work


def _exercise(view, name, quick):
    """Change every control of ``view`` in turn; one record per assignment."""
    records = []

    def timed(control, widget, value, label=None):
        plots = len(view._plots)
        t = time.perf_counter()
        widget.value = value
        dt = time.perf_counter() - t
        records.append({"experiment": name, "control": control, "value": str(label if label is not None else value),
                        "ms": ms(dt), "new_plots": len(view._plots) - plots})

    layers = list(view.exp.layers)
    for layer in layers[1:] + layers[:1]:
        timed("layer", view.layer, layer)
    for layer in ([layers[0]] if quick else [layers[0], layers[-1]]):
        if view.layer.value != layer:
            timed("layer", view.layer, layer)
        for c in ("cluster", "predicted", "anomaly", "digit"):
            timed("color_by", view.color_by, c)
    if view.layer.value != layers[0]:
        timed("layer", view.layer, layers[0])

    unseen = tuple(view.exp.unseen)
    start = tuple(view.inserted.value)
    others = tuple(u for u in unseen if u not in start)
    subsets = [(), start[:1], start, start + others[:1], start + others[:3], unseen, start]
    if quick:
        subsets = [(), start, unseen, start]
    for s in subsets:
        s = tuple(sorted(s))
        if tuple(sorted(view.inserted.value)) != s:
            timed("inserted", view.inserted, s)

    options = [v for _, v in view.selection.options]
    picks = [1, 4, 8, 11, 12, 14, 18, len(options) - 6, len(options) - 1]
    if quick:
        picks = [1, 12, len(options) - 1]
    seen = set()
    for i in picks:
        if 0 <= i < len(options) and i not in seen and options[i] != view.selection.value:
            seen.add(i)
            timed("selection", view.selection, options[i], label=f"option {i}: {options[i]!r}"[:80])
    # A second round of layer and colour changes: every figure is cached now.
    for layer in layers[1:] + layers[:1]:
        timed("layer (again)", view.layer, layer)
    for c in ("cluster", "digit"):
        timed("color_by (again)", view.color_by, c)
    return records


def gallery_bench(store, quick=False):
    """The Gallery kernel's work, as the notebook does it; returns a JSON-ready dict.

    Run in a plain process (``--worker gallery``) and inside an ipykernel (:func:`kernel_gallery`).
    """
    res = {"in_kernel": "ipykernel.kernelapp" in sys.modules}
    res["rss_start_mb"] = rss_mb()
    t = time.perf_counter()
    from signatures.app import ExperimentView, build_gallery

    res["import_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    app = build_gallery(store, preload=True)
    res["preload_s"] = round(time.perf_counter() - t, 3)
    res["experiments"] = list(app.manifests)
    res["rss_after_preload_mb"] = rss_mb()
    res["figures_after_preload"] = {n: len(v._figures) for n, v in app._views.items()}
    res["select_ms"], res["reselect_ms"], res["bundle_kb"], res["rows"] = {}, {}, {}, {}
    changes = []
    names = list(app.manifests)
    for name in names:
        t = time.perf_counter()
        view = app.select(name)
        res["select_ms"][name] = ms(time.perf_counter() - t)
        res["rows"][name] = int(view.exp.n_rows)
        res["bundle_kb"][name] = {v: round(len(view.boxes[v].plot.payload) / 1024, 1)  # spec sent to the page
                                  for v in ExperimentView.VIEWS}
        changes += _exercise(view, name, quick)
    for name in names[:1]:
        t = time.perf_counter()
        app.select(name)
        res["reselect_ms"][name] = ms(time.perf_counter() - t)
    res["rss_after_changes_mb"] = rss_mb()
    res["changes"] = changes
    return res


def kernel_gallery(store, quick=False):
    """:func:`gallery_bench` inside a real ipykernel, driven by jupyter_client.

    The client drains IOPub as a Voilà server would, counting the comm messages and bytes.
    """
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, PYTHONUNBUFFERED="1", SIGNATURES_PLOTS="widget")  # the site's plot widget
    env.pop("VOILA_PREHEAT", None)
    t = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(REPO / "notebooks"), env=env)
    started = time.perf_counter() - t
    stats = {"comm_open": 0, "comm_msg": 0, "other": 0}
    text = []

    def hook(msg):
        kind = msg["msg_type"]
        if kind == "stream":
            text.append(msg["content"]["text"])
        elif kind in stats:
            stats[kind] += 1
        else:
            stats["other"] += 1

    code = (f"import sys, json\nsys.path.insert(0, {str(BENCH)!r})\nimport bench_site\n"
            f"_r = bench_site.gallery_bench({str(store)!r}, quick={quick!r})\n"
            f"print({MARK!r} + json.dumps(_r))\n")
    try:
        reply = kc.execute_interactive(code, output_hook=hook, timeout=900)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"kernel run failed: {reply['content']}")
        pid = km.provisioner.process.pid if getattr(km.provisioner, "process", None) else None
        kernel_rss = rss_mb(pid) if pid else None
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    lines = [line for line in "".join(text).splitlines() if line.startswith(MARK)]
    res = json.loads(lines[-1][len(MARK):])
    res["kernel_start_s"] = round(started, 2)
    res["iopub_messages"] = stats
    res["kernel_rss_mb"] = kernel_rss
    return res


def change_summary(changes):
    """Median / max per control, the cached-only max, and the changes over the target."""
    out = {}
    controls = sorted({c["control"] for c in changes}, key=lambda c: (c.endswith("(again)"), c))
    for control in controls:
        rows = [c for c in changes if c["control"] == control]
        s = summary(c["ms"] for c in rows)
        # A change that built no new plot was served from the cache ("new_bundles" in older results).
        cached = [c["ms"] for c in rows if c.get("new_plots", c.get("new_bundles", 0)) == 0]
        s["max_cached_ms"] = round(max(cached), 2) if cached else None
        s["over_target"] = [c for c in rows if c["ms"] > TARGET_VIEW_MS]
        out[control] = s
    return out


# --------------------------------------------------------------------------- 4. Builder (in a process)


def builder_worker(data_dir, n_per_class="", epochs="5"):
    """Warm up as the preheated kernel does, then press Run once (1 vs 7, MLP 64-32, defaults)."""
    res = {}
    store = Path(tempfile.mkdtemp(prefix="bench-site-builder-"))
    try:
        t = time.perf_counter()
        from signatures.app import BuilderApp

        res["import_s"] = round(time.perf_counter() - t, 2)
        app = BuilderApp(store, data_dir=data_dir)
        t = time.perf_counter()
        res["umap_warm_up_s"] = round(BuilderApp.warm_up(), 2)
        res["warm_up_total_s"] = round(time.perf_counter() - t, 2)  # TensorFlow import + UMAP compile
        res["rss_after_warm_up_mb"] = rss_mb()
        app.name.value = "bench-builder"
        app.n_per_class.value = str(n_per_class)
        app.epochs.value = int(epochs)
        t = time.perf_counter()
        exp = app.run()
        res["run_s"] = round(time.perf_counter() - t, 2)
        if exp is None:
            raise RuntimeError(f"the builder did not run: {app.error.value} {[w.value for w in app.errors.values()]}")
        res["timings"] = dict(exp.timings)
        res["other_s"] = round(res["run_s"] - sum(exp.timings.values()), 2)
        res["config"] = {"digits": list(exp.config.digits), "hidden": list(exp.config.hidden),
                         "epochs": exp.config.epochs, "k_range": list(exp.config.k_range),
                         "n_per_class": exp.config.n_per_class}
        import numpy as np

        res["rows"] = {"train": int(np.sum(exp.split == 0)), "held_out": int(np.sum(exp.split == 1)),
                       "unseen": int(np.sum(exp.split == 2)),
                       "trained_images": {int(c): int(np.sum(np.isin(exp.split, (0, 1)) & (exp.labels == c)))
                                          for c in exp.classes}}
        res["accuracy"] = exp.metrics["accuracy"]
        res["k"] = {n: int(e.k_) for n, e in exp.clusterers.items()}
        res["rss_after_run_mb"] = rss_mb()
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- 3. the site in Chromium


class Site:
    """``python -m signatures serve`` in its own process group, with a log and its kernels."""

    def __init__(self, store, pool_size, data_dir, logdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.pool_size = pool_size
        self.log_path = Path(logdir) / f"serve-pool{pool_size}-{self.port}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("SIGNATURES_PLOTS", None)  # the site's own choice (the plot widget)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "signatures", "serve", "--port", str(self.port), "--store", str(store),
             "--pool-size", str(pool_size), "--data-dir", data_dir],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=env)
        self.cpu = {}   # pid -> last total CPU seconds
        self.busy = {}  # pid -> last time seen busy (monotonic)
        self.pids = set()  # every kernel seen, so that none outlives the bench
        self.layers_pids = set()

    def since_start(self):
        return round(time.monotonic() - self.t0, 2)

    def wait_http(self, timeout=120):
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                return self.since_start()
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the site did not start; see {self.log_path}") from None
                time.sleep(0.25)

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def filled(self, notebook):
        """How often Voilà logged the pool of ``notebook`` filled (at start, then after each refill)."""
        return self.log_text().count(f"Kernel pool of {notebook} is filled")

    def fills(self):
        return {nb: self.filled(nb) for nb in NOTEBOOKS}

    def used_kernels(self):
        """kernel id -> notebook, for every preheated kernel a page was given."""
        return dict(re.findall(r"Using pre-heated kernel: (\S+) for (\S+)", self.log_text()))

    def kernels(self):
        import psutil

        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for p in procs:
            try:
                if any("ipykernel" in part for part in p.cmdline()):
                    out.append(p)
                    self.pids.add(p.pid)
            except psutil.Error:
                pass
        return out

    @staticmethod
    def kernel_id(proc):
        try:
            m = re.search(r"kernel-([0-9a-f-]+)\.json", " ".join(proc.cmdline()))
        except Exception:
            return None
        return m.group(1) if m else None

    def kind(self, proc, used=None):
        """'gallery', 'builder' or 'layers', and whether a page was given the kernel.

        A kernel a page was given is named by the server log; a pool kernel is a Builder
        kernel when TensorFlow is mapped, the Layers kernel when :meth:`find_layers` picked
        it, else a Gallery kernel.
        """
        used = self.used_kernels() if used is None else used
        nb = used.get(self.kernel_id(proc))
        if nb:
            return nb.rsplit("/", 1)[-1].removesuffix(".ipynb"), True
        try:
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return None, False
        if "tensorflow" in maps:
            return "builder", False
        return ("layers" if proc.pid in self.layers_pids else "gallery"), False

    def find_layers(self):
        """Of the preheated kernels without TensorFlow (2 Gallery, 1 Layers), the Layers one uses the
        least CPU: a Gallery kernel also loads the 4 experiments and builds their figures."""
        cpu = {}
        for p in self.kernels():
            if self.kind(p)[0] == "gallery":
                cpu[p.pid] = sum(p.cpu_times()[:2])
        if len(cpu) == GALLERY_POOL + 1:
            self.layers_pids = {min(cpu, key=cpu.get)}
        return {str(pid): round(t, 1) for pid, t in cpu.items()}

    def sample(self):
        """One CPU sample of every kernel (call about once a second)."""
        now = time.monotonic()
        for p in self.kernels():
            try:
                t = sum(p.cpu_times()[:2])
            except Exception:
                continue
            last = self.cpu.get(p.pid)
            self.cpu[p.pid] = t
            if last is None or t - last > 0.05:
                self.busy[p.pid] = now

    def wait_idle(self, pids_fn, quiet=3.0, timeout=300, min_cpu=1.5):
        """Wait until every kernel ``pids_fn()`` lists has used ``min_cpu`` s and then been idle ``quiet`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sample()
            pids = pids_fn()
            now = time.monotonic()
            if pids and all(self.cpu.get(p, 0) >= min_cpu and now - self.busy.get(p, now) >= quiet for p in pids):
                return {p: round(self.busy[p] - self.t0, 2) for p in pids}
            time.sleep(0.5)
        raise TimeoutError(f"kernels did not settle; see {self.log_path}")

    def settle(self, need=None, timeout=400):
        """Wait until each pool in ``need`` ({notebook: n}) has logged "is filled" n times and every
        kernel is CPU-idle (a preheated kernel goes on in low-priority threads after its notebook)."""
        need = need or {}

        def pids():
            if any(self.filled(nb) < n for nb, n in need.items()):
                return []
            return [p.pid for p in self.kernels()]

        t = time.monotonic()
        idle = self.wait_idle(pids, timeout=timeout)
        return {"waited_s": round(time.monotonic() - t, 1), "last_busy_s": max(idle.values()) if idle else None}

    def memory(self):
        import psutil

        used = self.used_kernels()
        kernels = []
        for p in self.kernels():
            kind, visited = self.kind(p, used)
            kernels.append({"pid": p.pid, "kind": kind, "visited": visited, "rss_mb": rss_mb(p.pid)})
        server = round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)
        return {"server_mb": server, "kernels": kernels}

    def stop(self):
        import psutil

        self.kernels()  # note every kernel alive now
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # kernels run in sessions of their own; make sure none outlives the server
        for pid in sorted(self.pids):
            try:
                p = psutil.Process(pid)
                if any("ipykernel" in part for part in p.cmdline()):
                    p.kill()
            except psutil.Error:
                pass
        self.log.close()


def new_context(browser, size):
    ctx = browser.new_context(viewport={"width": size[0], "height": size[1]})
    ctx.add_init_script(RECORDER_JS)
    return ctx


def _console(page):
    """Collect the page's console errors and uncaught exceptions (``harmless`` marks the known
    offline ones), and count its warnings by text (Voilà's pages log a dozen "Unsatisfied
    version" warnings of JupyterLab's shared modules)."""
    out = {"errors": [], "warnings": {}}

    def on_console(m):
        if m.type == "error":
            url = (m.location or {}).get("url", "")
            # the page's shutdown beacon when it closes: refused (403, no _xsrf cookie; Voilà #1458)
            known = "/api/shutdown/" in url or any(p.search(m.text) for p in HARMLESS)
            out["errors"].append({"text": m.text[:300], "url": url[-120:], "harmless": known})
        elif m.type == "warning":
            key = m.text[:160]
            out["warnings"][key] = out["warnings"].get(key, 0) + 1

    page.on("console", on_console)
    page.on("pageerror", lambda e: out["errors"].append({"text": "uncaught: " + str(e)[:300], "harmless": False}))
    return out


def _seconds(x):
    return None if x is None else round(x / 1000.0, 2)


def _visit(browser, url, *, until="screen", size=SCREEN, context=None, timeout=240_000):
    """Open ``url`` in a fresh context (unless one is given); wait until the first screen
    (``until="screen"``) or all six plots (``"all"``) are drawn, then read the page's timeline.

    Times are seconds from the navigation's start, read in the page (performance marks and
    :data:`RECORDER_JS`); ``wall_s`` is the same wait as the bench saw it.
    """
    context = context or new_context(browser, size)
    page = context.new_page()
    console = _console(page)
    ws = {"frames": 0, "bytes": 0, "first": None, "largest": 0, "largest_at": None}

    def on_ws(socket_):
        def frame(payload):
            now = time.perf_counter() - t0
            ws["frames"] += 1
            ws["bytes"] += len(payload)
            ws["first"] = ws["first"] if ws["first"] is not None else now
            if len(payload) > ws["largest"]:
                ws["largest"], ws["largest_at"] = len(payload), now

        socket_.on("framereceived", frame)

    page.on("websocket", on_ws)
    load_before = os.getloadavg()[0]
    t0_epoch, t0 = time.time(), time.perf_counter()
    page.goto(url, wait_until="commit", timeout=timeout)
    page.wait_for_function(f"() => window.__sigBench && window.__sigBench.{until} !== null", timeout=timeout,
                           polling=50)
    wall = time.perf_counter() - t0
    page.wait_for_timeout(500)  # a plot drawn twice would show in its count now
    tl = page.evaluate(TIMELINE_JS)
    plots = page.evaluate(PLOT_STATES_JS)
    offset = t0_epoch - tl["timeOrigin"] / 1000.0  # bench clock -> navigation clock (a few ms)
    bench = tl["bench"] or {}

    def ws_time(x):
        return None if x is None else round(x + offset, 2)

    fetch = tl["plotly"][0] if tl.get("plotly") else None
    visit = {
        "viewport": "x".join(map(str, page.viewport_size.values())), "until": until,
        "loadavg_1min_before": round(load_before, 2), "wall_s": round(wall, 2),
        "first_screen_s": _seconds(bench.get("screen")), "first_screen_plots": bench.get("screenPlots"),
        "all_plots_s": _seconds(bench.get("all")),
        "html_done_s": _seconds(tl["responseEnd"]), "dom_content_loaded_s": _seconds(tl["dcl"]),
        "load_event_s": _seconds(tl["load"]) if tl["load"] else None, "html_kb": round(tl["htmlKb"], 1),
        "kernel_first_frame_s": ws_time(ws["first"]), "widget_state_frame_s": ws_time(ws["largest_at"]),
        "widget_state_frame_kb": round(ws["largest"] / 1024, 1), "websocket_frames": ws["frames"],
        "websocket_kb": round(ws["bytes"] / 1024, 1),
        "first_view_s": _seconds(min(tl["view"])) if tl["view"] else None,
        "last_view_s": _seconds(max(tl["view"])) if tl["view"] else None, "views": len(tl["view"]),
        "plotly_requested_s": _seconds(tl["requested"][0]) if tl["requested"] else None,
        "plotly_ready_s": _seconds(tl["ready"][0]) if tl["ready"] else None,
        "plotly_fetch": None if fetch is None else {
            "start_s": _seconds(fetch["start"]), "end_s": _seconds(fetch["end"]),
            "transfer_kb": round(fetch["transfer"] / 1024, 1), "initiator": fetch["initiator"]},
        "first_drawn_s": _seconds(tl["drawn"][0]) if tl["drawn"] else None,
        "last_drawn_s": _seconds(tl["drawn"][-1]) if tl["drawn"] else None, "draw_marks": len(tl["drawn"]),
        "plots": plots, "draws": [p["draws"] for p in plots],
        "drawn_more_than_once": [p["title"] for p in plots if p["draws"] > 1],
        "console": console,
    }
    return context, page, visit


def scroll_through(page):
    """Scroll each plot into view in turn; each must then be drawn. Returns the draw counts after."""
    t0 = time.perf_counter()
    n = page.locator(".sig-plot").count()
    for i in range(n):
        page.locator(".sig-plot").nth(i).scroll_into_view_if_needed()
        page.wait_for_function(f"() => document.querySelectorAll('.sig-plot')[{i}].dataset.state === 'drawn'",
                               timeout=60_000, polling=50)
    page.wait_for_timeout(500)
    plots = page.evaluate(PLOT_STATES_JS)
    return {"seconds": round(time.perf_counter() - t0, 2), "draws": [p["draws"] for p in plots],
            "states": [p["state"] for p in plots]}


def close_page(page):
    """Close as a tab closes: Voilà's beforeunload handler asks the server to shut the kernel down."""
    try:
        page.close(run_before_unload=True)
    except Exception:
        pass
    time.sleep(1.0)


DRAWS_JS = "() => [...document.querySelectorAll('.sig-plot')].reduce((a, d) => a + Number(d.dataset.draws || 0), 0)"


def _browser_change(page, control, action):
    """Time a control change as the browser sees it: from the change until the last plot it
    redraws is drawn (the page's ``signatures:drawn`` marks), with the number of redraws."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    t_page, before = page.evaluate(f"() => [performance.now(), ({DRAWS_JS})()]")
    action()
    try:
        page.wait_for_function(f"() => ({DRAWS_JS})() > {before}", timeout=30_000, polling=20)
    except PlaywrightTimeout:
        return {"control": control, "ms": None, "draws": 0, "expected_draws": REDRAWS[control]}
    last, same = None, 0
    while same < 4:  # no further draw for about 0.6 s
        page.wait_for_timeout(150)
        n = page.evaluate(DRAWS_JS)
        same = same + 1 if n == last else 0
        last = n
    marks = page.evaluate(f"() => performance.getEntriesByName('signatures:drawn')"
                          f".filter((e) => e.startTime > {t_page}).map((e) => e.startTime)")
    return {"control": control, "ms": round(max(marks) - t_page, 1) if marks else None, "draws": last - before,
            "expected_draws": REDRAWS[control]}


def browser_changes(page, quick):
    out = []
    layer = ".widget-dropdown:has-text('Layer') select"
    colour = ".widget-dropdown:has-text('Colour by') select"
    show = ".widget-dropdown:has-text('Show') select"
    anomalies = ".widget-select-multiple select"
    layers = page.locator(layer + " option").all_text_contents()
    for name in layers[1:] + layers[:1]:
        out.append(_browser_change(page, "layer", lambda n=name: page.select_option(layer, label=n)))
    for c in ("cluster", "predicted", "anomaly", "digit"):
        out.append(_browser_change(page, "color_by", lambda c=c: page.select_option(colour, label=c)))
    n_show = page.locator(show + " option").count()
    for i in ([3, 13] if quick else [3, 8, 13, n_show - 1]):
        if 0 < i < n_show:
            out.append(_browser_change(page, "selection", lambda i=i: page.select_option(show, index=i)))
    labels = page.locator(anomalies + " option").all_text_contents()
    chosen = page.locator(anomalies).evaluate("s => [...s.selectedOptions].map(o => o.textContent)")
    subsets = [[], chosen[:1], chosen] if quick else [[], chosen[:1], chosen, chosen + [labels[0]], labels, chosen]
    current = list(chosen)
    for s in subsets:
        if sorted(s) != sorted(current):
            out.append(_browser_change(page, "inserted", lambda s=s: page.select_option(anomalies, label=s)))
            current = list(s)
    return out


def _builder_visit(browser, site, name, *, quick, settle_first):
    """Open the Builder page, type a name, press Run; time until the Sankey and a UMAP are drawn.

    ``settle_first``: wait for the Builder pool's refill and every kernel CPU-idle before Run.
    The viewport is tall (:data:`BUILDER_VIEW`) so that the results below the form are in sight.
    """
    ctx = new_context(browser, BUILDER_VIEW)
    page = ctx.new_page()
    console = _console(page)
    need = {"builder.ipynb": site.filled("builder.ipynb") + 1}
    t0 = time.perf_counter()
    page.goto(site.url + "voila/render/builder.ipynb", timeout=240_000)
    page.wait_for_selector("button:has-text('Run')", timeout=240_000)
    res = {"name": name, "viewport": "x".join(map(str, BUILDER_VIEW)), "page_ready_s": round(time.perf_counter() - t0, 2)}
    if settle_first:
        res["settled_before_run"] = site.settle(need)
    name_box = ".widget-text:has-text('Experiment name') input"
    page.fill(name_box, name)
    page.locator(name_box).press("Tab")
    if quick:
        page.fill(".widget-text:has-text('Images per digit') input", "300")
        page.locator(".widget-text:has-text('Images per digit') input").press("Tab")
    time.sleep(0.5)
    res["loadavg_1min_before"] = round(os.getloadavg()[0], 2)
    res["refill_done_before_run"] = site.filled("builder.ipynb") >= need["builder.ipynb"]
    t0 = time.perf_counter()
    page.click("button:has-text('Run')")
    page.wait_for_function(BUILDER_DONE_JS, timeout=400_000, polling=100)
    res["run_to_results_s"] = round(time.perf_counter() - t0, 2)
    page.wait_for_timeout(500)
    res["status"] = page.inner_text(".sig-status") if page.locator(".sig-status").count() else ""
    m = re.search(r"saved as .* in ([0-9.]+) s", res["status"])
    res["kernel_run_s"] = float(m.group(1)) if m else None
    plots = page.evaluate(PLOT_STATES_JS)
    res["plots"] = plots
    res["drawn_more_than_once"] = [p["title"] for p in plots if p["draws"] > 1]
    res["console"] = console
    return ctx, page, res


def site_bench(store, data_dir, quick, logdir):
    """Sections 3, 4 (page) and 5 with a real server and Chromium."""
    from playwright.sync_api import sync_playwright

    res = {"pool_size": POOL_SIZE, "gallery_pool_size": GALLERY_POOL}
    work = Path(tempfile.mkdtemp(prefix="bench-site-store-"))
    copy = work / "store"
    shutil.copytree(store, copy)
    url = None
    site = None

    def gallery_visit(key, *, until, size, context=None):
        """One timed Gallery visit on a settled site; the pool's refill is waited for afterwards."""
        need = {"gallery.ipynb": site.filled("gallery.ipynb") + 1}
        load = other_load()
        ctx, page, visit = _visit(browser, url, until=until, size=size, context=context)
        visit["foreign_load_before"] = load
        res[key] = visit
        say(f"{key}: first screen {visit['first_screen_s']} s, all {visit['all_plots_s']} s, "
            f"draws {visit['draws']}, load {visit['loadavg_1min_before']}")
        return ctx, page, need

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            # ---- preheated server
            say(f"starting the site with --pool-size {POOL_SIZE} (Gallery pool {GALLERY_POOL})")
            site = Site(copy, POOL_SIZE, data_dir, logdir)
            url = site.url + GALLERY_URL
            res["http_up_s"] = site.wait_http()
            settled = site.settle({nb: 1 for nb in NOTEBOOKS}, timeout=600)
            res["preheat"] = {"all_idle_at_s": settled["last_busy_s"],
                              "kernel_cpu_s": site.find_layers(),
                              "note": "seconds after the server process started; all pools preheat at once"}
            res["memory_preheated"] = site.memory()
            say(f"preheated: {res['preheat']}")

            # ---- first screen, fresh browser profile
            ctx_a, page, need = gallery_visit("gallery_screen_1", until="screen", size=SCREEN)
            res["gallery_screen_1"]["scroll_through"] = scroll_through(page)
            say(f"   scrolled through: {res['gallery_screen_1']['scroll_through']}")
            close_page(page)
            res["gallery_refill"] = site.settle(need)

            # ---- all six plots, fresh browser profile; then control changes on that page
            ctx_b, page, need = gallery_visit("gallery_all_1", until="all", size=TALL)
            time.sleep(1.0)
            res["browser_changes"] = browser_changes(page, quick)
            say(f"browser changes: {[(c['control'], c['ms'], c['draws']) for c in res['browser_changes']]}")
            res["memory_after_visits"] = site.memory()
            close_page(page)
            site.settle(need)

            # ---- the same again with the browser cache warm (same profiles)
            if not quick:
                _, page, need = gallery_visit("gallery_screen_2_cached", until="screen", size=SCREEN, context=ctx_a)
                close_page(page)
                site.settle(need)
                _, page, need = gallery_visit("gallery_all_2_cached", until="all", size=TALL, context=ctx_b)
                close_page(page)
                site.settle(need)
            ctx_a.close()
            ctx_b.close()
            res["kernels_after_closed_visits"] = site.memory()

            # ---- Builder through the page: pool refilled and kernels idle before Run
            say("builder page: Run with the defaults (pool refilled and idle first)")
            ctx, page, b = _builder_visit(browser, site, "bench-from-browser", quick=quick, settle_first=True)
            res["builder_page"] = b
            say(f"builder page: {b['run_to_results_s']} s (kernel {b['kernel_run_s']} s), draws "
                f"{[p['draws'] for p in b['plots']]}")
            res["memory_after_builder_run"] = site.memory()
            close_page(page)
            ctx.close()
            site.settle()
            if not quick:
                # Run at once: the refill (kernel start, then TensorFlow + UMAP at niceness 10) competes
                say("builder page: Run at once, while the pool refills")
                need = {"builder.ipynb": site.filled("builder.ipynb") + 1}
                ctx, page, b = _builder_visit(browser, site, "bench-from-browser-2", quick=quick, settle_first=False)
                res["builder_page_during_refill"] = b
                say(f"builder page during refill: {b['run_to_results_s']} s (kernel {b['kernel_run_s']} s)")
                close_page(page)
                ctx.close()
                site.settle(need)

            # ---- several Gallery visitors at once
            n = 3 if quick else 5
            say(f"{n} gallery visitors at once")
            before = {p.pid for p in site.kernels()}
            res["concurrent_foreign_load_before"] = other_load()
            pages = []
            for _ in range(n):
                c = new_context(browser, TALL)
                p = c.new_page()
                console = _console(p)
                p.goto(url, wait_until="commit", timeout=300_000)
                pages.append((c, p, console))
            visits = []
            for c, p, console in pages:
                p.wait_for_function("() => window.__sigBench && window.__sigBench.all !== null",
                                    timeout=400_000, polling=200)
                b = p.evaluate("() => window.__sigBench")
                visits.append({"first_screen_s": _seconds(b["screen"]), "all_plots_s": _seconds(b["all"]),
                               "draws": [d["draws"] for d in p.evaluate(PLOT_STATES_JS)],
                               "console_errors": [e for e in console["errors"] if not e["harmless"]]})
            conc = {"visitors": n, "viewport": "x".join(map(str, TALL)), "pages": visits}
            site.settle(timeout=400)
            mem = site.memory()
            gal = [k for k in mem["kernels"] if k["kind"] == "gallery" and k["rss_mb"]]
            conc["memory"] = mem
            conc["gallery_kernels"] = len(gal)
            conc["gallery_kernels_total_mb"] = round(sum(k["rss_mb"] for k in gal), 1)
            conc["new_kernels"] = len({p.pid for p in site.kernels()} - before)
            conc["kernels_total_mb"] = round(sum(k["rss_mb"] or 0 for k in mem["kernels"]), 1)
            res["concurrent"] = conc
            say(f"concurrent: {visits}; gallery kernels {len(gal)}, {conc['gallery_kernels_total_mb']} MiB")
            for c, p, _ in pages:
                close_page(p)
                c.close()
            res["kernels_after_concurrent_closed"] = site.memory()
            res["server_log_preheated"] = str(site.log_path)
            site.stop()
            site = None

            # ---- cold visit: no preheated kernels
            say("starting the site with --pool-size 0 (cold)")
            site = Site(copy, 0, data_dir, logdir)
            url = site.url + GALLERY_URL
            res["cold_http_up_s"] = site.wait_http()
            time.sleep(2.0)
            ctx, page, visit = _visit(browser, url, until="screen", size=SCREEN)
            res["gallery_cold"] = visit
            res["memory_cold_gallery"] = site.memory()
            say(f"gallery cold: first screen {visit['first_screen_s']} s (HTML done {visit['html_done_s']} s)")
            close_page(page)
            ctx.close()
            site.stop()
            site = None
            browser.close()
    finally:
        if site is not None:
            site.stop()
        shutil.rmtree(work, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- main


def wait_quiet(max_load, timeout=1800):
    """Wait until no other test suite runs (``pytest`` in a command line) and the 1-minute load
    average is below ``max_load``; returns what was waited for."""
    import psutil

    mine = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)}
    t = time.monotonic()
    while True:
        tests = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid not in mine and any("pytest" in part for part in (p.info["cmdline"] or [])):
                tests.append(p.pid)
        load = os.getloadavg()[0]
        waited = round(time.monotonic() - t, 1)
        if (not tests and load < max_load) or waited > timeout:
            return {"waited_s": waited, "loadavg_1min": round(load, 2), "pytest_pids": tests,
                    "gave_up": bool(tests or load >= max_load)}
        time.sleep(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="/tmp/site_runs", help="store of canonical experiments (only read)")
    ap.add_argument("--quick", action="store_true", help="fewer cases and a smaller Builder run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--wait-quiet", type=float, metavar="LOAD",
                    help="before the run and before the browser part, wait (up to 30 min) until no pytest "
                         "runs and the 1-minute load average is below LOAD")
    ap.add_argument("--report", type=Path, metavar="JSON",
                    help="re-derive the verdicts of a saved run (rewrites its targets), print the tables and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        fn = {"projection": projection_worker,
              "gallery": lambda store, quick: gallery_bench(store, quick == "1"),
              "kernel_gallery": lambda store, quick: kernel_gallery(store, quick == "1"),
              "builder": builder_worker}[a.worker]
        print(MARK + json.dumps(fn(*a.args)), flush=True)
        return

    if a.report:
        results = json.loads(a.report.read_text())
        results["capacity"] = capacity(results)
        results["targets"] = targets(results)
        a.report.write_text(json.dumps(results, indent=2, default=str))  # verdicts as this script derives them
        report(results)
        return

    import psutil

    store = Path(a.store).resolve()
    if not (store / "1v7-mlp" / "manifest.json").is_file():
        sys.exit(f"{store} holds no 1v7-mlp experiment; build the canonical ones first")
    os.environ["SIGNATURES_DATA_DIR"] = a.data_dir
    quick = "1" if a.quick else "0"
    t_start = time.perf_counter()
    results = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "processor": _cpu_model(), "versions": _versions()},
        "quick": a.quick, "store": str(store),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if a.wait_quiet:
        say(f"waiting until no pytest runs and the load is below {a.wait_quiet}")
        results["waited_quiet"] = wait_quiet(a.wait_quiet)
        say(f"   {results['waited_quiet']}")
    results["other_load_at_start"] = other_load()
    logdir = Path(tempfile.mkdtemp(prefix="bench-site-logs-"))

    say("1. UMAP compile in a fresh process")
    results["projection"] = run_worker("projection")
    say(f"   {results['projection']}")

    say("2. Gallery kernel work, plain process")
    results["gallery_plain"] = run_worker("gallery", store, quick)
    say("2. Gallery kernel work, in an ipykernel")
    results["gallery_kernel"] = run_worker("kernel_gallery", store, quick)

    say("4. Builder run on a warmed-up process")
    results["builder"] = run_worker("builder", a.data_dir, "300" if a.quick else "", "5")
    say(f"   run {results['builder']['run_s']} s, stages {results['builder']['timings']}")

    if not a.skip_browser:
        if a.wait_quiet:
            say(f"waiting until no pytest runs and the load is below {a.wait_quiet}")
            results["waited_quiet_before_site"] = wait_quiet(a.wait_quiet)
            say(f"   {results['waited_quiet_before_site']}")
        say("3. the site in Chromium")
        results["site"] = site_bench(store, a.data_dir, a.quick, logdir)
    results["other_load_at_end"] = other_load()
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["capacity"] = capacity(results)
    results["targets"] = targets(results)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2, default=str))
    report(results)
    print(f"\nwritten {a.out} ({results['total_s']} s); server logs in {logdir}")


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("voila", "ipywidgets", "anywidget", "ipykernel", "plotly", "umap-learn", "numba",
                 "tensorflow-cpu", "playwright"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def capacity(r):
    """How many Gallery visitors (one kernel each) fit in memory, from measured RSS.

    Kept aside: ``RESERVED_GIB`` for the OS, the server, two Builder kernels (the pool's and
    one visitor's), the Layers pool kernel; then one Gallery kernel per visitor, less the
    Gallery pool's kernels kept in reserve.
    """
    total_mb = r["machine"]["memory_gib"] * 1024
    out = {"total_mb": total_mb, "reserved_mb": RESERVED_GIB * 1024}
    site = r.get("site")
    if site:
        def rss(mem, kind, visited=None):
            return [k["rss_mb"] for k in mem["kernels"]
                    if k["kind"] == kind and k["rss_mb"] and (visited is None or k["visited"] == visited)]

        visited = rss(site["memory_after_visits"], "gallery", True)
        conc = site.get("concurrent", {})
        per = max(visited + [conc["gallery_kernels_total_mb"] / conc["gallery_kernels"]]
                  if conc.get("gallery_kernels") else visited)
        out["gallery_kernel_mb"] = round(per, 1)
        out["gallery_kernel_pool_mb"] = max(rss(site["memory_preheated"], "gallery"), default=None)
        out["builder_kernel_mb"] = max(rss(site["memory_after_builder_run"], "builder"), default=None)
        out["builder_kernel_pool_mb"] = max(rss(site["memory_preheated"], "builder"), default=None)
        out["layers_kernel_mb"] = max(rss(site["memory_preheated"], "layers"), default=0.0)
        out["server_mb"] = max(site["memory_after_visits"]["server_mb"], conc.get("memory", {}).get("server_mb", 0))
        out["cold_gallery_kernel_mb"] = max((k["rss_mb"] or 0 for k in site["memory_cold_gallery"]["kernels"]),
                                            default=None)
        if conc.get("gallery_kernels"):
            out["concurrent_gallery_kernels"] = conc["gallery_kernels"]
            out["concurrent_gallery_kernel_mean_mb"] = round(conc["gallery_kernels_total_mb"] / conc["gallery_kernels"], 1)
    else:
        out["gallery_kernel_mb"] = r["gallery_kernel"].get("kernel_rss_mb") or r["gallery_plain"]["rss_after_changes_mb"]
        out["server_mb"] = 250.0
        out["builder_kernel_mb"] = r["builder"]["rss_after_run_mb"]
        out["layers_kernel_mb"] = 0.0
    free = total_mb - out["reserved_mb"] - out["server_mb"]
    gallery_pool = r.get("site", {}).get("gallery_pool_size", GALLERY_POOL)
    out["gallery_visitors_no_builder"] = int((free - out["layers_kernel_mb"]) // out["gallery_kernel_mb"]) - gallery_pool
    out["gallery_visitors_with_builder"] = int(
        (free - out["layers_kernel_mb"] - 2 * out["builder_kernel_mb"]) // out["gallery_kernel_mb"]) - gallery_pool
    out["note"] = ("concurrent visitors: the kernel of a closed page is culled after 10 minutes idle "
                   "(signatures.app.server); Voila's own shutdown beacon is refused (403, no _xsrf cookie)")
    return out


def _visits(site):
    return [(k, label) for k, label in (
        ("gallery_screen_1", "Gallery first screen (1300x900), 1st visit"),
        ("gallery_screen_2_cached", "Gallery first screen, browser cache warm"),
        ("gallery_all_1", "Gallery all six plots (1300x2800), 1st visit"),
        ("gallery_all_2_cached", "Gallery all six plots, browser cache warm"),
        ("gallery_cold", "Gallery first screen, cold server (--pool-size 0)")) if k in site]


def _ms(x):
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def targets(r):
    rows = []
    p, b = r["projection"], r["builder"]
    rows.append(["UMAP compile in a fresh process (warm_up)", "at preheat, not on a request",
                 f"{p['warm_up_s']:.1f} s", "info"])
    rows.append(["UMAP fit 2000x64 after warm_up: 1st / 2nd in process", "equal (no compile left)",
                 f"{p['first_fit_2000x64_s']:.1f} / {p['second_fit_2000x64_s']:.1f} s",
                 verdict(p["first_fit_2000x64_s"] <= 1.25 * p["second_fit_2000x64_s"] + 0.5)])
    for label, key in (("plain process", "gallery_plain"), ("ipykernel", "gallery_kernel")):
        g = r[key]
        rows.append([f"Gallery preheat: import + preload 4 ({label})", "preheat, not on a request",
                     f"{g['import_s'] + g['preload_s']:.1f} s", "info"])
        sel = g["select_ms"]
        rows.append([f"Gallery select(name) at request ({label})", "part of the 3 s page budget",
                     f"max {max(sel.values()):.0f} ms", "info"])
        for control, s in change_summary(g["changes"]).items():
            rows.append([f"view change: {control} ({label})", f"<= {TARGET_VIEW_MS:.0f} ms",
                         f"median {_ms(s['median_ms'])}, max {_ms(s['max_ms'])} ms ({len(s['over_target'])}/{s['n']} over)",
                         verdict(s["max_ms"] <= TARGET_VIEW_MS)])
    site = r.get("site")
    if site:
        for key, label in _visits(site):
            v = site[key]
            if key.startswith("gallery_screen"):
                rows.append([label, f"<= {TARGET_PAGE_S:.0f} s", f"{v['first_screen_s']:.2f} s "
                             f"({v['first_screen_plots']} plots)", verdict(v["first_screen_s"] <= TARGET_PAGE_S)])
            elif key == "gallery_cold":
                rows.append([label, "comparison", f"{v['first_screen_s']:.2f} s", "info"])
            else:
                rows.append([label, "info", f"{v['all_plots_s']:.2f} s", "info"])
        c = site["concurrent"]
        rows.append([f"Gallery, {c['visitors']} visitors at once: first screen / all plots (slowest)", "comparison",
                     f"{max(v['first_screen_s'] for v in c['pages']):.1f} / "
                     f"{max(v['all_plots_s'] for v in c['pages']):.1f} s", "info"])
        by = {}
        for ch in site["browser_changes"]:
            if ch["ms"] is not None:
                by.setdefault(ch["control"], []).append(ch["ms"])
        for control, values in by.items():
            rows.append([f"browser round trip: {control}", "comparison",
                         f"median {statistics.median(values):.0f}, max {max(values):.0f} ms", "info"])
    rows.append(["Builder Run -> results (in a process, warm)", f"<= {TARGET_BUILDER_S:.0f} s", f"{b['run_s']:.1f} s",
                 verdict(b["run_s"] <= TARGET_BUILDER_S)])
    if site:
        for key, label in (("builder_page", "Builder Run -> results (page, pool refilled and idle)"),
                           ("builder_page_during_refill", "Builder Run -> results (page, Run during the refill)")):
            if key in site:
                v = site[key]
                rows.append([label, f"<= {TARGET_BUILDER_S:.0f} s",
                             f"{v['run_to_results_s']:.1f} s (kernel {v['kernel_run_s']} s)",
                             verdict(v["run_to_results_s"] <= TARGET_BUILDER_S)])
        cap = r["capacity"]
        rows.append(["Gallery kernel RSS (visited; 4 experiments preloaded)", "info",
                     f"{cap['gallery_kernel_mb']:.0f} MiB", "info"])
        rows.append(["Builder kernel RSS (after a run)", "info", f"{cap['builder_kernel_mb']:.0f} MiB", "info"])
        rows.append(["Gallery visitors in memory (with 2 Builder kernels)", "info",
                     str(cap["gallery_visitors_with_builder"]), "info"])
    return rows


def report(r):
    table("Targets", ["measure", "target", "measured", "verdict"], r["targets"])
    b = r["builder"]
    table("Builder stages (in a process, after warm-up)", ["stage", "seconds"],
          [[k, f"{v:.2f}"] for k, v in b["timings"].items()] + [["other (checks, view)", f"{b['other_s']:.2f}"],
                                                                 ["total", f"{b['run_s']:.2f}"]])
    rows = []
    for key in ("gallery_plain", "gallery_kernel"):
        for control, s in change_summary(r[key]["changes"]).items():
            rows.append([key.split("_")[1], control, s["n"], s["median_ms"], s["max_ms"], s["max_cached_ms"],
                         len(s["over_target"])])
    table("Gallery view changes (server time, ms)", ["where", "control", "n", "median", "max", "max cached", "> 200"],
          rows)
    site = r.get("site")
    if not site:
        print(json.dumps(r["capacity"], indent=1))
        return
    fields = [("load before", "loadavg_1min_before"), ("HTML done", "html_done_s"),
              ("DOMContentLoaded", "dom_content_loaded_s"), ("1st kernel frame", "kernel_first_frame_s"),
              ("widget state frame", "widget_state_frame_s"), ("1st view", "first_view_s"),
              ("plotly requested", "plotly_requested_s"), ("plotly ready", "plotly_ready_s"),
              ("1st drawn", "first_drawn_s"), ("last drawn", "last_drawn_s"),
              ("first screen", "first_screen_s"), ("all six", "all_plots_s")]
    visits = _visits(site)
    table("Gallery visits (s from navigation)", ["milestone"] + [k for k, _ in visits],
          [[label] + [site[k].get(f) for k, _ in visits] for label, f in fields]
          + [["draws per plot"] + [" ".join(map(str, site[k]["draws"])) for k, _ in visits],
             ["console errors (not harmless)"] + [sum(1 for c in site[k]["console"]["errors"] if not c["harmless"])
                                                   for k, _ in visits]])
    m = []
    for key in ("memory_preheated", "memory_after_visits", "kernels_after_closed_visits",
                "memory_after_builder_run", "kernels_after_concurrent_closed", "memory_cold_gallery"):
        mem = site.get(key)
        if mem:
            m.append([key, mem["server_mb"], ", ".join(f"{k['kind']}{'*' if k['visited'] else ''} {k['rss_mb'] or 0:.0f}"
                                                       for k in mem["kernels"])])
    table("Memory (RSS MiB; * = a page was given the kernel)", ["when", "server", "kernels"], m)
    print(json.dumps(r["capacity"], indent=1))


if __name__ == "__main__":
    main()
