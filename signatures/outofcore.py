"""Past one machine: extraction and clustering on a Dask cluster, over activation files on disk.

Activations larger than one machine's memory live in per-layer ``act-<j>.npy`` files
(:func:`signatures.experiment.activation_file`), written batch by batch and read back
memory-mapped. This module runs the same work on a ``dask.distributed`` cluster, so that no
process ever holds more than a few blocks of rows:

- :func:`activation_arrays` (and :func:`mapped_array` for one file): a ``dask.array`` per layer
  over its file, chunked by rows. Each chunk is read by its task through a memory map it opens
  itself; the graph holds only the file's path, shape and dtype, so nothing large is pickled.
- :func:`extract_on_cluster`: the forward pass as tasks on the workers. Each task loads the saved
  model (once per worker process), runs :func:`signatures.activations.extract` over its rows
  with the project's extractor and writes them into the ``act-<j>.npy`` files the client
  created. It returns what :func:`~signatures.activations.extract` returns with ``out=``.
- :class:`DaskKMeans`: k-means over a dask array. Centers start from k-means++ on a seeded
  sample of rows (refined on that sample by scikit-learn), then Lloyd iterations over every
  row: each block returns its per-cluster sums and counts, which a tree reduction adds up.
- :func:`cluster_layer` / :func:`cluster_layers`: the counterparts of
  :class:`signatures.clustering.LayerKMeans` and :func:`signatures.clustering.cluster_layers`.
  K is chosen exactly as ``LayerKMeans`` chooses it for a large layer (on the same seeded
  sample of rows), then :class:`DaskKMeans` refines the centers over every row. They return
  real, fitted ``LayerKMeans`` objects, which the store and :mod:`signatures.paths` accept.

Where the files must be
    Every worker opens the activation files (and the model, and ``X`` when it is given as an
    ``.npy`` file) by path. They must be on a store that every worker reads under the same
    absolute path: a local folder for a ``LocalCluster``, a shared file system (NFS, Lustre,
    CephFS, ...) for workers on several machines. A worker that cannot open a file says so.
    Workers write their rows with ``os.pwrite`` (byte ranges, not memory-mapped pages), so that
    two machines writing neighbouring rows of one file never write back each other's page.

Memory
    A task holds one chunk of rows (``chunk_bytes``, default 32 MiB) and float64 pieces of at
    most 16 MiB while it computes distances; the client holds the centers, the seeded sample
    the K choice is made on (at most ``max_fit_cells`` values, as ``LayerKMeans``) and the
    labels (8 bytes a row). ``bench/bench_outofcore.py`` measures a 70,000 x 6,272 layer on
    workers whose memory limit is below its size (``docs/performance-outofcore.md``).

Determinism
    The same seed gives the same sample, the same initial centers and the same sums, added in
    the same order (the reduction tree is fixed by the chunks, not by which worker ran what),
    hence the same centers and labels.

Which scheduler
    Computations go through ``client`` when one is given, else through dask's current scheduler:
    the default ``distributed.Client`` if one was made, else dask's local threads.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from itertools import islice
from pathlib import Path

import numpy as np

from .clustering import DEFAULT_K_RANGE, MAX_FIT_CELLS, LayerKMeans
from .experiment import activation_file

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "mapped_array",
    "activation_arrays",
    "extract_on_cluster",
    "DaskKMeans",
    "nearest_center",
    "cluster_layer",
    "cluster_layers",
]

#: Bytes of one chunk of rows of a mapped activation file (one task reads one chunk).
DEFAULT_CHUNK_BYTES = 32 << 20
#: A task computes distances on float64 pieces of at most this many values (16 MiB).
_PIECE_CELLS = 1 << 21
#: As ``signatures.activations.DTYPES`` and ``REDUCTIONS`` (not imported here: that module loads Keras).
_DTYPES = ("float32", "float16")
_REDUCTIONS = ("mean", "flatten")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positive(value, what, *, allow_none=False):
    if allow_none and value is None:
        return None
    if not _is_int(value) or value < 1:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{what} must be a whole number >= 1{extra}, got {value!r}")
    return int(value)


def _compute(client, *collections):
    """Compute dask collections through ``client``, else dask's current scheduler."""
    import dask

    if client is None:
        return dask.compute(*collections)
    return tuple(client.compute(list(collections), sync=True))


# ---------------------------------------------------------------------------------------
# Dask arrays over .npy files
# ---------------------------------------------------------------------------------------


