"""Experiments on disk: one folder each, with a manifest, written atomically.

Layout of an experiment folder::

    manifest.json   config, its key (hash), layers, metrics, clustering state, timings,
                    file sizes; written last, with "complete": true
    arrays.npz      labels, split, images, probs, paths, and per layer the cluster centers
                    (centers/<layer>) and UMAP map (emb/<layer>)
    act-<j>.npy     the activations of the j-th layer (rows x units, float32 or float16),
                    read memory-mapped: a layer larger than memory is never loaded whole.
                    (Experiments saved before kept them in arrays.npz as act/<layer>.)
    model.keras     the trained model (absent only if it could not be saved)
    report.html     the self-contained report, when one was written
    analysis.json   the answers to the three questions, when computed
    plots.zip       the pages' figures, encoded once (see signatures.app.view)

Nothing stored is lost or half-written:

- Everything is written into a hidden temporary folder beside the target
  (``.<name>.tmp-<host>-<pid>-*``), flushed to disk, and put in place by one rename.
- A new name is taken with a rename that refuses to replace (Linux ``renameat2``
  ``RENAME_NOREPLACE``): of two saves racing for one name exactly one wins, the other
  gets :class:`FileExistsError`.
- Overwriting exchanges the old and the new folder in one atomic step (``RENAME_EXCHANGE``);
  where the file system cannot, the old folder is first moved aside and moved back by the
  next reader if the process died in between. At every instant the name shows either the
  old or the new complete experiment.
- Overwrite only ever replaces a folder that is a complete experiment; any other folder is
  refused, naming it and what it holds.
- Leftover temporary folders of killed runs (their process is gone) are removed on the next
  save or listing of that store.
- A damaged experiment (unreadable manifest or arrays) raises :class:`ValueError` naming the
  file; :func:`scan_store` lists it by name and goes on with the rest.
- A failed write (disk full, read-only folder) raises :class:`StoreError`, which says what
  happened and that the experiment stored there before is unchanged.

Loading imports no TensorFlow: the clusters are rebuilt from their centers.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
import zipfile
import zlib
from collections import OrderedDict
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from . import __version__
from .clustering import LayerKMeans
from .experiment import Experiment, ExperimentConfig, activation_file

__all__ = [
    "FORMAT_VERSION",
    "StoreError",
    "save_experiment",
    "load_experiment",
    "read_manifest",
    "list_experiments",
    "scan_store",
    "check_output",
    "is_experiment_folder",
    "experiment_path",
    "check_name",
    "write_file_atomic",
    "default_store",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
MODEL = "model.keras"
#: Files a complete experiment folder may hold besides those its manifest lists.
EXTRA_FILES = ("report.html", "analysis.json", "plots.zip", "explanations.npz")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|work)-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[^/]*")


class StoreError(OSError):
    """A write to the store failed (disk full, read-only folder, ...); nothing stored was changed."""


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
    digit, and no ``..``: a name can never become a path outside the store. The whole
    name must match (a trailing newline is refused too).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
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


# ---------------------------------------------------------------------------------------
# Atomic renames
# ---------------------------------------------------------------------------------------

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _renameat2(src, dst, flags):
    """Linux ``renameat2``; False where the system or file system cannot do it."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018  (glibc >= 2.28)
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    result = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _rename_new(src, dst):
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists, even in a race."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "exists already", str(dst)) from None
        raise
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists already", str(dst))
    try:
        os.rename(src, dst)  # fails on a non-empty folder, which every experiment is
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, "exists already", str(dst)) from None
        raise


def _exchange(new, path):
    """Put the folder ``new`` at ``path`` and the old ``path`` at ``new``, atomically if possible."""
    if _renameat2(new, path, _RENAME_EXCHANGE):
        return
    # Fallback: move the old one aside first; a reader that finds ``path`` missing moves it back.
    aside = _temp_folder(path, "old")
    os.rename(path, aside / "old")
    _checkpoint("old moved aside")
    os.rename(new, path)
    os.rename(aside / "old", new)
    os.rmdir(aside)


