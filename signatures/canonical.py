"""The original study's canonical experiments, built into a store by one command.

``python -m signatures canonical [--store runs]`` builds the ones missing from the store:

========================  ==============  ===============  ==========================
name                      dataset         trained on       anomalies highlighted
========================  ==============  ===============  ==========================
``1v7-mlp``               MNIST           1, 7             3, 4  (MLP 64-32)
``1v3-mlp``               MNIST           1, 3             2     (MLP 64-32)
``1v7-cnn``               MNIST           1, 7             3, 4  (CNN 8-16, dense 32)
``fashion-shirt-trouser-sneaker``  Fashion-MNIST  0, 1, 7  5 (sandal), 8 (bag)
========================  ==============  ===============  ==========================

Each is stored with ``all_unseen=True``: held-out images of every class not trained on
are pushed through the model and assigned to its clusters at build time, so the gallery
can insert any unseen class without TensorFlow.
"""

from __future__ import annotations

import time

from .experiment import ExperimentConfig

__all__ = ["CANONICAL", "build_canonical"]

CANONICAL = (
    ExperimentConfig(name="1v7-mlp", dataset="mnist", digits=(1, 7), anomalies=(3, 4), hidden=(64, 32)),
    ExperimentConfig(name="1v3-mlp", dataset="mnist", digits=(1, 3), anomalies=(2,), hidden=(64, 32)),
    ExperimentConfig(name="1v7-cnn", dataset="mnist", digits=(1, 7), anomalies=(3, 4), arch="cnn",
                     filters=(8, 16), hidden=(32,)),
    ExperimentConfig(name="fashion-shirt-trouser-sneaker", dataset="fashion-mnist", digits=(0, 1, 7),
                     anomalies=(5, 8), n_per_class=2000, hidden=(64, 32)),
)


def _kept(path):
    """What is at ``path``, which exists and is not to be overwritten: "kept" if an experiment."""
    from .store import is_experiment_folder, read_manifest

    ok, why = is_experiment_folder(path)
    if not ok:
        return f"not built: {str(path)!r} exists but is not an experiment ({why}); move it away first"
    try:
        read_manifest(path)
    except (ValueError, OSError) as exc:
        return f"not built: {str(path)!r} is a damaged experiment ({exc}); rebuild it with --overwrite"
    return "kept"


def build_canonical(store, *, data_dir=None, only=None, overwrite=False, progress=None):
    """Run and save the canonical experiments that the store lacks.

    Parameters
    ----------
    store : str or Path
    data_dir : str, optional
        Folder(s) of IDX files (see :func:`signatures.data.load_dataset`).
    only : collection of str, optional
        Names to build; all by default.
    overwrite : bool
        Rebuild those already stored.
    progress : callable, optional
        ``progress(stage, fraction, message)``; stage messages are prefixed with the name.

    Returns
    -------
    dict[str, str]
        Name -> "built in N s", "kept" (stored already) or "not built: " and the error that
        stopped it (data not available, a folder in the way that is not an experiment, a
        failed save, which leaves what was stored unchanged).
    """
    from dataclasses import replace

    from .analysis import load_or_analyze
    from .data import DataUnavailableError
    from .experiment import run_experiment
    from .report import write_report
    from .store import StoreError, check_output, experiment_path, save_experiment

    names = [c.name for c in CANONICAL]
    if only is not None and (isinstance(only, str) or not all(isinstance(n, str) for n in only)):
        raise ValueError(f"only must be a list of canonical names {names}, got {only!r}")
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"no canonical experiment named {unknown}; they are {names}")
    outcome = {}
    for i, base in enumerate(CANONICAL):
        if only and base.name not in only:
            continue
        path = experiment_path(store, base.name)
        try:
            check_output(path, overwrite=overwrite)
        except FileExistsError:
            outcome[base.name] = _kept(path)
            continue
        except (ValueError, StoreError) as exc:
            outcome[base.name] = f"not built: {exc}"
            continue
        config = replace(base, all_unseen=True, data_dir=data_dir)
        say = (lambda stage, frac, msg, _n=base.name: progress(stage, frac, f"{_n}: {msg}")) if progress else None
        if progress:
            progress("canonical", i / len(CANONICAL), f"building {base.name} ({i + 1}/{len(CANONICAL)})")
        start = time.perf_counter()
        try:
            exp = run_experiment(config, progress=say)
            save_experiment(exp, path, overwrite=overwrite)
        except (DataUnavailableError, ValueError, StoreError) as exc:
            outcome[base.name] = f"not built: {exc}"
            continue
        write_report(exp, path / "report.html", analysis=load_or_analyze(exp, path))
        outcome[base.name] = f"built in {time.perf_counter() - start:.0f} s"
    return outcome
