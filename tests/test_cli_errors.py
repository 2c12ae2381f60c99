"""The command line never shows a traceback.

Bad input exits 2 naming the option or file; anything else exits 1 in one line.
"""

import errno
import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from signatures import cli
from signatures.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "-1"], "--seed must be a whole number from 0 to 2147483647, got -1"),
        (["--seed", "2147483648"], "--seed must be a whole number from 0 to 2147483647, got 2147483648"),
        (["--seed", "x"], "--seed must be a whole number from 0 to 2147483647, got 'x'"),
        (["--seed", "1.5"], "--seed must be a whole number from 0 to 2147483647, got 1.5"),
        (["--digits", "1.5", "7"], "--digits must be whole numbers from 0 to 9 for mnist, got 1.5"),
        (["--digits", "one", "7"], "--digits must be whole numbers from 0 to 9 for mnist, got 'one'"),
        (["--digits", "1", "12"], "--digits must be in 0..9 for mnist, got [12]"),
        (["--digits", "1", "1"], "--digits lists [1] more than once"),
        (["--digits", "1"], "--digits must list at least 2"),
        (["--digits", "1", "7", "--anomalies", "7"], "[7] are both trained and anomalies: --anomalies must not"),
        (["--anomalies", "3.5"], "--anomalies must be whole numbers from 0 to 9 for mnist, got 3.5"),
        (["--dataset", "digits", "--digits", "1", "7", "--anomalies", "11"], "--anomalies must be in 0..9"),
        (["--n-per-class", "inf"], "--n-per-class must be a whole number from 2 to 10000, or none for all images, "
                                   "got inf"),
        (["--n-per-class", "nan"], "--n-per-class must be a whole number from 2 to 10000"),
        (["--n-per-class", "1"], "--n-per-class must be a whole number from 2 to 10000"),
        (["--n-per-class", "20000"], "got 20000"),
        (["--n-per-class", "2"], "use --n-per-class >= 3"),
        (["--n-per-class", "5"], "the K range (--k-min .. --k-max) goes up to --k-max = 10 but only 8 training "
                                 "images are clustered"),
        (["--test-size", "nan"], "--test-size must be a number between 0 and 1 (exclusive), got nan"),
        (["--test-size", "1.5"], "--test-size must be a number between 0 and 1 (exclusive), got 1.5"),
        (["--test-size", "half"], "--test-size must be a number between 0 and 1 (exclusive), got 'half'"),
        (["--hidden", "x"], "--hidden must be positive integers, got 'x'"),
        (["--hidden", "0"], "--hidden must be positive integers, got 0"),
        (["--hidden", "100000000"], "--hidden must be at most 4096"),
        (["--hidden"], "--hidden must list at least one layer size"),
        (["--hidden", *["4"] * 17], "--hidden may list at most 16 layers, got 17"),
        (["--arch", "cnn", "--filters", "0"], "--filters must be positive integers, got 0"),
        (["--arch", "cnn", "--filters", "8", "99999"], "--filters must be at most 4096"),
        (["--activation", "wiggle"], "--activation must be one of"),
        (["--epochs", "0"], "--epochs must be a whole number from 1 to 200, got 0"),
        (["--epochs", "1000"], "--epochs must be a whole number from 1 to 200, got 1000"),
        (["--batch-size", "0"], "--batch-size must be a whole number from 1 to 4096, got 0"),
        (["--batch-size", "100000"], "--batch-size must be a whole number from 1 to 4096, got 100000"),
        (["--k-min", "nan"], "--k-min must be a whole number from 2 to 100"),
        (["--k-min", "2.5"], "--k-min must be a whole number from 2 to 100 (a silhouette needs at least two "
                             "clusters), got 2.5"),
        (["--k-max", "x"], "--k-max must be a whole number from 2 to 100"),
        (["--k-max", "1000"], "--k-max must be a whole number from 2 to 100"),
        (["--k-min", "5", "--k-max", "3"], "the K range (--k-min .. --k-max) is inverted: --k-min = 5 > --k-max = 3"),
        (["--sample-size", "5"], "--sample-size must be larger than --k-max = 10"),
        (["--sample-size", "1000000"], "--sample-size must be a whole number from 3 to 20000"),
        (["--umap-points", "2"], "--umap-points must be a whole number from 4 to 20000, got 2"),
        (["--umap-points", "1e9"], "--umap-points must be a whole number from 4 to 20000, got 1000000000.0"),
        (["--n-per-class", "3", "--k-max", "3", "--all-unseen", "--umap-points", "4"],
         "--umap-points = 4 leaves only 2 trained-class images"),
        (["--name", "../evil"], "--name: experiment name '../evil' is not allowed"),
        (["--name", ""], "--name: experiment name '' is not allowed"),
        (["--model", "missing.keras"], "--model 'missing.keras' does not exist or is not a file"),
    ],
)
def test_bad_run_option_exits_2_naming_it(argv, message, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["run", "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    "argv, option",
    [
        (["run", "--out", "x", "--arch", "rnn"], "--arch"),
        (["run", "--out", "x", "--dataset", "cifar"], "--dataset"),
        (["run", "--out", "x", "--reduce", "max"], "--reduce"),
        (["run", "--digits", "1", "7"], "--out"),
        (["run", "--out", "x", "--bogus"], "--bogus"),
        (["serve", "--port", "http"], "--port"),
        (["fly"], "fly"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors_exit_2_with_the_usage(argv, option, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert option in err and "usage:" in err and "Traceback" not in err


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "x"), "--seed", "-1", "--epochs", "0", "--filters", "0"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith("error: ") for line in lines)
    assert [line.split()[1] for line in lines] == ["--filters", "--epochs", "--seed"]


def test_existing_folder_that_is_not_an_experiment_is_refused_before_work(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["run", "--out", str(out), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not a complete experiment" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "keep me"
    assert main(["run", "--out", str(out), "--quiet"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command, words in [("run", "train, extract"), ("report", "re-draw report.html"), ("list", "list the"),
                           ("canonical", "canonical experiments"), ("serve", "serve the web site")]:
        assert command in text and words in text
    for command in ("list", "canonical", "serve"):
        assert main([command, "--help"]) == 0
        assert "$SIGNATURES_STORE" in capsys.readouterr().out


def test_all_unseen_option_sets_the_config():
    args = cli.build_parser().parse_args(["run", "--out", "runs/x", "--all-unseen", "--n-per-class", "all"])
    config = cli._config_from_args(args)
    assert config.all_unseen is True and config.n_per_class is None
    args = cli.build_parser().parse_args(["run", "--out", "runs/x"])
    assert cli._config_from_args(args).all_unseen is False


# ------------------------------------------------------------------ list, report, serve, canonical

def test_list_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert main(["list", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"store folder '{tmp_path / 'nowhere'}' does not exist" in err


def test_list_of_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["list", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_list_uses_the_default_store_and_names_damaged_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIGNATURES_STORE", str(tmp_path))
    assert main(["list"]) == 0
    assert capsys.readouterr().out.strip() == f"no experiments in {tmp_path}"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("broken") and "damaged:" in out


def test_report_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "gone")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--port", "0"], "--port must be a whole number from 1 to 65535, got 0"),
    (["--port", "70000"], "--port must be a whole number from 1 to 65535, got 70000"),
    (["--pool-size", "-1"], "--pool-size must be a whole number from 0 to 16, got -1"),
    (["--gallery-pool-size", "100"], "--gallery-pool-size must be a whole number from 0 to 16, got 100"),
])
def test_serve_checks_its_options_before_starting(argv, message, tmp_path, capsys):
    assert main(["serve", "--store", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_canonical_refuses_unknown_names_and_leaves_foreign_folders_alone(tmp_path, capsys):
    assert main(["canonical", "--store", str(tmp_path), "--only", "nope", "--quiet"]) == 2
    assert "no canonical experiment named ['nope']" in capsys.readouterr().err
    foreign = tmp_path / "1v7-mlp"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main(["canonical", "--store", str(tmp_path), "--only", "1v7-mlp", "--quiet", *extra]) == 2
        out = capsys.readouterr().out
        assert "1v7-mlp" in out and "not built:" in out and "not" in out.split("not built:")[1]
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]


# ------------------------------------------------------------------ the boundary

def _raising(exc):
    def command(args):
        raise exc
    return command


@pytest.mark.parametrize(
    "exc, status, message",
    [
        (RuntimeError("boom"), 1, "error: boom (RuntimeError); set SIGNATURES_DEBUG=1 to see the traceback"),
        (KeyError("layers"), 1, "error: layers (KeyError); set SIGNATURES_DEBUG=1"),
        (MemoryError(), 2, "error: out of memory (MemoryError): free some memory"),
        (type("ResourceExhaustedError", (Exception,), {})("OOM when allocating tensor"), 2,
         "error: out of memory (ResourceExhaustedError)"),
        (OSError(errno.ENOSPC, "No space left on device", "/store/x/arrays.npz"), 2,
         "error: no space left on the disk while writing /store/x/arrays.npz: free some space"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 2, "error: /ro/x is on a read-only file system"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2, "error: permission denied for /root/x"),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "no space left on the disk while writing "),
        (zipfile.BadZipFile("File is not a zip file"), 2, "error: a file is damaged or truncated while reading"),
        (gzip.BadGzipFile("Not a gzipped file (b'xx')"), 2, "damaged or truncated"),
        (EOFError("Compressed file ended before the end-of-stream marker was reached"), 2, "damaged or truncated"),
        (ValueError("digits must be ..."), 2, "error: digits must be ..."),
        (FileExistsError("'runs/x' exists already"), 2, "error: 'runs/x' exists already"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/mnist"), 2,
         "error: /data/mnist: No such file or directory"),
    ],
)
def test_boundary_turns_every_exception_into_one_message(exc, status, message, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SIGNATURES_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_cmd_list", _raising(exc))
    assert main(["list", str(tmp_path)]) == status
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIGNATURES_DEBUG", "1")
    monkeypatch.setattr(cli, "_cmd_list", _raising(RuntimeError("boom")))
    assert main(["list", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("error: boom (RuntimeError); set SIGNATURES_DEBUG=1 to see "
                                                       "the traceback, and report it if it persists")


def test_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_cmd_list", _raising(KeyboardInterrupt()))
    assert main(["list", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_out_of_memory_in_run_names_the_sizes(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_cmd_run", _raising(MemoryError()))
    assert main(["run", "--out", str(tmp_path / "x")]) == 2
    assert "choose smaller --hidden / --filters, a smaller --batch-size or fewer --n-per-class" in \
        capsys.readouterr().err


# ------------------------------------------------------------------ real processes

def _python(code, **env):
    environ = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("argv, option", [
    (["--seed", "-1"], "--seed"),
    (["--hidden", "100000000"], "--hidden"),
    (["--n-per-class", "5"], "--k-max"),
    (["--dataset", "digits", "--digits", "0", "1", "--all-unseen", "--umap-points", "5"], "--umap-points"),
])
def test_refused_before_tensorflow_is_imported(argv, option, tmp_path):
    code = ("import sys; from signatures.cli import main; "
            f"status = main({['run', '--out', str(tmp_path / 'x'), '--quiet', *argv]!r}); "
            "print(status, 'tensorflow' in sys.modules)")
    result = _python(code)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert option in result.stderr and "Traceback" not in result.stderr


def test_real_process_exit_codes(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "signatures", "run", "--out", str(tmp_path / "x"), "--digits", "1.5",
                          "7", "--seed", "-1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--digits" in bad.stderr and "--seed" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "signatures", "list", str(tmp_path / "none")], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and missing.stdout == ""


def test_damaged_data_file_in_a_real_process(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    source = Path(os.environ["SIGNATURES_DATA_DIR"])
    for f in sorted(source.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            (folder / f.name).write_bytes(data[: len(data) // 2] if "images" in f.name else data)
    result = subprocess.run([sys.executable, "-m", "signatures", "run", "--out", str(tmp_path / "x"), "--quiet",
                             "--data-dir", str(folder), "--n-per-class", "50", "--k-max", "4"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, SIGNATURES_DATA_DIR=str(folder)))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    assert not (tmp_path / "x").exists()


def test_manifest_without_json_object_is_listed_as_damaged(tmp_path, capsys):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "manifest.json").write_text(json.dumps([1, 2, 3]))
    assert main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "odd" in out and "damaged" in out