def _checkpoint(step):
    """Called between the steps of a save; fault-injection tests replace it to kill the process."""


# ---------------------------------------------------------------------------------------
# Temporary folders and their leftovers
# ---------------------------------------------------------------------------------------


def _temp_folder(path, kind):
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{_HOST}-{os.getpid()}-", dir=path.parent))


def work_folder(root, name):
    """A new hidden folder in the store ``root`` for the work of a run that will be saved as
    ``name`` (activations streamed to disk); a killed run's is removed by :func:`clean_leftovers`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return _temp_folder(root / name, "work")


def _process_alive(pid, since):
    """Whether process ``pid`` runs and started before ``since`` (a pid reused later does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        started = os.stat(f"/proc/{pid}").st_mtime
    except OSError:
        return True
    return started <= since + 1.0


def clean_leftovers(root):
    """Remove temporary folders of saves whose process is gone; recover a moved-aside experiment.

    Only folders made on this host are judged (a shared store may be written from several
    machines). Returns the names removed or recovered. Errors (a read-only store) are ignored.
    """
    root = Path(root)
    done = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return done
    for entry in entries:
        m = _LEFTOVER.fullmatch(entry.name)
        if not m or m["host"] != _HOST or not entry.is_dir():
            continue
        try:
            made = entry.stat().st_mtime
            if _process_alive(int(m["pid"]), made):
                continue
            target = root / m["name"]
            old = entry / "old"
            if m["kind"] == "old" and old.is_dir() and not os.path.lexists(target):
                os.rename(old, target)  # a killed fallback exchange: the old experiment comes back
                done.append(f"recovered {target.name}")
            shutil.rmtree(entry)
            done.append(f"removed {entry.name}")
        except OSError:
            continue
    return done


def _recover(path):
    """If ``path`` vanished in a killed fallback exchange, move the old experiment back."""
    path = Path(path)
    if not os.path.lexists(path) and path.parent.is_dir():
        clean_leftovers(path.parent)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def write_file_atomic(path, data):
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    mode = "w" if isinstance(data, str) else "wb"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
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
    if getattr(exp, "logits", None) is not None:
        out["logits"] = exp.logits
    if getattr(exp, "uncertainty", None) is not None:
        out["mc/entropy"] = exp.uncertainty["entropy"]
        out["mc/mutual_information"] = exp.uncertainty["mutual_information"]
    for name in exp.layers:
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
        **({"mc_dropout": {"passes": int(exp.uncertainty["passes"])}}
           if getattr(exp, "uncertainty", None) is not None else {}),
        "clustering": {name: est.to_dict() for name, est in exp.clusterers.items()},
        "activations": {name: activation_file(j) for j, name in enumerate(exp.layers)},
    }


