"""Models uploaded through RepositoryModelLoad (`file:<version>/<name>` and `config` parameters, as
Triton defines them) to real servers: tritonclient.grpc's load_model(name, config=..., files=...)
unchanged, the HTTP binding's base64 form, every refusal (size, names, corrupt ONNX, scope,
signature) while the server keeps serving, unload, replacement, --persist-uploads, poll mode."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto

from modelport.client import Client, InferenceServerError
from modelport.converter.signing import sign_folder
from modelport.server.background import BackgroundServer
from tests import models
from tests.protection import key_pair

X = np.arange(6, dtype=np.float32).reshape(2, 3)
CONFIG = json.dumps({
    "name": "up", "backend": "onnxruntime", "max_batch_size": 8,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
})  # fmt: skip


def onnx_bytes(factor: float = 2.0) -> bytes:
    """y = x * factor, FP32 [batch, 3]."""
    return models.scale(factor).SerializeToString()


def triton_load(address: str, name: str, files: dict[str, bytes], config: str | None = None, token: str = "") -> None:
    """tritonclient.grpc's load_model, exactly as a Triton user calls it."""
    peer = triton.InferenceServerClient(address)
    try:
        headers = {"authorization": f"Bearer {token}"} if token else None
        peer.load_model(name, headers=headers, config=config, files=files)
    finally:
        peer.close()


def refused(address: str, name: str, files: dict[str, bytes], config: str | None = None, token: str = ""):
    """The InferenceServerException a refused upload raises."""
    with pytest.raises(triton.InferenceServerException) as caught:
        triton_load(address, name, files, config, token)
    return caught.value


@pytest.fixture
def start_server(start_server):
    """Servers in explicit mode (where uploads are taken, as RepositoryModelLoad in Triton), every
    model of the repository loaded at start."""

    def start(repository: Path, **settings) -> str:
        settings.setdefault("model_control_mode", "explicit")
        settings.setdefault("load_model", ("*",))
        return start_server(repository, **settings)

    return start


