"""Command line: ``python -m signatures COMMAND``.

Commands:

- ``run``: carry out a whole experiment and write its folder (stored results and a
  self-contained ``report.html``);
- ``report``: re-draw the report of a stored experiment, without TensorFlow;
- ``list``: list the experiments in a store, and the damaged ones;
- ``canonical``: build the original study's canonical experiments into a store, as jobs on Dask;
- ``sweep``: run a grid of experiments (sizes, epochs, seeds) as jobs, then a table of their answers;
- ``serve``: serve the web site (landing page, Builder, Gallery, Layers and neurons).

Every option is checked before any work starts (and before TensorFlow is imported). A bad
value, missing data or a damaged file exits with status 2 and one message that names the
option or file and what to do; an unexpected failure exits with status 1 and one line
(``SIGNATURES_DEBUG=1`` shows its traceback); Ctrl-C exits with status 130. No traceback
reaches the user otherwise.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .data import DATASETS, DataUnavailableError
from .experiment import ExperimentConfig

__all__ = ["main", "build_parser", "OPTION_WORDS"]

#: Config field -> the ``run`` option that sets it; messages about a field name the option.
OPTION_WORDS = {
    "name": "--name",
    "dataset": "--dataset",
    "digits": "--digits",
    "anomalies": "--anomalies",
    "all_unseen": "--all-unseen",
    "n_per_class": "--n-per-class",
    "test_size": "--test-size",
    "arch": "--arch",
    "hidden": "--hidden",
    "activation": "--activation",
    "dropout": "--dropout",
    "filters": "--filters",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "k_min": "--k-min",
    "k_max": "--k-max",
    "k_range": "the K range (--k-min .. --k-max)",
    "k_criterion": "--k-criterion",
    "k_fixed": "--k",
    "sample_size": "--sample-size",
    "umap_points": "--umap-points",
    "reduce": "--reduce",
    "activations_dtype": "--activations-dtype",
    "memory_budget": "--memory-budget",
    "seed": "--seed",
    "model_path": "--model",
    "data_dir": "--data-dir",
}

#: Most preheated kernels ``serve`` keeps per page (a Builder kernel takes about 1 GiB).
MAX_POOL_SIZE = 16

#: Environment variable that makes an unexpected error print its traceback.
DEBUG_ENV = "SIGNATURES_DEBUG"

_OUT_OF_MEMORY = ("MemoryError", "ResourceExhaustedError", "OutOfMemoryError")


class _UsageError(Exception):
    """argparse's complaint, carried out of the parser instead of exiting."""

    def __init__(self, message, usage):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message, self.format_usage())