def _write_activations(values, file):
    """``values`` (rows x units) as the .npy ``file``: a hard link to the file a memory-mapped
    array already lives in (same file system: no copy), else written in chunks."""
    source = getattr(values, "filename", None)
    if isinstance(values, np.memmap) and source and values.offset == _npy_offset(source, values):
        values.flush()
        try:
            os.link(source, file)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    values = np.asarray(values) if not isinstance(values, np.memmap) else values
    out = np.lib.format.open_memmap(file, mode="w+", dtype=values.dtype, shape=values.shape)
    step = max(1, (64 << 20) // max(1, values.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))))
    for start in range(0, len(values), step):
        out[start:start + step] = values[start:start + step]
    out.flush()
    with open(file, "rb+") as fh:
        os.fsync(fh.fileno())
    del out


def _npy_offset(file, values):
    """The header length of the .npy ``file`` if it holds exactly ``values``' shape and dtype, else -1."""
    try:
        with open(file, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, fortran, dtype = read[version](fh)
            offset = fh.tell()
    except (OSError, ValueError, KeyError):
        return -1
    return offset if (tuple(shape), dtype, fortran) == (values.shape, values.dtype, False) else -1


def is_experiment_folder(path):
    """``(True, "")`` if ``path`` is a folder that overwrite may replace, else ``(False, why)``.

    That is a folder whose manifest was written by this tool and which holds nothing but
    the manifest's files, ``report.html`` and ``analysis.json`` (a damaged experiment of
    this tool counts; a folder of other things never does).
    """
    path = Path(path)
    if not path.is_dir():
        return False, "it is not a folder"
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    entries = sorted(p.name for p in path.iterdir())

    def shown(names):
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    if not isinstance(manifest, dict) or "format" not in manifest or "config" not in manifest:
        holds = f"; it holds {shown(entries)}" if entries else "; it is empty"
        return False, f"it has no {MANIFEST} of a signatures experiment{holds}"
    files = manifest.get("files")
    known = {MANIFEST, *EXTRA_FILES, *(files if isinstance(files, dict) else ())}
    foreign = [n for n in entries if n not in known and not (n.startswith(".") and n[1:].split(".", 1)[0] in
                                                               {k.split(".", 1)[0] for k in known})]
    if foreign:
        return False, f"it holds other things too: {shown(foreign)}"
    return True, ""


def check_output(path, *, overwrite=False):
    """Check, before any work, that an experiment can be saved at ``path``.

    Raises
    ------
    ValueError
        A bad experiment name, or ``overwrite`` of a folder that is not a complete experiment.
    FileExistsError
        ``path`` exists and ``overwrite`` is off.
    StoreError
        The folder cannot be written (read-only, not a folder, no permission).

    Returns
    -------
    Path
    """
    path = Path(path)
    check_name(path.name) if path.name else None
    _recover(path)
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(
                f"{str(path)!r} exists already; choose another name or output folder, or overwrite it explicitly")
        ok, why = is_experiment_folder(path)
        if not ok:
            raise ValueError(
                f"{str(path)!r} is not a complete experiment ({why}); overwrite only ever replaces an experiment "
                "folder: choose another output folder, or move its contents away first")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}-", dir=parent))
        probe.rmdir()
    except OSError as exc:
        raise StoreError(exc.errno, f"cannot write in {str(parent)!r} ({exc.strerror or exc}); "
                         "choose an output folder you can write to") from None
    return path


def save_experiment(exp, path, *, overwrite=False, save_model=True):
    """Write ``exp`` to the folder ``path``, atomically.

    Parameters
    ----------
    exp : Experiment
    path : str or Path
        Target folder; its parent is created if needed.
    overwrite : bool
        Replace an existing experiment there, in one atomic exchange. Without it an
        existing folder is an error and is left untouched; with it, a folder that is not a
        complete experiment is refused all the same.
    save_model : bool
        Also save ``exp.model`` as ``model.keras`` (needs TensorFlow, which made it).

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError, ValueError, StoreError
        See :func:`check_output`; a failed write raises StoreError and changes nothing stored.
    """
    path = Path(path)
    check_output(path, overwrite=overwrite)
    if getattr(exp, "pending_maps", None) is not None:  # maps still being fitted elsewhere
        exp.wait_for_maps()
    clean_leftovers(path.parent)
    existed = os.path.lexists(path)
    tmp = _temp_folder(path, "tmp")
    try:
        _checkpoint("folder made")
        with open(tmp / ARRAYS, "wb") as fh:
            np.savez(fh, **_arrays(exp))
            fh.flush()
            os.fsync(fh.fileno())
        for j, name in enumerate(exp.layers):
            _write_activations(exp.hidden[name], tmp / activation_file(j))
        _checkpoint("arrays written")
        manifest = _manifest(exp)
        manifest["name"] = path.name  # the folder is the experiment's name in a store
        if save_model and exp.model is not None:
            exp.model.save(tmp / MODEL)
        _checkpoint("model written")
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        manifest["complete"] = True
        write_file_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1, default=_json_default))
        _fsync_dir(tmp)
        _checkpoint("manifest written")
        if overwrite and os.path.lexists(path):
            ok, why = is_experiment_folder(path)  # again: it may have changed during the work
            if not ok:
                raise ValueError(f"{str(path)!r} is not a complete experiment ({why}); it was left as it is")
            _exchange(tmp, path)
            _checkpoint("exchanged")
            shutil.rmtree(tmp)  # now the old experiment
        else:
            _rename_new(tmp, path)
            _checkpoint("renamed")
        _fsync_dir(path.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (FileExistsError, StoreError)):
            if isinstance(exc, FileExistsError) and not isinstance(exc, StoreError):
                raise FileExistsError(
                    f"{str(path)!r} exists already (another save took this name first); choose another name "
                    "or overwrite it explicitly") from None
            raise
        kept = "the experiment stored there before is unchanged" if existed else "nothing was stored"
        raise StoreError(exc.errno, f"could not save the experiment to {str(path)!r}: "
                         f"{exc.strerror or exc}; {kept}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _is_int(v):
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, Real) and not isinstance(v, bool)


