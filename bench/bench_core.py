"""Benchmark of the core pipeline: extraction, choice of K, one whole experiment.

Run from the repository root::

    python bench/bench_core.py            # full run (about 17 minutes on 2 busy cores)
    python bench/bench_core.py --quick    # smaller cases, a few minutes

Every ratio is measured side by side in one run, on real images only (MNIST's test
set and Fashion-MNIST), and the results are written to ``bench/results/core.json``.
What is measured and the figures of a run are described in ``docs/performance.md``.

a. Extraction: ``signatures.activations.extract`` (all hidden layers and the output in
   one forward pass) against ``model.predict`` (output only) and against one sub-model
   per hidden layer, on the same 12,000 inputs.
b. Choice of K: ``select_k`` (silhouette on a 2,000-row sample, k-means n_init=4)
   against the exhaustive sweep (k-means n_init=10 and the silhouette on every row,
   for every K in 2..10): time, chosen K, and how often the two agree across seeds.
   Both also with k-means, BLAS and OpenMP limited to one thread (threadpoolctl).
c. A whole 1-vs-7 experiment in a fresh process, time per stage, then a second
   experiment in the same process and a third with one thread for k-means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _common import table, verdict  # noqa: E402  (bench/ is on sys.path when run)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "core.json"
DEFAULT_FASHION = "/usr/share/datasets/fashion-mnist"
N_INPUTS = 12_000
BATCH = 512

# repeats: extraction rounds; k_n: rows of the K-selection cases; seeds: select_k seeds compared
FULL = dict(repeats=5, k_n=N_INPUTS, blob_ks=(3, 5, 8), fashion_layers=3, seeds=10, k_repeats=3)
QUICK = dict(repeats=3, k_n=3000, blob_ks=(3, 5), fashion_layers=2, seeds=3, k_repeats=1)

TARGET_PREDICT = 1.2  # extract / predict must be at most this
TARGET_SELECT = 20.0  # exhaustive / select_k must be at least this


# --------------------------------------------------------------------------- helpers


def default_data_dir():
    return os.environ.get("SIGNATURES_DATA_DIR") or str(REPO.parent / "shared" / "data")


def interleaved_times(fns, repeats):
    """Wall and CPU seconds of each ``fns[key]()``: one warm-up run each, then ``repeats`` rounds.

    Each round runs every function once, so a load that comes and goes (other processes on
    the machine) falls on all of them alike.

    Returns
    -------
    wall, cpu : dict[str, list of float]
    """
    for fn in fns.values():
        fn()
    wall = {key: [] for key in fns}
    cpu = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            _, w, c = timed(fn)
            wall[key].append(w)
            cpu[key].append(c)
    return wall, cpu


def timed(fn):
    """``(fn(), wall seconds, CPU seconds of this process, all threads)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def load():
    return list(os.getloadavg())


def scaled(images, flatten=True):
    X = images.astype(np.float32) / np.float32(255.0)
    return X.reshape(len(X), -1) if flatten else X[..., np.newaxis]


def pick_rows(labels, classes, n_total, seed):
    """Seeded rows: ``n_total`` split evenly over ``classes``, or any rows if classes is None."""
    rng = np.random.default_rng(seed)
    if classes is None:
        return np.sort(rng.choice(len(labels), size=n_total, replace=False))
    per = n_total // len(classes)
    rows = [rng.choice(np.flatnonzero(labels == c), size=per, replace=False) for c in classes]
    return np.sort(np.concatenate(rows))


# --------------------------------------------------------------------------- a. extraction


def _reduce_rows(tensor):
    """The same 'mean' reduction extract applies to conv maps, so both paths give equal arrays."""
    import keras

    rank = len(tensor.shape)
    return tensor if rank == 2 else keras.ops.mean(tensor, axis=tuple(range(1, rank - 1)))


def _per_layer_models(model, names):
    import keras

    return [keras.Model(model.inputs, _reduce_rows(model.get_layer(n).output)) for n in names]


