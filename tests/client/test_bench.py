"""`modelport bench` and its load generator against real servers: modelport and the minimal stub.

Numbers are never asserted (timing belongs to benchmarks/), only that every level is measured,
reported in every format, and that errors are counted and explained.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelport.client import Client, TensorInfo, bench
from modelport.client.bench_cli import COLUMNS, parse_concurrency
from modelport.client.bench_http import http_infer
from modelport.client.cli import main
from modelport.protocol import rest
from modelport.server.background import BackgroundServer
from tests import models

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--seconds", "1", "--warmup", "0.2"]
ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.-]+)\s+([\d.-]+)\s+([\d.-]+)\s+([\d.-]+)\s+(\d+)\s*$")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    models.save(models.scale(2.0), tmp_path / "models", "scale")
    return tmp_path / "models"


def rows(stdout: str) -> list[tuple[str, ...]]:
    """The table rows of bench's output (one per level)."""
    return [m.groups() for line in stdout.splitlines() if (m := ROW.match(line))]


def test_sweep_prints_one_row_per_level_and_writes_json_and_csv(repo, start_server, tmp_path, capsys):
    address = start_server(repo)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code = main(["bench", "--url", address, "--model", "scale", "--concurrency", "1,4", *FAST,
                 "--json", str(out_json), "--csv", str(out_csv)])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    header = next(line for line in stdout.splitlines() if line.lstrip().startswith("concurrency"))
    assert header.split() == " ".join(COLUMNS).split()
    table = rows(stdout)
    assert [r[0] for r in table] == ["1", "4"]
    assert all(float(r[1]) > 0 and r[7] == "0" for r in table)

    document = json.loads(out_json.read_text())
    assert document["model"] == "scale" and document["url"] == address and document["batch"] == 1
    assert document["seconds"] == 1.0 and document["client_processes"] == 1 and document["started_at"]
    levels = document["levels"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["requests"] > 0 and level["errors"] == 0 and level["error_summary"] == []
        assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] <= level["max_ms"]
        assert level["items_per_s"] == pytest.approx(level["requests_per_s"])

    with out_csv.open() as f:
        written = list(csv.DictReader(f))
    assert [r["concurrency"] for r in written] == ["1", "4"]
    assert {"requests_per_s", "items_per_s", "p50_ms", "p90_ms", "p99_ms", "avg_ms", "errors",
            "model"} <= set(written[0])
    assert all(int(r["requests"]) > 0 and r["model"] == "scale" for r in written)


def test_unknown_model_without_input_exits_1_naming_not_found(repo, start_server, capsys):
    address = start_server(repo)
    assert main(["bench", "--url", address, "--model", "nope", *FAST]) == 1
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and "nope" in err