def explicit(repository: Path, **settings) -> BackgroundServer:
    """A BackgroundServer as `start_server` starts them (for tests that look inside it)."""
    return BackgroundServer(repository, **{"model_control_mode": "explicit", "load_model": ("*",), **settings})


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository already serving one model ('other'), which every refusal must leave serving."""
    repo = tmp_path / "models"
    models.save(models.scale(10.0), repo, "other")
    return repo


def still_serving(address: str) -> None:
    with Client(address, timeout=30) as client:
        np.testing.assert_allclose(client.predict("other", X), X * 10)


def test_tritonclient_uploads_a_model_with_its_config(repository, start_server):
    address = start_server(repository)
    triton_load(address, "up", {"file:1/model.onnx": onnx_bytes(3.0)}, CONFIG)
    with Client(address, timeout=30) as client:
        np.testing.assert_allclose(client.predict("up", X), X * 3)
        assert client.model_config("up").max_batch_size == 8
        assert ("up", "1", "READY") in [(m.name, m.version, m.state) for m in client.repository_index()]
        stats = client.model_statistics("up").model_stats[0]
        assert stats.version == "1" and stats.inference_count == 2
    peer = triton.InferenceServerClient(address)
    try:
        assert peer.is_model_ready("up")
        tensor = triton.InferInput("x", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        np.testing.assert_allclose(peer.infer("up", [tensor]).as_numpy("y"), X * 3)
    finally:
        peer.close()
    still_serving(address)


def test_an_upload_without_config_is_auto_completed_and_metrics_count_it(repository, start_server):
    server = explicit(repository).start()
    try:
        triton_load(server.address, "bare", {"file:4/model.onnx": onnx_bytes(5.0)})
        with Client(server.address, timeout=30) as client:
            np.testing.assert_allclose(client.predict("bare", X), X * 5)
            assert client.model_metadata("bare").versions == ("4",)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics", timeout=10)
        text = metrics.read().decode()
        assert 'modelport_model_load_duration_seconds{model="bare",version="4"}' in text
        assert 'modelport_model_file_bytes{model="bare",version="4"}' in text
    finally:
        server.stop()


def test_the_http_binding_takes_base64_files(repository):
    with explicit(repository) as server:
        body = json.dumps({"parameters": {"config": CONFIG.replace('"up"', '"web"'),
                                          "file:1/model.onnx": base64.b64encode(onnx_bytes(4.0)).decode()}})
        request = urllib.request.Request(f"{server.http_url}/v2/repository/models/web/load", body.encode(),
                                         {"Content-Type": "application/json"})  # fmt: skip
        assert urllib.request.urlopen(request, timeout=30).status == 200
        with Client(server.http_url, timeout=30) as client:
            np.testing.assert_allclose(client.predict("web", X), X * 4)
        bad = json.dumps({"parameters": {"file:1/model.onnx": "not base64!"}}).encode()
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(f"{server.http_url}/v2/repository/models/web/load", bad),
                                   timeout=30)  # fmt: skip
        assert caught.value.code == 400 and "base64" in json.loads(caught.value.read())["error"]


@pytest.mark.parametrize("key", ["file:../x", "file:1/../../x", "file:/etc/passwd", "file:1/.hidden", "file:1/a/b",
                                 "file:01/model.onnx", "file:0/model.onnx", "file:notes.txt", "file:1\\model.onnx",
                                 "file:1//model.onnx"])  # fmt: skip
def test_names_outside_a_model_folder_are_refused(repository, start_server, key):
    address = start_server(repository)
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes(), key: b"x"})
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "model 'up'" in error.message() and key in error.message(), error.message()
    still_serving(address)
    assert not list(Path("/").glob("x")) and not (repository.parent / "x").exists()


def test_an_upload_over_the_limit_is_refused_and_nothing_changes(repository, start_server):
    address = start_server(repository, max_upload_bytes=1000)
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes() + b"\0" * 2000})
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "--max-upload-bytes" in error.message() and "1000" in error.message(), error.message()
    still_serving(address)
    with Client(address) as client:
        assert "up" not in [m.name for m in client.repository_index()]


def test_large_uploads_fit_in_one_message_while_inference_keeps_its_limit(tmp_path, start_server):
    """--grpc-max-message-size bounds inference; an upload up to --max-upload-bytes still fits."""
    big = models.graph_model(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", TensorProto.FLOAT, [None, 512])], [("y", TensorProto.FLOAT, [None, 1024])],
        [onnx.numpy_helper.from_array(np.ones((512, 1024), np.float32), "w")],
    ).SerializeToString()  # fmt: skip
    assert len(big) > 2 * 2**20
    address = start_server(tmp_path, max_message_bytes=2**20)
    triton_load(address, "big", {"file:1/model.onnx": big})
    with Client(address, timeout=30) as client:
        assert client.predict("big", np.ones((1, 512), np.float32))[0, 0] == 512
        with pytest.raises(InferenceServerError) as caught:
            client.predict("big", np.ones((600, 512), np.float32))  # 1.2 MiB of tensors
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--grpc-max-message-size" in caught.value.message and "model 'big'" in caught.value.message


def test_corrupt_onnx_is_invalid_argument_and_the_uploaded_version_keeps_serving(repository, start_server):
    address = start_server(repository)
    triton_load(address, "up", {"file:1/model.onnx": onnx_bytes(3.0)})
    error = refused(address, "up", {"file:2/model.onnx": b"this is not an ONNX file"})
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "do not load" in error.message() and "version 2" in error.message(), error.message()
    assert "keeps serving" in error.message(), error.message()
    with Client(address, timeout=30) as client:
        np.testing.assert_allclose(client.predict("up", X), X * 3)
        assert client.model_metadata("up").versions == ("1",)
    still_serving(address)


def test_a_bad_config_or_a_missing_model_file_is_invalid_argument(repository, start_server):
    address = start_server(repository)
    for files, config, expected in [
        ({"file:1/model.onnx": onnx_bytes()}, "{not json", "not JSON"),
        ({"file:1/model.onnx": onnx_bytes()}, json.dumps({"name": "another"}), "'another'"),
        ({"file:1/conversion.json": b"{}"}, None, "no model.onnx"),
        ({"file:labels.txt": b"a\n"}, None, "no version files"),
        ({"file:1/model.onnx": onnx_bytes()}, json.dumps({"platform": "tensorflow_savedmodel"}), "not served here"),
    ]:
        error = refused(address, "up", files, config)
        assert error.status() == "StatusCode.INVALID_ARGUMENT", (error, expected)
        assert expected in error.message(), error.message()
    still_serving(address)


def test_uploads_need_the_admin_scope(repository, start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("reader inference\nboss admin\n")
    address = start_server(repository, auth_token_file=tokens)
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes()}, token="reader")
    assert error.status() == "StatusCode.PERMISSION_DENIED", error
    triton_load(address, "up", {"file:1/model.onnx": onnx_bytes(3.0)}, token="boss")
    with Client(address, token="reader", timeout=30) as client:
        np.testing.assert_allclose(client.predict("up", X), X * 3)


def test_with_verify_key_an_upload_must_carry_a_signature_that_verifies(repository, start_server, tmp_path):
    private, public = key_pair(tmp_path / "keys", "signer")
    folder = tmp_path / "signed" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(onnx_bytes(6.0))
    sign_folder(folder, private)
    signature = (folder / "model.sig").read_bytes()
    (tmp_path / "empty").mkdir()
    address = start_server(tmp_path / "empty", verify_key=(public,))

    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes(6.0)})
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "model.sig" in error.message() and "--verify-key" in error.message(), error.message()
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes(7.0), "file:1/model.sig": signature})
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "signature" in error.message(), error.message()
    triton_load(address, "up", {"file:1/model.onnx": onnx_bytes(6.0), "file:1/model.sig": signature})
    with Client(address, timeout=30) as client:
        np.testing.assert_allclose(client.predict("up", X), X * 6)


def test_reupload_replaces_and_unload_removes_the_files(repository, start_server, tmp_path):
    server = explicit(repository).start()
    try:
        triton_load(server.address, "up", {"file:1/model.onnx": onnx_bytes(3.0)})
        first = server.running.dataplane.registry.folder("up")
        assert first.is_dir() and not first.is_relative_to(repository)
        triton_load(server.address, "up", {"file:2/model.onnx": onnx_bytes(4.0)})
        second = server.running.dataplane.registry.folder("up")
        assert not first.exists() and second.is_dir()
        with Client(server.address, timeout=30) as client:
            np.testing.assert_allclose(client.predict("up", X), X * 4)
            assert client.model_metadata("up").versions == ("2",)
            client.unload_model("up")
            assert not client.is_model_ready("up")
            with pytest.raises(InferenceServerError) as caught:
                client.predict("up", X)
            assert caught.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
        assert not second.exists()
    finally:
        server.stop()
    still_serving_again = explicit(repository).start()
    try:
        still_serving(still_serving_again.address)
    finally:
        still_serving_again.stop()


def test_an_upload_named_like_a_repository_model_stands_in_for_it_until_unloaded(repository, start_server):
    address = start_server(repository, model_control_mode="explicit", load_model=("other",))
    triton_load(address, "other", {"file:1/model.onnx": onnx_bytes(3.0)})
    with Client(address, timeout=30) as client:
        np.testing.assert_allclose(client.predict("other", X), X * 3)
        client.unload_model("other")
        client.load_model("other")  # explicit mode: the repository's files again
        np.testing.assert_allclose(client.predict("other", X), X * 10)


def test_a_config_without_files_changes_an_uploaded_model(repository, start_server):
    address = start_server(repository)
    triton_load(address, "up", {"file:1/model.onnx": onnx_bytes(3.0)}, CONFIG)
    triton_load(address, "up", {}, CONFIG.replace('"max_batch_size": 8', '"max_batch_size": 2'))
    with Client(address, timeout=30) as client:
        assert client.model_config("up").max_batch_size == 2
        np.testing.assert_allclose(client.predict("up", X), X * 3)
    error = refused(address, "nothing", {}, json.dumps({"name": "nothing"}))
    assert error.status() == "StatusCode.NOT_FOUND", error


def test_control_modes_none_and_poll_refuse_uploads_unless_poll_publishes_them(repository, start_server):
    for mode in ("none", "poll"):
        address = start_server(repository, model_control_mode=mode, load_model=())
        error = refused(address, "up", {"file:1/model.onnx": onnx_bytes()})
        assert error.status() == "StatusCode.FAILED_PRECONDITION", error
        assert f"--model-control-mode {mode}" in error.message() and "explicit" in error.message(), error.message()
        still_serving(address)
    server = BackgroundServer(repository, model_control_mode="poll", repository_poll_secs=0.1,
                              persist_uploads=True).start()  # fmt: skip
    try:
        triton_load(server.address, "up", {"file:1/model.onnx": onnx_bytes(3.0)})
        polls = server.running.dataplane.registry.polls
        deadline = time.monotonic() + 10
        while server.running.dataplane.registry.polls < polls + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        with Client(server.address, timeout=30) as client:
            np.testing.assert_allclose(client.predict("up", X), X * 3)
        assert (repository / "up" / "1" / "model.onnx").is_file()
    finally:
        server.stop()


def test_persist_uploads_publishes_into_the_repository(repository, start_server, caplog):
    caplog.set_level("INFO")
    models.save(models.scale(1.0), repository, "kept", config='name: "kept"\nmax_batch_size: 4\n')
    address = start_server(repository, persist_uploads=True)
    triton_load(address, "up", {"file:1/model.onnx": onnx_bytes(3.0), "file:labels.txt": b"a\nb\nc\n"}, CONFIG)
    assert (repository / "up" / "1" / "model.onnx").read_bytes() == onnx_bytes(3.0)
    assert (repository / "up" / "labels.txt").read_text() == "a\nb\nc\n"
    assert "max_batch_size: 8" in (repository / "up" / "config.pbtxt").read_text()
    loads = [r for r in caplog.records if "model_loaded" in r.getMessage() and "model=up " in r.getMessage()]
    assert len(loads) == 1, "the published version is served as loaded from the upload, not loaded twice"
    # A new version of a repository model joins it under the model's own config.
    triton_load(address, "kept", {"file:2/model.onnx": onnx_bytes(9.0)})
    assert sorted(p.name for p in (repository / "kept").iterdir()) == ["1", "2", "config.pbtxt"]
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes(4.0)})
    assert error.status() == "StatusCode.ALREADY_EXISTS", error
    assert (repository / "up" / "1" / "model.onnx").read_bytes() == onnx_bytes(3.0)
    assert [p.name for p in (repository / ".modelport-uploads").iterdir()] == []
    with Client(address, timeout=30) as client:
        np.testing.assert_allclose(client.predict("up", X), X * 3)
        np.testing.assert_allclose(client.predict("kept", X), X * 9)
        assert client.model_config("kept").max_batch_size == 4
    # What was published serves after a restart, from the repository alone.
    with BackgroundServer(repository) as again, Client(again.address, timeout=30) as client:
        np.testing.assert_allclose(client.predict("up", X), X * 3)


def test_several_workers_refuse_uploads_that_would_reach_one_of_them(repository, start_server):
    address = start_server(repository, workers=2)
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes()})
    assert error.status() == "StatusCode.FAILED_PRECONDITION", error
    assert "--workers" in error.message() and "--persist-uploads" in error.message(), error.message()
    address = start_server(repository, max_upload_bytes=0)
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes()})
    assert error.status() == "StatusCode.FAILED_PRECONDITION" and "--max-upload-bytes 0" in error.message()


def test_a_model_over_the_memory_limit_is_resource_exhausted(repository, start_server):
    address = start_server(repository, model_memory_limit=1)
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes()})
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
    assert "--model-memory-limit" in error.message(), error.message()


def test_external_data_outside_the_upload_is_refused(repository, start_server):
    """A graph whose weights name a file outside its version folder never reads it (ONNX Runtime
    1.31 validates external data paths; this proves it for uploads)."""
    model = models.graph_model(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])], [("x", TensorProto.FLOAT, [None, 1])],
        [("y", TensorProto.FLOAT, [None, 1])], [onnx.numpy_helper.from_array(np.zeros((1,), np.float32), "w")],
    )  # fmt: skip
    weights = model.graph.initializer[0]
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    address = start_server(repository)
    for location in ("../../../../../../etc/hostname", "/etc/hostname"):
        del weights.external_data[:]
        weights.external_data.add(key="location", value=location)
        weights.external_data.add(key="length", value="4")
        error = refused(address, "up", {"file:1/model.onnx": model.SerializeToString()})
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error
        assert "External data path" in error.message(), error.message()
    still_serving(address)


def test_a_config_pbtxt_file_and_labels_come_with_the_upload(repository, start_server):
    config = (b'name: "up"\nmax_batch_size: 4\n'
              b'output { name: "y" data_type: TYPE_FP32 dims: [3] label_filename: "labels.txt" }\n')
    address = start_server(repository)
    triton_load(address, "up", {"file:1/model.onnx": onnx_bytes(1.0), "file:config.pbtxt": config,
                                "file:labels.txt": b"cat\ndog\nemu\n"})  # fmt: skip
    peer = triton.InferenceServerClient(address)
    try:
        tensor = triton.InferInput("x", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.array([[0.1, 0.9, 0.3]], np.float32))
        top = peer.infer("up", [tensor], outputs=[triton.InferRequestedOutput("y", class_count=1)]).as_numpy("y")
        assert top[0][0].decode().endswith(":1:dog"), top
        assert peer.get_model_config("up").config.max_batch_size == 4
    finally:
        peer.close()
    error = refused(address, "up", {"file:1/model.onnx": onnx_bytes(), "file:config.pbtxt": config}, CONFIG)
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "send one" in error.message(), error


def test_an_http_upload_over_the_limit_names_the_flag(repository):
    with explicit(repository, max_upload_bytes=1000) as server:
        body = json.dumps({"parameters": {"file:1/model.onnx": base64.b64encode(b"\0" * 10_000).decode()}}).encode()
        request = urllib.request.Request(f"{server.http_url}/v2/repository/models/up/load", body)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 400 and "--max-upload-bytes" in json.loads(caught.value.read())["error"]
        still_serving(server.address)


def test_only_a_server_that_takes_uploads_receives_messages_larger_than_inferences() -> None:
    from modelport.server.uploads import UploadSettings

    mib = 2**20
    explicit_mode = UploadSettings(100 * mib, persist=False, workers=1, control_mode="explicit", verify=False)
    assert explicit_mode.grpc_receive_limit(64 * mib) == 101 * mib
    assert UploadSettings(2**31, False, 1, "explicit", False).grpc_receive_limit(64 * mib) == 2**31 - 1
    refusing_ones = [UploadSettings(100 * mib, False, 1, "none", False),
                     UploadSettings(100 * mib, False, 1, "poll", False),
                     UploadSettings(100 * mib, False, 2, "explicit", False),
                     UploadSettings(0, False, 1, "explicit", False)]  # fmt: skip
    for refusing in refusing_ones:
        assert refusing.refusal() is not None and refusing.grpc_receive_limit(64 * mib) == 64 * mib
    assert UploadSettings(100 * mib, True, 2, "poll", False).refusal() is None


def test_inference_goes_on_while_a_large_upload_is_received_written_and_loaded(repository, start_server):
    """The files are parsed, written and loaded off the event loop: other models keep answering."""
    import threading

    columns = 100 * 2**20 // (4 * 512)  # 100 MiB of weights
    big = models.graph_model(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", TensorProto.FLOAT, [None, 512])], [("y", TensorProto.FLOAT, [None, columns])],
        [onnx.numpy_helper.from_array(np.ones((512, columns), np.float32), "w")],
    ).SerializeToString()  # fmt: skip
    address = start_server(repository)
    answered, failed, uploading = [], [], threading.Event()

    def infer() -> None:
        with Client(address, timeout=30) as client:
            while uploading.is_set():
                try:
                    np.testing.assert_allclose(client.predict("other", X), X * 10)
                    answered.append(time.monotonic())
                except Exception as exc:  # noqa: BLE001 - any failure is the finding
                    failed.append(exc)

    uploading.set()
    thread = threading.Thread(target=infer)
    thread.start()
    try:
        start = time.monotonic()
        with Client(address, timeout=120) as uploader:
            uploader.load_model("big", files={"file:1/model.onnx": big})
        end = time.monotonic()
    finally:
        uploading.clear()
        thread.join()
    assert not failed, failed[:3]
    assert sum(start < t < end for t in answered) > 0, "no inference answered while the upload was in flight"