def bench_extraction_case(label, model, X, repeats):
    from signatures.activations import build_extractor, default_hidden_layers, extract

    names = default_hidden_layers(model)
    extractor = build_extractor(model)
    subs = _per_layer_models(model, names)

    def run_extract():  # as the library is called: builds (and traces) its extractor each call
        return extract(model, X, batch_size=BATCH)

    def run_extract_reused():
        return extract(model, X, batch_size=BATCH, extractor=extractor)

    def run_predict():
        return model.predict(X, batch_size=BATCH, verbose=0)

    def run_per_layer():  # builds one sub-model per layer each call, like extract
        return [m.predict(X, batch_size=BATCH, verbose=0) for m in _per_layer_models(model, names)]

    def run_per_layer_reused():
        return [m.predict(X, batch_size=BATCH, verbose=0) for m in subs]

    # Both paths must give the same numbers, or the comparison means nothing.
    hidden, probs = run_extract()
    per_layer = run_per_layer_reused()
    max_diff = max(float(np.max(np.abs(hidden[n] - v))) for n, v in zip(names, per_layer))
    max_diff = max(max_diff, float(np.max(np.abs(probs - run_predict()))))

    paths = {
        "predict": run_predict,
        "extract": run_extract,
        "extract_reused": run_extract_reused,
        "per_layer": run_per_layer,
        "per_layer_reused": run_per_layer_reused,
    }
    raw, raw_cpu = interleaved_times(paths, repeats)
    t = {key: statistics.median(v) for key, v in raw.items()}
    c = {key: statistics.median(v) for key, v in raw_cpu.items()}
    n_layers = len(names)
    return {
        "case": label,
        "model": model.name,
        "layers": names,
        "units": [int(hidden[n].shape[1]) for n in names],
        "n_inputs": int(len(X)),
        "batch_size": BATCH,
        "repeats": repeats,
        "max_abs_diff": max_diff,
        "seconds": t,
        "cpu_seconds": c,
        "all_seconds": raw,
        "all_cpu_seconds": raw_cpu,
        "ratio_extract_vs_predict": t["extract"] / t["predict"],
        "ratio_extract_reused_vs_predict": t["extract_reused"] / t["predict"],
        "speedup_vs_per_layer": t["per_layer"] / t["extract"],
        "speedup_vs_per_layer_reused": t["per_layer_reused"] / t["extract_reused"],
        "cpu_ratio_extract_vs_predict": c["extract"] / c["predict"],
        "cpu_ratio_extract_reused_vs_predict": c["extract_reused"] / c["predict"],
        "cpu_speedup_vs_per_layer": c["per_layer"] / c["extract"],
        "cpu_speedup_vs_per_layer_reused": c["per_layer_reused"] / c["extract_reused"],
        "target_per_layer": n_layers - 0.5,
    }


