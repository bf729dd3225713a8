"""Deploying from the client (`Client.deploy`, `modelport.client.load_model`, `modelport deploy`)
to real servers in explicit mode: the seed's two lines with the seed MLP from a .h5 file, an
in-memory Keras model (twice: the next version), an .onnx file with its external data (signed and
encrypted for a server that verifies and decrypts), the async twin, the HTTP/REST client, the
command's progress and final line, the client-only install (no TensorFlow), and the size limits'
messages. TensorFlow tests convert tiny models in a second each (marked slow)."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from sklearn.datasets import load_breast_cancer

from modelport.client import AsyncClient, Client, InferenceServerError, load_model
from modelport.server.background import BackgroundServer
from tests import models
from tests.protection import WIDTH, dense, key_file, key_pair, weights

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "modelport.client.cli"]
MIB = 2**20
# Run as a user with only the client installed: TensorFlow, tf2onnx, onnx and ONNX Runtime cannot be imported.
CLIENT_ONLY = (
    "import sys\n"
    "for name in ('tensorflow', 'tf2onnx', 'keras', 'onnx', 'onnxruntime'):\n"
    "    sys.modules[name] = None\n"
    "from modelport.client.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[BackgroundServer]:
    """One server taking uploads (explicit mode, as RepositoryModelLoad in Triton), empty at start."""
    running = BackgroundServer(tmp_path_factory.mktemp("empty"), model_control_mode="explicit").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> tuple[Path, object, np.ndarray]:
    """The seed MLP (examples/train_mlp.py) trained briefly and saved as mlp.h5; the Keras model
    and held-out rows."""
    import keras

    spec = importlib.util.spec_from_file_location("train_mlp", ROOT / "examples" / "train_mlp.py")
    train_mlp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_mlp)
    keras.utils.set_random_seed(0)
    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), (data.target == 0).astype(np.int64)
    model = train_mlp.build(x[:400])
    model.fit(x[:400], y[:400], epochs=3, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("seed") / "mlp.h5"
    model.save(path)
    return path, model, x[400:]


def tiny_keras(seed: int = 0):
    """features FP32 [batch, 4] -> probabilities FP32 [batch, 3]."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,), name="features")
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(inputs), name="tiny")


