"""Unseen-class detection: the field's detectors against the signature score, on four protocols.

A: MNIST 1 vs 7, unseen = the other 8 digits. B: 0-4 known, 5-9 unseen. C: open-set MNIST,
6 known / 4 unknown digits, 5 seeded random splits (mean ± sd). D: Fashion-MNIST, 5 known /
5 unknown classes. Each with the MLP 64-32 and the canonical CNN (conv 8-16, dense 32).
Held-out inputs of the known classes are the negatives, unseen classes the positives. Only
the MNIST test set (10,000 digits) is available offline here; Fashion-MNIST is full.

    SIGNATURES_DATA_DIR=../shared/data:/usr/share/datasets/fashion-mnist python bench/bench_detectors.py
    python bench/bench_detectors.py --protocols A --models mlp --quick

Prints per protocol and model the AUROC, FPR at 95% TPR and AUPR of every detector, the
signature score minus the best baseline, and the calibration of the signature score's
p-values on held-out inputs it was not calibrated on (the held-out rows split in halves,
each half tested against the other, repeated with other seeded halves until at least 1,000
tests, at most 5 times), and writes JSON to bench/results/detectors.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import table  # noqa: E402

SHOWN = ("msp", "maxlogit", "energy", "mahalanobis", "mahalanobis (best layer)", "knn", "dknn", "signature")


def protocols(seed_splits=5):
    rng = np.random.default_rng(0)
    out = OrderedDict()
    out["A"] = [("mnist", (1, 7), tuple(c for c in range(10) if c not in (1, 7)))]
    out["B"] = [("mnist", (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))]
    splits = []
    for _ in range(seed_splits):
        known = tuple(sorted(int(c) for c in rng.choice(10, size=6, replace=False)))
        splits.append(("mnist", known, tuple(c for c in range(10) if c not in known)))
    out["C"] = splits
    out["D"] = [("fashion-mnist", (0, 1, 2, 3, 4), (5, 6, 7, 8, 9))]
    return out


ALPHAS = (0.01, 0.05, 0.1)


def calibrate(layers, labels, split, clusters, *, seed, repeats):
    """Share of held-out rows at p < alpha when the signature score is calibrated on other held-out rows.

    ``repeats`` seeded splits of the held-out rows into halves, each half tested against a score
    calibrated on the other half. Returns the pooled shares, the distinct rows, the tests (rows x
    repeats) and the statistics' weights of the first fit.
    """
    from signatures.detectors import SignatureScore

    train, held = split == 0, np.flatnonzero(split == 1)
    rng = np.random.default_rng(seed)
    p, weights = [], None
    for _ in range(repeats):
        order = rng.permutation(held)
        halves = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
        for cal_rows, test_rows in (halves, halves[::-1]):
            sig = SignatureScore(random_state=seed).fit(
                {n: v[train] for n, v in layers.items()}, {n: v[cal_rows] for n, v in layers.items()}, clusters,
                y_train=labels[train], y_cal=labels[cal_rows])
            if weights is None:
                weights = dict(zip(sig.statistics_, np.round(sig.weights_, 4).tolist()))
            p.append(sig.pvalues({n: v[test_rows] for n, v in layers.items()}))
    p = np.concatenate(p)
    return {"share": {str(a): float((p < a).mean()) for a in ALPHAS}, "rows": int(len(held)), "tests": int(len(p)),
            "repeats": int(repeats), "weights": weights}


def run_case(dataset, known, unseen, arch, *, epochs, n_per_class, seed, min_tests=1000):
    from signatures.activations import extract
    from signatures.clustering import cluster_layers
    from signatures.data import load_dataset
    from signatures.detectors import detector_scores, detector_table
    from signatures.experiment import ExperimentConfig, build_and_train, prepare_subset

    config = ExperimentConfig(name="bench", dataset=dataset, digits=known, anomalies=unseen, arch=arch,
                              hidden=(64, 32) if arch == "mlp" else (32,), filters=(8, 16), epochs=epochs,
                              n_per_class=n_per_class, seed=seed)
    config.validate()
    data = load_dataset(dataset)
    subset = prepare_subset(config, data)
    start = time.perf_counter()
    model, _ = build_and_train(config, subset)
    X = np.concatenate([subset.X_train, subset.X_test, subset.X_anomaly])
    labels = np.concatenate([subset.y_train, subset.y_test, subset.y_anomaly])
    split = np.concatenate([np.zeros(len(subset.y_train)), np.ones(len(subset.y_test)),
                            np.full(len(subset.y_anomaly), 2)]).astype(int)
    hidden, probs, logits = extract(model, X, logits=True)
    train = split == 0
    repeats = int(np.clip(np.ceil(min_tests / max(int((split == 1).sum()), 1)), 1, 5))
    clusterers = cluster_layers({n: v[train] for n, v in hidden.items()}, random_state=seed)
    clusters = {n: est.labels_ for n, est in clusterers.items()}
    rows, scores = detector_scores(hidden, labels, split, probs=probs, logits=logits, clusters=clusters,
                                   inputs=X, random_state=seed)
    table = detector_table(rows, scores, labels, split)
    layers = list(hidden)
    best = max(layers, key=lambda n: table["overall"][f"mahalanobis:{n}"]["auroc"])
    table["overall"]["mahalanobis (best layer)"] = dict(table["overall"][f"mahalanobis:{best}"], layer=best)
    # Calibration on inputs the score never saw: the held-out rows are split in two halves; the score is
    # calibrated on one half (and its weights chosen there) and tested on the other, then the halves swap, so
    # every held-out row is tested once per repeat; small protocols repeat with other seeded halves.
    inputs = OrderedDict([("input", X.reshape(len(X), -1))] + list(hidden.items()))
    calibration = calibrate(inputs, labels, split, clusters, seed=seed, repeats=repeats)
    accuracy = float(np.mean(np.asarray(subset.classes)[probs[split == 1].argmax(1)] == labels[split == 1]))
    return {
        "dataset": dataset, "known": list(known), "unseen": list(unseen), "arch": arch, "accuracy": accuracy,
        "k": {n: int(est.k_) for n, est in clusterers.items()},
        "calibration": calibration["share"], "calibration_rows": calibration["rows"],
        "calibration_tests": calibration["tests"], "calibration_repeats": calibration["repeats"],
        "weights_half": calibration["weights"],
        "metrics": table, "seconds": round(time.perf_counter() - start, 1),
    }


def summarize(results):
    """Mean (and sd over splits) of each shown detector's metrics, and the pooled calibration."""
    out = OrderedDict()
    for name in SHOWN:
        values = [r["metrics"]["overall"].get(name) for r in results]
        if any(v is None for v in values):
            continue
        out[name] = {m: (float(np.mean([v[m] for v in values])), float(np.std([v[m] for v in values])))
                     for m in ("auroc", "fpr95", "aupr")}
    tests = sum(r["calibration_tests"] for r in results)
    calibration = {a: sum(r["calibration"][a] * r["calibration_tests"] for r in results) / tests
                   for a in results[0]["calibration"]}
    return out, {"share": calibration, "rows": sum(r["calibration_rows"] for r in results), "tests": tests}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", nargs="+", default=["A", "B", "C", "D"])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--fashion-per-class", type=int, default=3000,
                        help="images per known Fashion-MNIST class (protocol D)")
    parser.add_argument("--splits", type=int, default=5, help="random splits of protocol C")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 2 splits")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "detectors.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.splits = 2, 2
    all_results = OrderedDict()
    for name, cases in protocols(args.splits).items():
        if name not in args.protocols:
            continue
        for arch in args.models:
            results = []
            for i, (dataset, known, unseen) in enumerate(cases):
                n = args.fashion_per_class if dataset == "fashion-mnist" else None
                r = run_case(dataset, known, unseen, arch, epochs=args.epochs, n_per_class=n, seed=i)
                results.append(r)
                print(f"{name} {arch} split {i}: known {known}, accuracy {r['accuracy']:.3f}, K {r['k']}, "
                      f"{r['seconds']} s, signature calibration {r['calibration']}", flush=True)
            summary, calibration = summarize(results)
            rows = [[det, f"{m['auroc'][0]:.3f} ± {m['auroc'][1]:.3f}" if len(results) > 1 else f"{m['auroc'][0]:.3f}",
                     f"{m['fpr95'][0]:.3f}", f"{m['aupr'][0]:.3f}"] for det, m in summary.items()]
            table(f"Protocol {name}, {arch}: {len(results)} split(s)", ["detector", "AUROC", "FPR@95TPR", "AUPR"], rows)
            best_baseline = max((d for d in summary if d != "signature"), key=lambda d: summary[d]["auroc"][0])
            gap = summary["signature"]["auroc"][0] - summary[best_baseline]["auroc"][0]
            print(f"signature vs best baseline ({best_baseline}): {gap:+.4f} AUROC", flush=True)
            print(f"calibration: {calibration['rows']} held-out rows, {calibration['tests']} tests: "
                  + ", ".join(f"{100 * v:.2f}% at p < {a}" for a, v in calibration["share"].items()) + "\n", flush=True)
            all_results[f"{name}-{arch}"] = {"cases": results, "summary": summary, "calibration": calibration,
                                              "best_baseline": best_baseline, "signature_minus_best": gap}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(all_results, indent=1))  # after every protocol: a cut-off run keeps what ran
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(all_results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
