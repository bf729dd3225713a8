"""`Client("http://host:port")`: the same methods over the HTTP/REST binding, against a real server
on port 0, answering what the gRPC client answers on the same server: health, metadata,
inference and predict (every datatype), config, statistics, repository, errors with their codes
and the server's messages, deadlines, bearer tokens, TLS, the async twin, and `modelport predict`
with an http:// URL. (`modelport bench` over HTTP: tests/client/test_bench.py.)"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelport.client import AsyncClient, Client, InferenceServerError
from modelport.client.cli import main
from modelport.client.http import GRPC_ONLY, AsyncHttpClient, HttpClient
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import model_config_pb2 as mc
from modelport.server.background import BackgroundServer
from tests import models
from tests.server.test_datatypes import ONNX_TYPES, assert_exact, model_name, values

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.array([[2, 2, 2, 2], [0, 1, 0, 1]], dtype=np.float32)
X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("http-client")
    models.save(models.add_mul(), root, "add_mul")
    models.save(models.scale(2.0), root, "scale")
    for datatype, onnx_type in ONNX_TYPES.items():
        models.save(models.identity(onnx_type), root, model_name(datatype))
    return root


@pytest.fixture(scope="module")
def pair(server: BackgroundServer) -> Iterator[tuple[Client, Client]]:
    """(HTTP client, gRPC client) on the same server."""
    with Client(server.http_url, timeout=30) as http, Client(server.address, timeout=30) as rpc:
        yield http, rpc


# ---------------------------------------------------------------- the seam


def test_the_url_scheme_picks_the_transport(server: BackgroundServer) -> None:
    for url in (server.http_url, server.http_url.replace("http://", "HTTP://") + "/"):
        with Client(url) as client:
            assert type(client) is HttpClient and isinstance(client, Client)
            assert client.is_server_live()
    with Client(server.address) as rpc:
        assert type(rpc) is Client
    assert type(AsyncClient(server.http_url)) is AsyncHttpClient
    with pytest.raises(ValueError, match="gRPC channel options"):
        Client(server.http_url, load_balancing="round_robin")
    with pytest.raises(ValueError, match="https://"):
        Client(server.http_url, ssl=True)
    with pytest.raises(ValueError, match="one URL"):
        Client([server.http_url, server.http_url])


@pytest.mark.parametrize(("grpc_class", "http_class"), [(Client, HttpClient), (AsyncClient, AsyncHttpClient)])
def test_every_public_method_has_an_http_implementation(grpc_class, http_class) -> None:
    """A method added to the gRPC client must be written for HTTP too (or raise there)."""
    inherited_on_purpose = {"predict", "model"}  # built on model_metadata() and infer()
    public = {name for name, _ in inspect.getmembers(grpc_class, inspect.isfunction) if not name.startswith("_")}
    missing = sorted(public - inherited_on_purpose - set(vars(http_class)))
    assert not missing, f"{http_class.__name__} inherits gRPC code for {missing}"
    assert set(GRPC_ONLY) <= public


# ---------------------------------------------------------------- equal answers


def test_health_and_metadata_as_over_grpc(pair) -> None:
    http, rpc = pair
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("add_mul") and http.is_model_ready("add_mul", "1")
    assert not http.is_model_ready("nope") and not rpc.is_model_ready("nope")
    assert not http.is_model_ready("add_mul", "7")
    assert http.server_metadata() == rpc.server_metadata()
    assert http.model_metadata("add_mul") == rpc.model_metadata("add_mul")
    assert http.model_metadata("add_mul", "1") == rpc.model_metadata("add_mul", "1")
    handle = http.model("scale")
    assert handle.metadata() == rpc.model_metadata("scale") and handle.is_ready()


def test_infer_and_predict_as_over_grpc(pair) -> None:
    http, rpc = pair
    both = http.infer("add_mul", {"a": A, "b": B}, request_id="r-1")
    assert set(both) == {"sum", "prod"}
    for name, array in rpc.infer("add_mul", {"a": A, "b": B}).items():
        assert_exact(both[name], array)
    assert list(http.infer("add_mul", {"a": A, "b": B}, outputs=["prod"], version="1")) == ["prod"]
    np.testing.assert_array_equal(http.predict("scale", X), rpc.predict("scale", X))
    np.testing.assert_array_equal(http.predict("scale", [[1, 2, 3]]), [[2.0, 4.0, 6.0]])  # cast as Keras would
    many = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.testing.assert_array_equal(http.predict("scale", many, batch_size=4), 2 * many)
    np.testing.assert_array_equal(http.model("scale", "1").predict(X), 2 * X)
    assert_exact(http.model("add_mul").infer({"a": A, "b": B})["sum"], A + B)


@pytest.mark.parametrize("datatype", list(ONNX_TYPES))
def test_every_datatype_round_trips(pair, datatype: str) -> None:
    http, rpc = pair
    x = values(datatype)
    got = http.infer(model_name(datatype), {"x": x})["y"]
    assert_exact(got, x)
    assert_exact(got, rpc.infer(model_name(datatype), {"x": x})["y"])


def test_config_statistics_and_repository_as_over_grpc(pair) -> None:
    http, rpc = pair
    config = http.model_config("add_mul")
    assert isinstance(config, mc.ModelConfig) and config == rpc.model_config("add_mul")
    assert http.model_config("add_mul", "1") == config
    before = http.model_statistics("scale")
    assert isinstance(before, pb.ModelStatisticsResponse)
    http.predict("scale", X)
    after = http.model_statistics("scale", "1")
    assert after == rpc.model_statistics("scale", "1")
    (stats,) = after.model_stats
    assert stats.name == "scale" and stats.version == "1"
    assert stats.inference_count == before.model_stats[0].inference_count + 1
    assert stats.inference_stats.success.count == before.model_stats[0].inference_stats.success.count + 1
    assert {s.name for s in http.model_statistics().model_stats} >= {"add_mul", "scale"}
    assert http.repository_index() == rpc.repository_index()
    assert http.repository_index(ready_only=True) == rpc.repository_index(ready_only=True)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "code", "words"),
    [
        (lambda c: c.infer("nope", {"x": X}), grpc.StatusCode.NOT_FOUND, ["'nope'"]),
        (lambda c: c.infer("scale", {"x": X}, version="7"), grpc.StatusCode.NOT_FOUND, ["'7'"]),
        (lambda c: c.model_metadata("nope"), grpc.StatusCode.NOT_FOUND, ["'nope'"]),
        (lambda c: c.model_config("nope"), grpc.StatusCode.NOT_FOUND, ["'nope'"]),
        (lambda c: c.infer("add_mul", {"a": A}), grpc.StatusCode.INVALID_ARGUMENT, ["missing input 'b'"]),
        (lambda c: c.infer("scale", {"x": X.astype(np.float64)}), grpc.StatusCode.INVALID_ARGUMENT,
         ["input 'x'", "FP64", "FP32"]),
        (lambda c: c.infer("scale", {"x": np.ones((2, 5), np.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
         ["[2, 5]"]),
        (lambda c: c.infer("scale", {"x": X}, outputs=["nope"]), grpc.StatusCode.INVALID_ARGUMENT,
         ["output 'nope'"]),
    ],
    ids=["unknown_model", "unknown_version", "metadata", "config", "missing_input", "wrong_datatype",
         "wrong_shape", "unknown_output"],
)  # fmt: skip
def test_errors_carry_the_grpc_code_and_the_servers_message(pair, call, code, words) -> None:
    http, rpc = pair
    with pytest.raises(InferenceServerError) as over_http:
        call(http)
    with pytest.raises(InferenceServerError) as over_grpc:
        call(rpc)
    assert over_http.value.code == over_grpc.value.code == code
    assert over_http.value.message == over_grpc.value.message
    for word in words:
        assert word in over_http.value.message
    np.testing.assert_array_equal(http.predict("scale", X), 2 * X)  # the server keeps serving


def test_repository_calls_outside_explicit_mode_are_refused(pair) -> None:
    http, _ = pair
    with pytest.raises(InferenceServerError) as caught:
        http.load_model("scale")
    # FAILED_PRECONDITION over gRPC; HTTP's 400 carries it and INVALID_ARGUMENT alike.
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "--model-control-mode explicit" in caught.value.message


def test_grpc_only_methods_name_the_grpc_address(pair) -> None:
    http, _ = pair
    for call in (lambda: http.report_label("scale", "id-1", [1]), lambda: http.quality("scale"),
                 lambda: http.rollout_status("scale"), lambda: http.rollout_refresh("scale"),
                 lambda: http.explain("scale", X)):  # fmt: skip
        with pytest.raises(InferenceServerError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
        assert "gRPC" in caught.value.message and http.url in caught.value.message


def test_unreachable_server() -> None:
    with Client(UNREACHABLE, timeout=5, retries=1) as client:
        assert client.is_server_ready() is False
        with pytest.raises(InferenceServerError) as caught:
            client.predict("scale", X)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:1" in caught.value.message


def test_timeout_is_the_servers_deadline(tmp_path: Path) -> None:
    """A call's timeout travels as the request's `timeout` parameter: the server drops a request
    still queued when it passes (it never runs), as it does with a gRPC deadline."""
    models.save(models.scale(2.0), tmp_path, "slow", config='name: "slow"\nmax_batch_size: 8\n'
                'dynamic_batching { max_queue_delay_microseconds: 400000 }\n')  # fmt: skip
    with BackgroundServer(tmp_path) as server, Client(server.http_url, timeout=30) as client:
        with pytest.raises(InferenceServerError) as caught:
            client.infer("slow", {"x": X[:1]}, timeout=0.05)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        client.timeout = 0.05  # the client's default deadline works the same way
        with pytest.raises(InferenceServerError) as caught:
            client.predict("slow", X[:1])
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        client.timeout = 30
        np.testing.assert_array_equal(client.predict("slow", X[:1]), 2 * X[:1])  # waits out the queue delay
        (stats,) = client.model_statistics("slow").model_stats
        assert stats.inference_count == 1  # the two late requests never ran


def test_bearer_token_and_scopes_and_repository_calls(tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m")
    tokens = tmp_path / "tokens"
    tokens.write_text("reader inference\nboss admin\n")
    with BackgroundServer(tmp_path, auth_token_file=tokens, model_control_mode="explicit",
                          load_model=("*",)) as server:  # fmt: skip
        url = server.http_url
        assert Client(url).is_server_ready()  # health stays open (--auth-open-health)
        for client in (Client(url), Client(url, token="wrong")):
            with pytest.raises(InferenceServerError) as caught:
                client.predict("m", X)
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED and "reader" not in caught.value.message
        reader, boss = Client(url, token="reader"), Client(url, token="boss")
        np.testing.assert_array_equal(reader.predict("m", X), 2 * X)
        with pytest.raises(InferenceServerError) as caught:
            reader.unload_model("m")
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED and "admin" in caught.value.message
        boss.unload_model("m")
        assert not reader.is_model_ready("m")
        assert [(e.name, e.state) for e in boss.repository_index()] == [("m", "UNAVAILABLE")]
        boss.load_model("m")
        assert reader.is_model_ready("m") and boss.repository_index(ready_only=True)[0].state == "READY"


# ---------------------------------------------------------------- TLS


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                            ("client", "extendedKeyUsage=clientAuth")):  # fmt: skip
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return d


def test_https_and_mutual_tls(pki: Path, tmp_path: Path) -> None:
    models.save(models.scale(2.0), tmp_path, "m")
    settings = dict(grpc_use_ssl=True, grpc_use_ssl_mutual=True, grpc_server_cert=pki / "server.pem",
                    grpc_server_key=pki / "server.key", grpc_root_cert=pki / "ca.pem")  # fmt: skip
    with BackgroundServer(tmp_path, **settings) as server:
        url = server.http_url.replace("http://", "https://")
        # certificates as paths, or as bytes (the key and chain go through a private temporary file)
        for good in (dict(root_certificates=pki / "ca.pem", private_key=pki / "client.key",
                          certificate_chain=pki / "client.pem"),
                     dict(root_certificates=(pki / "ca.pem").read_bytes(),
                          private_key=(pki / "client.key").read_bytes(),
                          certificate_chain=(pki / "client.pem").read_bytes())):  # fmt: skip
            with Client(url, **good) as client:
                np.testing.assert_array_equal(client.predict("m", X), 2 * X)
        for bad in (Client(url, root_certificates=pki / "ca.pem", retries=0),  # no client certificate
                    Client(url, retries=0),  # the server's CA is not trusted
                    Client(server.http_url, retries=0)):  # plaintext to a TLS port  # fmt: skip
            with pytest.raises(InferenceServerError) as caught:
                bad.model_metadata("m", timeout=10)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- async


def test_async_client_over_http(server: BackgroundServer) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.http_url, timeout=30) as client:
            assert await client.is_server_ready() and await client.is_model_ready("scale")
            assert (await client.server_metadata()).name == "modelport"
            results = await asyncio.gather(*(client.predict("scale", X * i) for i in range(8)))
            for i, y in enumerate(results):
                np.testing.assert_array_equal(y, 2 * X * i)
            out = await client.model("add_mul").infer({"a": A, "b": B})
            np.testing.assert_array_equal(out["prod"], A * B)
            assert (await client.model_config("scale")).name == "scale"
            assert (await client.model_statistics("scale")).model_stats[0].name == "scale"
            assert [e.name for e in await client.repository_index()] == [e.name for e in
                                                                           Client(server.address).repository_index()]
            with pytest.raises(InferenceServerError) as caught:
                await client.predict("nope", X)
            assert caught.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(InferenceServerError) as caught:
                await client.quality("scale")
            assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED

    asyncio.run(scenario())


# ---------------------------------------------------------------- modelport predict


def test_predict_command_over_http(server: BackgroundServer, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", X.astype(np.float64))  # cast to the model's FP32, as over gRPC
    assert main(["predict", "--url", server.http_url, "--model", "scale", "--input", str(tmp_path / "x.npy")]) == 0
    assert "y float32 [2, 3]" in capsys.readouterr().out
    np.savez(tmp_path / "in.npz", a=A, b=B)
    assert main(["predict", "--url", server.http_url, "--model", "add_mul", "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 0  # fmt: skip
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_array_equal(saved["sum"], A + B)
    assert main(["predict", "--url", server.http_url, "--model", "nope", "--input", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert "error: [NOT_FOUND]" in err and "'nope'" in err and "Traceback" not in err
    assert main(["predict", "--url", UNREACHABLE, "--model", "scale", "--input", str(tmp_path / "x.npy"),
                 "--timeout", "5"]) == 1  # fmt: skip
    assert "error: [UNAVAILABLE]" in capsys.readouterr().err


def test_other_commands_over_http(server: BackgroundServer, capsys) -> None:
    assert main(["models", "--url", server.http_url, "list"]) == 0
    assert any(line.split()[:3] == ["scale", "1", "READY"] for line in capsys.readouterr().out.splitlines())
    assert main(["quality", "--url", server.http_url, "--model", "scale"]) == 1  # gRPC only, and it says so
    err = capsys.readouterr().err
    assert "error: [UNIMPLEMENTED] quality()" in err and "gRPC address" in err