def _check_manifest(manifest, file):
    """Raise ValueError naming ``file`` and the first part of ``manifest`` that is not as written."""
    def bad(what):
        raise ValueError(f"{file} is damaged: {what}; rebuild this experiment or remove its folder")

    if not isinstance(manifest, dict):
        bad(f"it holds a {type(manifest).__name__}, not an object")
    if not manifest.get("complete"):
        raise ValueError(f"{str(file.parent)!r} is not a complete experiment (its manifest is not marked complete)")
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{str(file.parent)!r} has store format {manifest.get('format')!r}; this version reads format "
            f"{FORMAT_VERSION}")
    config = manifest.get("config")
    if not isinstance(config, dict):
        bad("'config' is missing or not an object")
    try:
        ExperimentConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        bad(f"'config' does not hold an experiment's settings ({exc})")
    for key in ("digits", "anomalies", "hidden", "filters"):
        if key in config and not (isinstance(config[key], list) and all(_is_int(v) for v in config[key])):
            bad(f"config '{key}' must be a list of integers, got {config[key]!r}")
    for key in ("dataset", "arch"):
        if key in config and not isinstance(config[key], str):
            bad(f"config '{key}' must be text, got {config[key]!r}")
    layers = manifest.get("layers")
    if not (isinstance(layers, list) and layers and all(isinstance(n, str) for n in layers)
            and len(set(layers)) == len(layers)):
        bad(f"'layers' must be a non-empty list of distinct layer names, got {layers!r}")
    for key in ("classes", "anomalies"):
        if not (isinstance(manifest.get(key), list) and all(_is_int(v) for v in manifest[key])):
            bad(f"'{key}' must be a list of integers, got {manifest.get(key)!r}")
    names = manifest.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        bad(f"'class_names' must be a list of names, got {names!r}")
    if not _is_int(manifest.get("n_rows")) or manifest["n_rows"] < 0:
        bad(f"'n_rows' must be a count, got {manifest.get('n_rows')!r}")
    metrics = manifest.get("metrics")
    if not isinstance(metrics, dict):
        bad("'metrics' is missing or not an object")
    accuracy = metrics.get("accuracy")
    if not (_is_num(accuracy) and 0.0 <= accuracy <= 1.0):
        bad(f"the accuracy must be a number from 0 to 1, got {accuracy!r}")
    files = manifest.get("files")
    if not (isinstance(files, dict) and ARRAYS in files
            and all(isinstance(k, str) and _is_int(v) for k, v in files.items())):
        bad(f"'files' must map file names to sizes and include {ARRAYS}, got {files!r}")
    clustering = manifest.get("clustering")
    if not (isinstance(clustering, dict) and all(isinstance(clustering.get(n), dict) for n in layers)):
        bad("'clustering' must hold the fitted state of every layer")
    for key in ("timings", "info"):
        if key in manifest and not isinstance(manifest[key], dict):
            bad(f"'{key}' must be an object, got {manifest[key]!r}")