def section_extraction(args):
    from signatures.data import load_dataset
    from signatures.models import build_cnn, build_mlp

    print("\n== a. extraction ==")
    fashion = load_dataset("fashion-mnist", data_dir=args.fashion_dir)
    rows = pick_rows(fashion.labels, None, N_INPUTS, seed=0)
    print(
        f"inputs: {N_INPUTS} real Fashion-MNIST images (seeded sample of {len(fashion.labels)}; "
        f"MNIST here is only the 10,000-image test set, and its 1s + 7s are 2,163), "
        f"batch size {BATCH}, median of {args.repeats} interleaved rounds after one warm-up run of each path; "
        "weights as initialised "
        "(the forward-pass time does not depend on their values)"
    )
    load_before = load()
    cases = []
    mlp = build_mlp(784, 10, hidden=(256, 128, 64, 32), seed=0)
    cases.append(bench_extraction_case("MLP 256-128-64-32", mlp, scaled(fashion.images[rows]), args.repeats))
    cnn = build_cnn((28, 28, 1), 10, filters=(8, 16), dense=(32,), seed=0)
    cases.append(bench_extraction_case("CNN 8-16 + dense 32", cnn, scaled(fashion.images[rows], False), args.repeats))

    rows_out = []
    for c in cases:
        for what, key in (("wall", "seconds"), ("CPU", "cpu_seconds")):
            s = c[key]
            rows_out.append([
                c["case"], len(c["layers"]), what, f"{s['predict']:.3f}", f"{s['extract']:.3f}",
                f"{s['extract_reused']:.3f}", f"{s['per_layer']:.3f}", f"{s['per_layer_reused']:.3f}",
            ])
    table("seconds (median)", ["model", "hidden", "time", "predict", "extract", "extract*", "per-layer",
                               "per-layer*"], rows_out)
    print("* = model(s) built and traced once, reused; without * each call builds its model(s), "
          "as extract does in run_experiment; CPU = CPU seconds of this process, all threads (less moved by "
          "other processes than wall time)")
    rows_out = []
    for c in cases:
        for label, key, cpu_key, target, at_most in (
            ("extract / predict", "ratio_extract_vs_predict", "cpu_ratio_extract_vs_predict", TARGET_PREDICT, True),
            ("extract* / predict", "ratio_extract_reused_vs_predict", "cpu_ratio_extract_reused_vs_predict",
             TARGET_PREDICT, True),
            ("per-layer / extract", "speedup_vs_per_layer", "cpu_speedup_vs_per_layer", c["target_per_layer"], False),
            ("per-layer* / extract*", "speedup_vs_per_layer_reused", "cpu_speedup_vs_per_layer_reused",
             c["target_per_layer"], False),
        ):
            ok = c[key] <= target if at_most else c[key] >= target
            ok_cpu = c[cpu_key] <= target if at_most else c[cpu_key] >= target
            rows_out.append([c["case"], label, f"{'<=' if at_most else '>='} {target}x", f"{c[key]:.2f}x", verdict(ok),
                             f"{c[cpu_key]:.2f}x", verdict(ok_cpu)])
    table("ratios of the medians", ["model", "ratio", "target", "wall", "result", "CPU time", "result"], rows_out)
    for c in cases:
        print(f"{c['case']}: largest |extract - per-layer/predict| = {c['max_abs_diff']:.2e}")
    return {"inputs": f"{N_INPUTS} Fashion-MNIST images", "cases": cases, "load_before": load_before,
            "load_after": load()}


# --------------------------------------------------------------------------- b. choice of K


def _trained_hidden(X, y, classes, hidden, epochs, seed=0):
    """Hidden-layer activations of an MLP trained briefly on real images."""
    from signatures.activations import extract
    from signatures.data import one_hot
    from signatures.models import build_mlp, train

    model = build_mlp(X.shape[1], len(classes), hidden=hidden, seed=seed)
    history = train(model, X, one_hot(y, classes), epochs=epochs, seed=seed)
    acts, _ = extract(model, X, batch_size=BATCH)
    return acts, history["val_accuracy"][-1]


def k_cases(args):
    """The fixed suite: (name, kind, X, true K or None)."""
    from sklearn.datasets import make_blobs

    from signatures.data import load_dataset

    n = args.k_n
    cases = []
    for k in args.blob_ks:
        X, _ = make_blobs(n_samples=n, n_features=16, centers=k, cluster_std=1.0, random_state=k)
        cases.append((f"blobs K={k}", "blobs", X, k))

    fashion = load_dataset("fashion-mnist", data_dir=args.fashion_dir)
    classes = (0, 1, 7)  # T-shirt/top, Trouser, Sneaker
    rows = pick_rows(fashion.labels, classes, n, seed=1)
    acts, acc = _trained_hidden(scaled(fashion.images[rows]), fashion.labels[rows], classes, (128, 64, 32), 2)
    print(f"Fashion-MNIST MLP 128-64-32 on {len(rows)} images of classes {classes}, 2 epochs: "
          f"validation accuracy {acc:.3f}")
    for name in list(acts)[: args.fashion_layers]:
        cases.append((f"fashion {name}", "layer", acts[name], None))

    mnist = load_dataset("mnist", data_dir=args.data_dir)
    rows = np.flatnonzero(np.isin(mnist.labels, (1, 7)))
    acts, acc = _trained_hidden(scaled(mnist.images[rows]), mnist.labels[rows], (1, 7), (64, 32), 5)
    print(f"MNIST MLP 64-32 on all {len(rows)} 1s + 7s of the test set (the only MNIST here), 5 epochs: "
          f"validation accuracy {acc:.3f}")
    for name in acts:
        cases.append((f"mnist 1v7 {name}", "layer", acts[name], None))
    return cases


