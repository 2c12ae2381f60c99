"""Benchmark of attribution maps and Monte-Carlo dropout on real MNIST (1 vs 7).

Run from the repository root::

    python bench/bench_attribution.py                 # about 5-8 minutes on 2 cores
    python bench/bench_attribution.py --quick         # fewer inputs, a minute or two

Trains the MLP 64-32 and the canonical CNN (conv 8-16, dense 32) for 5 epochs on the 1s
and 7s of ``--data-dir`` (default ``../shared/data``, the official MNIST test set), then:

a. Cost: seconds per map and per 1,000 inputs of every method on each model (the first
   call, which compiles the gradient step, timed apart), on ``--n-time`` training inputs.
b. Deletion: accuracy and mean true-class probability of the held-out inputs at 0, 5, 10,
   20 and 40 % of the pixels removed (set to 0), most attributed first, against a seeded
   random order. Maps explain the true class.
c. Sanity check (Adebayo et al. 2018): mean Spearman rank correlation between the maps of
   the trained model and of a copy with re-initialised weights, on signed and on absolute maps.
d. MC dropout: an MLP 64-32 with Dropout(0.3) after each hidden layer, built and trained
   here; the cost of T = 20 passes on 1,000 inputs against one ``predict``, and how well
   the predictive entropy and the mutual information tell unseen digits (3, 4) from held-out
   1s and 7s (AUROC), next to the max-softmax baseline.

Results go to ``bench/results/attribution.json``; ``docs/attribution.md`` holds a run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from _common import say, table  # noqa: E402  (bench/ is on sys.path when run)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

DEFAULT_OUT = REPO / "bench" / "results" / "attribution.json"
FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4)
MLP_METHODS = ("saliency", "smoothgrad", "integrated_gradients")
CNN_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam", "gradcam_pp")


def default_data_dir():
    return os.environ.get("SIGNATURES_DATA_DIR") or str(REPO.parent / "shared" / "data")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def train_models(dataset, epochs):
    """The two architectures of the canonical experiments, trained on 1 vs 7."""
    from signatures.experiment import ExperimentConfig, build_and_train, prepare_subset

    out = {}
    for arch, extra in (("mlp", dict(hidden=(64, 32))), ("cnn", dict(filters=(8, 16), hidden=(32,)))):
        config = ExperimentConfig(name=f"bench-{arch}", digits=(1, 7), anomalies=(3, 4), arch=arch, epochs=epochs,
                                  seed=0, **extra)
        subset = prepare_subset(config, dataset)
        (model, history), seconds = timed(lambda: build_and_train(config, subset))
        say(f"{arch}: trained in {seconds:.1f} s, val accuracy {history['val_accuracy'][-1]:.3f}")
        out[arch] = (model, subset, seconds)
    return out


def unit_index(subset, y):
    """Dataset labels -> output unit indices (columns of the model's output)."""
    return np.searchsorted(np.asarray(subset.classes), y)


def bench_cost(models, n_time, options):
    from signatures.attribution import attribute

    rows, raw = [], {}
    for arch, (model, subset, _) in models.items():
        X = subset.X_train[:n_time]
        for method in MLP_METHODS if arch == "mlp" else CNN_METHODS:
            _, first = timed(lambda: attribute(model, X[:8], method=method, **options))
            maps, seconds = timed(lambda: attribute(model, X, method=method, **options))
            per_map = seconds / len(X)
            raw[f"{arch}/{method}"] = {"first_call_s": first, "seconds": seconds, "n": len(X),
                                       "ms_per_map": 1e3 * per_map, "s_per_1000": 1e3 * per_map}
            rows.append([arch, method, f"{first:.2f}", f"{1e3 * per_map:.2f}", f"{1e3 * per_map:.1f}"])
            say(f"{arch} {method}: {1e3 * per_map:.2f} ms per map")
    table("a. Cost of one map (" + ", ".join(f"{k}={v}" for k, v in options.items()) + f"; {n_time} inputs)",
          ["model", "method", "first call (s)", "ms / map", "s / 1,000 inputs"], rows)
    return raw


def bench_deletion(models, options, n_eval):
    from signatures.attribution import attribute, deletion_curve

    rows, raw = [], {}
    for arch, (model, subset, _) in models.items():
        X, y = subset.X_test[:n_eval], unit_index(subset, subset.y_test[:n_eval])
        shape = None
        for method in MLP_METHODS if arch == "mlp" else CNN_METHODS:
            maps = attribute(model, X, method=method, classes=y, **options)
            shape = maps.shape
            curve = deletion_curve(model, X, y, maps, fractions=FRACTIONS)
            raw[f"{arch}/{method}"] = {k: np.asarray(v).tolist() if k != "order" else v for k, v in curve.items()}
            rows.append([arch, method] + [f"{a:.3f} / {p:.3f}" for a, p in zip(curve["accuracy"],
                                                                           curve["mean_probability"])]
                        + [f"{curve['auc']:.3f}"])
        curve = deletion_curve(model, X, y, np.zeros(shape), fractions=FRACTIONS, order="random", seed=0)
        raw[f"{arch}/random"] = {k: np.asarray(v).tolist() if k != "order" else v for k, v in curve.items()}
        rows.append([arch, "random order"] + [f"{a:.3f} / {p:.3f}" for a, p in zip(curve["accuracy"],
                                                                                 curve["mean_probability"])]
                    + [f"{curve['auc']:.3f}"])
    table(f"b. Deletion: accuracy / mean true-class probability, {n_eval} held-out inputs, pixels set to 0",
          ["model", "order"] + [f"{f:.0%} removed" for f in FRACTIONS] + ["area (0-40 %)"], rows)
    return raw


def bench_sanity(models, options, n_sanity):
    from signatures.attribution import sanity_check

    rows, raw = [], {}
    for arch, (model, subset, _) in models.items():
        X = subset.X_test[:n_sanity]
        for method in MLP_METHODS if arch == "mlp" else CNN_METHODS:
            result = sanity_check(model, X, method=method, seed=0, **options)
            rho = result["rank_correlation"]
            raw[f"{arch}/{method}"] = {"mean": result["mean"], "mean_abs": result["mean_abs"],
                                       "n_constant": result["n_constant"],
                                       "p95_abs_rho": float(np.nanpercentile(np.abs(rho), 95)) if np.isfinite(
                                           rho).any() else None}
            rows.append([arch, method, f"{result['mean']:.3f}", f"{result['mean_abs']:.3f}",
                         str(result["n_constant"])])
    table(f"c. Sanity check: mean Spearman rho, trained vs re-initialised weights, {n_sanity} held-out inputs",
          ["model", "method", "signed maps", "absolute maps", "constant maps"], rows)
    return raw


def dropout_mlp(n_features, n_classes, *, rate=0.3, seed=0):
    """The MLP 64-32 with Dropout(rate) after each hidden layer (no builder of the package makes one)."""
    import keras

    init = keras.initializers.GlorotUniform
    model = keras.Sequential([
        keras.Input(shape=(n_features,), name="pixels"),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(seed=seed + 1), name="hidden_1"),
        keras.layers.Dropout(rate, seed=seed + 11, name="dropout_1"),
        keras.layers.Dense(32, activation="relu", kernel_initializer=init(seed=seed + 2), name="hidden_2"),
        keras.layers.Dropout(rate, seed=seed + 12, name="dropout_2"),
        keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init(seed=seed), name="output"),
    ], name="mlp_64_32_dropout")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def bench_dropout(models, epochs, n_time, T):
    from sklearn.metrics import roc_auc_score

    from signatures.models import evaluate, train
    from signatures.uncertainty import mc_dropout

    _, subset, _ = models["mlp"]
    model = dropout_mlp(subset.X_train.shape[1], len(subset.classes))
    train(model, subset.X_train, subset.Y_train, epochs=epochs, seed=0)
    accuracy = evaluate(model, subset.X_test, subset.y_test, subset.classes)["accuracy"]
    X = subset.X_train[:n_time]
    mc_dropout(model, X[:8], T=T)  # warm-ups: predict compiles its function on the first call
    model.predict(X[:8], verbose=0)
    plain_model = models["mlp"][0]
    mc_dropout(plain_model, X[:8], T=T)
    _, predict_s = timed(lambda: model.predict(X, batch_size=512, verbose=0))
    result, mc_s = timed(lambda: mc_dropout(model, X, T=T, seed=0))
    none, none_s = timed(lambda: mc_dropout(plain_model, X, T=T, seed=0))
    again = mc_dropout(model, X[:100], T=T, seed=0)
    same = bool(np.array_equal(again["probabilities"], mc_dropout(model, X[:100], T=T, seed=0)["probabilities"]))
    # known (held-out 1s and 7s) against unseen (3s, 4s)
    known = mc_dropout(model, subset.X_test, T=T, seed=0)
    unseen = mc_dropout(model, subset.X_anomaly, T=T, seed=0)
    labels = np.r_[np.zeros(len(subset.X_test)), np.ones(len(subset.X_anomaly))]
    msp = np.r_[1 - model.predict(subset.X_test, verbose=0).max(1), 1 - model.predict(subset.X_anomaly,
                                                                                      verbose=0).max(1)]
    auroc = {
        "max_softmax": float(roc_auc_score(labels, msp)),
        "entropy": float(roc_auc_score(labels, np.r_[known["entropy"], unseen["entropy"]])),
        "mutual_information": float(roc_auc_score(labels, np.r_[known["mutual_information"],
                                                                 unseen["mutual_information"]])),
    }
    raw = {"T": T, "n": len(X), "predict_s": predict_s, "mc_s": mc_s, "ratio": mc_s / predict_s,
           "ratio_to_one_pass": mc_s / none_s,
           "no_dropout_s": none_s, "no_dropout_passes": none["passes"], "held_out_accuracy": accuracy,
           "same_seed_same_numbers": same, "auroc_unseen": auroc,
           "mean_mi": {"known": float(known["mutual_information"].mean()),
                       "unseen": float(unseen["mutual_information"].mean())},
           "mean_entropy": {"known": float(known["entropy"].mean()), "unseen": float(unseen["entropy"].mean())},
           "n_known": len(subset.X_test), "n_unseen": len(subset.X_anomaly)}
    table(f"d. MC dropout, MLP 64-32 with Dropout(0.3) x 2 (held-out accuracy {accuracy:.3f}), T = {T}",
          ["measure", "value"], [
              [f"predict, {len(X)} inputs (s)", f"{predict_s:.3f}"],
              [f"mc_dropout T={T}, {len(X)} inputs (s)", f"{mc_s:.3f}"],
              ["mc_dropout of the MLP without dropout (1 pass) (s)", f"{none_s:.3f}"],
              ["ratio to predict / to one pass", f"{mc_s / predict_s:.1f} / {mc_s / none_s:.0f}"],
              ["same seed, same numbers", str(same)],
              ["mean MI known / unseen (nats)", f"{raw['mean_mi']['known']:.4f} / {raw['mean_mi']['unseen']:.4f}"],
              ["mean entropy known / unseen (nats)",
               f"{raw['mean_entropy']['known']:.4f} / {raw['mean_entropy']['unseen']:.4f}"],
              ["AUROC unseen 3,4 vs held-out 1,7: max softmax", f"{auroc['max_softmax']:.3f}"],
              ["  predictive entropy", f"{auroc['entropy']:.3f}"],
              ["  mutual information", f"{auroc['mutual_information']:.3f}"],
          ])
    return raw


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=default_data_dir(), help="folder of MNIST IDX files")
    p.add_argument("--quick", action="store_true", help="fewer inputs (a minute or two)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n-time", type=int, default=1000, help="inputs timed per method")
    p.add_argument("--n-eval", type=int, default=None, help="held-out inputs of the deletion curves (default all)")
    p.add_argument("--n-sanity", type=int, default=200, help="held-out inputs of the sanity check")
    p.add_argument("--T", type=int, default=20, help="MC-dropout passes")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the JSON results")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.n_time, args.n_sanity, args.n_eval = 200, 50, 100
    import keras
    import tensorflow as tf

    from signatures.data import load_dataset

    start = time.perf_counter()
    options = dict(n_samples=25, noise=0.15, steps=32, batch_size=256)
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__, "keras": keras.__version__,
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "settings": {**options, "epochs": args.epochs, "n_time": args.n_time, "n_sanity": args.n_sanity,
                     "n_eval": args.n_eval, "T": args.T, "fractions": FRACTIONS},
    }
    dataset = load_dataset("mnist", data_dir=args.data_dir)
    say(f"data: {dataset.source}")
    models = train_models(dataset, args.epochs)
    results["training_s"] = {arch: m[2] for arch, m in models.items()}
    n_eval = args.n_eval or min(len(m[1].X_test) for m in models.values())
    results["cost"] = bench_cost(models, args.n_time, options)
    results["deletion"] = bench_deletion(models, options, n_eval)
    results["sanity"] = bench_sanity(models, options, args.n_sanity)
    results["mc_dropout"] = bench_dropout(models, args.epochs, args.n_time, args.T)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    say(f"done in {results['total_s']:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
