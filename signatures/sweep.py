"""A sweep: a grid of experiments (sizes, epochs, seeds, ...) run as jobs on Dask, in one table.

``python -m signatures sweep --name s --dataset digits --hidden "16 8" "32 16" --seeds 0 1 2``
runs every point of the grid as one experiment named ``<name>-<params>`` (here ``s-h16x8-s0``
... ``s-h32x16-s2``: the values that vary, and the seed) in the store, as many at once as the cluster has workers
(:mod:`signatures.app.jobs`), and ends with a table: per point the held-out accuracy, K per
layer, the first separating layer, the path purity and each class's dominant-path share,
read from the stored experiment and its ``analysis.json``; for points that differ only in
their seed, the stability across seeds: the spread of accuracy and K, and the mean adjusted
Rand index of the cluster labels of each layer between two seeds, over the inputs both
experiments hold (:func:`cluster_agreement`). The table is also written beside the
experiments as ``<name>.sweep.json`` and ``<name>.sweep.csv`` (atomically).

Every grid value and every point is checked before any job is queued
(:func:`plan_sweep`); a point already stored with the same config is kept (so a sweep
that was stopped can be run again to finish it); Ctrl-C cancels the jobs and says which
points were stored.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from .canonical import (CANCELLED, JobsInterrupted, absolute_data_dir, check_cluster_options, follow_jobs,
                        open_jobs, stored_outcome, what_is_stored)
from .experiment import FIELD_WORDS, ExperimentConfig

__all__ = ["GRID_FIELDS", "MAX_POINTS", "SweepError", "plan_sweep", "run_sweep", "cluster_agreement", "summarize",
           "table_lines", "write_table", "table_paths"]

#: Config fields a sweep may vary, in the order they appear in a point's name.
GRID_FIELDS = ("arch", "hidden", "filters", "activation", "epochs", "n_per_class", "seed")

#: Most points of one sweep (each is a whole experiment).
MAX_POINTS = 64

#: The ``sweep`` command's option for each grid field.
GRID_OPTIONS = {"arch": "--arch", "hidden": "--hidden", "filters": "--filters", "activation": "--activation",
                "epochs": "--epochs", "n_per_class": "--n-per-class", "seed": "--seeds"}


class SweepError(ValueError):
    """Bad grid values or points, all of them: ``problems`` is the list of messages."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# ---------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------


def _tag(field, value):
    """The part of a point's name for one grid value."""
    if field in ("hidden", "filters"):
        return ("h" if field == "hidden" else "f") + ("x".join(str(v) for v in value) or "none")
    if field == "epochs":
        return f"e{value}"
    if field == "n_per_class":
        return "nall" if value is None else f"n{value}"
    if field == "seed":
        return f"s{value}"
    return str(value)  # arch, activation: names Keras and the config know