def onnx_with_external_data(folder: Path, w: np.ndarray, location: str = "weights.bin") -> Path:
    """dense.onnx (y = x @ w) with its weights in `location` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dense.onnx"
    onnx.save(dense(w), path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)  # fmt: skip
    assert (folder / location).stat().st_size == w.nbytes
    return path


X = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
ROWS = np.random.default_rng(2).normal(size=(3, WIDTH)).astype(np.float32)


# ---------------------------------------------------------------- TensorFlow sources


@pytest.mark.slow
def test_the_seeds_two_lines_deploy_the_seed_mlp_from_h5_and_predict_as_keras(server, seed) -> None:
    path, keras_model, x = seed
    model = load_model(str(path), url=server.address, name="mlp")
    predictions = model.predict(x)
    try:
        np.testing.assert_allclose(predictions, keras_model.predict(x, verbose=0), atol=1e-5)
        assert model.deployed_version == 1 and model.name == "mlp"
        assert [(e.version, e.state) for e in model.client.repository_index() if e.name == "mlp"] == [("1", "READY")]
    finally:
        model.client.close()


@pytest.mark.slow
def test_an_in_memory_keras_model_deploys_and_the_next_deploy_is_the_next_version(server) -> None:
    keras_model = tiny_keras()
    lines: list[str] = []
    with Client(server.address, timeout=60) as client:
        first = client.deploy(keras_model, "tiny", progress=lines.append)
        np.testing.assert_allclose(first.predict(X), keras_model.predict(X, verbose=0), atol=1e-6)
        changed = tiny_keras(seed=1)
        second = client.deploy(changed, "tiny")
        assert (first.deployed_version, second.deployed_version) == (1, 2)
        # The upload replaced what served under the name: every handle bound to it now gets version 2.
        np.testing.assert_allclose(first.predict(X), changed.predict(X, verbose=0), atol=1e-6)
        assert [(e.version, e.state) for e in client.repository_index() if e.name == "tiny"] == [
            ("1", "UNAVAILABLE"), ("2", "READY")]  # fmt: skip
    assert lines[0].startswith("[1/4] loading") and any(line.startswith("[4/4] publishing <staging>") for line in lines)
    assert lines[-2].startswith("upload: 2 files, ") and lines[-2].endswith(f" to {server.address}"), lines
    assert lines[-1].startswith("load: tiny version 1 serving"), lines


@pytest.mark.slow
def test_the_async_client_deploys_with_the_conversion_off_the_event_loop(server) -> None:
    keras_model = tiny_keras(seed=2)
    threads: dict[str, set[int]] = {"convert": set(), "upload": set()}

    def progress(line: str) -> None:
        threads["upload" if line.startswith(("upload:", "load:")) else "convert"].add(threading.get_ident())

    async def main() -> tuple[int | None, np.ndarray]:
        async with AsyncClient(server.address, timeout=60) as client:
            model = await client.deploy(keras_model, "tiny_async", version=7, progress=progress)
            return model.deployed_version, await model.predict(X)

    version, y = asyncio.run(main())
    assert version == 7
    np.testing.assert_allclose(y, keras_model.predict(X, verbose=0), atol=1e-6)
    loop_thread = threading.get_ident()  # asyncio.run ran the loop on this thread
    assert threads["upload"] == {loop_thread} and loop_thread not in threads["convert"], threads


@pytest.mark.slow
def test_modelport_deploy_prints_progress_and_the_deployed_signature(server, seed, tmp_path) -> None:
    path, keras_model, x = seed
    np.savez(tmp_path / "sample.npz", features=x)
    (tmp_path / "labels.txt").write_text("benign\nmalignant\n")
    run = subprocess.run(
        [*CLI, "deploy", str(path), "--url", server.address, "--name", "mlp_cli", "--version", "3",
         "--sample", str(tmp_path / "sample.npz"), "--labels", str(tmp_path / "labels.txt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    progress = [line for line in run.stderr.splitlines() if line.startswith(("[", "upload:", "load:"))]
    assert [line[:5] for line in progress] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]", "uploa", "load:"], run.stderr
    assert "parity check on 169 rows of sample.npz" in run.stderr
    assert "upload: 4 files" in run.stderr  # model.onnx, conversion.json, background.npz, labels.txt
    assert run.stdout.splitlines()[-1] == (
        "deployed mlp_cli version 3: inputs features FP32 [-1, 30] -> outputs malignant FP32 [-1, 1]"
    )
    with Client(server.address) as client:
        predicted = client.predict("mlp_cli", x, batch_size=64)
        np.testing.assert_allclose(predicted, keras_model.predict(x, verbose=0), atol=1e-5)


def test_without_the_convert_extra_a_keras_file_is_one_paragraph_and_an_onnx_file_deploys(
    server, tmp_path
) -> None:  # fmt: skip
    (tmp_path / "model.h5").write_bytes(b"not read: the converter is missing first")
    run = subprocess.run([sys.executable, "-c", CLIENT_ONLY, "deploy", str(tmp_path / "model.h5"), "--url",
                          server.address, "--name", "nope"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: deploying a TensorFlow/Keras model converts it to ONNX on this machine"), run
    assert 'pip install "modelport[convert]"' in run.stderr and "deploy an .onnx file" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    onnx.save(models.scale(3.0), tmp_path / "scale.onnx")
    run = subprocess.run([sys.executable, "-c", CLIENT_ONLY, "deploy", str(tmp_path / "scale.onnx"), "--url",
                          server.address, "--name", "plain"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "deployed plain version 1: inputs x FP32 [-1, 3] -> outputs y FP32 [-1, 3]"
    assert "package: " in run.stderr and "upload: 1 file, " in run.stderr


def test_modelport_deploy_needs_the_admin_scope_and_says_so_in_one_line(tmp_path, start_server) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token inference\nadmin-token admin\n")
    address = start_server(tmp_path / "repo", model_control_mode="explicit", auth_token_file=tokens)
    onnx.save(models.scale(2.0), tmp_path / "scale.onnx")
    (tmp_path / "admin.token").write_text("admin-token\n")
    command = [*CLI, "deploy", str(tmp_path / "scale.onnx"), "--url", address, "--name", "scale"]
    refused = subprocess.run([*command, "--token", "reader-token"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("error: [PERMISSION_DENIED] "), refused.stderr
    assert "Traceback" not in refused.stderr
    done = subprocess.run([*command, "--token-file", str(tmp_path / "admin.token")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "deployed scale version 1: inputs x FP32 [-1, 3] -> outputs y FP32 [-1, 3]"


# ---------------------------------------------------------------- ONNX files


def test_an_onnx_file_deploys_with_its_external_data_over_grpc_and_http(server, tmp_path) -> None:
    w = weights(3)
    path = onnx_with_external_data(tmp_path / "src", w)
    with Client(server.address, timeout=30) as rpc, Client(server.http_url, timeout=30) as http:
        model = rpc.deploy(path, "dense", config={"max_batch_size": 4})
        np.testing.assert_allclose(model.predict(ROWS), ROWS @ w, rtol=1e-5)
        assert rpc.model_config("dense").max_batch_size == 4 and model.batch_size == 4
        again = http.deploy(path, "dense", labels=["a", "b"])
        assert (model.deployed_version, again.deployed_version) == (1, 2)
        np.testing.assert_allclose(again.predict(ROWS), ROWS @ w, rtol=1e-5)
    named = load_model(path, url=server.address)  # named after the file
    try:
        # No config: the server's auto-completed one has max_batch_size 0, so predict() sends x whole.
        assert (named.name, named.deployed_version, named.batch_size) == ("dense", 3, None)
    finally:
        named.client.close()

    async def over_http() -> np.ndarray:
        async with AsyncClient(server.http_url, timeout=30) as client:
            model = await client.deploy(path, "dense_async")
            assert model.deployed_version == 1
            return await model.predict(ROWS)

    np.testing.assert_allclose(asyncio.run(over_http()), ROWS @ w, rtol=1e-5)


def test_a_signed_encrypted_onnx_deploys_to_a_server_that_verifies_and_decrypts(tmp_path, start_server) -> None:
    sign, public = key_pair(tmp_path / "keys", "sign")
    secret = key_file(tmp_path / "keys", "model.key")
    address = start_server(tmp_path / "repo", model_control_mode="explicit", verify_key=(public,),
                           decrypt_key_file=(secret,))  # fmt: skip
    w = weights(4)
    path = onnx_with_external_data(tmp_path / "src", w, location="model.onnx.data")
    lines: list[str] = []
    with Client(address, timeout=30) as client:
        model = client.deploy(path, "sealed", sign_key=sign, encrypt_key_file=secret, progress=lines.append)
        assert lines[-2].startswith("upload: 3 files, ") and "(encrypted, signed)" in lines[-2], lines
        np.testing.assert_allclose(model.predict(ROWS), ROWS @ w, rtol=1e-5)
        with pytest.raises(InferenceServerError) as unsigned:
            client.deploy(path, "sealed")
        assert "model.sig" in unsigned.value.message, unsigned.value
        np.testing.assert_allclose(model.predict(ROWS), ROWS @ w, rtol=1e-5)  # the signed version still serves
    assert path.read_bytes() == onnx.load(path, load_external_data=False).SerializeToString()  # source untouched


def test_external_data_outside_the_model_folder_is_refused_before_uploading(server, tmp_path) -> None:
    path = onnx_with_external_data(tmp_path / "src" / "inner", weights(5))
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../weights.bin"
    path.write_bytes(model.SerializeToString())
    with Client(server.address) as client:
        with pytest.raises(ValueError, match="plain file names"):
            client.deploy(path, "escape")
        with pytest.raises(ValueError, match="parity gate"):
            client.deploy(path, "escape", sample=ROWS)
        with pytest.raises(FileNotFoundError):
            client.deploy(tmp_path / "missing.onnx", "escape")
        assert "escape" not in [e.name for e in client.repository_index()]


# ---------------------------------------------------------------- limits


def test_uploads_are_not_capped_by_the_clients_message_limit(server) -> None:
    big = models.graph_model(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", onnx.TensorProto.FLOAT, [None, 512])], [("y", onnx.TensorProto.FLOAT, [None, 1024])],
        [onnx.numpy_helper.from_array(np.ones((512, 1024), np.float32), "w")],
    ).SerializeToString()  # fmt: skip
    assert len(big) > 2 * MIB
    with Client(server.address, max_message_bytes=MIB, timeout=30) as client:  # the receive limit: answers
        client.load_model("big", files={"file:1/model.onnx": big})
        assert client.is_model_ready("big", "1")


def test_an_upload_over_the_servers_limits_names_the_limit_to_raise(tmp_path) -> None:
    models.save(models.scale(10.0), tmp_path, "other")
    files = {"file:1/model.onnx": b"\0" * (3 * MIB)}  # over both receive limits (the upload limit + 1 MiB; x 4/3)
    limited = BackgroundServer(tmp_path, model_control_mode="explicit", load_model=("*",), max_message_bytes=MIB,
                               max_upload_bytes=MIB)  # fmt: skip
    with limited, Client(limited.address, timeout=30) as rpc, Client(limited.http_url, timeout=30) as http:
        for client, sent in ((rpc, "in one gRPC message"), (http, "as base64 in a JSON body")):
            with pytest.raises(InferenceServerError) as caught:
                client.load_model("huge", files=files)
            assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            message = caught.value.message
            assert f"model 'huge': the upload (3.0 MiB of files, sent {sent}" in message, message
            assert f"larger than the server at {client.url} receives" in message, message
            assert "Raise the server's --max-upload-bytes" in message, message
            np.testing.assert_allclose(client.predict("other", X[:, :3]), 10 * X[:, :3], rtol=1e-6)