def _number(text):
    """A command-line number as int, else float, else the text itself (the config names it)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _optional_count(text):
    return None if text.strip().lower() in ("all", "none") else _number(text)


def _store_help():
    return ("store folder (default: $SIGNATURES_STORE if set, else runs/ at the checkout root; "
            "here %s)" % _default_store_text())


def _default_store_text():
    from .store import default_store

    return str(default_store())


def _config_from_args(args):
    defaults = ExperimentConfig()
    out = Path(args.out)
    return ExperimentConfig(
        name=args.name if args.name is not None else out.name,
        dataset=args.dataset,
        digits=tuple(args.digits),
        anomalies=tuple(args.anomalies),
        all_unseen=args.all_unseen,
        n_per_class=args.n_per_class,
        test_size=args.test_size,
        arch=args.arch,
        hidden=tuple(args.hidden) if args.hidden is not None else (
            defaults.hidden if args.arch == "mlp" else (32,)),
        activation=args.activation,
        dropout=args.dropout,
        filters=tuple(args.filters),
        epochs=args.epochs,
        batch_size=args.batch_size,
        k_min=args.k_min,
        k_max=args.k_max,
        k_criterion=args.k_criterion,
        k_fixed=args.k,
        sample_size=args.sample_size,
        umap_points=args.umap_points,
        reduce=args.reduce,
        activations_dtype=args.activations_dtype,
        memory_budget=args.memory_budget,
        seed=args.seed,
        model_path=str(args.model) if args.model else None,
        data_dir=str(args.data_dir) if args.data_dir else None,
    )


def _cmd_run(args):
    from .store import check_name, check_output

    config = _config_from_args(args)
    problems = config.problems(words=OPTION_WORDS)
    try:
        check_name(config.name)
    except ValueError as exc:
        problems["name"] = f"{'--name' if args.name is not None else 'the --out folder name'}: {exc}"
    if problems:
        for message in problems.values():
            print(f"error: {message}", file=sys.stderr)
        return 2
    out = Path(args.out)
    check_output(out, overwrite=args.overwrite)  # before any work: exists, not an experiment, not writable
    if args.scheduler is not None:
        return _run_as_job(args, config, out)

    from .experiment import print_progress, run_experiment
    from .app.finish import finish_run
    from .sideprocess import start_side_process, stop_side_process

    say = None if args.quiet else print_progress
    # A side process loads UMAP on the other core while this one imports TensorFlow, then fits the
    # maps beside the clustering and the analysis. Only the command starts one (``entry``): a
    # process spawned from a script without a ``__main__`` guard would run that script again.
    side = start_side_process() if _COMMAND["side_process"] else None
    try:
        exp = run_experiment(config, progress=say, words=OPTION_WORDS, workdir=out.resolve().parent,
                             projector=side)

        def stored():
            stop_side_process(side)  # the maps are in: let it end while the figures are made
            if say:
                say("explanation", 0.0, "why each path: attribution maps of chosen inputs, beside the analysis")

        analysis = finish_run(exp, out, overwrite=args.overwrite, progress=say, stored=stored)
    finally:  # it ends once its task at hand is done (it ignores Ctrl-C, which this process says)
        stop_side_process(side)
    report = out / "report.html"
    notes = {name: f"{est.status_}: {est.note_}" for name, est in exp.clusterers.items() if est.status_ != "ok"}
    _print_summary(exp.metrics["accuracy"], analysis["findings"], {n: e.k_ for n, e in exp.clusterers.items()},
                   notes, exp.timings)
    print(f"wrote {out}/ and {report}")
    return 0


def _print_summary(accuracy, findings, ks, notes, timings):
    print(f"held-out accuracy {accuracy:.4f}")
    for sentence in findings:
        print(f"  - {sentence}")
    for name, k in ks.items():
        extra = f" ({notes[name]})" if name in notes else ""
        print(f"  {name}: K = {k}{extra}")
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def _run_as_job(args, config, out):
    """``run --scheduler``: the experiment as a job on a running cluster's warm workers.

    This process never imports TensorFlow or loads UMAP: the workers hold both already. They
    write ``--out`` themselves, so it must be a path they can reach (the same machine, or a
    shared file system); data and model paths are made absolute for them.
    """
    from dataclasses import replace

    from .app.jobs import JobFailed
    from .canonical import absolute_data_dir, check_cluster_options, follow_jobs, open_jobs
    from .experiment import print_progress

    problems = check_cluster_options(None, args.scheduler, words={"scheduler": "--scheduler"})
    if problems:
        for message in problems:
            print(f"error: {message}", file=sys.stderr)
        return 2
    config = replace(config, data_dir=absolute_data_dir(config.data_dir),
                     model_path=str(Path(config.model_path).expanduser().resolve()) if config.model_path else None)
    quiet = args.quiet

    def progress(name, event):
        if not quiet:
            print_progress(event["stage"], event["fraction"], event["message"])

    with open_jobs(scheduler=args.scheduler) as jobs:
        job = jobs.submit(config, out.resolve().parent, overwrite=args.overwrite, words=OPTION_WORDS)
        follow_jobs({config.name: job}, progress=progress, poll=0.2)
        try:
            result = job.result()
        except JobFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    _print_summary(result["accuracy"], result["findings"], result["k"], result.get("notes", {}),
                   result["timings"])
    print(f"wrote {out}/ and {out / 'report.html'} (on the scheduler's worker, in {result['seconds']:.1f} s)")
    return 0


#: What reading a damaged stored experiment raises besides ValueError: missing keys, arrays
#: of the wrong length, values of the wrong type.
_DAMAGE_ERRORS = (KeyError, IndexError, TypeError, AttributeError)


def _cmd_report(args):
    from .analysis import load_or_analyze
    from .report import write_report
    from .store import load_experiment

    folder = Path(args.folder)
    if not folder.exists():
        raise FileNotFoundError(f"experiment folder {str(folder)!r} does not exist; give the folder of a stored "
                                "experiment (see 'python -m signatures list')")
    try:
        exp = load_experiment(folder)
        analysis = load_or_analyze(exp, folder)
        out = write_report(exp, folder / "report.html", analysis=analysis)
    except _DAMAGE_ERRORS as exc:
        raise ValueError(
            f"the experiment in {str(folder)!r} is damaged or inconsistent ({_what(exc)}, {type(exc).__name__}); "
            "rebuild it with 'python -m signatures run ... --overwrite' or remove it") from exc
    print(f"wrote {out}")
    return 0


def _store_root(args):
    from .store import default_store

    root = Path(args.store) if args.store is not None else default_store()
    if not root.exists():
        raise FileNotFoundError(f"store folder {str(root)!r} does not exist; give an existing folder "
                                "(or set SIGNATURES_STORE)")
    if not root.is_dir():
        raise ValueError(f"store {str(root)!r} is a file, not a folder; give the folder that holds the experiments")
    return root


def _cmd_list(args):
    from .store import scan_store

    root = _store_root(args)
    manifests, damaged = scan_store(root)
    if not manifests and not damaged:
        print(f"no experiments in {root}")
    for m in manifests:
        try:
            c = m["config"]
            arch = f"{c['arch']} {'-'.join(map(str, c['hidden']))}"
            line = (f"{m['name']:<24} {c['dataset']:<14} digits {c['digits']} anomalies {c['anomalies']} "
                    f"{arch:<14} accuracy {float(m['metrics']['accuracy']):.4f}")
        except (KeyError, TypeError, ValueError) as exc:
            damaged.append((m.get("name", "?"), f"its manifest lacks or mangles {_what(exc)}"))
            continue
        print(line)
    for name, reason in damaged:
        print(f"{name:<24} damaged: {reason}")
    return 0


def _cmd_canonical(args):
    from .canonical import JobsInterrupted, build_canonical, check_cluster_options
    from .store import default_store
    from .sweep import print_event

    problems = check_cluster_options(args.workers, args.scheduler,
                                     words={"workers": "--workers", "scheduler": "--scheduler"})
    for message in problems:
        print(f"error: {message}", file=sys.stderr)
    if problems:
        return 2
    store = Path(args.store) if args.store is not None else default_store()
    try:
        outcome = build_canonical(store, data_dir=str(args.data_dir) if args.data_dir else None,
                                  only=args.only, overwrite=args.overwrite, workers=args.workers,
                                  scheduler=args.scheduler, progress=None if args.quiet else print_event)
    except JobsInterrupted as exc:
        for name, what in exc.outcome.items():
            print(f"{name:<32} {what}")
        stored = [name for name, what in exc.outcome.items() if not what.startswith("not built")]
        print(f"stopped: the unfinished jobs were cancelled; stored: {', '.join(stored) or 'none'}; "
              "run the same command again to build the rest", file=sys.stderr)
        raise
    for name, what in outcome.items():
        print(f"{name:<32} {what}")
    return 0 if not any(w.startswith("not built") for w in outcome.values()) else 2


def _cmd_serve(args):
    from .app.server import MAX_CLASS_SIZE, check_host_name, check_token, is_loopback
    from .store import default_store, list_experiments

    problems = []
    if not 1 <= args.port <= 65535:
        problems.append(f"--port must be a whole number from 1 to 65535, got {args.port}")
    for option, value in (("--pool-size", args.pool_size), ("--gallery-pool-size", args.gallery_pool_size)):
        if value is not None and not 0 <= value <= MAX_POOL_SIZE:
            problems.append(f"{option} must be a whole number from 0 to {MAX_POOL_SIZE}, got {value}")
    if not 1 <= args.class_size <= MAX_CLASS_SIZE:
        problems.append(f"--class-size must be a whole number from 1 to {MAX_CLASS_SIZE}, got {args.class_size}")
    if not 1 <= args.workers <= 64:
        problems.append(f"--workers must be a whole number from 1 to 64, got {args.workers}")
    if args.scheduler is not None and not args.scheduler.strip():
        problems.append("--scheduler must be a scheduler address such as tcp://10.0.0.5:8786, got ''")
    if args.scheduler and args.no_jobs:
        problems.append("--scheduler and --no-jobs contradict each other: give one of them")
    for checked, value in [(check_token, args.token)] * (args.token is not None) + \
            [(check_host_name, name) for name in args.allow_host or ()]:
        try:
            checked(value)
        except ValueError as exc:
            problems.append(str(exc))
    store = Path(args.store) if args.store is not None else default_store()
    if store.exists() and not store.is_dir():
        problems.append(f"--store {str(store)!r} is a file, not a folder")
    if problems:
        for message in problems:
            print(f"error: {message}", file=sys.stderr)
        return 2
    from .app.server import serve

    if not list_experiments(store):
        print(f"note: no stored experiments in {store.name}/ yet; the landing page offers to build the canonical "
              "ones (or run 'python -m signatures canonical')")
    where = "loopback only, no token" if is_loopback(args.address) else "open to the network, token required"
    jobs = ("no jobs (the Builder cannot train)" if args.no_jobs else
            f"jobs on the Dask scheduler {args.scheduler}" if args.scheduler else
            f"jobs on a local Dask cluster of {args.workers} worker(s)")
    print(f"serving on {args.address}:{args.port} ({where}; class of {args.class_size}; {jobs}); Ctrl-C to stop")
    try:
        serve(port=args.port, address=args.address, store=store,
              data_dir=str(args.data_dir) if args.data_dir else None, class_size=args.class_size,
              pool_size=args.pool_size, gallery_pool_size=args.gallery_pool_size, token=args.token,
              allow_hosts=tuple(args.allow_host or ()), workers=args.workers, scheduler=args.scheduler,
              jobs=not args.no_jobs)
    except ConnectionError as exc:
        print(f"error: --scheduler: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser():
    """The argument parser of ``python -m signatures``; bad usage raises instead of exiting."""
    p = _Parser(prog="python -m signatures", description="Follow a classifier's inputs through its hidden layers.",
                epilog="Every command has its own --help. Exit status: 0 done; 2 bad input, missing data, or a "
                       "damaged or unwritable file; 1 unexpected error (SIGNATURES_DEBUG=1 shows its traceback); "
                       "130 interrupted.",
                formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=20))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                           parser_class=_Parser)

    r = sub.add_parser("run", help="train, extract, cluster, build paths, project; write results and report.html",
                       description="Carry out one experiment and write its folder and report.html.")
    r.add_argument("--out", required=True, help="experiment folder to write (e.g. runs/1v7)")
    r.add_argument("--name", help="experiment name (default: the --out folder's name)")
    r.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    r.add_argument("--data-dir", type=Path,
                   help="folder of IDX files to read instead of downloading (default: $SIGNATURES_DATA_DIR)")
    r.add_argument("--digits", nargs="+", type=_number, default=[1, 7], help="classes to train on (default 1 7)")
    r.add_argument("--anomalies", nargs="*", type=_number, default=[], help="unseen classes to insert (e.g. 3 4)")
    r.add_argument("--all-unseen", action="store_true",
                   help="also keep the held-out images of every class not trained on, so any unseen class can be "
                        "inserted later (as the site and the canonical experiments do)")
    r.add_argument("--n-per-class", type=_optional_count, default=None,
                   help="images per trained class, 2..10000 (default: all)")
    r.add_argument("--test-size", type=_number, default=0.2, help="held-out share per class (default 0.2)")
    r.add_argument("--arch", choices=["mlp", "cnn"], default="mlp")
    r.add_argument("--hidden", nargs="*", type=str, default=None,
                   help="dense hidden sizes, each at most 4096 (default 64 32 for mlp, 32 for cnn)")
    r.add_argument("--activation", default="relu")
    r.add_argument("--dropout", type=_number, default=0.0,
                   help="dropout rate after each dense hidden layer, 0..0.9 (default 0: none); with dropout the "
                        "run also measures Monte-Carlo-dropout uncertainty")
    r.add_argument("--filters", nargs="+", type=str, default=["8", "16"],
                   help="conv filters per block (cnn), each at most 4096")
    r.add_argument("--epochs", type=_number, default=5, help="training epochs, 1..200 (default 5)")
    r.add_argument("--batch-size", type=_number, default=64, help="training batch, 1..4096 (default 64)")
    r.add_argument("--k-min", type=_number, default=2, help="smallest K of the silhouette search (default 2)")
    r.add_argument("--k-max", type=_number, default=10,
                   help="largest K, at most 100 and below the training images (default 10)")
    r.add_argument("--k-criterion", default="silhouette",
                   help="how K is chosen per layer: silhouette (default), classes (at least as many clusters as "
                        "classes), faithfulness (clusters that best predict the model's output) or fixed (--k)")
    r.add_argument("--k", type=_number, default=None, help="the number of clusters with --k-criterion fixed")
    r.add_argument("--sample-size", type=_number, default=2000,
                   help="rows used to choose K per layer, up to 20000 (default 2000)")
    r.add_argument("--umap-points", type=_number, default=3000,
                   help="most rows projected per layer, 4..20000 (default 3000)")
    r.add_argument("--reduce", choices=["mean", "flatten"], default="mean", help="conv maps to rows")
    r.add_argument("--activations-dtype", choices=["float32", "float16"], default="float32",
                   help="how activations are kept (float16: half the size, about 3 significant digits)")
    r.add_argument("--memory-budget", type=_number, default=None,
                   help="MiB the activations may take in memory; larger ones are streamed to disk and read "
                        "memory-mapped (default: a quarter of the available memory, at most 2048)")
    r.add_argument("--seed", type=_number, default=0, help="0..2147483647 (default 0); same seed, same result")
    r.add_argument("--model", type=Path, help="your own trained .keras model (skips training)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing experiment folder")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run as a job on the warm workers of a running Dask scheduler (tcp://HOST:PORT, e.g. the "
                        "one 'serve' prints): this process imports neither TensorFlow nor UMAP. The workers write "
                        "--out, so it must be a path they can reach")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="re-draw report.html of a stored experiment (no TensorFlow)",
                         description="Re-draw report.html of a stored experiment, without TensorFlow.")
    rep.add_argument("folder", type=Path, help="the experiment's folder (e.g. runs/1v7)")
    rep.set_defaults(func=_cmd_report)

    ls = sub.add_parser("list", help="list the experiments in a store (and the damaged ones)",
                        description="List the complete experiments in a store, then the damaged ones with why.")
    ls.add_argument("store", type=Path, nargs="?", default=None, help=_store_help())
    ls.set_defaults(func=_cmd_list)

    can = sub.add_parser("canonical", help="build the original study's canonical experiments into a store",
                         description="Build the original study's canonical experiments that the store lacks.")
    can.add_argument("--store", type=Path, default=None, help=_store_help())
    can.add_argument("--data-dir", type=str, help="IDX folder(s), separated by ':' (default: $SIGNATURES_DATA_DIR)")
    can.add_argument("--only", nargs="+", help="build only these names")
    can.add_argument("--overwrite", action="store_true", help="rebuild experiments already stored")
    can.add_argument("--workers", type=_number, default=None,
                     help="experiments built at once on a local Dask cluster (default: half the cores, at least 1; "
                          "each worker holds TensorFlow, about 1 GiB)")
    can.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:PORT) instead of a local "
                                         "cluster; its workers must see the same --store folder")
    can.add_argument("--quiet", action="store_true", help="no progress lines")
    can.set_defaults(func=_cmd_canonical)

    from .sweep import add_sweep_command

    add_sweep_command(sub)

    srv = sub.add_parser("serve", help="serve the web site (landing page, Builder, Gallery) with Voila",
                         description="Serve the web site with Voila.")
    srv.add_argument("--port", type=int, default=8866, help="port, 1..65535 (default 8866)")
    srv.add_argument("--address", default="127.0.0.1", help="address to listen on (default loopback only)")
    srv.add_argument("--store", type=Path, default=None, help=_store_help())
    srv.add_argument("--data-dir", type=str, help="IDX folder(s) for the Builder (default: $SIGNATURES_DATA_DIR)")
    srv.add_argument("--class-size", type=int, default=10,
                     help="visitors at once the server is sized for: sets the preheated kernels and the caps on "
                          "live kernels, beyond which a visitor is told the server is full (default 10)")
    srv.add_argument("--pool-size", type=int, default=None,
                     help=f"preheated kernels kept ready per page, 0..{MAX_POOL_SIZE} (default from --class-size)")
    srv.add_argument("--gallery-pool-size", type=int, default=None,
                     help=f"preheated kernels kept ready for the Gallery page, 0..{MAX_POOL_SIZE} "
                          "(default from --class-size)")
    srv.add_argument("--token", default=None,
                     help="token every visitor must give (in the URL); off loopback one is generated and printed "
                          "when not given")
    srv.add_argument("--allow-host", action="append", metavar="NAME",
                     help="a host name visitors use to reach the server, besides this machine's (repeatable)")
    srv.add_argument("--workers", type=int, default=1,
                     help="worker processes of the local Dask cluster: experiments trained at once, about 1 GiB "
                          "each (default 1)")
    srv.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="run jobs on this running Dask scheduler (tcp://HOST:PORT) instead of a local cluster; "
                          "its workers must see the same --store folder")
    srv.add_argument("--no-jobs", action="store_true", help="start no cluster (browsing only; the Builder cannot train)")
    srv.set_defaults(func=_cmd_serve)
    return p


# ---------------------------------------------------------------------------------------
# Errors as the user reads them
# ---------------------------------------------------------------------------------------

def _what(exc):
    """The text of an exception, never empty."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text or type(exc).__name__