def _best(scores):
    """The K with the best finite score, ties to the smaller K (as select_k)."""
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    top = max(finite.values())
    return min(k for k, v in finite.items() if v == top)


def section_select_k(args):
    from threadpoolctl import threadpool_limits

    from signatures.clustering import select_k, silhouette_sweep

    print("\n== b. choice of K ==")
    print(f"select_k: silhouette on a seeded sample of 2,000 rows, k-means n_init=4; exhaustive: "
          f"silhouette_sweep(X, sample_size=None, n_init=10); K in 2..10; n = {args.k_n} "
          "(MNIST 1v7: 2,163, all the test set has)")
    load_before = load()
    results = []
    for name, kind, X, true_k in k_cases(args):
        X = np.asarray(X, dtype=np.float64)
        sel_runs = [timed(lambda: select_k(X)) for _ in range(args.k_repeats)]
        (k_sel, sel_scores), _, _ = sel_runs[0]
        t_sel = statistics.median(r[1] for r in sel_runs)
        cpu_sel = statistics.median(r[2] for r in sel_runs)
        with threadpool_limits(limits=1):  # both again with k-means, BLAS and OpenMP on one thread
            t_sel_1 = statistics.median(timed(lambda: select_k(X))[1] for _ in range(args.k_repeats))
            full_1, t_full_1, _ = timed(lambda: silhouette_sweep(X, sample_size=None, n_init=10, random_state=0))
        full, t_full, cpu_full = timed(lambda: silhouette_sweep(X, sample_size=None, n_init=10, random_state=0))
        k_full = _best(full)
        best = full[k_full]
        seeds = []
        with threadpool_limits(limits=1):  # same choices, only faster on a busy 2-core machine
            for seed in range(args.seeds):
                k_seed, _ = select_k(X, random_state=seed)
                seeds.append(int(k_seed))
        r = {
            "case": name,
            "kind": kind,
            "n": int(len(X)),
            "n_features": int(X.shape[1]),
            "true_k": true_k,
            "k_select": int(k_sel),
            "k_full": int(k_full),
            "same": int(k_sel) == int(k_full),
            "seconds_select": t_sel,
            "seconds_full": t_full,
            "speedup": t_full / t_sel,
            "cpu_seconds_select": cpu_sel,
            "cpu_seconds_full": cpu_full,
            "cpu_speedup": cpu_full / cpu_sel,
            "seconds_select_1_thread": t_sel_1,
            "seconds_full_1_thread": t_full_1,
            "speedup_1_thread": t_full_1 / t_sel_1,
            "k_full_1_thread": int(_best(full_1)),
            "full_scores": {str(k): v for k, v in full.items()},
            "sample_scores": {str(k): v for k, v in sel_scores.items()},
            "full_score_loss": best - full[k_sel],
            "k_by_seed": seeds,
            "same_by_seed": sum(k == k_full for k in seeds),
        }
        results.append(r)
        print(f"  {name:<18} n={r['n']:>5}  K select {r['k_select']:>2} / full {r['k_full']:>2}  "
              f"{t_sel:6.2f} s vs {t_full:7.2f} s  ({r['speedup']:.1f}x, CPU {r['cpu_speedup']:.1f}x; "
              f"1 thread: {t_sel_1:.2f} s vs {t_full_1:.2f} s, {r['speedup_1_thread']:.1f}x)  "
              f"seeds {seeds}", flush=True)

    rows = []
    for r in results:
        at_target_n = r["n"] == args.k_n
        rows.append([
            r["case"], r["n"], r["true_k"] or "-", r["k_select"], r["k_full"], "yes" if r["same"] else "no",
            f"{r['full_score_loss']:.4f}", f"{r['seconds_select']:.2f}", f"{r['seconds_full']:.1f}",
            f"{r['speedup']:.1f}x",
            verdict(r["speedup"] >= TARGET_SELECT) if at_target_n else "n/a",
            f"{r['seconds_select_1_thread']:.2f}", f"{r['seconds_full_1_thread']:.1f}",
            f"{r['speedup_1_thread']:.1f}x",
            verdict(r["speedup_1_thread"] >= TARGET_SELECT) if at_target_n else "n/a",
            f"{r['same_by_seed']}/{len(r['k_by_seed'])}",
        ])
    table(f"select_k vs exhaustive sweep (target >= {TARGET_SELECT:.0f}x at n = {args.k_n})",
          ["case", "n", "true K", "K sel", "K full", "same", "score lost", "t sel", "t full", "speed-up", "result",
           "t sel 1t", "t full 1t", "speed-up 1t", "result 1t", "seeds same"], rows)
    print("t = seconds (select_k: median of runs); 1t = both again with k-means, BLAS and OpenMP limited to one "
          "thread; score lost = full silhouette at the exhaustive K minus at the sampled K; seeds same = "
          f"select_k seeds 0..{args.seeds - 1} (run on one thread) that pick the exhaustive K")
    same = sum(r["same"] for r in results)
    at_n = [r for r in results if r["n"] == args.k_n]
    layer = [r for r in results if r["kind"] == "layer"]
    seed_same = sum(r["same_by_seed"] for r in layer)
    seed_total = sum(len(r["k_by_seed"]) for r in layer)
    all_seed_same = sum(r["same_by_seed"] for r in results)
    all_seed_total = sum(len(r["k_by_seed"]) for r in results)
    total_sel = sum(r["seconds_select"] for r in at_n)
    total_full = sum(r["seconds_full"] for r in at_n)
    cpu_sel = sum(r["cpu_seconds_select"] for r in at_n)
    cpu_full = sum(r["cpu_seconds_full"] for r in at_n)
    sel_1 = sum(r["seconds_select_1_thread"] for r in at_n)
    full_1 = sum(r["seconds_full_1_thread"] for r in at_n)
    summary = {
        "agreement_seed0": f"{same}/{len(results)}",
        "agreement_seeds_layers": f"{seed_same}/{seed_total}",
        "agreement_seeds_all": f"{all_seed_same}/{all_seed_total}",
        "speedup_total_at_n": total_full / total_sel if at_n else None,
        "min_speedup_at_n": min(r["speedup"] for r in at_n) if at_n else None,
        "cpu_speedup_total_at_n": cpu_full / cpu_sel if at_n else None,
        "speedup_1_thread_total_at_n": full_1 / sel_1 if at_n else None,
        "min_speedup_1_thread_at_n": min(r["speedup_1_thread"] for r in at_n) if at_n else None,
        "max_score_lost": max(r["full_score_loss"] for r in results),
    }
    print(f"same K as the exhaustive sweep (seed 0): {summary['agreement_seed0']} cases")
    print(f"same K across seeds 0..{args.seeds - 1}: real layers {summary['agreement_seeds_layers']}, "
          f"all cases {summary['agreement_seeds_all']}")
    if at_n:
        print(f"at n = {args.k_n}: total {total_full:.1f} s vs {total_sel:.2f} s = "
              f"{summary['speedup_total_at_n']:.1f}x overall (CPU time {summary['cpu_speedup_total_at_n']:.1f}x), "
              f"lowest per case {summary['min_speedup_at_n']:.1f}x "
              f"-> {verdict(summary['min_speedup_at_n'] >= TARGET_SELECT)} (target >= {TARGET_SELECT:.0f}x)")
        print(f"both on 1 thread (threadpoolctl): {full_1:.1f} s vs {sel_1:.2f} s = "
              f"{summary['speedup_1_thread_total_at_n']:.1f}x overall, "
              f"lowest per case {summary['min_speedup_1_thread_at_n']:.1f}x "
              f"-> {verdict(summary['min_speedup_1_thread_at_n'] >= TARGET_SELECT)}")
    print(f"largest loss of full silhouette from taking the sampled K: {summary['max_score_lost']:.4f}")
    return {"cases": results, "summary": summary, "n": args.k_n, "sample_size": 2000, "seeds": args.seeds,
            "load_before": load_before, "load_after": load()}