def read_manifest(path):
    """The manifest of a complete experiment folder (a dict); ValueError naming what is wrong if not."""
    path = Path(path)
    _recover(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise FileNotFoundError(f"no experiment folder at {str(path)!r}")
    if not file.is_file():
        raise ValueError(f"{str(path)!r} holds no {MANIFEST}: not a complete experiment (a killed run?)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is damaged: {exc}; rebuild this experiment or remove its folder") from None
    except OSError as exc:
        raise ValueError(f"{file} cannot be read: {exc.strerror or exc}") from None
    _check_manifest(manifest, file)
    for name, size in manifest["files"].items():
        f = path / name
        if Path(name).name != name or not f.is_file() or f.stat().st_size != size:
            raise ValueError(f"{f} is missing or has the wrong size: the experiment is damaged")
    return manifest


def _read_arrays(file):
    try:
        with np.load(file, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{file} is damaged ({type(exc).__name__}: {exc}); rebuild this experiment") from None


def _read_activations(path, manifest):
    """``act/<layer>`` -> the layer's activations, memory-mapped from its ``act-<j>.npy`` (none for
    experiments that kept them in arrays.npz)."""
    files = manifest.get("activations")
    if files is None:
        return {}
    if not isinstance(files, dict) or sorted(files) != sorted(manifest["layers"]):
        raise ValueError(f"{path / MANIFEST} is damaged: 'activations' must name one file per layer, got {files!r}")
    out = {}
    for name, file in files.items():
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".npy"):
            raise ValueError(f"{path / MANIFEST} is damaged: layer {name!r} has the activation file {file!r}")
        try:
            values = np.load(path / file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path / file} is damaged ({type(exc).__name__}: {exc}); rebuild this experiment") from None
        if values.ndim != 2 or len(values) != manifest["n_rows"]:
            raise ValueError(f"{path / file} has shape {values.shape}, expected {manifest['n_rows']} rows of a layer's "
                             "units: the experiment is damaged")
        if values.dtype not in (np.float32, np.float16):
            raise ValueError(f"{path / file} holds {values.dtype} values, not float32 or float16: the experiment is "
                             "damaged")
        out[f"act/{name}"] = values
    return out


def _check_arrays(arrays, manifest, file):
    """ValueError naming ``file`` unless the arrays agree with each other and the manifest."""
    layers = manifest["layers"]
    need = ["labels", "split", "images", "probs", "paths"]
    need += [f"{kind}/{n}" for n in layers for kind in ("act", "centers", "emb")]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"{file} lacks the arrays {missing[:6]}: the experiment is damaged")
    n = manifest["n_rows"]
    for key in ["labels", "split", "images", "probs", "paths"] + [f"{k}/{l}" for l in layers for k in ("act", "emb")]:
        if arrays[key].ndim < 1 or len(arrays[key]) != n:
            raise ValueError(f"{file}: '{key}' has {len(arrays[key]) if arrays[key].ndim else 0} rows, the manifest "
                             f"says {n}: the experiment is damaged")
    paths = arrays["paths"]
    if paths.ndim != 2 or paths.shape[1] != len(layers) or not np.issubdtype(paths.dtype, np.integer):
        raise ValueError(f"{file}: 'paths' has shape {paths.shape}, expected ({n}, {len(layers)}) integers")
    if arrays["probs"].ndim != 2 or arrays["probs"].shape[1] != len(manifest["classes"]):
        raise ValueError(f"{file}: 'probs' has shape {arrays['probs'].shape}, expected ({n}, "
                         f"{len(manifest['classes'])})")
    for key in ("mc/entropy", "mc/mutual_information"):
        if key in arrays and arrays[key].shape != (n,):
            raise ValueError(f"{file}: '{key}' has shape {arrays[key].shape}, expected ({n},): the experiment is "
                             "damaged")
    if "logits" in arrays and arrays["logits"].shape != arrays["probs"].shape:
        raise ValueError(f"{file}: 'logits' has shape {arrays['logits'].shape}, expected that of 'probs' "
                         f"{arrays['probs'].shape}")
    for j, name in enumerate(layers):
        centers, act = arrays[f"centers/{name}"], arrays[f"act/{name}"]
        if centers.ndim != 2 or act.ndim != 2 or centers.shape[1] != act.shape[1]:
            raise ValueError(f"{file}: layer {name!r} has centers of shape {centers.shape} for activations of "
                             f"shape {act.shape}: the experiment is damaged")
        if len(paths) and (paths[:, j].min() < 0 or paths[:, j].max() >= len(centers)):
            raise ValueError(f"{file}: layer {name!r} has cluster ids outside 0..{len(centers) - 1}")


