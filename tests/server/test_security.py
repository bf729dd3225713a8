"""TLS, mutual TLS with certificate reload, bearer-token auth with scopes, and request limits."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelport.client import AsyncClient, Client, InferenceServerError
from modelport.server.background import BackgroundServer
from tests import models
from tests.hold import held_server

X = np.ones((1, 3), np.float32)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                            ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return d


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    models.save(models.scale(2.0), root, "m")
    return root


def test_tls(pki: Path, repo: Path) -> None:
    settings = dict(grpc_use_ssl=True, grpc_server_cert=pki / "server.pem", grpc_server_key=pki / "server.key")
    with BackgroundServer(repo, **settings) as server:
        np.testing.assert_array_equal(Client(server.address, root_certificates=pki / "ca.pem").predict("m", X), 2 * X)
        with pytest.raises(InferenceServerError) as err:  # plaintext to a TLS port
            Client(server.address, timeout=5).predict("m", X)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_and_certificate_reload(pki: Path, repo: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes((pki / "server.pem").read_bytes())
    key.write_bytes((pki / "server.key").read_bytes())
    settings = dict(grpc_use_ssl=True, grpc_use_ssl_mutual=True, grpc_server_cert=cert, grpc_server_key=key,
                    grpc_root_cert=pki / "ca.pem")
    with BackgroundServer(repo, **settings) as server:
        good = dict(root_certificates=pki / "ca.pem", private_key=pki / "client.key",
                    certificate_chain=pki / "client.pem")
        np.testing.assert_array_equal(Client(server.address, **good).predict("m", X), 2 * X)
        with pytest.raises(InferenceServerError) as err:  # no client certificate
            Client(server.address, root_certificates=pki / "ca.pem", timeout=5).predict("m", X)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        # Renew the server certificate on disk (a new key and cert from the same CA): new
        # connections get it without a restart.
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=renewed", "-keyout", str(tmp_path / "new.key"),
                "-out", str(tmp_path / "new.csr"))
        openssl("x509", "-req", "-in", str(tmp_path / "new.csr"), "-CA", str(pki / "ca.pem"),
                "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(pki / "server.ext"), "-out", str(tmp_path / "new.pem"))
        time.sleep(0.01)
        key.write_bytes((tmp_path / "new.key").read_bytes())
        cert.write_bytes((tmp_path / "new.pem").read_bytes())
        renewed = Client(server.address, **good)
        np.testing.assert_array_equal(renewed.predict("m", X), 2 * X)
        served = _peer_certificate_subject(server.address, pki)
        assert "renewed" in served


def _peer_certificate_subject(address: str, pki: Path) -> str:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", address, "-CAfile", str(pki / "ca.pem"), "-cert", str(pki / "client.pem"),
         "-key", str(pki / "client.key"), "-alpn", "h2"],
        input=b"", capture_output=True, timeout=30,
    )
    return out.stdout.decode(errors="replace")


def test_bearer_tokens_and_scopes(repo: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# token scopes\nreader-token inference\nroot-token admin\n")
    with BackgroundServer(repo, auth_token_file=tokens, model_control_mode="explicit", load_model=("*",)) as server:
        np.testing.assert_array_equal(Client(server.address, token="reader-token").predict("m", X), 2 * X)
        for client in (Client(server.address), Client(server.address, token="wrong")):
            with pytest.raises(InferenceServerError) as err:
                client.predict("m", X)
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "reader-token" not in err.value.message and "root-token" not in err.value.message
        with pytest.raises(InferenceServerError) as err:
            Client(server.address, token="reader-token").unload_model("m")
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        Client(server.address, token="root-token").load_model("m")  # admin may
        assert Client(server.address, token="root-token").predict("m", X)[0, 0] == 2
        # health answers without a token
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(server.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        # the file is reread when it changes: a revoked token stops working
        time.sleep(0.01)
        tokens.write_text("root-token admin\nnew-reader inference\n")
        with pytest.raises(InferenceServerError) as err:
            Client(server.address, token="reader-token").predict("m", X)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert Client(server.address, token="new-reader").predict("m", X)[0, 0] == 2


def test_closed_health_when_asked(repo: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t inference\n")
    with BackgroundServer(repo, auth_token_file=tokens, auth_open_health=False) as server:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_limits(repo: Path) -> None:
    with BackgroundServer(repo, max_tensor_elements=300, default_request_timeout=5.0) as server:
        client = Client(server.address)
        with pytest.raises(InferenceServerError) as err:
            client.infer("m", {"x": np.ones((101, 3), np.float32)})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "limit is 300" in err.value.message
        # A declared shape far beyond the data is refused before anything is allocated.
        from modelport.protocol import codec
        from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc

        request = codec.build_request("m", {"x": X})
        del request.inputs[0].shape[:]
        request.inputs[0].shape.extend([2**40, 3])
        with grpc.insecure_channel(server.address) as channel:
            with pytest.raises(grpc.RpcError) as rpc_err:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.predict("m", np.ones((100, 3))).shape == (100, 3)


def test_pending_requests_limit_pushes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models.save(models.scale(2.0), tmp_path, "m")
    with held_server(tmp_path, "m", monkeypatch, max_pending_requests=2) as (server, _, held):

        async def flood():
            async with AsyncClient(server.address) as client:
                calls = [asyncio.ensure_future(client.infer("m", {"x": X})) for _ in range(6)]
                for _ in range(6000):  # two are pending (one runs, one waits): the other four are refused
                    if sum(c.done() for c in calls) >= 4:
                        break
                    await asyncio.sleep(0.01)
                held.release()
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(flood())
        refused = [o for o in outcomes if isinstance(o, InferenceServerError)]
        assert len(refused) == 4 and all(o.code == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused), outcomes
        assert "model 'm' version 1: 2 requests are already pending (limit 2)" in refused[0].message
        assert sum(isinstance(o, dict) for o in outcomes) == 2


def test_default_request_timeout_drops_a_request_that_waited_too_long(tmp_path: Path, monkeypatch) -> None:
    models.save(models.scale(2.0), tmp_path, "m")
    with held_server(tmp_path, "m", monkeypatch, default_request_timeout=0.3) as (server, model, held):

        async def run():
            async with AsyncClient(server.address) as client:  # no client deadline: the server's default applies
                running = asyncio.ensure_future(client.infer("m", {"x": X}))
                await asyncio.to_thread(held.wait_entered)
                waiting = asyncio.ensure_future(client.infer("m", {"x": 2 * X}))
                while model.in_flight < 2:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)  # past the 0.3 s default for both
                held.release()
                return await asyncio.gather(running, waiting, return_exceptions=True)

        running, waiting = asyncio.run(run())
        # The run that had started finishes (as in Triton); the one still waiting is dropped.
        np.testing.assert_array_equal(running["y"], 2 * X)
        assert isinstance(waiting, InferenceServerError) and waiting.code == grpc.StatusCode.DEADLINE_EXCEEDED, waiting
        assert "model 'm' version 1" in waiting.message and "deadline passed before it could run" in waiting.message
        assert Client(server.address).infer("m", {"x": X})["y"][0, 0] == 2.0  # still serving


def test_max_concurrent_streams_bounds_calls_per_connection(tmp_path: Path, monkeypatch) -> None:
    models.save(models.scale(2.0), tmp_path, "m")
    with held_server(tmp_path, "m", monkeypatch, max_concurrent_streams=2) as (server, model, held):

        async def run():
            async with AsyncClient(server.address) as client:  # one channel: one HTTP/2 connection
                calls = [asyncio.ensure_future(client.infer("m", {"x": (i + 1) * X})) for i in range(5)]
                while model.in_flight < 2:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)
                admitted = model.in_flight  # the other three wait in the client's transport
                held.release()
                return admitted, await asyncio.gather(*calls)

        admitted, results = asyncio.run(run())
        assert admitted == 2
        for i, result in enumerate(results):  # nothing refused or lost: they ran once streams freed up
            np.testing.assert_array_equal(result["y"], 2 * (i + 1) * X)


def test_a_flood_of_large_requests_meets_back_pressure(tmp_path: Path, monkeypatch) -> None:
    width, limit = 1024 * 1024, 20 * 1024 * 1024  # 4 MiB requests, 20 MiB in flight at most
    models.save(models.scale(2.0, width=width), tmp_path, "big")
    with held_server(tmp_path, "big", monkeypatch, max_inflight_bytes=limit) as (server, model, held):
        dataplane = server.running.dataplane
        x = np.ones((1, width), np.float32)

        async def flood():
            async with AsyncClient(server.address) as client:
                calls = [asyncio.ensure_future(client.infer("big", {"x": (i + 1) * x})) for i in range(12)]
                for _ in range(6000):  # the instance holds the first: the rest queue or are refused
                    if model.in_flight + sum(c.done() for c in calls) == len(calls):
                        break
                    await asyncio.sleep(0.01)
                held_bytes = dataplane.inflight_bytes
                scraped = urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics").read().decode()
                held.release()
                return held_bytes, scraped, await asyncio.gather(*calls, return_exceptions=True)

        held_bytes, scraped, outcomes = asyncio.run(flood())
        gauge = re.search(r"^modelport_inflight_request_bytes (\S+)$", scraped, re.M)
        assert gauge and float(gauge.group(1)) == held_bytes  # what operators see
        refused = [o for o in outcomes if isinstance(o, InferenceServerError)]
        answered = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, dict)]
        assert held_bytes <= limit and len(answered) == 4, (held_bytes, len(answered))  # 5 x (4 MiB + header) > 20 MiB
        assert len(refused) == 8 and all(o.code == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused), refused
        assert "model 'big' version 1" in refused[0].message and "--max-inflight-bytes" in refused[0].message
        for i, result in answered:  # the admitted ones were not lost
            np.testing.assert_array_equal(result["y"], 2 * (i + 1) * x)
        assert dataplane.inflight_bytes == 0  # every byte was released
        assert Client(server.address).infer("big", {"x": x})["y"].shape == (1, width)