def _npy_header(path):
    """``(shape, fortran_order, dtype, data offset)`` of the ``.npy`` file ``path``; ValueError if not one."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"unknown .npy format version {version}")
            shape, fortran, dtype = read[version](fh)
            return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype), fh.tell()
    except (ValueError, EOFError, KeyError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable .npy file ({exc}); write activations with "
                         "signatures.activations.extract(..., out=FOLDER) or numpy.save") from None


class _NpyRows:
    """The rows of one ``.npy`` file as an array-like that dask slices (``da.from_array``).

    It pickles as its path, shape, dtype and data offset. Each ``__getitem__`` (one task) maps
    the file read-only, copies the rows asked for and lets the map go, so the pages it read do
    not stay in the worker's memory.
    """

    def __init__(self, path, shape, dtype, offset, stamp):
        self.path = str(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        self.stamp = tuple(stamp)  # (mtime, size): a file written again is another array
        self.ndim = len(self.shape)

    def __dask_tokenize__(self):
        return ("signatures-npy-rows", self.path, self.shape, self.dtype.str, self.offset, self.stamp)

    def __getitem__(self, key):
        try:
            size = os.stat(self.path).st_size
        except OSError as exc:
            import socket

            raise ValueError(
                f"{self.path!r} cannot be read on {socket.gethostname()} ({exc.strerror}); activation files must "
                "be on a store every worker reads under the same path") from None
        if size != self.stamp[1]:
            raise ValueError(f"{self.path!r} changed since its dask array was made ({self.stamp[1]} bytes then, "
                             f"{size} now); make the array again")
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape, order="C")
        try:
            return np.array(mapped[key])
        finally:
            del mapped  # the map closes with its last reference: nothing read stays mapped


def mapped_array(path, *, rows_per_chunk=None, chunk_bytes=DEFAULT_CHUNK_BYTES):
    """A 2-D ``.npy`` file as a dask array chunked by rows, read memory-mapped inside each task.

    Parameters
    ----------
    path : str or Path
        A C-ordered 2-D ``.npy`` file of floats, on a store every worker reads (see the module notes).
    rows_per_chunk : int, optional
        Rows per chunk; default as many as fit in ``chunk_bytes``.
    chunk_bytes : int
        Bytes per chunk when ``rows_per_chunk`` is not given (at least one row).

    Returns
    -------
    dask.array.Array of shape (n_rows, n_units)
        Its dtype is the file's; one chunk along the units.

    Raises
    ------
    ValueError
        No such file, not a ``.npy`` file, not 2-D, Fortran-ordered, not floats, or a chunk size < 1.
    """
    import dask.array as da

    rows_per_chunk = _positive(rows_per_chunk, "rows_per_chunk", allow_none=True)
    chunk_bytes = _positive(chunk_bytes, "chunk_bytes")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no activation file {str(path)!r}")
    shape, fortran, dtype, offset = _npy_header(path)
    if len(shape) != 2:
        raise ValueError(f"{str(path)!r} holds an array of shape {shape}; activations must be 2-D "
                         "(n_samples, n_units)")
    if fortran:
        raise ValueError(f"{str(path)!r} is Fortran-ordered; rows must be contiguous (save it with "
                         "numpy.save(file, numpy.ascontiguousarray(values)))")
    if dtype.kind != "f":
        raise ValueError(f"{str(path)!r} holds {dtype} values; activations must be floats (float16, 32 or 64)")
    stat = path.stat()
    expected = offset + shape[0] * shape[1] * dtype.itemsize
    if stat.st_size != expected:
        raise ValueError(f"{str(path)!r} is {stat.st_size} bytes, its header says {expected}: a damaged or "
                         "unfinished file")
    rows = rows_per_chunk or max(1, chunk_bytes // max(1, shape[1] * dtype.itemsize))
    rows = min(rows, max(1, shape[0]))
    source = _NpyRows(path.resolve(), shape, dtype, offset, (stat.st_mtime_ns, stat.st_size))
    from dask.base import tokenize

    return da.from_array(source, chunks=(rows, shape[1]), name=f"npy-rows-{tokenize(source, rows)}",
                         lock=False, asarray=False, inline_array=True, meta=np.empty((0, shape[1]), dtype=dtype))


def activation_arrays(folder, layers, *, rows_per_chunk=None, chunk_bytes=DEFAULT_CHUNK_BYTES, n_rows=None):
    """Every layer's ``act-<j>.npy`` file in ``folder`` as a dask array chunked by rows.

    Parameters
    ----------
    folder : str or Path
        An experiment folder or the folder :func:`signatures.activations.extract` (``out=``) or
        :func:`extract_on_cluster` wrote; on a store every worker reads (see the module notes).
    layers : list of str
        Layer names in layer order: the ``j``-th is read from ``act-<j>.npy``.
    rows_per_chunk, chunk_bytes
        As for :func:`mapped_array`.
    n_rows : int, optional
        Rows every file must have (the inputs); by default they must only agree.

    Returns
    -------
    OrderedDict[str, dask.array.Array of shape (n_rows, n_units)]

    Raises
    ------
    ValueError
        ``layers`` is not a non-empty list of distinct names, a layer's file is missing or not a
        2-D float ``.npy`` file, or the files do not hold the same number of rows.
    """
    folder = Path(folder)
    if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers \
            or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must name each layer once, got {list(layers)}")
    if not folder.is_dir():
        raise ValueError(f"no activations folder {str(folder)!r}")
    n_rows = _positive(n_rows, "n_rows", allow_none=True)
    rows_per_chunk = _positive(rows_per_chunk, "rows_per_chunk", allow_none=True)
    chunk_bytes = _positive(chunk_bytes, "chunk_bytes")
    out = OrderedDict()
    for j, name in enumerate(layers):
        file = folder / activation_file(j)
        if not file.is_file():
            present = sorted(p.name for p in folder.glob("act-*.npy"))
            raise ValueError(f"layer {name!r} (layer {j}) has no activation file {str(file)!r}; the folder holds "
                             f"{present or 'no act-<j>.npy file'}")
        try:
            out[name] = mapped_array(file, rows_per_chunk=rows_per_chunk, chunk_bytes=chunk_bytes)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc}") from None
    counts = {name: a.shape[0] for name, a in out.items()}
    wanted = n_rows if n_rows is not None else next(iter(counts.values()))
    bad = {name: c for name, c in counts.items() if c != wanted}
    if bad:
        raise ValueError(f"every layer's file must hold {wanted} rows (one per input); {bad} differ")
    return out


# ---------------------------------------------------------------------------------------
# Extraction on the workers
# ---------------------------------------------------------------------------------------

#: Per worker process: the models loaded, by (path, mtime, size), and their extractors.
_WORKER_MODELS = OrderedDict()
_WORKER_LOCK = threading.Lock()
_KEEP_MODELS = 2


def _file_stamp(path):
    """Modification time (microseconds, which network file systems keep) and size of a file."""
    stat = os.stat(path)
    return int(stat.st_mtime_ns) // 1000, int(stat.st_size)


def _worker_extractor(model_path, stamp, layers, reduce):
    """The model at ``model_path`` and its extractor, loaded once per worker process."""
    try:
        from .app.jobs import _WARMING  # a WarmUp plugin still importing TensorFlow: wait for it

        with _WARMING:
            pass
    except ImportError:  # pragma: no cover  (the app layer is part of the package)
        pass
    import socket

    try:
        here = _file_stamp(model_path)
    except OSError as exc:
        raise ValueError(f"the model file {model_path!r} cannot be read on {socket.gethostname()} "
                         f"({exc.strerror}); it must be on a store every worker reads under the same path") from None
    if here != tuple(stamp):
        raise ValueError(f"the model file {model_path!r} on {socket.gethostname()} is not the client's "
                         f"(modified {here[0]}, {here[1]} bytes; the client's: {stamp[0]}, {stamp[1]}); "
                         "every worker must read the same file")
    with _WORKER_LOCK:
        key = (model_path, tuple(stamp))
        if key not in _WORKER_MODELS:
            from .models import load_model  # TensorFlow, once per worker process

            while len(_WORKER_MODELS) >= _KEEP_MODELS:
                _WORKER_MODELS.popitem(last=False)
            _WORKER_MODELS[key] = (load_model(model_path), {})
        _WORKER_MODELS.move_to_end(key)
        model, extractors = _WORKER_MODELS[key]
        wanted = (tuple(layers) if layers is not None else None, reduce)
        if wanted not in extractors:
            from .activations import build_extractor

            extractors[wanted] = build_extractor(model, layers=layers, reduce=reduce)
        return model, extractors[wanted]


def _describe(model_path, stamp, layers, reduce, first_row):
    """On a worker: the hidden layers' names and widths, the outputs, and a check of the input's shape."""
    from .models import fit_input

    model, (extractor, names) = _worker_extractor(model_path, stamp, layers, reduce)
    fit_input(model, first_row)
    outputs = extractor.outputs
    widths = [int(np.prod(t.shape[1:])) for t in outputs[:len(names)]]
    return {"names": list(names), "widths": widths, "n_outputs": int(outputs[len(names)].shape[-1]),
            "has_logits": len(outputs) > len(names) + 1}


def _pwrite_all(fd, data, offset):
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _extract_task(spec, start, stop, block):
    """On a worker: the forward pass over rows ``start:stop``, written into the layers' files.

    Returns the rows' output (and logits) for the client, as ``(start, output, logits or None)``.
    """
    from .activations import extract

    model, extractor = _worker_extractor(spec["model"], spec["stamp"], spec["layers"], spec["reduce"])
    if block is None:  # X is an .npy file on the shared store
        source = np.load(spec["source"], mmap_mode="r")
        block = np.array(source[start:stop])
        del source
    batch, dtype = spec["batch_size"], spec["dtype"]
    row_bytes = [w * np.dtype(dtype).itemsize for w in spec["widths"]]
    # Pieces of whole batches (the same batches as extract over all X) of at most ~64 MiB of activations.
    step = max(batch, ((64 << 20) // max(1, sum(row_bytes))) // batch * batch)
    outputs, logits = [], []
    fds = [os.open(path, os.O_RDWR) for path, _ in spec["files"]]
    try:
        for a in range(0, len(block), step):
            piece = block[a:a + step]
            try:
                hidden, probs, lg = extract(model, piece, extractor=extractor, batch_size=batch, logits=True,
                                            dtype=dtype)
            except ValueError as exc:
                raise ValueError(f"inputs {start + a}..{start + a + len(piece) - 1}: {exc}") from None
            for fd, (_, offset), width, values in zip(fds, spec["files"], row_bytes, hidden.values()):
                _pwrite_all(fd, np.ascontiguousarray(values, dtype=dtype), offset + (start + a) * width)
            outputs.append(probs)
            if lg is not None:
                logits.append(lg)
    finally:
        for fd in fds:
            os.close(fd)  # closing flushes the rows to the store (close-to-open on NFS)
    return start, np.concatenate(outputs), (np.concatenate(logits) if logits else None)


def extract_on_cluster(client, model, X, out, *, layers=None, reduce="mean", batch_size=512, rows_per_task=None,
                       dtype="float32", logits=False, progress=None, max_in_flight=None):
    """Every hidden layer's activations, computed by the workers and written to ``act-<j>.npy`` files.

    The client creates one file per layer in ``out`` (``numpy.lib.format.open_memmap``); each task
    loads the saved model on its worker (once per worker process, kept for later tasks), runs
    :func:`signatures.activations.extract` with the project's extractor over its rows, writes
    them into the files and hands back their output. The client never imports TensorFlow.

    Parameters
    ----------
    client : distributed.Client
    model : str or Path
        A saved ``.keras`` model (:func:`signatures.models.save_model`), on a store every worker
        reads (see the module notes).
    X : ndarray of shape (n_samples, ...) or str or Path
        The inputs as :func:`~signatures.activations.extract` takes them, or an ``.npy`` file of
        them on the shared store (each task then reads only its rows).
    out : str or Path
        Folder for the ``act-<j>.npy`` files (made if missing), on the shared store; a file
        there already is an error (it may be a stored experiment's).
    layers, reduce, batch_size, dtype, logits
        As for :func:`~signatures.activations.extract`.
    rows_per_task : int, optional
        Inputs per task, rounded up to a multiple of ``batch_size`` so that every forward batch
        holds the rows that :func:`~signatures.activations.extract` would batch together;
        default ``8 * batch_size``.
    progress : callable, optional
        ``progress("extraction", fraction, message)`` as tasks finish.
    max_in_flight : int, optional
        Tasks queued at once (the rows of an in-memory ``X`` are sent as their task is queued);
        default twice the workers' threads.

    Returns
    -------
    hidden : OrderedDict[str, numpy.memmap of shape (n_samples, n_units)]
        Read-only, in ``dtype``, in layer order; the ``j``-th is ``out/act-<j>.npy``.
    output : ndarray of shape (n_samples, n_classes)
    logits : ndarray of shape (n_samples, n_classes) or None
        Only with ``logits=True``, as :func:`~signatures.activations.extract`.

    Raises
    ------
    ValueError
        A bad option, an unreadable model, inputs that do not fit the model, NaN or infinite
        activations (the message names the inputs); the files made so far are removed.
    FileExistsError
        ``out`` already holds an ``act-<j>.npy`` file.
    """
    from distributed import as_completed

    if isinstance(batch_size, bool) or not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    rows_per_task = _positive(rows_per_task, "rows_per_task", allow_none=True) or 8 * batch_size
    rows_per_task = -(-rows_per_task // batch_size) * batch_size
    max_in_flight = _positive(max_in_flight, "max_in_flight", allow_none=True)
    if dtype not in _DTYPES:
        raise ValueError(f"activations dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {list(_REDUCTIONS)}, got {reduce!r}")
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be the path of a saved .keras model (signatures.models.save_model), got "
                         f"{type(model).__name__}")
    model_path = Path(model).resolve()
    if not model_path.is_file() or model_path.suffix != ".keras":
        raise ValueError(f"model must be an existing .keras file, got {str(model)!r}")
    model_path = str(model_path)
    source = None
    if isinstance(X, (str, os.PathLike)):
        source = str(Path(X).resolve())
        if not Path(source).is_file():
            raise ValueError(f"no input file {str(X)!r}")
        shape, fortran, x_dtype, _ = _npy_header(source)
        if len(shape) < 2 or fortran or x_dtype.kind not in "biuf":
            raise ValueError(f"{str(X)!r} must hold a C-ordered numeric array of shape (n_samples, ...), got "
                             f"{shape} of {x_dtype}{' (Fortran order)' if fortran else ''}")
        n = shape[0]
        first = np.array(np.load(source, mmap_mode="r")[:1])
    else:
        X = np.asarray(X)
        if X.dtype.kind not in "biuf" or X.ndim < 2:
            raise ValueError(f"X must be numbers with one row per input, shape (n_samples, ...); got an array of "
                             f"shape {X.shape} and dtype {X.dtype}")
        n, first = len(X), X[:1]
    if n == 0:
        raise ValueError("X holds no inputs")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _file_stamp(model_path)
    report = progress or (lambda *a: None)
    layers = None if layers is None else list(layers)

    described = client.submit(_describe, model_path, stamp, layers, reduce, first, pure=False)
    info = described.result()
    files = [out / activation_file(j) for j in range(len(info["names"]))]
    taken = [str(f) for f in files if f.exists()]
    if taken:
        raise FileExistsError(f"{taken[0]!r} exists already; give extract_on_cluster an empty folder as out")
    made = []
    try:
        for file, width in zip(files, info["widths"]):
            np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=(n, width)).flush()
            made.append(file)
        spec = {"model": model_path, "stamp": stamp, "layers": layers, "reduce": reduce,
                "batch_size": batch_size, "dtype": dtype, "widths": info["widths"], "source": source,
                "files": [(str(f), _npy_header(f)[3]) for f in files]}
        starts = list(range(0, n, rows_per_task))
        window = max_in_flight or max(2, 2 * sum(client.nthreads().values()))
        output = np.empty((n, info["n_outputs"]), dtype=np.float32)
        kept_logits = np.empty((n, info["n_outputs"]), dtype=np.float32) if info["has_logits"] else None

        submitted = []

        def submit(start):
            stop = min(n, start + rows_per_task)
            block = None if source is not None else client.scatter(np.ascontiguousarray(X[start:stop]), hash=False)
            submitted.append(client.submit(_extract_task, spec, start, stop, block, pure=False, retries=0))
            return submitted[-1]

        pending = iter(starts)
        running = as_completed([submit(s) for s in islice(pending, window)], loop=client.loop)
        done_rows = 0
        try:
            for future in running:
                start, probs, lg = future.result()
                output[start:start + len(probs)] = probs
                if kept_logits is not None and lg is not None:
                    kept_logits[start:start + len(lg)] = lg
                done_rows += len(probs)
                report("extraction", done_rows / n, f"{done_rows:,} of {n:,} inputs extracted on the cluster")
                following = next(pending, None)
                if following is not None:
                    running.add(submit(following))
        except BaseException:
            client.cancel(submitted)
            raise
    except BaseException:
        for file in made:
            file.unlink(missing_ok=True)
        raise
    hidden = OrderedDict((name, np.load(file, mmap_mode="r")) for name, file in zip(info["names"], files))
    if not logits:
        return hidden, output
    return hidden, output, kept_logits


# ---------------------------------------------------------------------------------------
# k-means over a dask array
# ---------------------------------------------------------------------------------------


def _nearest(piece, centers, center_norms):
    """Nearest center (int64) and squared distance to it (float64) of every row of a float64 piece."""
    d = np.einsum("ij,ij->i", piece, piece)[:, None] - 2.0 * (piece @ centers.T) + center_norms[None, :]
    labels = np.argmin(d, axis=1)
    return labels, np.maximum(d[np.arange(len(piece)), labels], 0.0)


def _pieces(block):
    step = max(1, _PIECE_CELLS // max(1, block.shape[1]))
    for a in range(0, len(block), step):
        yield np.asarray(block[a:a + step], dtype=np.float64)


def _lloyd_block(block, centers, first=False):
    """One block's share of a Lloyd step, as one row of float64 (see :func:`_unpack`).

    Per cluster the sum and count of the block's rows nearest to it and their squared distances
    added up; on the ``first`` pass also per column the sum and sum of squares (for the
    tolerance) and the number of rows holding NaN or infinite values (left out of the rest).
    """
    k, d = centers.shape
    out = np.zeros((1, k * d + k + 2 + 2 * d))
    sums, counts = out[0, :k * d].reshape(k, d), out[0, k * d:k * d + k]
    colsum, colsq = out[0, k * d + k + 2:k * d + k + 2 + d], out[0, k * d + k + 2 + d:]
    norms = np.einsum("ij,ij->i", centers, centers)
    for piece in _pieces(block):
        if first:
            finite = np.isfinite(piece).all(axis=1)
            if not finite.all():
                out[0, k * d + k + 1] += float((~finite).sum())
                piece = piece[finite]
            colsum += piece.sum(axis=0)
            colsq += np.einsum("ij,ij->j", piece, piece)
        labels, dist = _nearest(piece, centers, norms)
        counts += np.bincount(labels, minlength=k)
        for c in np.unique(labels):
            sums[c] += piece[labels == c].sum(axis=0)
        out[0, k * d + k] += dist.sum()
    return out


def _unpack(total, k, d):
    sums = total[:k * d].reshape(k, d)
    counts = total[k * d:k * d + k]
    inertia, bad = total[k * d + k], total[k * d + k + 1]
    colsum, colsq = total[k * d + k + 2:k * d + k + 2 + d], total[k * d + k + 2 + d:]
    return sums, counts, float(inertia), int(bad), colsum, colsq


def _assign_block(block, centers):
    """Nearest center and squared distance of every row of a block, shape (n_rows, 2) float64."""
    norms = np.einsum("ij,ij->i", centers, centers)
    out = np.empty((len(block), 2))
    at = 0
    for piece in _pieces(block):
        if not np.isfinite(piece).all():
            bad = int((~np.isfinite(piece).all(axis=1)).sum())
            raise ValueError(f"{bad} rows hold NaN or infinite values; they cannot be assigned to a cluster")
        labels, dist = _nearest(piece, centers, norms)
        out[at:at + len(piece), 0], out[at:at + len(piece), 1] = labels, dist
        at += len(piece)
    return out


def _as_dask(X, what="X"):
    """``X`` as a 2-D dask array of numbers with one chunk along the columns."""
    import dask.array as da

    if isinstance(X, np.memmap):
        raise ValueError(f"{what} is a numpy.memmap, whose data every task would carry; give a dask array over "
                         "its file instead: signatures.outofcore.mapped_array(path)")
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        if X.ndim == 2:
            X = da.from_array(X, chunks=(max(1, DEFAULT_CHUNK_BYTES // max(1, X.shape[1] * X.itemsize)), -1))
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers (activations), got dtype {X.dtype}")
    if any(np.isnan(s) for s in X.shape):
        raise ValueError(f"{what} has an unknown number of rows; call X.compute_chunk_sizes() first")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{what} must hold at least one row and one column, got shape {X.shape}")
    if X.numblocks[1] != 1:
        X = X.rechunk({1: -1})
    return X


def _centers_delayed(centers):
    import dask
    from dask.base import tokenize

    return dask.delayed(centers, name=f"kmeans-centers-{tokenize(centers)}", pure=True)


def _take_rows(X, rows, client):
    """Rows ``rows`` (sorted) of ``X`` on the client as float64, read chunk by chunk: a task selects
    its chunk's rows, and only the client puts them together (no worker holds the whole sample)."""
    if len(rows) == X.shape[0]:
        parts = [X.blocks[i] for i in range(X.numblocks[0])]
    else:
        bounds = np.cumsum((0,) + tuple(X.chunks[0]))
        parts = []
        for i in range(X.numblocks[0]):
            lo, hi = np.searchsorted(rows, [bounds[i], bounds[i + 1]])
            if hi > lo:
                parts.append(X.blocks[i][rows[lo:hi] - bounds[i]])
    return np.concatenate([np.asarray(v, dtype=np.float64) for v in _compute(client, *parts)])


def _sample_rows(n, size, random_state):
    """The seeded sample of rows :class:`~signatures.clustering.LayerKMeans` fits a large layer on."""
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=size, replace=False))