def test_every_request_failing_is_counted_and_exits_1(repo, start_server, tmp_path, capsys):
    address = start_server(repo)
    np.savez(tmp_path / "x.npz", x=np.ones((2, 3), np.float32))
    out_json = tmp_path / "r.json"
    code = main(["bench", "--url", address, "--model", "nope", "--input", str(tmp_path / "x.npz"), *FAST,
                 "--json", str(out_json)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    (row,) = rows(captured.out)
    assert int(row[7]) > 0 and float(row[1]) == 0
    assert re.search(r"NOT_FOUND x\d+: .*nope", captured.out)
    assert "every request failed" in captured.err
    (level,) = json.loads(out_json.read_text())["levels"]
    assert level["requests"] == 0 and level["p50_ms"] is None
    assert level["error_summary"][0]["code"] == "NOT_FOUND" and level["error_summary"][0]["count"] == level["errors"]


def test_input_npz_sets_the_request_and_batch(repo, start_server, tmp_path, capsys):
    address = start_server(repo)
    np.savez(tmp_path / "x.npz", x=np.arange(15, dtype=np.float64).reshape(5, 3))  # cast to the model's FP32
    out_json = tmp_path / "r.json"
    code = main(["bench", "--url", address, "--model", "scale", "--input", str(tmp_path / "x.npz"), *FAST,
                 "--json", str(out_json)])  # fmt: skip
    assert code == 0
    document = json.loads(out_json.read_text())
    assert document["batch"] == 5
    assert document["inputs"] == {"source": str(tmp_path / "x.npz"),
                                  "tensors": [{"name": "x", "datatype": "FP32", "shape": [5, 3]}]}
    (level,) = document["levels"]
    assert level["requests"] > 0 and level["items_per_s"] == pytest.approx(5 * level["requests_per_s"])


def test_sweep_from_worker_processes(repo, start_server):
    address = start_server(repo)
    request = bench.infer_request("scale", {"x": np.ones((2, 3), np.float32)})
    results = bench.sweep(address, request, [1, 3], seconds=0.5, warmup=0.1, batch=2, processes=2)
    assert [r.concurrency for r in results] == [1, 3]
    assert all(r.requests > 0 and r.errors == 0 and r.client_processes == 2 for r in results)
    assert results[1].channels == 2  # one per process with work
    assert results[0].latencies_ms.size == results[0].requests


def test_plot_needs_matplotlib(repo, start_server, tmp_path, capsys):
    address = start_server(repo)
    png = tmp_path / "p.png"
    code = main(["bench", "--url", address, "--model", "scale", "--concurrency", "1,2", "--seconds", "0.3",
                 "--warmup", "0", "--plot", str(png)])  # fmt: skip
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 2 and "matplotlib" in capsys.readouterr().err and not png.exists()
    else:
        assert code == 0 and png.stat().st_size > 0


# ---------------------------------------------------------------- over HTTP/REST


@pytest.fixture
def http_url(repo) -> Iterator[str]:
    """A real server's HTTP/REST URL (http://127.0.0.1:PORT)."""
    with BackgroundServer(repo) as server:
        yield server.http_url


def test_http_url_loads_the_http_endpoint(http_url, tmp_path, capsys):
    out_json, out_csv = tmp_path / "h.json", tmp_path / "h.csv"
    code = main(["bench", "--url", http_url, "--model", "scale", "--concurrency", "4", "--seconds", "1",
                 "--warmup", "0.2", "--json", str(out_json), "--csv", str(out_csv)])  # fmt: skip
    stdout = capsys.readouterr().out
    assert code == 0
    assert "one connection per outstanding request" in stdout
    ((concurrency, requests_per_s, *_, errors),) = rows(stdout)
    assert concurrency == "4" and float(requests_per_s) > 0 and errors == "0"
    document = json.loads(out_json.read_text())
    assert document["protocol"] == "http" and document["http_body"] == "binary" and document["url"] == http_url
    (level,) = document["levels"]
    assert level["requests"] > 0 and level["errors"] == 0 and level["channels"] == 4  # one connection each
    assert level["p50_ms"] <= level["p99_ms"] <= level["max_ms"]
    with out_csv.open() as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["requests"]) == level["requests"] and row["url"] == http_url


def test_http_errors_are_counted_by_status(http_url, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", x=np.ones((2, 3), np.float32))
    code = main(["bench", "--url", http_url, "--model", "nope", "--input", str(tmp_path / "x.npz"),
                 "--concurrency", "2", *FAST])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    (row,) = rows(captured.out)
    assert int(row[7]) > 0 and float(row[1]) == 0
    assert re.search(r"NOT_FOUND x\d+: model 'nope' is not found", captured.out)  # as over gRPC
    assert main(["bench", "--url", http_url, "--model", "nope", *FAST]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_http_sweep_from_worker_processes(http_url):
    request = bench.infer_request("scale", {"x": np.ones((2, 3), np.float32)})
    (result,) = bench.sweep(http_url, request, [3], seconds=0.5, warmup=0.1, batch=2, processes=2)
    assert result.requests > 0 and result.errors == 0 and result.client_processes == 2 and result.channels == 3


def test_http_request_is_the_same_request(http_url):
    """The HTTP body bench sends is the gRPC request's tensors, outputs, id and deadline."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = bench.infer_request("scale", {"x": x}, version="1", outputs=["y"], request_id="b-1")
    infer = http_infer(request, timeout=2.5)
    assert infer.path == "/v2/models/scale/versions/1/infer"
    header_length = int(infer.headers[rest.HEADER_LENGTH])
    header, binary = rest.split_body(infer.body, header_length)
    assert header["id"] == "b-1" and header["outputs"] == [{"name": "y"}]
    assert header["parameters"] == {"binary_data_output": True, "timeout": 2_500_000}
    assert bytes(binary) == x.tobytes()
    with urllib.request.urlopen(urllib.request.Request(http_url + infer.path, infer.body, infer.headers)) as answer:
        got = rest.decode_response(answer.read(), int(answer.headers[rest.HEADER_LENGTH]))
    np.testing.assert_array_equal(got["y"], 2 * x)


def test_http_json_bodies_for_servers_without_the_binary_extension(http_url, tmp_path):
    request = bench.infer_request("scale", {"x": np.ones((1, 3), np.float32)})
    infer = http_infer(request, binary=False)
    assert rest.HEADER_LENGTH not in infer.headers and infer.headers["Content-Type"] == rest.JSON_TYPE
    assert json.loads(infer.body)["inputs"][0]["data"] == [1.0, 1.0, 1.0]
    out_json = tmp_path / "j.json"
    assert main(["bench", "--url", http_url, "--model", "scale", "--http-body", "json", "--concurrency", "2",
                 "--seconds", "0.5", "--warmup", "0.1", "--json", str(out_json)]) == 0  # fmt: skip
    document = json.loads(out_json.read_text())
    assert document["protocol"] == "http" and document["http_body"] == "json"
    (level,) = document["levels"]
    assert level["requests"] > 0 and level["errors"] == 0


def test_http_without_aiohttp_says_how_to_get_it(http_url, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed: importing it fails
    assert main(["bench", "--url", http_url, "--model", "scale", *FAST]) == 2
    err = capsys.readouterr().err
    assert "pip install aiohttp" in err and "Traceback" not in err


# ---------------------------------------------------------------- the minimal stub


class StubProcess:
    """benchmarks/minimal_stub.py on port 0; the port comes from its 'listening on' line."""

    def __init__(self, model: Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "minimal_stub.py"), "--model", str(model), "--name", name,
             "--port", "0", "--intra-op-threads", "1"],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if match := re.search(r"listening on (\S+):(\d+)", line):
                self.address = f"{match.group(1)}:{match.group(2)}"
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise AssertionError("stub exited before listening:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def stub(repo) -> Iterator[StubProcess]:
    process = StubProcess(repo / "scale" / "1" / "model.onnx", "scale")
    yield process
    process.stop()


def test_minimal_stub_answers_and_bench_drives_it(stub, tmp_path, capsys):
    with Client(stub.address) as client:
        assert client.is_server_ready()
        meta = client.model_metadata("scale")
        assert meta.inputs == (TensorInfo("x", "FP32", (-1, 3)),)
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(client.infer("scale", {"x": x})["y"], 2 * x)

    out_json = tmp_path / "stub.json"
    code = main(["bench", "--url", stub.address, "--model", "scale", "--batch", "4", "--concurrency", "2", *FAST,
                 "--json", str(out_json)])  # fmt: skip
    assert code == 0, capsys.readouterr()
    (level,) = json.loads(out_json.read_text())["levels"]
    assert level["requests"] > 0 and level["errors"] == 0 and level["batch"] == 4


# ---------------------------------------------------------------- pieces


def test_parse_concurrency():
    assert parse_concurrency("1,8,32") == [1, 8, 32]
    assert parse_concurrency("1:16:x2") == [1, 2, 4, 8, 16]
    assert parse_concurrency("4:12:4,32") == [4, 8, 12, 32]
    for bad in ("0", "a", "1:8:x1", ""):
        with pytest.raises(Exception, match="concurrency"):
            parse_concurrency(bad)


def test_generated_inputs_follow_metadata():
    inputs = (
        TensorInfo("image", "UINT8", (-1, -1, 3)),
        TensorInfo("mask", "BOOL", (-1, 2)),
        TensorInfo("text", "BYTES", (-1,)),
        TensorInfo("half", "FP16", (4,)),
    )
    arrays = bench.random_inputs(inputs, batch=3, shapes={"image": [5, 3]})
    assert {n: (a.dtype.str, a.shape) for n, a in arrays.items()} == {
        "image": ("|u1", (3, 5, 3)),
        "mask": ("|b1", (3, 2)),
        "text": ("|O", (3,)),
        "half": ("<f2", (4,)),
    }
    assert bench.batch_of(arrays) == 3
    assert not bench.random_inputs(inputs[:1], batch=2, zeros=True)["image"].any()
    with pytest.raises(ValueError, match="after the batch dimension"):
        bench.resolve_shape(inputs[0], 1, [5, 4])
    with pytest.raises(ValueError, match="unknown inputs"):
        bench.random_inputs(inputs, shapes={"nope": [1]})
    with pytest.raises(ValueError, match="no input has a dynamic batch dimension"):
        bench.random_inputs(inputs[3:], batch=2)


def test_level_result_summary_without_samples():
    result = bench.LevelResult.from_samples(8, 2, 1.0, np.empty(0), {"UNAVAILABLE": (3, "down")})
    assert result.requests == 0 and result.errors == 3 and result.requests_per_s == 0
    summary = result.to_dict()
    assert summary["p99_ms"] is None and summary["error_summary"] == [
        {"code": "UNAVAILABLE", "count": 3, "first_message": "down"}
    ]
    json.dumps(summary, allow_nan=False)
