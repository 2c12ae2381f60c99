"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""


def verdict(ok):
    return "PASS" if ok else "MISS"


def table(title, header, rows):
    """Print a plain text table; ``rows`` are lists of already formatted cells."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    print("  ".join(str(c).ljust(w) for c, w in zip(header, widths)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(line, flush=True)


def say(msg):
    """A progress line with the time of day."""
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    """A TCP port free on loopback now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_kind(proc):
    """'kernel' (an ipykernel), 'dask' (a Dask worker or nanny) or 'other', from a psutil process's command line."""
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001  (psutil errors of a process that just ended)
        return "other"
    if "ipykernel" in cmd:
        return "kernel"
    if "distributed" in cmd or "dask" in cmd or "multiprocessing.spawn" in cmd or "multiprocessing.forkserver" in cmd:
        return "dask"
    return "other"


def tree_rss_mb(pid):
    """Resident memory (MiB) of process ``pid`` and all its descendants, by kind.

    Returns ``{"total", "root", "kernel", "dask", "other", "n_kernel", "n_dask"}``, or None when
    ``pid`` is gone. Shared pages count once per process (RSS), so the total overstates a little.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    out = {"total": 0.0, "root": 0.0, "kernel": 0.0, "dask": 0.0, "other": 0.0, "n_kernel": 0, "n_dask": 0}
    for p in procs:
        try:
            mb = p.memory_info().rss / 2**20
        except psutil.Error:
            continue
        kind = "root" if p.pid == pid else process_kind(p)
        out[kind] += mb
        out["total"] += mb
        if kind in ("kernel", "dask"):
            out[f"n_{kind}"] += 1
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def other_load(exclude=(), seconds=1.0):
    """The machine's load now: load averages, cores, free memory and the other processes using CPU.

    ``exclude``: pids not to count (the bench's own processes); a one-``seconds`` CPU sample.
    """
    import os
    import time

    import psutil

    me = {os.getpid()} | {c.pid for c in psutil.Process().children(recursive=True)} | set(exclude)
    procs = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.pid in me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(seconds)
    busy = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu >= 5.0:
            busy.append({"pid": p.pid, "cpu_percent": round(cpu, 1),
                         "cmd": " ".join(p.info["cmdline"] or [p.info["name"]])[:100]})
    busy.sort(key=lambda b: -b["cpu_percent"])
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count(),
            "available_gib": round(psutil.virtual_memory().available / 2**30, 1),
            "other_cpu_percent": round(sum(b["cpu_percent"] for b in busy), 1), "busy_processes": busy[:8]}