def nearest_center(X, centers):
    """The nearest of ``centers`` for every row of ``X``, lazily, a block of rows per task.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
    centers : ndarray of shape (n_clusters, n_features)
        E.g. a fitted :class:`~signatures.clustering.LayerKMeans`' ``centers_``.

    Returns
    -------
    dask.array.Array of shape (n_samples,), int64
        As ``LayerKMeans.predict`` gives (the same float64 distances); ``.compute()`` it.
    """
    X = _as_dask(X)
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or centers.shape[1] != X.shape[1] or len(centers) == 0:
        raise ValueError(f"centers must have shape (n_clusters, {X.shape[1]}) for X's {X.shape[1]} features, got "
                         f"{centers.shape}")
    both = X.map_blocks(_assign_block, centers=_centers_delayed(centers), chunks=(X.chunks[0], (2,)),
                        dtype=np.float64, meta=np.empty((0, 2)))
    return both[:, 0].astype(np.int64)


class DaskKMeans:
    """k-means over a dask array of rows: k-means++ on a seeded sample, then Lloyd over every row.

    Parameters
    ----------
    n_clusters : int, default 8
    init : "k-means++" or ndarray of shape (n_clusters, n_features), default "k-means++"
        ``"k-means++"``: scikit-learn's k-means (k-means++ seeding, ``n_init`` restarts) on a
        seeded sample of ``init_sample`` rows gives the starting centers. An array: those centers.
    n_init : int, default 4
        Restarts on the sample (the one of least inertia there starts the Lloyd iterations).
    init_sample : int, default 10000
        Rows of the sample (all rows if fewer), at most ``max_sample_cells // n_features`` of them.
    max_sample_cells : int, default :data:`signatures.clustering.MAX_FIT_CELLS`
        Caps the sample (it is held on the client as float64).
    max_iter : int, default 100
        Lloyd iterations over every row (each is one pass over the data).
    tol : float, default 1e-4
        Stop when the centers move less than this, as scikit-learn measures it: the summed
        squared shift of the centers against ``tol`` times the mean variance of the columns.
    random_state : int, default 0
    split_every : int, default 8
        Fan-in of the tree reduction of the blocks' sums.
    client : distributed.Client, optional
        Where to compute; default dask's current scheduler (see the module notes).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), float64
    labels_ : ndarray of shape (n_samples,), int64
        Held on the client (8 bytes a row); :meth:`predict` assigns rows lazily instead.
    inertia_ : float
        Sum of squared distances of the rows to their nearest final center.
    n_iter_ : int
        Lloyd iterations run over every row.
    converged_ : bool
        False when ``max_iter`` stopped the iterations.
    init_rows_ : int
        Rows of the initialisation sample (0 when ``init`` was given).

    Notes
    -----
    A cluster left without rows in an iteration is moved to the sample row farthest from its
    nearest center (scikit-learn moves it to a far row of all the data). Every iteration and
    the final assignment read the data once more: nothing is persisted on the workers.
    """

    def __init__(self, n_clusters=8, *, init="k-means++", n_init=4, init_sample=10_000,
                 max_sample_cells=MAX_FIT_CELLS, max_iter=100, tol=1e-4, random_state=0, split_every=8, client=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.init_sample = init_sample
        self.max_sample_cells = max_sample_cells
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.split_every = split_every
        self.client = client

    def __repr__(self):
        return f"DaskKMeans(n_clusters={self.n_clusters!r}, random_state={self.random_state!r})"

    def _check(self, X):
        k = _positive(self.n_clusters, "n_clusters")
        _positive(self.n_init, "n_init")
        _positive(self.init_sample, "init_sample")
        _positive(self.max_sample_cells, "max_sample_cells")
        _positive(self.max_iter, "max_iter")
        _positive(self.split_every, "split_every")
        if not _is_int(self.random_state) or self.random_state < 0:
            raise ValueError(f"random_state must be a whole number >= 0, got {self.random_state!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.floating)) or not self.tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if X.shape[0] < k:
            raise ValueError(f"n_clusters = {k} but X has only {X.shape[0]} rows; choose n_clusters <= {X.shape[0]}")
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise ValueError(f"init must be 'k-means++' or an array of centers, got {self.init!r}")
            return None
        centers = np.asarray(self.init, dtype=np.float64)
        if centers.shape != (k, X.shape[1]) or not np.isfinite(centers).all():
            raise ValueError(f"init centers must be finite, of shape (n_clusters, n_features) = ({k}, {X.shape[1]}), "
                             f"got shape {centers.shape}")
        return centers.copy()

    def _sample(self, X):
        """The seeded sample of rows (float64), drawn once per fit."""
        if self._sample_values is None:
            n, d = X.shape
            size = min(n, int(self.init_sample), max(int(self.n_clusters), int(self.max_sample_cells) // d))
            values = _take_rows(X, _sample_rows(n, size, self.random_state), self.client)
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values).all(axis=1)).sum())
                raise ValueError(f"X has NaN or infinite values (in {bad} of {size} sampled rows); cannot cluster")
            self._sample_values = values
        return self._sample_values

    def _relocate(self, X, centers, counts):
        """Centers of empty clusters moved to the sample rows farthest from their nearest center."""
        empty = np.flatnonzero(counts == 0)
        if not len(empty):
            return centers
        sample = self._sample(X)
        keep = np.flatnonzero(counts > 0)
        _, dist = _nearest(sample, centers[keep], np.einsum("ij,ij->i", centers[keep], centers[keep]))
        far = np.argsort(-dist, kind="stable")[:len(empty)]
        centers = centers.copy()
        centers[empty[:len(far)]] = sample[far]
        return centers

    def fit(self, X, y=None, *, progress=None):
        """Fit the centers on every row of ``X``.

        Parameters
        ----------
        X : dask.array.Array of shape (n_samples, n_features)
            E.g. from :func:`activation_arrays`; a small in-memory ndarray is wrapped in one (a
            ``numpy.memmap`` is refused: use :func:`mapped_array`).
        y : ignored
        progress : callable, optional
            ``progress("clustering", fraction, message)`` after each iteration.

        Returns
        -------
        self
        """
        X = _as_dask(X)
        centers = self._check(X)
        self._sample_values = None
        try:
            return self._fit(X, centers, progress or (lambda *a: None))
        finally:
            del self._sample_values

    def _fit(self, X, centers, report):
        n, d = X.shape
        k = int(self.n_clusters)
        self.init_rows_ = 0
        if centers is None:
            from .clustering import _kmeans, _quiet_fit

            sample = self._sample(X)
            if len(np.unique(sample, axis=0)) < k:
                raise ValueError(f"the sample of {len(sample)} rows has fewer than n_clusters = {k} distinct rows; "
                                 "choose fewer clusters or a larger init_sample")
            with _quiet_fit(1):
                centers = _kmeans(k, int(self.n_init), int(self.random_state)).fit(sample).cluster_centers_
            centers = np.asarray(centers, dtype=np.float64)
            self.init_rows_ = len(sample)
        threshold, converged, it = None, False, 0
        for it in range(1, int(self.max_iter) + 1):
            step = X.map_blocks(_lloyd_block, centers=_centers_delayed(centers), first=it == 1,
                                chunks=((1,) * X.numblocks[0], (k * d + k + 2 + 2 * d,)),
                                dtype=np.float64, meta=np.empty((0, 0)))
            (total,) = _compute(self.client, step.sum(axis=0, split_every=int(self.split_every)))
            sums, counts, _, bad, colsum, colsq = _unpack(np.asarray(total), k, d)
            if bad:
                raise ValueError(f"X has NaN or infinite values in {bad} of {n} rows; cannot cluster")
            if threshold is None:
                mean = colsum / n
                threshold = float(self.tol) * float(np.mean(np.maximum(colsq / n - mean * mean, 0.0)))
            new = centers.copy()
            filled = counts > 0
            new[filled] = sums[filled] / counts[filled, None]
            new = self._relocate(X, new, counts)
            shift = float(((new - centers) ** 2).sum())
            centers = new
            report("clustering", it / int(self.max_iter), f"k-means iteration {it}: centers moved {shift:.3g}")
            if shift <= threshold:
                converged = True
                break
        assigned = X.map_blocks(_assign_block, centers=_centers_delayed(centers), chunks=(X.chunks[0], (2,)),
                                dtype=np.float64, meta=np.empty((0, 2)))
        labels, inertia = _compute(self.client, assigned[:, 0].astype(np.int64), assigned[:, 1].sum())
        self.cluster_centers_ = centers
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(it)
        self.converged_ = bool(converged)
        self.n_features_in_ = int(d)
        return self

    def predict(self, X):
        """The nearest fitted center of every row of ``X``, as a lazy dask array of int64 (n_samples,)."""
        if not hasattr(self, "cluster_centers_"):
            raise ValueError("this DaskKMeans is not fitted yet; call fit(X) first")
        return nearest_center(X, self.cluster_centers_)

    def fit_predict(self, X, y=None):
        """:meth:`fit`, then ``labels_``."""
        return self.fit(X).labels_


# ---------------------------------------------------------------------------------------
# A layer's clustering, as LayerKMeans gives it
# ---------------------------------------------------------------------------------------


def cluster_layer(X, y=None, *, k_range=DEFAULT_K_RANGE, sample_size=2000, n_init=4, random_state=0, n_threads=1,
                  criterion="silhouette", k=None, max_fit_cells=MAX_FIT_CELLS, max_iter=100, tol=1e-4, client=None,
                  progress=None):
    """One layer's clustering on a Dask cluster, returned as a fitted :class:`LayerKMeans`.

    1. A seeded sample of ``min(n, max(sample_size, max_fit_cells // n_units))`` rows is drawn
       with the generator and formula ``LayerKMeans.fit`` uses for a large layer, and computed
       to the client (all rows when they fit in ``max_fit_cells``).
    2. ``LayerKMeans(...).fit(sample, y[sample])`` on it: K, the silhouette (or other criterion)
       curve, ``status_`` and ``note_`` are exactly those of the single-machine fit of a large
       layer (the criterion's own rules, constant layers and few distinct rows included).
    3. When ``status_`` is ``"ok"`` and K >= 2, :class:`DaskKMeans` starts from those centers
       and iterates over every row; its centers and labels replace the sample's.
       Otherwise every row is assigned to the sample's centers (:func:`nearest_center`).

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_units)
        E.g. ``activation_arrays(folder, layers)[name][:n_train]``.
    y : ndarray of shape (n_samples,), optional
        The class of every row, for the ``"classes"`` and ``"faithfulness"`` criteria.
    k_range, sample_size, n_init, random_state, n_threads, criterion, k, max_fit_cells
        As for :class:`LayerKMeans` (``n_threads`` is the client's, for the sample).
    max_iter, tol
        As for :class:`DaskKMeans`.
    client : distributed.Client, optional
    progress : callable, optional
        Handed to :meth:`DaskKMeans.fit`.

    Returns
    -------
    LayerKMeans
        Fitted, with ``labels_`` of every row (ndarray, int64), ``centers_``, ``k_``,
        ``silhouette_scores_``, ``criterion_``, ``criterion_scores_``, ``status_``, ``fitted_rows_``
        (every row when the centers were refined on them, else the sample's), ``note_`` (which
        says it ran on a Dask cluster), and ``n_iter_`` and ``inertia_`` of the refinement. Its
        parameters are those given; ``to_dict`` / ``from_dict`` store and restore it as any.
    """
    X = _as_dask(X)
    n, d = X.shape
    if max_fit_cells is None or not _is_int(max_fit_cells) or max_fit_cells < 1:
        raise ValueError(f"max_fit_cells must be a whole number >= 1 (the sample held on the client), got "
                         f"{max_fit_cells!r}")
    if y is not None:
        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"y must give one class per row: {len(y)} for {n} rows")
    n_fit = min(n, max(int(sample_size or 2), int(max_fit_cells) // d))
    rows = _sample_rows(n, n_fit, random_state)
    sample = _take_rows(X, rows, client)
    est = LayerKMeans(k_range=k_range, sample_size=sample_size, n_init=n_init, random_state=random_state,
                      n_threads=n_threads, criterion=criterion, k=k, max_fit_cells=None)
    est.fit(sample, None if y is None else y[rows])  # all the sample's rows: what LayerKMeans fits a large layer on
    est.set_params(max_fit_cells=max_fit_cells)
    said = (f"K chosen on a random sample of {n_fit:,} of the {n:,} rows ({d:,} units each)" if n_fit < n
            else f"K chosen on all {n:,} rows")
    if est.status_ == "ok" and est.k_ >= 2:
        km = DaskKMeans(est.k_, init=est.centers_, max_iter=max_iter, tol=tol, random_state=random_state,
                        client=client).fit(X, progress=progress)
        est.centers_, est.labels_ = km.cluster_centers_, km.labels_
        est.n_iter_, est.inertia_, est.fitted_rows_ = km.n_iter_, km.inertia_, int(n)
        ended = "converged" if km.converged_ else f"stopped at max_iter = {max_iter}"
        said += (f"; k-means then refined over all {n:,} rows on a Dask cluster "
                 f"({km.n_iter_} Lloyd iterations, {ended})")
    else:
        (labels,) = _compute(client, nearest_center(X, est.centers_))
        est.labels_ = np.asarray(labels, dtype=np.int64)
        est.fitted_rows_ = int(n_fit)
        said += "; every row assigned to its nearest center on a Dask cluster"
    est.note_ = f"{est.note_}; {said}" if est.note_ else said
    return est


def cluster_layers(hidden, *, k_range=DEFAULT_K_RANGE, sample_size=2000, n_init=4, random_state=0, progress=None,
                   criterion="silhouette", k=None, y=None, max_fit_cells=MAX_FIT_CELLS, max_iter=100, tol=1e-4,
                   client=None):
    """:func:`cluster_layer` for every layer: :func:`signatures.clustering.cluster_layers` on a Dask cluster.

    Parameters
    ----------
    hidden : dict[str, dask.array.Array of shape (n_samples, n_units)]
        In layer order, e.g. from :func:`activation_arrays`.
    k_range, sample_size, n_init, random_state, criterion, k, y, progress
        As for :func:`signatures.clustering.cluster_layers`.
    max_fit_cells, max_iter, tol, client
        As for :func:`cluster_layer`.

    Returns
    -------
    OrderedDict[str, LayerKMeans]
    """
    from .clustering import each_layer

    return each_layer(hidden, lambda X: cluster_layer(
        X, y, k_range=k_range, sample_size=sample_size, n_init=n_init, random_state=random_state, criterion=criterion,
        k=k, max_fit_cells=max_fit_cells, max_iter=max_iter, tol=tol, client=client), progress=progress)
