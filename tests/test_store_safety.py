"""Nothing stored is ever lost or half-written: overwrite rules, kill points, races, damage, full disks."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from signatures import store
from signatures.store import (
    StoreError,
    check_name,
    check_output,
    list_experiments,
    load_experiment,
    read_manifest,
    save_experiment,
    scan_store,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(small_experiment, tmp_path_factory):
    """A stored copy of the small experiment that subprocesses load without TensorFlow."""
    root = tmp_path_factory.mktemp("source")
    return save_experiment(small_experiment, root / "src", save_model=False)


def _accuracy(path):
    return read_manifest(path)["metrics"]["accuracy"]


def _visible(root):
    return sorted(p.name for p in Path(root).iterdir() if not p.name.startswith("."))


def _hidden(root):
    return sorted(p.name for p in Path(root).iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------
# Overwrite replaces only an experiment
# ---------------------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_an_experiment(small_experiment, tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "notes").write_text("x")
    with pytest.raises(ValueError, match=r"'.*d' is not a complete experiment .*notes, sub"):
        save_experiment(small_experiment, d, overwrite=True, save_model=False)
    assert (d / "notes").read_text() == "x" and (d / "sub").is_dir()
    assert _hidden(tmp_path) == []


def test_overwrite_refuses_a_whole_store(small_experiment, tmp_path):
    runs = tmp_path / "runs"
    save_experiment(small_experiment, runs / "a", save_model=False)
    save_experiment(small_experiment, runs / "b", save_model=False)
    with pytest.raises(ValueError, match="not a complete experiment"):
        save_experiment(small_experiment, runs, overwrite=True, save_model=False)
    assert [m["name"] for m in list_experiments(runs)] == ["a", "b"]


def test_overwrite_refuses_an_experiment_with_foreign_files(small_experiment, tmp_path):
    path = save_experiment(small_experiment, tmp_path / "e", save_model=False)
    (path / "my-notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="my-notes.txt"):
        check_output(path, overwrite=True)
    assert (path / "my-notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("bad", ["file", "empty"])
def test_overwrite_refuses_a_file_or_an_empty_folder(small_experiment, tmp_path, bad):
    target = tmp_path / "t"
    if bad == "file":
        target.write_text("a file")
    else:
        target.mkdir()
    with pytest.raises(ValueError, match="not a complete experiment"):
        save_experiment(small_experiment, target, overwrite=True, save_model=False)
    assert target.exists()


def test_without_overwrite_an_existing_folder_is_left_alone(small_experiment, tmp_path):
    path = save_experiment(small_experiment, tmp_path / "e", save_model=False)
    before = (path / "arrays.npz").read_bytes()
    with pytest.raises(FileExistsError, match="exists already"):
        save_experiment(small_experiment, path, save_model=False)
    assert (path / "arrays.npz").read_bytes() == before


def test_names_are_matched_whole():
    for name in ("abc\n", "abc\r", "a\nb", "abc "):
        with pytest.raises(ValueError, match="not allowed"):
            check_name(name)
    assert check_name("abc") == "abc"


# ---------------------------------------------------------------------------------------
# Kill points, in a subprocess killed with SIGKILL
# ---------------------------------------------------------------------------------------

_KILL = textwrap.dedent("""
    import os, sys
    import numpy as np
    from signatures import store
    src, target, step, overwrite, exchange = sys.argv[1:6]
    exp = store.load_experiment(src)
    exp.metrics["accuracy"] = 0.125  # tells the new experiment from the old one
    if exchange == "no":
        store._renameat2 = lambda a, b, flags: False
    if step == "during arrays":
        real = np.savez
        def half(fh, **arrays):
            fh.write(b"PK" + b"x" * 5000)
            fh.flush()
            os.kill(os.getpid(), 9)
        store.np.savez = half
    else:
        store._checkpoint = lambda s: os.kill(os.getpid(), 9) if s == step else None
    store.save_experiment(exp, target, overwrite=overwrite == "yes", save_model=False)
    print("saved")
