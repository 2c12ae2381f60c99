"""A class in real browsers: N headless Chromium visitors open the Gallery page at once.

Run from the repository root::

    python bench/bench_class_browser.py --store /tmp/b/canon --visitors 5

The end-to-end picture next to ``bench_load.py`` (which speaks the protocol without a browser):

1. ``python -m signatures serve --class-size N --no-jobs`` on 127.0.0.1 (the server preheats one
   Gallery kernel per visitor) over a copy of the store (the store itself is only read); the bench
   waits for the log line "Kernel pool of gallery.ipynb is filled" and for the server's process
   tree to be CPU-quiet (its kernels together under 0.1 CPU s per second for 4 s), as
   ``bench_load.Server.wait_ready`` does.
2. N Playwright contexts (1300x2800, every plot in sight) are opened on about:blank, then all N
   navigate to ``/voila/render/gallery.ipynb?experiment=NAME`` at once. Per visitor, from its own
   navigation start: the first screen (every plot in the top 900 px drawn) and all plots drawn
   (``bench_site``'s page marks), the plots' draw counts and the console errors that are not the
   known offline ones. Then each visitor in turn changes the "Layer" dropdown, timed until the
   plots it redraws are drawn (``bench_site._browser_change``).
3. Peak RSS of the server's whole tree (sampled every 0.5 s from before the visits to after the
   close), the pages closed as tabs close, and each visited kernel (by the id in its page)
   checked with ``GET /api/kernels/<id>`` until all are gone, for up to 60 s. The server and
   everything it started are always stopped.

Before measuring, the bench waits (``--wait-for``) until no process matches a pattern (another
load bench on the same machine), and it records the other processes' CPU (``other_load``).
Results go to ``bench/results/class_browser.json``; ``docs/performance-class.md`` has a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import other_load, say, table, tree_rss_mb  # noqa: E402  (bench/ is on sys.path when run)
from bench_load import MemorySampler, Server, serve_options  # noqa: E402
from bench_site import (CHROMIUM, CHROMIUM_ARGS, PLOT_STATES_JS, TALL, TIMELINE_JS, _browser_change,  # noqa: E402
                        _console, _seconds, close_page, new_context)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "class_browser.json"
WAIT_FOR = "bench_load.py|bench_builder_load.py"
LAYER = ".widget-dropdown:has-text('Layer') select"
KERNEL_ID_JS = "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"


def wait_for_others(pattern, *, every=20.0, timeout=25 * 60):
    """Wait until ``pgrep -f pattern`` finds nothing; returns what was waited for."""
    t = time.monotonic()
    seen, checks = set(), 0
    while True:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        pids = [int(p) for p in out if int(p) != os.getpid()]
        seen.update(pids)
        waited = round(time.monotonic() - t, 1)
        if not pids or waited > timeout:
            return {"pattern": pattern, "waited_s": waited, "pids_seen": sorted(seen), "gave_up": bool(pids)}
        if checks % 6 == 0:
            say(f"waiting for {pids} ({pattern}) to end; {waited:.0f} s so far")
        checks += 1
        time.sleep(every)


def kernels_alive(base, ids):
    """How many of the kernels ``ids`` the server still has (``GET /api/kernels/<id>`` answers 200)."""
    alive = 0
    for kid in ids:
        try:
            with urllib.request.urlopen(f"{base}api/kernels/{kid}", timeout=10) as r:
                alive += r.status == 200
        except urllib.error.HTTPError as e:
            alive += e.code == 200
        except OSError:
            alive += 1  # no answer: count it as not known to be gone
    return alive


def wait_kernels_gone(base, ids, timeout=60.0):
    t = time.monotonic()
    while True:
        alive = kernels_alive(base, ids)
        waited = time.monotonic() - t
        if alive == 0 or waited > timeout:
            return {"kernels": len(ids), "alive": alive, "gone_after_s": round(waited, 1) if alive == 0 else None,
                    "checked_for_s": round(waited, 1)}
        time.sleep(1.0)


def class_visit(browser, base, url, n):
    """N contexts navigate to ``url`` at once; returns (contexts and pages, per-visitor results, t0 epoch)."""
    opened = []
    for _ in range(n):
        ctx = new_context(browser, TALL)
        page = ctx.new_page()
        console = _console(page)
        page.goto("about:blank")
        opened.append((ctx, page, console))
    t0 = time.time()
    for _, page, _ in opened:  # returns as soon as the navigation is asked for: all N start together
        page.evaluate("(u) => { window.location.href = u; }", url)
    visits = []
    for i, (_, page, console) in enumerate(opened):
        page.wait_for_function("() => window.__sigBench && window.__sigBench.all !== null",
                               timeout=400_000, polling=100)
        got = time.time()
        b = page.evaluate("() => [window.__sigBench, performance.timeOrigin]")
        bench, origin = b
        tl = page.evaluate(TIMELINE_JS)
        start = origin / 1000.0 - t0  # this visitor's navigation start, after the common start
        visits.append({
            "visitor": i + 1, "navigation_start_s": round(start, 2),
            "first_screen_s": _seconds(bench["screen"]), "first_screen_plots": bench["screenPlots"],
            "all_plots_s": _seconds(bench["all"]),
            "all_plots_from_common_start_s": round(start + bench["all"] / 1000.0, 2),
            "html_done_s": _seconds(tl["responseEnd"]), "dom_content_loaded_s": _seconds(tl["dcl"]),
            "first_view_s": _seconds(min(tl["view"])) if tl["view"] else None,
            "plotly_ready_s": _seconds(tl["ready"][0]) if tl["ready"] else None,
            "seen_by_bench_s": round(got - t0, 2), "kernel_id": page.evaluate(KERNEL_ID_JS),
            "draws": [d["draws"] for d in page.evaluate(PLOT_STATES_JS)], "console": console})
    return opened, visits, t0


def run(store, experiment, n, logdir, *, wait_for):
    options = serve_options()
    res = {"visitors": n, "experiment": experiment, "viewport": "x".join(map(str, TALL))}
    work = Path(tempfile.mkdtemp(prefix="bench-class-browser-"))
    copy = work / "store"
    shutil.copytree(store, copy)  # a kernel may rewrite a stale plots.zip: never in the given store
    server = sampler = None
    try:
        if wait_for:
            res["waited_for_others"] = wait_for_others(wait_for)
            say(f"others: {res['waited_for_others']}")
        server = Server(copy, logdir, class_size=n, jobs=False, options=options)
        res["serve_flags"] = server.flags
        say(f"serve {' '.join(server.flags)} on port {server.port}; waiting for the Gallery pool and a quiet tree")
        res["ready"] = server.wait_ready()
        res["rss_ready"] = tree_rss_mb(server.proc.pid)
        say(f"ready: {res['ready']}, tree RSS {res['rss_ready']['total']} MiB")
        res["other_load_before"] = other_load(exclude=[p.pid for p in server.tree()], seconds=2.0)
        say(f"other load before: {res['other_load_before']['other_cpu_percent']} % CPU, "
            f"loadavg {res['other_load_before']['loadavg']}")
        sampler = MemorySampler(server.proc.pid)
        sampler.start()
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            url = server.base + f"voila/render/gallery.ipynb?experiment={experiment}"
            say(f"{n} visitors open {url} at once")
            opened, visits, _ = class_visit(browser, server.base, url, n)
            res["rss_all_drawn"] = tree_rss_mb(server.proc.pid)
            for v in visits:
                say(f"visitor {v['visitor']}: first screen {v['first_screen_s']} s, all {v['all_plots_s']} s, "
                    f"draws {v['draws']}")
            res["other_load_after_visits"] = other_load(exclude=[p.pid for p in server.tree()], seconds=1.0)
            for v, (_, page, _) in zip(visits, opened):
                opts = page.locator(LAYER + " option").all_text_contents()
                target = opts[1] if len(opts) > 1 else opts[0]
                v["layer_change"] = _browser_change(page, "layer", lambda p=page, t=target: p.select_option(LAYER, label=t))
                v["layer_change"]["to"] = target
                say(f"visitor {v['visitor']}: layer -> {target}: {v['layer_change']['ms']} ms, "
                    f"{v['layer_change']['draws']} redraws")
            for v in visits:
                errs = v.pop("console")["errors"]
                v["console_errors"] = [e for e in errs if not e["harmless"]]
                v["harmless_console_errors"] = len(errs) - len(v["console_errors"])
            res["pages"] = visits
            res["other_load_after_changes"] = other_load(exclude=[p.pid for p in server.tree()], seconds=1.0)
            t_close = time.monotonic()
            for ctx, page, _ in opened:
                close_page(page)
                ctx.close()
            res["close_s"] = round(time.monotonic() - t_close, 1)
            browser.close()
        res["kernels_after_close"] = wait_kernels_gone(server.base, [v["kernel_id"] for v in visits if v["kernel_id"]])
        say(f"after closing: {res['kernels_after_close']}")
        sampler.stop()
        res["peak_rss"] = sampler.peak
        res["low_memory_gib"] = sampler.low_memory
        res["server_log"] = str(server.log_path)
        res["server_log_errors"] = [line[:300] for line in server.log_text().splitlines()
                                    if " ERROR " in line or "Traceback" in line or line.startswith("[E ")][:20]
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return res


def summarise(res):
    pages = res["pages"]

    def col(key):
        return [v[key] for v in pages if v.get(key) is not None]

    fs, al = col("first_screen_s"), col("all_plots_s")
    ch = [v["layer_change"]["ms"] for v in pages if v["layer_change"]["ms"] is not None]
    return {"first_screen_s": {"median": statistics.median(fs), "max": max(fs)},
            "all_plots_s": {"median": statistics.median(al), "max": max(al)},
            "all_plots_from_common_start_max_s": max(col("all_plots_from_common_start_s")),
            "layer_change_ms": {"median": statistics.median(ch), "max": max(ch)} if ch else None,
            "console_errors": sum(len(v["console_errors"]) for v in pages),
            "plots_drawn_more_than_once": sum(1 for v in pages for d in v["draws"] if d > 1),
            "peak_rss_mib": res["peak_rss"]["total"] if res.get("peak_rss") else None,
            "kernels_alive_after_close": res["kernels_after_close"]["alive"]}


def report(res):
    rows = [[v["visitor"], f"{v['navigation_start_s']:.2f}", v.get("html_done_s"), v.get("first_view_s"),
             f"{v['first_screen_s']:.2f}", v["first_screen_plots"],
             f"{v['all_plots_s']:.2f}", " ".join(map(str, v["draws"])),
             f"{v['layer_change']['ms']}" if v["layer_change"]["ms"] is not None else "none",
             f"{v['layer_change']['draws']}/{v['layer_change']['expected_draws']}", len(v["console_errors"])]
            for v in res["pages"]]
    table(f"{res['visitors']} Chromium visitors on the Gallery ({res['experiment']}), s from each one's navigation",
          ["visitor", "nav start", "HTML done", "1st view", "first screen", "plots", "all plots", "draws", "Layer ms", "redraws", "errors"],
          rows)
    s = res["summary"]
    p = res["peak_rss"] or {}
    k = res["kernels_after_close"]
    ol = res["other_load_before"]
    table("Summary", ["measure", "value"], [
        ["first screen, median / slowest", f"{s['first_screen_s']['median']:.2f} / {s['first_screen_s']['max']:.2f} s"],
        ["all plots, median / slowest", f"{s['all_plots_s']['median']:.2f} / {s['all_plots_s']['max']:.2f} s"],
        ["Layer change, median / slowest",
         f"{s['layer_change_ms']['median']:.0f} / {s['layer_change_ms']['max']:.0f} ms" if s["layer_change_ms"] else "-"],
        ["console errors (not the offline ones)", s["console_errors"]],
        ["peak RSS of the server tree", f"{p.get('total')} MiB ({p.get('n_kernel')} kernels: {p.get('kernel')} MiB)"],
        ["visited kernels alive after closing", f"{k['alive']} of {k['kernels']} (gone after {k['gone_after_s']} s)"],
        ["server ready (pool filled, tree quiet)", f"{res['ready']['ready_s']} s"],
        ["other processes' CPU before / load avg", f"{ol['other_cpu_percent']} % / {ol['loadavg']}"],
    ])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=str(REPO / "runs"), help="store of experiments (only read; copied)")
    ap.add_argument("--visitors", type=int, default=5)
    ap.add_argument("--experiment", help="experiment to open (default 1v3-mlp, else the first stored)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--wait-for", default=WAIT_FOR, metavar="PATTERN",
                    help="wait (up to 25 min) until no process matches this pgrep -f pattern; '' not to wait")
    a = ap.parse_args()

    def on_term(signum, frame):  # SIGTERM (and SIGINT, ignored in the background) end the run cleanly
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    store = Path(a.store).resolve()
    names = sorted(p.parent.name for p in store.glob("*/manifest.json"))
    if not names:
        sys.exit(f"{store} holds no experiment")
    experiment = a.experiment or ("1v3-mlp" if "1v3-mlp" in names else names[0])
    logdir = Path(tempfile.mkdtemp(prefix="bench-class-browser-logs-"))
    res = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "store": str(store), "cores": os.cpu_count()}
    res.update(run(store, experiment, a.visitors, logdir, wait_for=a.wait_for))
    res["summary"] = summarise(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=str))
    report(res)
    print(f"\nwritten {a.out}; server log {res['server_log']}")


if __name__ == "__main__":
    main()