def _names(exc, *names):
    return any(c.__name__ in names for c in type(exc).__mro__)


def _target(args):
    """The file or folder the command works on, for messages that lack one."""
    for attr in ("out", "folder", "store"):
        value = getattr(args, attr, None)
        if value is not None:
            return str(value)
    return "the store"


def _explain(exc, args):
    """``(status, message)`` for an exception that reached :func:`main`."""
    # zipfile.BadZipFile, gzip.BadGzipFile (an OSError), EOFError, zlib.error: a truncated or tampered file
    if _names(exc, "BadZipFile", "BadGzipFile", "EOFError") or (
            type(exc).__name__ == "error" and type(exc).__module__ == "zlib"):
        where = getattr(exc, "filename", None) or _target(args)
        return 2, (f"a file is damaged or truncated while reading {where} ({_what(exc)}, {type(exc).__name__}); "
                   "download the data again, or rebuild the experiment with --overwrite")
    if isinstance(exc, (ValueError, DataUnavailableError)):
        return 2, _what(exc)
    if isinstance(exc, MemoryError) or _names(exc, *_OUT_OF_MEMORY):
        hint = ("choose smaller --hidden / --filters, a smaller --batch-size or fewer --n-per-class"
                if getattr(args, "command", None) == "run" else "free some memory and try again")
        return 2, f"out of memory ({type(exc).__name__}): {hint}"
    if isinstance(exc, OSError):
        path = exc.filename or _target(args)
        code = exc.errno
        if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return 2, (f"no space left on the disk while writing {path}: free some space (or write elsewhere) "
                       "and run again")
        if code == errno.EROFS:
            return 2, f"{path} is on a read-only file system: write to another folder"
        if code in (errno.EACCES, errno.EPERM):
            return 2, f"permission denied for {path}: choose a folder you can write to, or change its permissions"
        if isinstance(exc, (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError)) \
                or type(exc).__name__ == "StoreError":
            if exc.strerror and exc.filename and str(exc.filename) not in exc.strerror:
                return 2, f"{exc.filename}: {exc.strerror}"
            return 2, exc.strerror or _what(exc)
    return 1, (f"{_what(exc)} ({type(exc).__name__}); set {DEBUG_ENV}=1 to see the traceback, "
               "and report it if it persists")