""")

_STEPS_NEW = ["folder made", "during arrays", "arrays written", "model written", "manifest written", "renamed", None]
_STEPS_OVERWRITE = ["folder made", "during arrays", "arrays written", "manifest written", "exchanged", None]


def _kill_at(src, target, step, *, overwrite, exchange=True):
    return subprocess.run(
        [sys.executable, "-c", _KILL, str(src), str(target), str(step), "yes" if overwrite else "no",
         "yes" if exchange else "no"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


@pytest.mark.parametrize("step", _STEPS_NEW)
def test_a_killed_new_save_leaves_nothing_or_the_whole_experiment(source, tmp_path, step):
    root = tmp_path / "store"
    root.mkdir()
    result = _kill_at(source, root / "new", step, overwrite=False)
    assert (result.returncode == -9) == (step is not None), result.stderr
    done = step in ("renamed", None)
    assert _visible(root) == (["new"] if done else [])
    if done:
        assert _accuracy(root / "new") == 0.125
        assert len(load_experiment(root / "new").labels) == len(load_experiment(source).labels)
    # The next listing removes what the dead process left.
    assert [m["name"] for m in list_experiments(root)] == (["new"] if done else [])
    assert _hidden(root) == []


@pytest.mark.parametrize("step,exchange", [(s, True) for s in _STEPS_OVERWRITE]
                         + [(s, False) for s in _STEPS_OVERWRITE + ["old moved aside"]])
def test_a_killed_overwrite_shows_the_old_or_the_new_experiment(source, tmp_path, step, exchange):
    root = tmp_path / "store"
    root.mkdir()
    shutil.copytree(source, root / "e")
    old = _accuracy(root / "e")
    result = _kill_at(source, root / "e", step, overwrite=True, exchange=exchange)
    assert (result.returncode == -9) == (step is not None), result.stderr
    done = step in ("exchanged", None)
    # Reading by name always finds a complete experiment: the new one once exchanged, else the old one.
    assert _accuracy(root / "e") == (0.125 if done else old)
    load_experiment(root / "e")
    assert [m["name"] for m in list_experiments(root)] == ["e"]
    assert _hidden(root) == []


def test_leftovers_of_a_live_process_are_kept(tmp_path):
    mine = tmp_path / f".x.tmp-{store._HOST}-{os.getpid()}-abc"
    dead = tmp_path / f".x.tmp-{store._HOST}-999999999-abc"
    other_host = tmp_path / ".x.tmp-elsewhere-1-abc"
    for d in (mine, dead, other_host):
        d.mkdir()
    removed = store.clean_leftovers(tmp_path)
    assert removed == [f"removed {dead.name}"]
    assert mine.exists() and other_host.exists() and not dead.exists()


# ---------------------------------------------------------------------------------------
# Two saves racing for one name
# ---------------------------------------------------------------------------------------

_RACE = textwrap.dedent("""
    import sys, time
    from signatures import store
    src, root, tag, start, n = sys.argv[1:6]
    exp = store.load_experiment(src)
    exp.metrics["accuracy"] = float(tag)
    while time.time() < float(start):
        time.sleep(0.001)
    for i in range(int(n)):
        try:
            store.save_experiment(exp, f"{root}/e{i}", save_model=False)
            print(f"e{i} saved")
        except FileExistsError as exc:
            assert "exists already" in str(exc), exc
            print(f"e{i} exists")