def _shown(value):
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "(none)"
    return "all" if value is None else str(value)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def plan_sweep(base, grid, *, words=None):
    """The experiments of a sweep, every value checked before any of them runs.

    Parameters
    ----------
    base : ExperimentConfig
        The choices shared by every point; its ``name`` starts every point's name.
    grid : dict[str, sequence]
        Field of :data:`GRID_FIELDS` -> the values it takes, e.g.
        ``{"hidden": ["64 32", (32, 16)], "seed": [0, 1, 2]}``. Every combination is a point.
    words : dict[str, str], optional
        Field -> the word the user sees for it (the CLI passes its option names); as in
        :meth:`~signatures.experiment.ExperimentConfig.problems`.

    Returns
    -------
    list of ExperimentConfig
        One validated config per point, named ``<base.name>-<tags>``, in grid order (the
        last field varies fastest). A tag is given for each field with more than one value,
        and for the seed (a field with one value is shared by every point, as a base value
        is; when no field varies and no seed is given, every field is tagged). Tags, in the
        order of :data:`GRID_FIELDS`: ``cnn``, ``h64x32``, ``f8x16``, ``tanh``, ``e5``,
        ``n500`` or ``nall``, ``s0``.

    Raises
    ------
    SweepError
        Every problem at once: an unknown field, an empty list, a bad value (named with its
        field's word), a value listed twice, too many points, a bad combination, a name too long.
    """
    if not isinstance(base, ExperimentConfig):
        raise ValueError(f"base must be an ExperimentConfig, got {type(base).__name__}")
    if not isinstance(grid, dict):
        raise ValueError(f"grid must be a dict of field -> list of values, got {grid!r}")
    w = dict(FIELD_WORDS)
    w.update(words or {})
    problems = []

    def problem(message):
        if message not in problems:
            problems.append(message)

    unknown = [f for f in grid if f not in GRID_FIELDS]
    if unknown:
        problem(f"a sweep cannot vary {unknown}; it may vary {list(GRID_FIELDS)}")
    axes = [f for f in GRID_FIELDS if f in grid]
    if not axes and not unknown:
        problem("give at least one value to sweep over: " + ", ".join(w[f] for f in GRID_FIELDS))
    values = {}
    for field in axes:
        given = grid[field]
        if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)) or not given:
            problem(f"{w[field]} must list at least one value, got {given!r}")
            continue
        values[field] = []
        for item in given:
            probe = replace(base, **{field: item})
            message = probe.problems(words=w).get(field)
            if message:
                problem(message)
                continue
            value = getattr(probe, field)
            if value in values[field]:
                problem(f"{w[field]} lists {_shown(value)} twice: give each value once")
                continue
            values[field].append(value)
    if problems:
        raise SweepError(problems)
    n_points = math.prod(len(v) for v in values.values())
    if n_points > MAX_POINTS:
        sizes = " x ".join(f"{len(values[f])} {w[f]}" for f in axes)
        raise SweepError([f"the grid has {n_points} points ({sizes}); a sweep runs at most {MAX_POINTS} "
                          "experiments: give fewer values"])
    from .store import check_name

    try:
        check_name(base.name)
    except ValueError as exc:
        raise SweepError([f"{w['name']}: {exc}"]) from None
    configs = []
    tagged = [f for f in axes if len(values[f]) > 1 or f == "seed"] or axes
    for combo in itertools.product(*(values[f] for f in axes)):
        name = "-".join([base.name, *(_tag(f, v) for f, v in zip(axes, combo) if f in tagged)])
        config = replace(base, name=name, **dict(zip(axes, combo)))
        for message in config.problems(words=w).values():
            where = ", ".join(f"{w[f]} {_shown(v)}" for f, v in zip(axes, combo))
            problem(f"{message} (in the point {where})")
        configs.append(config)
    longest = max((c.name for c in configs), key=len)
    try:
        check_name(longest)
    except ValueError:
        problem(f"{w['name']} {base.name!r} is too long for this sweep: its experiments are named like "
                f"{longest!r} ({len(longest)} characters, at most 64); choose a shorter one")
    if problems:
        raise SweepError(problems)
    return configs


# ---------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------


def _plan_store(configs, store, *, overwrite):
    """Name -> config to run, or the outcome already known ("kept", "not built: ...")."""
    from .store import StoreError, check_output, experiment_path

    plan = {}
    for config in configs:
        path = experiment_path(store, config.name)
        try:
            check_output(path, overwrite=overwrite)
        except FileExistsError:
            plan[config.name] = stored_outcome(path, config)
            continue
        except (ValueError, StoreError) as exc:
            plan[config.name] = f"not built: {exc}"
            continue
        plan[config.name] = config
    return plan


