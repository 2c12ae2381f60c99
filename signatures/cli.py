"""Command line: ``python -m signatures run|report|list``.

``run`` carries out a whole experiment and writes its folder (stored results and a
self-contained ``report.html``); ``report`` re-draws the report of a stored experiment
without TensorFlow; ``list`` shows the experiments under a folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data import DATASETS, DataUnavailableError
from .experiment import ExperimentConfig

__all__ = ["main", "build_parser"]


def _config_from_args(args):
    defaults = ExperimentConfig()
    out = Path(args.out)
    config = ExperimentConfig(
        name=args.name or out.name,
        dataset=args.dataset,
        digits=tuple(args.digits),
        anomalies=tuple(args.anomalies),
        n_per_class=args.n_per_class,
        test_size=args.test_size,
        arch=args.arch,
        hidden=tuple(args.hidden) if args.hidden is not None else (
            defaults.hidden if args.arch == "mlp" else (32,)),
        activation=args.activation,
        filters=tuple(args.filters),
        epochs=args.epochs,
        batch_size=args.batch_size,
        k_min=args.k_min,
        k_max=args.k_max,
        sample_size=args.sample_size,
        umap_points=args.umap_points,
        reduce=args.reduce,
        seed=args.seed,
        model_path=str(args.model) if args.model else None,
        data_dir=str(args.data_dir) if args.data_dir else None,
    )
    return config.validate()


def _cmd_run(args):
    from .experiment import print_progress, run_experiment
    from .store import check_name, save_experiment

    config = _config_from_args(args)
    check_name(config.name)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{str(out)!r} exists already; choose another --out or pass --overwrite")
    if args.model and not Path(args.model).is_file():
        raise FileNotFoundError(f"model file {str(args.model)!r} does not exist")
    exp = run_experiment(config, progress=None if args.quiet else print_progress)
    save_experiment(exp, out, overwrite=args.overwrite)
    from .analysis import load_or_analyze
    from .report import write_report

    analysis = load_or_analyze(exp, out)
    report = write_report(exp, out / "report.html", analysis=analysis)
    print(f"held-out accuracy {exp.metrics['accuracy']:.4f}")
    for sentence in analysis["findings"]:
        print(f"  - {sentence}")
    for name, est in exp.clusterers.items():
        extra = f" ({est.status_}: {est.note_})" if est.status_ != "ok" else ""
        print(f"  {name}: K = {est.k_}{extra}")
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in exp.timings.items()))
    print(f"wrote {out}/ and {report}")
    return 0


def _cmd_report(args):
    from .report import write_report
    from .store import load_experiment

    from .analysis import load_or_analyze

    exp = load_experiment(args.folder)
    out = write_report(exp, Path(args.folder) / "report.html", analysis=load_or_analyze(exp, args.folder))
    print(f"wrote {out}")
    return 0


def _cmd_list(args):
    from .store import list_experiments

    rows = list_experiments(args.root)
    if not rows:
        print(f"no complete experiments under {args.root}")
    for m in rows:
        c = m["config"]
        arch = f"{c['arch']} {'-'.join(map(str, c['hidden']))}"
        print(f"{m['name']:<24} {c['dataset']:<14} digits {c['digits']} anomalies {c['anomalies']} "
              f"{arch:<14} accuracy {m['metrics']['accuracy']:.4f}")
    return 0


def _cmd_canonical(args):
    from .canonical import build_canonical
    from .experiment import print_progress

    outcome = build_canonical(args.store, data_dir=str(args.data_dir) if args.data_dir else None,
                              only=args.only, overwrite=args.overwrite,
                              progress=None if args.quiet else print_progress)
    for name, what in outcome.items():
        print(f"{name:<32} {what}")
    return 0 if not any(w.startswith("not built") for w in outcome.values()) else 2


def _cmd_serve(args):
    from .site import serve
    from .store import list_experiments

    if not list_experiments(args.store):
        print(f"note: no stored experiments in {args.store}/ yet; build the canonical ones with "
              f"'python -m signatures canonical --store {args.store}' (the Builder page adds more)")
    print(f"serving on http://{args.address}:{args.port}/ (Ctrl-C to stop); the Builder's kernels warm up "
          "TensorFlow and UMAP in the background for about a minute after start")
    serve(port=args.port, address=args.address, store=args.store,
          data_dir=str(args.data_dir) if args.data_dir else None, pool_size=args.pool_size,
          gallery_pool_size=args.gallery_pool_size)
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="python -m signatures", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train, extract, cluster, build paths, project; write results and report.html")
    r.add_argument("--out", required=True, help="experiment folder to write (e.g. runs/1v7)")
    r.add_argument("--name", help="experiment name (default: the --out folder's name)")
    r.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    r.add_argument("--data-dir", type=Path,
                   help="folder of IDX files to read instead of downloading (default: $SIGNATURES_DATA_DIR)")
    r.add_argument("--digits", nargs="+", type=int, default=[1, 7], help="classes to train on (default 1 7)")
    r.add_argument("--anomalies", nargs="*", type=int, default=[], help="unseen classes to insert (e.g. 3 4)")
    r.add_argument("--n-per-class", type=int, default=None, help="images per trained class (default: all)")
    r.add_argument("--test-size", type=float, default=0.2, help="held-out share per class (default 0.2)")
    r.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    r.add_argument("--hidden", nargs="*", type=str, default=None,
                   help="dense hidden sizes (default 64 32 for mlp, 32 for cnn)")
    r.add_argument("--activation", default="relu")
    r.add_argument("--filters", nargs="+", type=str, default=["8", "16"], help="conv filters per block (cnn)")
    r.add_argument("--epochs", type=int, default=5)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--k-min", type=int, default=2)
    r.add_argument("--k-max", type=int, default=10)
    r.add_argument("--sample-size", type=int, default=2000, help="rows used to choose K per layer")
    r.add_argument("--umap-points", type=int, default=3000, help="most rows projected per layer")
    r.add_argument("--reduce", choices=["mean", "flatten"], default="mean", help="conv maps to rows")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--model", type=Path, help="your own trained .keras model (skips training)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing experiment folder")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="re-draw report.html of a stored experiment (no TensorFlow)")
    rep.add_argument("folder", type=Path)
    rep.set_defaults(func=_cmd_report)

    can = sub.add_parser("canonical", help="build the original study's canonical experiments into a store")
    can.add_argument("--store", type=Path, default=Path("runs"), help="store folder (default runs)")
    can.add_argument("--data-dir", type=str, help="IDX folder(s), separated by ':' (default: $SIGNATURES_DATA_DIR)")
    can.add_argument("--only", nargs="+", help="build only these names")
    can.add_argument("--overwrite", action="store_true", help="rebuild experiments already stored")
    can.add_argument("--quiet", action="store_true")
    can.set_defaults(func=_cmd_canonical)

    srv = sub.add_parser("serve", help="serve the web site (landing page, Builder, Gallery) with Voila")
    srv.add_argument("--port", type=int, default=8866)
    srv.add_argument("--address", default="127.0.0.1", help="address to listen on (default loopback only)")
    srv.add_argument("--store", type=Path, default=Path("runs"), help="store folder (default runs)")
    srv.add_argument("--data-dir", type=str, help="IDX folder(s) for the Builder (default: $SIGNATURES_DATA_DIR)")
    srv.add_argument("--pool-size", type=int, default=1,
                     help="preheated kernels kept ready per page (default 1; a Builder kernel takes about 1 GiB)")
    srv.add_argument("--gallery-pool-size", type=int, default=None,
                     help="preheated kernels kept ready for the Gallery page (default twice --pool-size; "
                          "about 300 MiB each)")
    srv.set_defaults(func=_cmd_serve)

    ls = sub.add_parser("list", help="list the complete experiments under a folder")
    ls.add_argument("root", type=Path, nargs="?", default=Path("runs"))
    ls.set_defaults(func=_cmd_list)
    return p


def main(argv=None):
    """Entry point; returns the exit status (2 for bad input or missing data)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError, DataUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
