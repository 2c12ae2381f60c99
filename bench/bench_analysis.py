"""How long the answers to the three questions take for a stored experiment (no retraining, no UMAP).

Run: python bench/bench_analysis.py [--store runs] [--repeat 3]

Prints, per stored experiment, the seconds of each part of ``signatures.analysis.analyze``
(median of ``--repeat`` runs in this process), of reading it back from the experiment's
folder, and of the "Layers and neurons" page's ``select``; the target is "a few seconds"
on this 2-core machine. Retrained-model stability is left out: it trains models and is an
explicit action in the page.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

TARGET_S = 5.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="runs")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "analysis.json"))
    args = p.parse_args(argv)

    start = time.perf_counter()
    from signatures.analysis import analyze
    from signatures.store import list_experiments, load_experiment
    from signatures.app import LayersApp
    print(f"imports {time.perf_counter() - start:.2f} s (numpy, scikit-learn, scipy; no TensorFlow)")

    manifests = list_experiments(args.store)
    if not manifests:
        raise SystemExit(f"no stored experiments in {args.store}; build them with 'python -m signatures canonical'")
    results = {}
    print(f"{'experiment':<32} {'rows':>6} {'neurons':>8} {'paths':>8} {'separ.':>8} {'anomaly':>8} "
          f"{'total':>7} {'page':>7}  target <= {TARGET_S:.0f} s")
    for m in manifests:
        exp = load_experiment(m["path"])
        runs = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            result = analyze(exp)
            runs.append((time.perf_counter() - t, result["seconds"]))
        total = statistics.median(r[0] for r in runs)
        parts = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
        app = LayersApp(args.store)
        t = time.perf_counter()
        app.select(m["name"])  # computes and keeps analysis.json the first time
        first_page = time.perf_counter() - t
        t = time.perf_counter()
        app.select(m["name"])
        page = time.perf_counter() - t
        verdict = "PASS" if total <= TARGET_S else "MISS"
        print(f"{m['name']:<32} {len(exp.labels):>6} {parts['neurons']:>8.2f} {parts['signatures']:>8.2f} "
              f"{parts['separation']:>8.2f} {parts['anomaly']:>8.2f} {total:>7.2f} {page:>7.2f}  {verdict}")
        results[m["name"]] = {"rows": int(len(exp.labels)), "parts": parts, "total": total,
                              "page_first": first_page, "page_cached": page, "pass": total <= TARGET_S}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