def run_sweep(base, grid, store, *, overwrite=False, progress=None, jobs=None, workers=None, scheduler=None,
              words=None):
    """Run every point of a sweep as a job, then summarise the stored results.

    Parameters
    ----------
    base, grid, words
        As in :func:`plan_sweep`; ``words`` may also name ``workers`` and ``scheduler``.
    store : str or Path
        Where the experiments are stored, and the table beside them.
    overwrite : bool
        Rebuild points already stored (only a complete experiment is ever replaced);
        without it a point stored with the same config is kept and read into the table.
    progress : callable, optional
        ``progress(name, event)`` (see :func:`signatures.canonical.follow_jobs`).
    jobs : signatures.app.jobs.JobClient, optional
        Run the jobs there (left open); else a local cluster of ``workers`` is started, or
        ``scheduler`` joined, when anything is to be run.
    workers : int, optional
        Experiments at once on the local cluster (default: half the cores, at least 1).
    scheduler : str, optional
        Address of a running Dask scheduler; its workers must see the same ``store`` path.

    Returns
    -------
    dict
        :func:`summarize`'s summary, with ``files``: the table's JSON and CSV files.

    Raises
    ------
    SweepError
        Bad grid values or cluster options, before any job is queued.
    JobsInterrupted
        On Ctrl-C: every unfinished job was cancelled; ``outcome`` says which points the store holds.
    """
    w = {"workers": "workers", "scheduler": "scheduler"}
    w.update(words or {})
    problems = check_cluster_options(workers, scheduler, words=w)
    try:
        configs = plan_sweep(base, grid, words=words)
    except SweepError as exc:
        raise SweepError(exc.problems + problems) from None
    if problems:
        raise SweepError(problems)
    axes = [f for f in GRID_FIELDS if f in grid]
    plan = _plan_store(configs, store, overwrite=overwrite)
    outcome = dict(plan)
    if not all(isinstance(v, str) for v in plan.values()):
        with open_jobs(workers=workers, scheduler=scheduler, jobs=jobs) as client:
            submitted = {}
            for name, config in plan.items():
                try:
                    submitted[name] = config if isinstance(config, str) else client.submit(
                        config, store, overwrite=overwrite)
                except ValueError as exc:
                    submitted[name] = f"not built: {exc}"
            try:
                outcome = follow_jobs(submitted, progress=progress)
            except JobsInterrupted as exc:
                exc.outcome = what_is_stored(store, plan, exc.outcome)
                raise
    summary = summarize(store, configs, axes=axes, outcome=outcome)
    summary["files"] = [str(p) for p in write_table(summary, store, base.name)]
    return summary


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


def cluster_agreement(rows_a, labels_a, rows_b, labels_b):
    """Adjusted Rand index of two clusterings over the inputs both hold.

    Parameters
    ----------
    rows_a, rows_b : ndarray of shape (n_a,), (n_b,)
        Ids of the inputs (rows of the dataset), each unique.
    labels_a, labels_b : ndarray of shape (n_a,), (n_b,)
        Cluster of each input.

    Returns
    -------
    float or None
        1.0 for the same partition under any renaming of the clusters, about 0 for
        unrelated ones; None when fewer than two inputs are held by both.
    """
    from sklearn.metrics import adjusted_rand_score

    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    for rows, labels, which in ((rows_a, labels_a, "a"), (rows_b, labels_b, "b")):
        if rows.ndim != 1 or rows.shape != labels.shape:
            raise ValueError(f"rows_{which} and labels_{which} must be 1-d arrays of one length, "
                             f"got shapes {rows.shape} and {labels.shape}")
        if len(np.unique(rows)) != len(rows):
            raise ValueError(f"rows_{which} must not repeat an input id")
    _, ia, ib = np.intersect1d(rows_a, rows_b, assume_unique=True, return_indices=True)
    if len(ia) < 2:
        return None
    return float(adjusted_rand_score(labels_a[ia], labels_b[ib]))


def _stored(outcome):
    return isinstance(outcome, str) and (outcome == "kept" or outcome.startswith("built") or
                                         outcome.startswith("stored"))


