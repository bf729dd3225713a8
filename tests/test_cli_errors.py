"""A user's common mistakes with each `modelport` subcommand end in one `error:` line and a
non-zero exit code, never a traceback (missing file, wrong file type, unreachable server,
unknown model); `--verbose` shows the traceback behind the line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelport.client.cli import main
from modelport.server.background import BackgroundServer
from tests import models

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-errors")
    models.save(models.scale(2.0), root / "repo", "scale")
    text = root / "notes.txt"
    text.write_text("not an array\n")
    single = root / "x.npy"
    np.save(single, np.ones((2, 3), np.float32))
    labelled = root / "data.npz"
    np.savez(labelled, x=np.ones((2, 3), np.float32), y=np.zeros(2, np.int64))
    return {"repo": root / "repo", "text": text, "npy": single, "npz": labelled, "missing": root / "missing.npy"}


@pytest.fixture(scope="module")
def address(files) -> Iterator[str]:
    with BackgroundServer(files["repo"]) as server:
        yield server.address


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def assert_one_error(code: int, err: str, *expected: str, exit_code: int | None = None) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    if exit_code is not None:
        assert code == exit_code, err
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]


def test_predict_mistakes(capsys, files, address) -> None:
    code, err = run(capsys, "predict", "--url", address, "--model", "scale", "--input", files["missing"])
    assert_one_error(code, err, "missing.npy", "No such file", exit_code=2)
    code, err = run(capsys, "predict", "--url", address, "--model", "scale", "--input", files["text"])
    assert_one_error(code, err, "notes.txt", "not a .npy or .npz", exit_code=2)
    code, err = run(capsys, "predict", "--url", UNREACHABLE, "--model", "scale", "--input", files["npy"],
                    "--timeout", "5")
    assert_one_error(code, err, "UNAVAILABLE", exit_code=1)
    code, err = run(capsys, "predict", "--url", address, "--model", "nope", "--input", files["npy"])
    assert_one_error(code, err, "NOT_FOUND", "'nope'", exit_code=1)
    code, err = run(capsys, "predict", "--url", address, "--model", "scale", "--input", files["npz"], "-x", "7")
    assert_one_error(code, err, "NOT_FOUND", "'7'", exit_code=1)


def test_evaluate_mistakes(capsys, files, address) -> None:
    code, err = run(capsys, "evaluate", "--url", address, "--model", "scale", "--data", files["missing"])
    assert_one_error(code, err, "missing.npy", exit_code=2)
    code, err = run(capsys, "evaluate", "--url", address, "--model", "scale", "--data", files["npy"])
    assert_one_error(code, err, "'x' and 'y'", exit_code=2)
    code, err = run(capsys, "evaluate", "--url", UNREACHABLE, "--model", "scale", "--data", files["npz"],
                    "--timeout", "5")
    assert_one_error(code, err, "UNAVAILABLE", exit_code=1)
    code, err = run(capsys, "evaluate", "--url", address, "--model", "nope", "--data", files["npz"])
    assert_one_error(code, err, "NOT_FOUND", "'nope'", exit_code=1)


def test_bench_mistakes(capsys, files, address) -> None:
    common = ("--seconds", "0.2", "--warmup", "0")
    code, err = run(capsys, "bench", "--url", address, "--model", "scale", "--input", files["missing"], *common)
    assert_one_error(code, err, "missing.npy", exit_code=2)
    code, err = run(capsys, "bench", "--url", address, "--model", "scale", "--input", files["text"], *common)
    assert_one_error(code, err, "notes.txt", exit_code=2)
    code, err = run(capsys, "bench", "--url", UNREACHABLE, "--model", "scale", "--timeout", "5", *common)
    assert_one_error(code, err, "cannot read the metadata", exit_code=1)
    code, err = run(capsys, "bench", "--url", address, "--model", "nope", *common)
    assert_one_error(code, err, "NOT_FOUND", exit_code=1)


def test_models_mistakes(capsys, address) -> None:
    code, err = run(capsys, "models", "--url", UNREACHABLE, "--timeout", "5", "list")
    assert_one_error(code, err, "UNAVAILABLE", exit_code=1)
    code, err = run(capsys, "models", "--url", address, "load")
    assert_one_error(code, err, "needs a model name", exit_code=2)
    code, err = run(capsys, "models", "--url", address, "load", "scale")  # not started in explicit mode
    assert_one_error(code, err, "FAILED_PRECONDITION", "--model-control-mode explicit", exit_code=1)


def test_serve_mistakes(capsys, files, monkeypatch) -> None:
    code, err = run(capsys, "serve", "--model-repository", files["repo"] / "missing")
    assert_one_error(code, err, "missing", "not a directory", exit_code=2)
    code, err = run(capsys, "serve", "--model-repository", files["text"])
    assert_one_error(code, err, "notes.txt", exit_code=2)
    code, err = run(capsys, "serve", "--model-repository", files["repo"], "--feedback-store", "postgres://db")
    assert_one_error(code, err, "--feedback-store / MODELPORT_FEEDBACK_STORE", "redis://", exit_code=2)
    monkeypatch.setenv("MODELPORT_GRPC_PORT", "eighty")
    code, err = run(capsys, "serve", "--model-repository", files["repo"])
    assert_one_error(code, err, "--grpc-port / MODELPORT_GRPC_PORT", "'eighty'", exit_code=2)


def test_convert_and_compress_mistakes(capsys, files, tmp_path) -> None:
    code, err = run(capsys, "convert", files["missing"], "--model-repository", tmp_path, "--name", "m")
    assert_one_error(code, err, "missing.npy", exit_code=2)
    code, err = run(capsys, "convert", files["npy"], "--model-repository", tmp_path, "--name", "m", "--sample",
                    tmp_path / "nope.npz")
    assert_one_error(code, err, "nope.npz", exit_code=2)
    code, err = run(capsys, "compress", "--model-repository", tmp_path, "--name", "m", "--method", "fp16")
    assert_one_error(code, err, "no version", exit_code=2)
    code, err = run(capsys, "compress", "--model-repository", files["repo"], "--name", "scale",
                    "--method", "int8-static")
    assert_one_error(code, err, "--calibration", exit_code=2)


@pytest.mark.slow
def test_convert_wrong_file_type(capsys, files, tmp_path) -> None:
    """Imports TensorFlow (seconds): the file exists but is not a model."""
    code, err = run(capsys, "convert", files["text"], "--model-repository", tmp_path, "--name", "m")
    assert_one_error(code, err, "notes.txt", ".keras or .h5", exit_code=2)


def test_verbose_shows_the_traceback_and_a_real_process_shows_none(files, tmp_path) -> None:
    cli = [sys.executable, "-m", "modelport.client.cli"]
    for argv in (["predict", "--model", "m", "--input", str(files["missing"])],
                 ["serve", "--model-repository", str(tmp_path / "missing")]):  # fmt: skip
        done = subprocess.run([*cli, *argv], capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        verbose = subprocess.run([*cli, *argv, "--verbose"], capture_output=True, text=True)
        assert verbose.returncode == 2 and "Traceback" in verbose.stderr
        assert verbose.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_quality_and_rollout_mistakes(capsys, files, address) -> None:
    code, err = run(capsys, "quality", "--url", address, "--model", "nope")
    assert_one_error(code, err, "NOT_FOUND", "'nope'", exit_code=1)
    code, err = run(capsys, "rollout", "start", "--model-repository", files["repo"], "--name", "scale",
                    "--candidate", 7, "--stable", 1)  # fmt: skip
    assert_one_error(code, err, "no version 7", exit_code=2)
    code, err = run(capsys, "rollout", "promote", "--model-repository", files["repo"], "--name", "scale")
    assert_one_error(code, err, "no running rollout", exit_code=2)
    code, err = run(capsys, "rollout", "status", "--url", UNREACHABLE, "--model", "scale", "--timeout", "5")
    assert_one_error(code, err, "UNAVAILABLE", exit_code=1)


def test_a_reader_that_stops_early_ends_the_output_quietly(files, address) -> None:
    """`modelport predict ... | head -1`: no 'Broken pipe' error, exit 141 as a shell reports it."""
    command = [sys.executable, "-m", "modelport.client.cli", "predict", "--url", address, "--model", "scale",
               "--input", str(files["npy"])]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line is written
    assert process.wait(60) == 141
    assert process.stderr.read().decode().strip() == ""
