"""Experiments on disk: one folder each, with a manifest, written atomically.

Layout of an experiment folder::

    manifest.json   config, its key (hash), layers, metrics, clustering state, timings,
                    file sizes; written last, with "complete": true
    arrays.npz      labels, split, images, probs, paths, and per layer the activations
                    (act/<layer>), cluster centers (centers/<layer>) and UMAP map (emb/<layer>)
    model.keras     the trained model (absent only if it could not be saved)
    report.html     the self-contained report, when one was written

Atomicity: everything is written into a hidden temporary folder beside the target,
which is renamed into place only when complete. A run killed half-way leaves only a
``.<name>.tmp-*`` folder, which :func:`list_experiments` ignores and :func:`load_experiment`
refuses. Overwriting swaps folders the same way, so the old experiment stays whole
until the new one is.

Loading imports no TensorFlow: the clusters are rebuilt from their centers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import __version__
from .clustering import LayerKMeans
from .experiment import Experiment, ExperimentConfig

__all__ = [
    "FORMAT_VERSION",
    "save_experiment",
    "load_experiment",
    "read_manifest",
    "list_experiments",
    "experiment_path",
    "check_name",
    "write_file_atomic",
    "default_store",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
MODEL = "model.keras"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def default_store():
    """The store folder used when none is given, as an absolute path.

    ``$SIGNATURES_STORE`` if set; else ``runs/`` at the root of the checkout the package
    was installed from (``pip install -e .``), so that the CLI, the site and notebooks
    opened in JupyterLab (whose working folder is ``notebooks/``) share one store; else
    ``./runs``.
    """
    env = os.environ.get("SIGNATURES_STORE")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "notebooks").is_dir():
        return checkout / "runs"
    return Path("runs").resolve()


def check_name(name):
    """Return ``name`` if it is a safe experiment name, else raise ValueError.

    Allowed: 1-64 letters, digits, ``_``, ``-`` and ``.``, starting with a letter or
    digit, and no ``..``: a name can never become a path outside the store.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(
            f"experiment name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, with no '/' and no '..'"
        )
    return name


def experiment_path(root, name):
    """The folder of experiment ``name`` inside the store ``root``."""
    root = Path(root).resolve()
    path = (root / check_name(name)).resolve()
    if path.parent != root:
        raise ValueError(f"experiment name {name!r} leads outside the store {root}")
    return path


def write_file_atomic(path, data):
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a served report must be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _arrays(exp):
    out = {
        "labels": exp.labels,
        "split": exp.split,
        "images": exp.images,
        "probs": exp.probs,
        "paths": exp.paths,
    }
    if exp.dataset_rows is not None:
        out["dataset_rows"] = exp.dataset_rows
    for name in exp.layers:
        out[f"act/{name}"] = exp.hidden[name]
        out[f"centers/{name}"] = exp.clusterers[name].centers_
        out[f"emb/{name}"] = exp.embeddings[name]
    return out


def _manifest(exp):
    return {
        "format": FORMAT_VERSION,
        "signatures_version": __version__,
        "name": exp.config.name,
        "key": exp.config.key(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": exp.config.to_dict(),
        "layers": list(exp.layers),
        "classes": list(exp.classes),
        "anomalies": list(exp.anomalies),
        "class_names": list(exp.class_names),
        "n_rows": int(exp.n_rows),
        "metrics": exp.metrics,
        "timings": exp.timings,
        "info": exp.info,
        "clustering": {name: est.to_dict() for name, est in exp.clusterers.items()},
    }


def save_experiment(exp, path, *, overwrite=False, save_model=True):
    """Write ``exp`` to the folder ``path``, atomically.

    Parameters
    ----------
    exp : Experiment
    path : str or Path
        Target folder; its parent is created if needed.
    overwrite : bool
        Replace an existing experiment there. Without it, an existing folder is an error
        and is left untouched.
    save_model : bool
        Also save ``exp.model`` as ``model.keras`` (needs TensorFlow, which made it).

    Returns
    -------
    Path
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} exists already; choose another name or output folder, or overwrite it explicitly"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with open(tmp / ARRAYS, "wb") as fh:
            np.savez(fh, **_arrays(exp))
        manifest = _manifest(exp)
        manifest["name"] = path.name  # the folder is the experiment's name in a store
        if save_model and exp.model is not None:
            exp.model.save(tmp / MODEL)
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        manifest["complete"] = True
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default), encoding="utf-8")
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rename(path, trash / "old")
            os.rename(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")


def read_manifest(path):
    """The manifest of a complete experiment folder (a dict); raise if it is not one."""
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise FileNotFoundError(f"no experiment folder at {str(path)!r}")
    if not file.is_file():
        raise ValueError(f"{str(path)!r} holds no {MANIFEST}: not a complete experiment (a killed run?)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is damaged: {exc}") from exc
    if not manifest.get("complete"):
        raise ValueError(f"{str(path)!r} is not a complete experiment")
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has store format {manifest.get('format')!r}; this version reads format {FORMAT_VERSION}"
        )
    for name, size in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            raise ValueError(f"{f} is missing or has the wrong size: the experiment is damaged")
    return manifest


def load_experiment(path):
    """Read an experiment written by :func:`save_experiment`, without TensorFlow.

    The returned :class:`Experiment` has ``model=None``; its clusterers predict from
    the stored centers. Load the model with ``signatures.models.load_model(path / "model.keras")``
    when it is needed.
    """
    path = Path(path)
    manifest = read_manifest(path)
    with np.load(path / ARRAYS, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    layers = manifest["layers"]
    clusterers = OrderedDict()
    train = arrays["split"] == 0
    for name in layers:
        clusterers[name] = LayerKMeans.from_dict(
            manifest["clustering"][name], arrays[f"centers/{name}"], arrays["paths"][train, layers.index(name)]
        )
    return Experiment(
        config=ExperimentConfig.from_dict(manifest["config"]),
        layers=list(layers),
        classes=tuple(manifest["classes"]),
        anomalies=tuple(manifest["anomalies"]),
        class_names=tuple(manifest["class_names"]),
        labels=arrays["labels"],
        split=arrays["split"],
        images=arrays["images"],
        probs=arrays["probs"],
        hidden=OrderedDict((name, arrays[f"act/{name}"]) for name in layers),
        clusterers=clusterers,
        paths=arrays["paths"],
        embeddings=OrderedDict((name, arrays[f"emb/{name}"]) for name in layers),
        metrics=manifest["metrics"],
        timings=manifest.get("timings", {}),
        dataset_rows=arrays.get("dataset_rows"),
        info=manifest.get("info", {}),
    )


def list_experiments(root):
    """Manifests of the complete experiments directly under ``root``, sorted by name.

    Temporary folders of unfinished runs and damaged experiments are left out.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            manifest = read_manifest(child)
        except (ValueError, FileNotFoundError):
            continue
        manifest["path"] = str(child)
        manifest["name"] = child.name
        out.append(manifest)
    return out