def summarize(store, configs, *, axes, outcome):
    """The sweep's table from what the store holds.

    Parameters
    ----------
    store : str or Path
    configs : list of ExperimentConfig
        The points (:func:`plan_sweep`).
    axes : list of str
        The grid fields that were given.
    outcome : dict[str, str]
        Name -> how its job ended ("built in N s", "kept", "not built: ...").

    Returns
    -------
    dict
        ``grid`` (field -> its values, normalised); ``points``: per point ``name``, ``params``
        (its grid values), ``outcome``, ``stored``, and for a stored one ``accuracy``, ``k``
        (layer -> K), ``first_layer`` (the first separating layer, or None), ``purity`` (share of inputs on a path whose
        majority is their class) and ``dominant_share`` (class -> share of the class on its
        dominant path); ``stability``: per group of stored points that differ only in the seed
        (two or more), ``params``, ``seeds``, ``names``, ``accuracy_mean``,
        ``accuracy_spread`` (max - min), ``k`` (layer -> K per seed), ``first_layers`` and
        ``ari`` (layer -> mean adjusted Rand index over the pairs of seeds, inputs matched by
        their dataset row).
    """
    from .analysis import load_or_analyze
    from .store import experiment_path, load_experiment

    points, labels = [], {}
    for config in configs:
        params = {f: _plain(getattr(config, f)) for f in axes}
        row = {"name": config.name, "params": params, "outcome": outcome.get(config.name, CANCELLED),
               "stored": False, "accuracy": None, "k": None, "first_layer": None, "purity": None,
               "dominant_share": None}
        points.append(row)
        if not _stored(row["outcome"]):
            continue
        path = experiment_path(store, config.name)
        try:
            exp = load_experiment(path)
            analysis = load_or_analyze(exp, path)
        except (ValueError, OSError) as exc:
            row["outcome"] = f"stored but not readable: {exc}"
            continue
        sig = analysis["signatures"]
        row.update(stored=True, accuracy=float(exp.metrics["accuracy"]),
                   k={layer: int(est.k_) for layer, est in exp.clusterers.items()},
                   first_layer=analysis["separation"]["first_layer"], purity=float(sig["overall_purity"]),
                   dominant_share={str(c): float(info["dominant_share"]) for c, info in sig["classes"].items()})
        rows = exp.rows("train", "test")
        ids = exp.dataset_rows[rows] if exp.dataset_rows is not None else rows
        labels[config.name] = {layer: (ids, exp.paths[rows, j]) for j, layer in enumerate(exp.layers)}
    grid = {}
    for field in axes:
        grid[field] = []
        for config in configs:
            if _plain(getattr(config, field)) not in grid[field]:
                grid[field].append(_plain(getattr(config, field)))
    return {"grid": grid, "points": points, "stability": _stability(points, labels) if "seed" in axes else []}


def _stability(points, labels):
    groups = {}
    for p in points:
        if p["stored"]:
            rest = {f: v for f, v in p["params"].items() if f != "seed"}
            groups.setdefault(json.dumps(rest, sort_keys=True), (rest, []))[1].append(p)
    out = []
    for rest, members in groups.values():
        if len(members) < 2:
            continue
        accuracy = [m["accuracy"] for m in members]
        layers = [layer for layer in members[0]["k"] if all(layer in m["k"] for m in members)]
        ari = {}
        for layer in layers:
            scores = [cluster_agreement(*labels[a["name"]][layer], *labels[b["name"]][layer])
                      for a, b in itertools.combinations(members, 2)]
            scores = [s for s in scores if s is not None]
            ari[layer] = float(np.mean(scores)) if scores else None
        out.append({
            "params": rest, "seeds": [m["params"]["seed"] for m in members], "names": [m["name"] for m in members],
            "accuracy_mean": float(np.mean(accuracy)), "accuracy_spread": float(max(accuracy) - min(accuracy)),
            "k": {layer: [m["k"][layer] for m in members] for layer in layers},
            "first_layers": [m["first_layer"] for m in members], "ari": ari,
        })
    return out


def _params_text(params):
    return " ".join(f"{f}={_shown(tuple(v) if isinstance(v, list) else v)}" for f, v in params.items())


def _k_text(k):
    return " ".join(f"{layer}={v}" for layer, v in k.items())


def _share_text(shares):
    return " ".join(f"{c}={v:.3f}" for c, v in shares.items())


def table_lines(summary):
    """The summary as lines of text for a terminal."""
    points = summary["points"]
    width = max([len(p["name"]) for p in points] + [10])
    lines = [f"{'experiment':<{width}}  {'accuracy':>8}  {'K per layer':<24} {'separates at':<14} {'purity':>6}  "
             "dominant-path share per class"]
    for p in points:
        if not p["stored"]:
            lines.append(f"{p['name']:<{width}}  {p['outcome']}")
            continue
        lines.append(f"{p['name']:<{width}}  {p['accuracy']:>8.4f}  {_k_text(p['k']):<24} "
                     f"{p['first_layer'] or 'none':<14} {p['purity']:>6.3f}  {_share_text(p['dominant_share'])}"
                     + ("" if p["outcome"] == "kept" or p["outcome"].startswith("built") else f"  ({p['outcome']})"))
    for s in summary["stability"]:
        where = _params_text(s["params"])
        lines.append(f"across seeds {', '.join(map(str, s['seeds']))}" + (f" ({where})" if where else "") + ":")
        lines.append(f"  accuracy mean {s['accuracy_mean']:.4f}, spread {s['accuracy_spread']:.4f}")
        for layer in s["k"]:
            ari = s["ari"][layer]
            lines.append(f"  {layer}: K {', '.join(map(str, s['k'][layer]))}; cluster agreement (mean ARI) "
                         + ("n/a (no inputs in common)" if ari is None else f"{ari:.3f}"))
        lines.append(f"  first separating layer: {', '.join(f or 'none' for f in s['first_layers'])}")
    return lines