def main(argv=None):
    """Entry point; returns the exit status.

    0 on success, 2 for bad input (an option, missing data, a damaged or unwritable file),
    1 for an unexpected failure (one line; ``SIGNATURES_DEBUG=1`` prints the traceback),
    130 when interrupted.
    """
    try:
        try:
            args = build_parser().parse_args(argv)
        except _UsageError as exc:
            print(exc.usage.rstrip(), file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        try:
            return args.func(args)
        except Exception as exc:  # the outermost boundary: one message, never a raw traceback
            status, message = _explain(exc, args)
            if os.environ.get(DEBUG_ENV):
                import traceback

                traceback.print_exc()
            print(f"error: {message}", file=sys.stderr)
            return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


#: Set by :func:`entry` (the ``signatures`` command and ``python -m signatures``): a run may then
#: start its side process (:mod:`signatures.sideprocess`).
_COMMAND = {"side_process": False}


def entry(argv=None):
    """The ``signatures`` command: :func:`main`, then a quick exit with its status.

    Once the command is done, its threads are joined, its ``atexit`` handlers run and its output
    is flushed, as at any exit; then the process ends without tearing its modules down one by
    one, which takes TensorFlow 1 to 2 s and changes nothing the command wrote.
    """
    import atexit
    import threading

    _COMMAND["side_process"] = True
    status = main(argv)
    finish = getattr(threading, "_shutdown", None)  # what the interpreter runs first at exit
    if status != 0 or finish is None or not hasattr(atexit, "_run_exitfuncs"):
        sys.exit(status)  # a failed or interrupted command ends the usual way, every finalizer run
    finish()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status if isinstance(status, int) else 1)


if __name__ == "__main__":
    entry()