""")


def test_of_two_concurrent_saves_exactly_one_wins(source, tmp_path):
    n = 20
    start = time.time() + 8  # both processes have imported and loaded by then
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACE, str(source), str(tmp_path), tag, str(start), str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for tag in ("0.25", "0.75")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    said = [dict(line.split() for line in out.splitlines()) for out, _ in outs]
    for i in range(n):
        name = f"e{i}"
        assert sorted((said[0][name], said[1][name])) == ["exists", "saved"], name
        winner = 0.25 if said[0][name] == "saved" else 0.75
        assert _accuracy(tmp_path / name) == winner
    assert _hidden(tmp_path) == []


# ---------------------------------------------------------------------------------------
# Damaged experiments never break the rest of the store
# ---------------------------------------------------------------------------------------


def _damage_manifest(path, change):
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    file.write_text(json.dumps(change(manifest)))


_MANIFEST_DAMAGE = {
    "list": lambda m: [],
    "no config": lambda m: {k: v for k, v in m.items() if k != "config"},
    "files empty list": lambda m: {**m, "files": []},
    "accuracy text": lambda m: {**m, "metrics": {**m["metrics"], "accuracy": "0.99"}},
    "accuracy above one": lambda m: {**m, "metrics": {**m["metrics"], "accuracy": 7}},
    "layers not a list": lambda m: {**m, "layers": "hidden_1"},
    "layer without clustering": lambda m: {**m, "clustering": {}},
    "digits text": lambda m: {**m, "config": {**m["config"], "digits": "1 7"}},
    "unknown config key": lambda m: {**m, "config": {**m["config"], "colour": "red"}},
    "n_rows negative": lambda m: {**m, "n_rows": -1},
    "class names numbers": lambda m: {**m, "class_names": [1, 2]},
    "format 99": lambda m: {**m, "format": 99},
    "not complete": lambda m: {**m, "complete": False},
}


@pytest.mark.parametrize("damage", sorted(_MANIFEST_DAMAGE))
def test_a_damaged_manifest_is_reported_by_name_and_the_rest_listed(source, tmp_path, damage):
    for name in ("a", "b", "c"):
        shutil.copytree(source, tmp_path / name)
    _damage_manifest(tmp_path / "b", _MANIFEST_DAMAGE[damage])
    good, damaged = scan_store(tmp_path)
    assert [m["name"] for m in good] == ["a", "c"]
    assert [name for name, _ in damaged] == ["b"]
    assert "manifest" in damaged[0][1] or "complete experiment" in damaged[0][1] or "format" in damaged[0][1]
    with pytest.raises(ValueError):
        load_experiment(tmp_path / "b")


def test_a_manifest_that_is_not_json_is_reported(source, tmp_path):
    shutil.copytree(source, tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text('{"format": 1, "compl')
    good, damaged = scan_store(tmp_path)
    assert good == [] and damaged[0][0] == "b" and "manifest.json is damaged" in damaged[0][1]


def _rewrite_arrays(path, change):
    file = path / "arrays.npz"
    with np.load(file) as z:
        arrays = {k: z[k] for k in z.files}
    with open(file, "wb") as fh:
        np.savez(fh, **change(arrays))
    _damage_manifest(path, lambda m: {**m, "files": {**m["files"], "arrays.npz": file.stat().st_size}})


_ARRAY_DAMAGE = {
    "layer without arrays": (lambda a: {k: v for k, v in a.items() if not k.startswith("centers/")},
                             "lacks the arrays"),
    "rows cut": (lambda a: {**a, "labels": a["labels"][:-3]}, "rows"),
    "paths wrong width": (lambda a: {**a, "paths": a["paths"][:, :1]}, "'paths' has shape"),
    "cluster id out of range": (lambda a: {**a, "paths": a["paths"] + 50}, "cluster ids outside"),
    "centers of another width": (lambda a: {**a, **{k: v[:, :1] for k, v in a.items() if k.startswith("centers/")}},
                                 "centers of shape"),
    "probs wrong width": (lambda a: {**a, "probs": a["probs"][:, :1]}, "'probs' has shape"),
}


def test_an_activation_file_of_the_wrong_shape_is_refused_naming_it(source, tmp_path):
    path = tmp_path / "e"
    shutil.copytree(source, path)
    values = np.load(path / "act-0.npy")
    np.save(path / "act-0.npy", values[:-3])
    _damage_manifest(path, lambda m: {**m, "files": {**m["files"], "act-0.npy": (path / "act-0.npy").stat().st_size}})
    with pytest.raises(ValueError, match=r"act-0\.npy has shape .* expected \d+ rows") as info:
        load_experiment(path)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize("damage", sorted(_ARRAY_DAMAGE))
def test_inconsistent_arrays_are_refused_naming_the_file(source, tmp_path, damage):
    path = tmp_path / "e"
    shutil.copytree(source, path)
    change, message = _ARRAY_DAMAGE[damage]
    _rewrite_arrays(path, change)
    with pytest.raises(ValueError, match=message) as info:
        load_experiment(path)
    assert "arrays.npz" in str(info.value)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_tampered_arrays_of_the_right_size_are_refused(source, tmp_path, where):
    path = tmp_path / "e"
    shutil.copytree(source, path)
    file = path / "arrays.npz"
    data = bytearray(file.read_bytes())
    at = {"start": 200, "middle": len(data) // 2, "end": len(data) - 30}[where]
    data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])  # every byte changes
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="arrays.npz is damaged"):
        load_experiment(path)


def test_an_analysis_cache_is_not_counted_as_foreign(source, tmp_path):
    path = tmp_path / "e"
    shutil.copytree(source, path)
    (path / "analysis.json").write_text("{}")
    (path / "report.html").write_text("<html></html>")
    assert store.is_experiment_folder(path) == (True, "")


def test_scan_of_a_missing_store_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_store(tmp_path / "nowhere")
    assert list_experiments(tmp_path / "nowhere") == []


# ---------------------------------------------------------------------------------------
# Full disk and read-only folders (real tmpfs mounts; needs root)
# ---------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size_bytes, name="fs"):
        point = tmp_path / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _folder_size(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def test_a_full_disk_keeps_the_old_experiment_and_says_so(source, tmpfs):
    size = _folder_size(source)
    disk = tmpfs(int(size * 1.6) // 4096 * 4096 + 8192)
    exp = load_experiment(source)
    save_experiment(exp, disk / "e", save_model=False)
    old = (disk / "e" / "arrays.npz").read_bytes()
    exp.metrics["accuracy"] = 0.125
    with pytest.raises(StoreError, match=r"No space left on device; the experiment stored there before is unchanged"):
        save_experiment(exp, disk / "e", overwrite=True, save_model=False)
    assert (disk / "e" / "arrays.npz").read_bytes() == old
    assert _accuracy(disk / "e") != 0.125
    assert _hidden(disk) == []
    with pytest.raises(StoreError, match="nothing was stored"):
        save_experiment(exp, disk / "f", save_model=False)
    assert _visible(disk) == ["e"] and _hidden(disk) == []


def test_a_read_only_folder_is_refused_before_any_work(source, tmpfs):
    disk = tmpfs(1 << 20)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(StoreError, match=r"cannot write in .*Read-only file system.*choose an output folder"):
        check_output(disk / "e")
    with pytest.raises(StoreError):
        save_experiment(load_experiment(source), disk / "e", save_model=False)