def table_paths(store, name):
    """The JSON and CSV files of the sweep ``name`` in ``store`` (beside its experiments)."""
    root = Path(store)
    return root / f"{name}.sweep.json", root / f"{name}.sweep.csv"


def write_table(summary, store, name):
    """Write the summary as ``<name>.sweep.json`` and ``<name>.sweep.csv`` in ``store``, atomically.

    The CSV has one row per point: ``name``, ``outcome``, one column per grid field,
    ``accuracy``, ``k``, ``first_layer``, ``purity`` and ``dominant_share`` (``layer=K`` and
    ``class=share`` pairs separated by spaces). Returns the two paths.
    """
    from .store import write_file_atomic

    json_path, csv_path = table_paths(store, name)
    axes = list(summary["grid"])
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(["name", "outcome", *axes, "accuracy", "k", "first_layer", "purity", "dominant_share"])
    for p in summary["points"]:
        params = [_shown(tuple(v) if isinstance(v, list) else v) for v in (p["params"][f] for f in axes)]
        if p["stored"]:
            out.writerow([p["name"], p["outcome"], *params, repr(p["accuracy"]), _k_text(p["k"]),
                          p["first_layer"] or "", repr(p["purity"]),
                          " ".join(f"{c}={v!r}" for c, v in p["dominant_share"].items())])
        else:
            out.writerow([p["name"], p["outcome"], *params, "", "", "", "", ""])
    text = {key: value for key, value in summary.items() if key != "files"}
    write_file_atomic(json_path, json.dumps(text, indent=1))
    write_file_atomic(csv_path, buffer.getvalue())
    return json_path, csv_path


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def add_sweep_command(sub):
    """Add ``sweep`` to the subcommands ``sub`` of ``python -m signatures``."""
    from .cli import _number, _optional_count, _store_help
    from .data import DATASETS

    s = sub.add_parser(
        "sweep", help="run a grid of experiments (sizes, epochs, seeds) as jobs, then a table of their answers",
        description="Run every point of a grid of experiments as a job on Dask (a local cluster, or --scheduler), "
                    "store each as NAME-<params>, and print a table: accuracy, K per layer, first separating layer, "
                    "path purity per point, and for seeds the stability across them. The table is also written "
                    "beside the experiments as NAME.sweep.json and NAME.sweep.csv. A point already stored with the "
                    "same config is kept. Give at least one grid option; each takes one or more values.")
    s.add_argument("--name", required=True, help="sweep name: every experiment is stored as NAME-<params>")
    s.add_argument("--store", type=Path, default=None, help=_store_help())
    grid = s.add_argument_group("the grid (every combination is one experiment)")
    grid.add_argument("--seeds", nargs="+", type=_number, help="seeds, each 0..2147483647 (e.g. 0 1 2 3)")
    grid.add_argument("--hidden", nargs="+", type=str,
                      help='dense hidden sizes, one quoted list per value (e.g. "64 32" "32 16"); default 64 32 for '
                           "mlp, 32 for cnn")
    grid.add_argument("--filters", nargs="+", type=str, help='conv filters per block (cnn), e.g. "8 16" "16 32"')
    grid.add_argument("--arch", nargs="+", type=str, help="mlp and/or cnn (default mlp)")
    grid.add_argument("--activation", nargs="+", type=str, help="activations (default relu)")
    grid.add_argument("--epochs", nargs="+", type=_number, help="training epochs, each 1..200 (default 5)")
    grid.add_argument("--n-per-class", nargs="+", type=_optional_count,
                      help="images per trained class, each 2..10000 or all (default all)")
    base = s.add_argument_group("shared by every point (as in run)")
    base.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    base.add_argument("--data-dir", type=str,
                      help="folder(s) of IDX files as the workers see them (default: their $SIGNATURES_DATA_DIR)")
    base.add_argument("--digits", nargs="+", type=_number, default=[1, 7], help="classes to train on (default 1 7)")
    base.add_argument("--anomalies", nargs="*", type=_number, default=[], help="unseen classes to insert")
    base.add_argument("--all-unseen", action="store_true",
                      help="keep the held-out images of every class not trained on (as the site does)")
    base.add_argument("--test-size", type=_number, default=0.2, help="held-out share per class (default 0.2)")
    base.add_argument("--batch-size", type=_number, default=64, help="training batch, 1..4096 (default 64)")
    base.add_argument("--k-min", type=_number, default=2, help="smallest K of the silhouette search (default 2)")
    base.add_argument("--k-max", type=_number, default=10, help="largest K, at most 100 (default 10)")
    base.add_argument("--sample-size", type=_number, default=2000, help="rows used to choose K (default 2000)")
    base.add_argument("--umap-points", type=_number, default=3000, help="most rows projected per layer (default 3000)")
    base.add_argument("--reduce", choices=["mean", "flatten"], default="mean", help="conv maps to rows")
    run = s.add_argument_group("running")
    run.add_argument("--workers", type=_number, default=None,
                     help="experiments at once on a local Dask cluster (default: half the cores, at least 1; "
                          "each worker holds TensorFlow, about 1 GiB)")
    run.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:PORT) instead of a local "
                                         "cluster; its workers must see the same --store folder")
    run.add_argument("--overwrite", action="store_true", help="rebuild points already stored")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    s.set_defaults(func=command)
    return s