def load_experiment(path):
    """Read an experiment written by :func:`save_experiment`, without TensorFlow.

    The returned :class:`Experiment` has ``model=None``; its clusterers predict from
    the stored centers. Load the model with ``signatures.models.load_model(path / "model.keras")``
    when it is needed.

    Raises
    ------
    FileNotFoundError
        No folder at ``path``.
    ValueError
        The folder is not a complete experiment or is damaged; the message names the file.
    """
    path = Path(path)
    manifest = read_manifest(path)
    arrays = _read_arrays(path / ARRAYS)
    arrays.update(_read_activations(path, manifest))
    _check_arrays(arrays, manifest, path / ARRAYS)
    layers = manifest["layers"]
    clusterers = OrderedDict()
    train = arrays["split"] == 0
    try:
        for name in layers:
            clusterers[name] = LayerKMeans.from_dict(
                manifest["clustering"][name], arrays[f"centers/{name}"], arrays["paths"][train, layers.index(name)]
            )
        config = ExperimentConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path / MANIFEST} is damaged: its clustering state cannot be read "
                         f"({type(exc).__name__}: {exc})") from None
    return Experiment(
        config=config,
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
        logits=arrays.get("logits"),
        info=manifest.get("info", {}),
        uncertainty=({"entropy": arrays["mc/entropy"], "mutual_information": arrays["mc/mutual_information"],
                      "passes": int(manifest.get("mc_dropout", {}).get("passes", 0))}
                     if "mc/entropy" in arrays and "mc/mutual_information" in arrays else None),
    )


def scan_store(root):
    """The complete experiments under ``root`` and the damaged ones, never failing on one of them.

    Parameters
    ----------
    root : str or Path
        The store: a folder of experiment folders.

    Returns
    -------
    manifests : list of dict
        Manifests of the complete experiments, sorted by folder name, each with ``path``
        and ``name`` (the folder's name) added.
    damaged : list of (str, str)
        ``(folder name, what is wrong)`` for every other visible folder.

    Raises
    ------
    FileNotFoundError
        ``root`` does not exist. NotADirectoryError if it is a file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"the store folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"the store {str(root)!r} is a file, not a folder")
    clean_leftovers(root)
    manifests, damaged = [], []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            manifest = read_manifest(child)
        except (ValueError, OSError) as exc:
            damaged.append((child.name, str(exc)))
            continue
        manifest["path"] = str(child)
        manifest["name"] = child.name
        manifests.append(manifest)
    return manifests, damaged


def list_experiments(root):
    """Manifests of the complete experiments directly under ``root``, sorted by name.

    Temporary folders of unfinished runs and damaged experiments are left out (see
    :func:`scan_store` for those); a store that does not exist yet lists nothing.
    """
    try:
        return scan_store(root)[0]
    except (FileNotFoundError, NotADirectoryError):
        return []
