"""``python -m signatures serve``: every bad option is refused with its words before anything starts."""

import socket

import pytest

from signatures.cli import main


@pytest.mark.parametrize("argv, message", [
    (["--class-size", "0"], "--class-size must be a whole number from 1 to 500, got 0"),
    (["--class-size", "501"], "--class-size must be a whole number from 1 to 500, got 501"),
    (["--workers", "0"], "--workers must be a whole number from 1 to 64, got 0"),
    (["--workers", "65"], "--workers must be a whole number from 1 to 64, got 65"),
    (["--token", "short"], "--token must be 16 to 256 characters"),
    (["--token", "has spaces in it, see"], "--token must be 16 to 256 characters"),
    (["--allow-host", "http://class.example.org"], "--allow-host must be a host name"),
    (["--allow-host", "ok.example.org", "--allow-host", "a b"], "got 'a b'"),
    (["--scheduler", " "], "--scheduler must be a scheduler address"),
    (["--scheduler", "tcp://127.0.0.1:1", "--no-jobs"], "--scheduler and --no-jobs contradict each other"),
])
def test_serve_refuses_bad_options(argv, message, tmp_path, capsys):
    assert main(["serve", "--store", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--class-size", "many"], ["--workers", "two"]])
def test_serve_refuses_words_for_numbers(argv, tmp_path, capsys):
    assert main(["serve", "--store", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert argv[0] in err and argv[1] in err and "Traceback" not in err


def test_serve_names_a_scheduler_that_does_not_answer(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    address = f"tcp://127.0.0.1:{port}"
    assert main(["serve", "--store", str(tmp_path), "--port", "1", "--scheduler", address]) == 2
    err = capsys.readouterr().err
    assert f"no Dask scheduler answers at {address!r}" in err and "Traceback" not in err