def _base_and_grid(args):
    base = ExperimentConfig(
        name=args.name, dataset=args.dataset, digits=tuple(args.digits), anomalies=tuple(args.anomalies),
        all_unseen=args.all_unseen, test_size=args.test_size, batch_size=args.batch_size, k_min=args.k_min,
        k_max=args.k_max, sample_size=args.sample_size, umap_points=args.umap_points, reduce=args.reduce,
        data_dir=absolute_data_dir(args.data_dir),
    )
    grid = {}
    for field in GRID_FIELDS:
        value = getattr(args, "seeds" if field == "seed" else field)
        if value is not None:
            grid[field] = list(value)
    if "hidden" not in grid and grid.get("arch") == ["cnn"]:
        base = replace(base, hidden=(32,))  # as run: a CNN's dense layers default to 32
    return base, grid


def print_event(name, event):
    """A progress line for terminals: ``name: stage, message``."""
    print(f"{name}: {event['stage']}, {event['message']}", flush=True)


def command(args):
    """``python -m signatures sweep``: returns the exit status (0 every point stored, 2 otherwise)."""
    from .cli import OPTION_WORDS
    from .store import default_store

    words = {**OPTION_WORDS, "seed": "--seeds", "name": "--name", "workers": "--workers",
             "scheduler": "--scheduler", "data_dir": "--data-dir"}
    store = Path(args.store) if args.store is not None else default_store()
    if store.exists() and not store.is_dir():
        print(f"error: --store {str(store)!r} is a file, not a folder; give the folder that holds the experiments",
              file=sys.stderr)
        return 2
    base, grid = _base_and_grid(args)
    try:
        summary = run_sweep(base, grid, store, overwrite=args.overwrite, workers=args.workers,
                            scheduler=args.scheduler, progress=None if args.quiet else print_event, words=words)
    except SweepError as exc:
        for message in exc.problems:
            print(f"error: {message}", file=sys.stderr)
        return 2
    except JobsInterrupted as exc:
        for name, what in exc.outcome.items():
            print(f"{name:<32} {what}")
        stored = [name for name, what in exc.outcome.items() if _stored(what)]
        print(f"stopped: the unfinished jobs were cancelled; stored: {', '.join(stored) if stored else 'none'}; "
              "run the same command again to finish the sweep", file=sys.stderr)
        raise
    for line in table_lines(summary):
        print(line)
    print(f"wrote {summary['files'][0]} and {summary['files'][1]}")
    return 0 if all(p["stored"] for p in summary["points"]) else 2