# --------------------------------------------------------------------------- c. whole experiment


def experiment_child(data_dir):
    """Run in a fresh process: three 1-vs-7 experiments, print their timings as JSON.

    The third runs with k-means, BLAS and OpenMP limited to one thread (threadpoolctl).
    """
    import contextlib

    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    from signatures.experiment import ExperimentConfig, run_experiment

    runs = []
    for i in range(3):
        config = ExperimentConfig(name=f"bench-{i}", dataset="mnist", digits=(1, 7), anomalies=(3, 4),
                                  hidden=(64, 32), epochs=5, data_dir=data_dir)
        t0 = time.perf_counter()
        with threadpool_limits(limits=1) if i == 2 else contextlib.nullcontext():
            exp = run_experiment(config)
        runs.append({
            "timings": exp.timings,
            "wall": time.perf_counter() - t0,
            "rows": {s: int(len(exp.rows(s))) for s in ("train", "test", "anomaly")},
            "accuracy": exp.metrics["accuracy"],
            "k": {n: int(est.k_) for n, est in exp.clusterers.items()},
        })
    print("BENCH_JSON " + json.dumps({"runs": runs, "process_seconds": time.perf_counter() - start}))


def section_experiment(args):
    print("\n== c. whole experiment (1 vs 7, MLP 64-32, anomalies 3 and 4, 5 epochs) ==")
    print("MNIST here is only the 10,000-image test set: all its 1s (1,135) and 7s (1,028) are used, "
          "80/20 train/held-out; first run in a fresh Python process")
    load_before = load()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_experiment-child", "--data-dir", args.data_dir],
        capture_output=True, text=True, cwd=str(REPO),
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the experiment process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")][-1]
    result = json.loads(line[len("BENCH_JSON "):])
    first = result["runs"][0]
    stages = list(first["timings"])
    rows = [[s] + [f"{run['timings'].get(s, float('nan')):.2f}" for run in result["runs"]] for s in stages]
    rows.append(["total"] + [f"{sum(run['timings'].values()):.2f}" for run in result["runs"]])
    table("seconds per stage (run_experiment(...).timings)",
          ["stage", "1: fresh process", "2: same process", "3: same, 1 thread"], rows)
    print("3 = a third run in the same process with threadpoolctl.threadpool_limits(1) around run_experiment "
          "(k-means, BLAS and OpenMP on one thread; TensorFlow's own threads are not limited)")
    print(f"rows: {first['rows']}; held-out accuracy {first['accuracy']:.4f}; K per layer {first['k']}")
    print("projection in the fresh process includes umap-learn's one-time numba compilation "
          "(numba may also reuse its on-disk cache from earlier runs); the second run shows the warm cost. "
          f"Whole child process, Python start to exit: {wall:.1f} s")
    result.update({"child_wall_seconds": wall, "load_before": load_before, "load_after": load(),
                   "data": "MNIST test set (10,000): all 1s (1,135) and 7s (1,028); anomalies 3 and 4"})
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer and smaller cases (a few minutes)")
    p.add_argument("--data-dir", default=default_data_dir(),
                   help="folder with MNIST IDX files (default: $SIGNATURES_DATA_DIR or ../shared/data)")
    p.add_argument("--fashion-dir", default=DEFAULT_FASHION, help="folder with Fashion-MNIST IDX files")
    p.add_argument("--sections", default="abc", help="which sections to run, e.g. 'ab' (default: abc)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the JSON results")
    p.add_argument("--_experiment-child", dest="experiment_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        setattr(args, key, value)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.experiment_child:
        experiment_child(args.data_dir)
        return 0
    started = time.perf_counter()
    bad = set(args.sections) - set("abc")
    if bad:
        raise SystemExit(f"--sections takes letters among a, b, c; got {sorted(bad)}")
    import sklearn

    results = {
        "mode": "quick" if args.quick else "full",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "sklearn": sklearn.__version__, "load_at_start": load()},
        "argv": sys.argv[1:],
    }
    print(f"bench_core ({results['mode']}): {os.cpu_count()} CPUs, load average {load()}")
    if "c" in args.sections:  # first, before this process has imported TensorFlow or numba itself
        results["experiment"] = section_experiment(args)
    if "a" in args.sections:
        import keras

        results["machine"]["keras"] = keras.__version__
        results["extraction"] = section_extraction(args)
    if "b" in args.sections:
        results["select_k"] = section_select_k(args)
    results["total_seconds"] = time.perf_counter() - started
    results["machine"]["load_at_end"] = load()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nbenchmark took {results['total_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
