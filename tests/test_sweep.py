"""Sweeps: a grid of experiments run as jobs on a real Dask LocalCluster, and their table."""

import csv
import itertools
import json
import time

import numpy as np
import pytest

from signatures import canonical, sweep
from signatures.app import jobs as jobs_module
from signatures.cli import main
from signatures.experiment import ExperimentConfig
from signatures.store import load_experiment, read_manifest
from signatures.sweep import SweepError, cluster_agreement, plan_sweep

BASE = ["--dataset", "digits", "--digits", "1", "7", "--k-max", "4", "--umap-points", "200"]
#: --epochs is a grid option; with one value it is shared by every point and not in their names.
TINY = [*BASE, "--epochs", "2"]


def _base(name="t", **kw):
    return ExperimentConfig(name=name, dataset="digits", digits=(1, 7), hidden=(8,), epochs=2, k_max=4,
                            umap_points=200, **kw)


def _no_cluster(monkeypatch):
    """Make any start of, or connection to, a cluster fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a cluster was started although nothing was to be run")

    monkeypatch.setattr(jobs_module, "start_cluster", refuse)
    monkeypatch.setattr(jobs_module, "connect", refuse)


@pytest.fixture(scope="module")
def jobs():
    client = jobs_module.start_cluster(n_workers=2)
    yield client
    client.close()


# ------------------------------------------------------------------ the grid, without a cluster


def test_a_grid_gives_one_named_config_per_point_in_order():
    configs = plan_sweep(_base(), {"seed": [0, 1], "hidden": ["8", (16, 4)]})
    assert [c.name for c in configs] == ["t-h8-s0", "t-h8-s1", "t-h16x4-s0", "t-h16x4-s1"]
    assert [(c.hidden, c.seed) for c in configs] == [((8,), 0), ((8,), 1), ((16, 4), 0), ((16, 4), 1)]
    assert all(c.epochs == 2 and c.k_max == 4 and c.dataset == "digits" for c in configs)
    named = plan_sweep(_base(), {"n_per_class": [None, 40], "epochs": [3], "activation": ["tanh"]})
    assert [c.name for c in named] == ["t-nall", "t-n40"], "only the values that vary are named"
    assert all(c.epochs == 3 and c.activation == "tanh" for c in named)
    assert [c.name for c in plan_sweep(_base(), {"epochs": [3], "activation": ["tanh"]})] == ["t-tanh-e3"]
    assert [c.name for c in plan_sweep(_base(), {"epochs": [3, 4], "seed": [5]})] == ["t-e3-s5", "t-e4-s5"]
    assert [c.name for c in plan_sweep(_base(), {"arch": ["cnn"], "filters": ["4", "4 8"]})] == ["t-f4", "t-f4x8"]
    assert [c.n_per_class for c in named] == [None, 40]


def test_every_bad_grid_value_is_named_at_once():
    with pytest.raises(SweepError) as info:
        plan_sweep(_base(), {"seed": [0, -1, 0, "x"], "hidden": ["8", "0 3"], "epochs": [2, 999]},
                   words={"seed": "--seeds", "hidden": "--hidden", "epochs": "--epochs"})
    problems = info.value.problems
    assert problems == [
        "--hidden must be positive integers, got 0 in 0 3",
        "--epochs must be a whole number from 1 to 200, got 999",
        "--seeds must be a whole number from 0 to 2147483647, got -1",
        "--seeds lists 0 twice: give each value once",
        "--seeds must be a whole number from 0 to 2147483647, got 'x'",
    ]


@pytest.mark.parametrize("grid, message", [
    ({}, "give at least one value to sweep over"),
    ({"seed": []}, "seed must list at least one value, got []"),
    ({"seed": "0 1"}, "seed must list at least one value, got '0 1'"),
    ({"dataset": ["mnist"]}, "a sweep cannot vary ['dataset']"),
    ({"seed": list(range(9)), "hidden": [str(h) for h in range(1, 9)]},
     "the grid has 72 points (8 hidden sizes x 9 seed); a sweep runs at most 64"),
    ({"hidden": ["8 8", "8,8"]}, "hidden sizes lists 8 8 twice"),
    ({"arch": ["mlp", "rnn"]}, "architecture must be one of ['mlp', 'cnn'], got 'rnn'"),
    ({"n_per_class": [3, 50]}, "(in the point images per class 3)"),
])
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(SweepError, match=None) as info:
        plan_sweep(_base(), grid)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_names_are_checked_for_the_whole_sweep():
    with pytest.raises(SweepError, match="experiment name"):
        plan_sweep(_base("../x"), {"seed": [0]})
    with pytest.raises(SweepError) as info:
        plan_sweep(_base("n" * 60), {"hidden": ["64 32", "8"], "seed": [0]})
    assert info.value.problems == [f"experiment name {'n' * 60!r} is too long for this sweep: its experiments are "
                                   f"named like {'n' * 60 + '-h64x32-s0'!r} (70 characters, at most 64); "
                                   "choose a shorter one"]
    with pytest.raises(ValueError, match="grid must be a dict"):
        plan_sweep(_base(), [("seed", [0])])
    with pytest.raises(ValueError, match="base must be an ExperimentConfig"):
        plan_sweep({"name": "t"}, {"seed": [0]})


def test_the_cli_refuses_bad_values_before_any_job_or_cluster(tmp_path, capsys, monkeypatch):
    _no_cluster(monkeypatch)
    store = tmp_path / "store"
    status = main(["sweep", "--name", "t", "--store", str(store), *TINY, "--seeds", "0", "7", "7",
                   "--hidden", "8", "abc", "--n-per-class", "all", "1", "--workers", "0"])
    assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: --hidden must be positive integers, got 'abc'",
        "error: --n-per-class must be a whole number from 2 to 10000, or none for all images, got 1",
        "error: --seeds lists 7 twice: give each value once",
        "error: --workers must be a whole number from 1 to 64 (each worker holds TensorFlow, about 1 GiB), got 0",
    ]
    assert not store.exists(), "nothing is written"
    assert main(["sweep", "--name", "t", "--store", str(store), *TINY, "--seeds", "0",
                 "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "give one of the two" in capsys.readouterr().err
    assert main(["sweep", "--name", "t", "--store", str(store), *BASE]) == 2
    assert "give at least one value to sweep over: --arch, --hidden" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["sweep", "--name", "t", "--store", str(afile), *TINY, "--seeds", "0"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["sweep", "--name", "t/u", "--store", str(store), *TINY, "--seeds", "0"]) == 2
    assert "--name: experiment name 't/u' is not allowed" in capsys.readouterr().err
    assert not store.exists()


def test_cluster_agreement_compares_partitions_over_the_common_inputs():
    rows_a = np.array([10, 11, 12, 13, 14, 15])
    labels_a = np.array([0, 0, 1, 1, 2, 2])
    # the same partition with renamed clusters, inputs in another order
    order = np.array([5, 3, 1, 0, 2, 4])
    renamed = np.array([7, 7, 3, 3, 5, 5])
    assert cluster_agreement(rows_a, labels_a, rows_a[order], renamed[order]) == pytest.approx(1.0)
    # only the inputs both hold count: 20 and 21 are not compared, 14 and 15 are missing from b
    rows_b = np.array([13, 12, 11, 10, 20, 21])
    labels_b = np.array([4, 4, 9, 9, 9, 4])
    assert cluster_agreement(rows_a, labels_a, rows_b, labels_b) == pytest.approx(1.0)
    split = np.array([0, 1, 0, 1, 0, 1])
    from sklearn.metrics import adjusted_rand_score

    assert cluster_agreement(rows_a, labels_a, rows_a, split) == pytest.approx(adjusted_rand_score(labels_a, split))
    assert cluster_agreement(rows_a, labels_a, np.array([10, 99]), np.array([0, 1])) is None
    with pytest.raises(ValueError, match="must not repeat"):
        cluster_agreement(np.array([1, 1]), np.array([0, 1]), rows_a, labels_a)
    with pytest.raises(ValueError, match="one length"):
        cluster_agreement(rows_a, labels_a[:3], rows_a, labels_a)


def test_default_workers_is_half_the_cores(monkeypatch):
    for cores, workers in ((1, 1), (2, 1), (3, 1), (8, 4), (500, 64)):
        monkeypatch.setattr(canonical.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert canonical.default_workers() == workers


# ------------------------------------------------------------------ on a real cluster


def _sweep(store, address, *extra):
    return main(["sweep", "--name", "sw", "--store", str(store), *TINY, "--hidden", "8", "6 4", "--seeds", "0", "1",
                 "--scheduler", address, *extra])


def _ari(a, b, layer):
    ea, eb = load_experiment(a), load_experiment(b)
    j = ea.layers.index(layer)
    ra, rb = ea.rows("train", "test"), eb.rows("train", "test")
    common = sorted(set(ea.dataset_rows[ra]) & set(eb.dataset_rows[rb]))
    la = dict(zip(ea.dataset_rows[ra], ea.paths[ra, j]))
    lb = dict(zip(eb.dataset_rows[rb], eb.paths[rb, j]))
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score([la[r] for r in common], [lb[r] for r in common])


def test_a_sweep_stores_every_point_and_its_table_matches_the_store(jobs, tmp_path, capsys):
    store = tmp_path / "store"
    assert _sweep(store, jobs.address) == 0
    out = capsys.readouterr().out
    names = ["sw-h8-s0", "sw-h8-s1", "sw-h6x4-s0", "sw-h6x4-s1"]
    assert sorted(p.name for p in store.iterdir()) == sorted(names + ["sw.sweep.csv", "sw.sweep.json"])
    # progress streamed per job as "name: stage, message"
    for name in names:
        assert f"{name}: training, " in out and f"{name}: done, stored {name}" in out
    summary = json.loads((store / "sw.sweep.json").read_text())
    assert summary["grid"] == {"hidden": [[8], [6, 4]], "epochs": [2], "seed": [0, 1]}
    assert [p["name"] for p in summary["points"]] == names
    for point in summary["points"]:
        folder = store / point["name"]
        manifest = read_manifest(folder)
        analysis = json.loads((folder / "analysis.json").read_text())
        assert point["stored"] and point["outcome"].startswith("built in ")
        assert point["params"]["seed"] == manifest["config"]["seed"]
        assert point["params"]["hidden"] == manifest["config"]["hidden"]
        assert point["params"]["epochs"] == manifest["config"]["epochs"] == 2
        assert point["accuracy"] == manifest["metrics"]["accuracy"]
        assert point["k"] == {layer: manifest["clustering"][layer]["k"] for layer in manifest["layers"]}
        assert point["first_layer"] == analysis["separation"]["first_layer"]
        assert point["purity"] == analysis["signatures"]["overall_purity"]
        assert point["dominant_share"] == {c: v["dominant_share"] for c, v in analysis["signatures"]["classes"].items()}
        assert f"{manifest['metrics']['accuracy']:.4f}" in out
    # stability across the two seeds, per architecture
    groups = {json.dumps(s["params"]): s for s in summary["stability"]}
    assert set(groups) == {json.dumps({"hidden": [8], "epochs": 2}), json.dumps({"hidden": [6, 4], "epochs": 2})}
    for s in summary["stability"]:
        a, b = s["names"]
        accs = [read_manifest(store / n)["metrics"]["accuracy"] for n in s["names"]]
        assert s["seeds"] == [0, 1]
        assert s["accuracy_spread"] == pytest.approx(abs(accs[0] - accs[1]))
        assert s["accuracy_mean"] == pytest.approx(np.mean(accs))
        for layer, ari in s["ari"].items():
            assert ari == pytest.approx(_ari(store / a, store / b, layer))
            assert s["k"][layer] == [read_manifest(store / n)["clustering"][layer]["k"] for n in s["names"]]
    assert "across seeds 0, 1 (hidden=8 epochs=2):" in out and "cluster agreement (mean ARI)" in out
    rows = list(csv.DictReader((store / "sw.sweep.csv").open()))
    assert [r["name"] for r in rows] == names
    for row, point in zip(rows, summary["points"]):
        assert float(row["accuracy"]) == point["accuracy"] and float(row["purity"]) == point["purity"]
        assert row["k"] == " ".join(f"{layer}={k}" for layer, k in point["k"].items())
        assert row["seed"] == str(point["params"]["seed"])
    # two workers: jobs ran two at a time (their spans of progress overlap)
    spans = {}
    for topic, events in jobs.client.get_events().items():
        if topic.startswith(jobs_module.JOB_PREFIX) and topic.endswith(tuple(f"-{n}" for n in names)):
            times = [m["time"] for _, m in events]
            spans[topic] = (min(times), max(times))
    assert len(spans) == 4
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans.values(), 2)), spans



def test_a_rerun_of_a_stored_sweep_starts_no_cluster(jobs, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    args = ["sweep", "--name", "re", "--store", str(store), *TINY, "--hidden", "5", "--seeds", "3"]
    assert main([*args, "--scheduler", jobs.address, "--quiet"]) == 0
    capsys.readouterr()
    _no_cluster(monkeypatch)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "re-s3" in out and "wrote" in out
    assert json.loads((store / "re.sweep.json").read_text())["points"][0]["outcome"] == "kept"
    # the same name with another config is not taken for this point
    args[args.index("--epochs") + 1] = "3"
    assert main(args) == 2
    out = capsys.readouterr().out
    assert "holds another experiment of that name (its config differs)" in out
    assert read_manifest(store / "re-s3")["config"]["epochs"] == 2


def test_workers_sets_the_local_cluster(jobs, tmp_path, capsys, monkeypatch):
    asked = []

    def start_cluster(*, n_workers):
        asked.append(n_workers)
        return jobs_module.connect(jobs.address)  # a client of the test's cluster, closed on its own

    monkeypatch.setattr(jobs_module, "start_cluster", start_cluster)
    assert main(["sweep", "--name", "w", "--store", str(tmp_path), *TINY, "--hidden", "4", "--seeds", "0",
                 "--workers", "3", "--quiet"]) == 0
    assert asked == [3]
    assert read_manifest(tmp_path / "w-s0")["config"]["hidden"] == [4]
    assert jobs.n_workers == 2, "the test's cluster is still up"


def test_ctrl_c_cancels_the_jobs_and_says_what_is_stored(jobs, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    assert main(["sweep", "--name", "cc", "--store", str(store), *TINY, "--seeds", "0", "--scheduler",
                 jobs.address, "--quiet"]) == 0
    capsys.readouterr()

    def interrupt(name, event):
        if event["stage"] == "training":
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "print_event", interrupt)
    # seed 0 is stored; 1 and 2 are stopped while training
    status = main(["sweep", "--name", "cc", "--store", str(store), *TINY, "--seeds", "0", "1", "2",
                   "--scheduler", jobs.address])
    captured = capsys.readouterr()
    assert status == 130
    lines = dict(line.split(None, 1) for line in captured.out.splitlines())
    assert lines["cc-s0"] == "kept"
    assert lines["cc-s1"].startswith("not built: cancelled") and lines["cc-s2"].startswith("not built: cancelled")
    assert "stored: cc-s0;" in captured.err and captured.err.rstrip().endswith("interrupted")
    assert sorted(p.name for p in store.iterdir()) == ["cc-s0", "cc.sweep.csv", "cc.sweep.json"]
    deadline = time.monotonic() + 60
    while jobs.queue() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jobs.queue() == [], "no job is left running or waiting"


def test_relative_data_folders_are_made_absolute_for_the_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert canonical.absolute_data_dir("data:../fashion") == f"{tmp_path / 'data'}:{tmp_path.parent / 'fashion'}"
    assert canonical.absolute_data_dir("/abs/mnist") == "/abs/mnist"
    assert canonical.absolute_data_dir(None) is None
    args = sweep_parser_args(["--name", "d", "--seeds", "0", "--data-dir", "mnist"])
    assert sweep._base_and_grid(args)[0].data_dir == str(tmp_path / "mnist")


def sweep_parser_args(argv):
    from signatures.cli import build_parser

    return build_parser().parse_args(["sweep", *argv])


def test_a_cnn_sweep_takes_the_cnn_default_dense_size():
    base, grid = sweep._base_and_grid(sweep_parser_args(["--name", "c", "--arch", "cnn", "--seeds", "0", "1"]))
    assert base.hidden == (32,) and grid == {"arch": ["cnn"], "seed": [0, 1]}
    assert [c.name for c in plan_sweep(base, grid)] == ["c-s0", "c-s1"]
