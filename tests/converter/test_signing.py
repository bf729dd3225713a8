"""Protection at rest on the converter's side: versions published signed and encrypted (the staging
folder, conversion.json, the signature over every file), `modelport sign`, `compress --sign-key
--encrypt-key-file`, `convert --sign-key --encrypt-key-file`, and the sealed file format itself."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from modelport.client.cli import main as cli
from modelport.converter.compress import compress
from modelport.converter.publish import Protection
from modelport.protocol import sealed
from modelport.server.model_files import open_model
from modelport.server.runtime import OnnxModel, SessionOptions
from tests.protection import WIDTH, flip, key_file, key_pair, publish, weights

X = np.random.default_rng(5).standard_normal((3, WIDTH)).astype(np.float32)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    a_key, a_pub = key_pair(folder, "a")
    b_key, b_pub = key_pair(folder, "b")
    return {"a": a_key, "a.pub": a_pub, "b": b_key, "b.pub": b_pub, "k": key_file(folder, "k")}


def served(folder: Path, verify=(), decrypt=()) -> np.ndarray:
    """What the server's loader makes of a version folder (verified, decrypted in memory)."""
    where = f"version {folder.name}"
    memory = open_model(folder / "model.onnx", where, verify, decrypt)
    return OnnxModel(folder / "model.onnx", SessionOptions(1), where, memory).run({"x": ("FP32", X)}, ["y"])["y"]


def test_a_published_version_is_encrypted_then_signed(tmp_path, keys):
    w = weights(11)
    folder = publish(tmp_path, "m", w, sign_key=keys["a"], encrypt_key=keys["k"])
    assert sorted(p.name for p in folder.iterdir()) == ["conversion.json", "model.onnx", "model.onnx.data", "model.sig"]
    assert not list((tmp_path / "m").glob(".tmp-*")), "the staging folder was renamed in"
    record = json.loads((folder / "conversion.json").read_text())
    key = sealed.read_key(keys["k"])
    assert record["encryption"] == {"format": "modelport sealed 1", "cipher": "AES-256-GCM", "chunk_bytes": 4 * 2**20,
                                    "key_id": key.id, "files": ["model.onnx", "model.onnx.data"]}  # fmt: skip
    # `files` lists what is on disk (the encrypted bytes), never the signature.
    assert [f["name"] for f in record["files"]] == ["model.onnx", "model.onnx.data"]
    for entry in record["files"]:
        assert entry["sha256"] == hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest()
        header = sealed.read_header(folder / entry["name"])
        assert header.key_id == key.id and header.version == 1
    assert w.tobytes()[:64] not in (folder / "model.onnx.data").read_bytes()
    # Both files share the version's data key, each its own nonces.
    headers = [sealed.read_header(folder / n) for n in ("model.onnx", "model.onnx.data")]
    assert headers[0].wrapped_key == headers[1].wrapped_key and headers[0].nonce_prefix != headers[1].nonce_prefix
    np.testing.assert_allclose(served(folder, [keys["a.pub"]], [keys["k"]]), X @ w, rtol=1e-5)
    other = publish(tmp_path, "m", w, 2, sign_key=keys["a"], encrypt_key=keys["k"])
    assert sealed.read_header(other / "model.onnx").wrapped_key != headers[0].wrapped_key, "a fresh data key"


def test_sign_command_signs_a_version_made_elsewhere(tmp_path, keys, capsys):
    w = weights(12)
    publish(tmp_path, "m", w, 1)
    publish(tmp_path, "m", w, 2)
    repo = str(tmp_path)
    assert cli(["sign", "--model-repository", repo, "--name", "m", "--key", str(keys["a"])]) == 0
    assert (tmp_path / "m" / "2" / "model.sig").exists() and not (tmp_path / "m" / "1" / "model.sig").exists()
    assert cli(["sign", "--model-repository", repo, "--name", "m", "--version", "1", "--key", str(keys["b"])]) == 0
    np.testing.assert_allclose(served(tmp_path / "m" / "1", [keys["b.pub"]]), X @ w, rtol=1e-5)
    assert cli(["sign", "--model-repository", repo, "--name", "m", "--version", "1", "--key", str(keys["a"])]) == 0
    served(tmp_path / "m" / "1", [keys["a.pub"]])  # re-signed: the new signature replaced the old one
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")], "no staged signature left"
    capsys.readouterr()
    assert cli(["sign", "--model-repository", repo, "--name", "m", "--version", "7", "--key", str(keys["a"])]) == 2
    assert "no version 7 to sign; found [1, 2]" in capsys.readouterr().err
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert cli(["sign", "--model-repository", repo, "--name", "m", "--key", str(rsa_key)]) == 2
    assert "signs with elliptic-curve keys" in capsys.readouterr().err


def test_compress_signs_and_encrypts_and_refuses_an_encrypted_source(tmp_path, keys):
    w = weights(13)
    publish(tmp_path, "m", w, 1, external=False)
    version, _ = compress(tmp_path, "m", "optimize", progress=lambda _: None,
                          protection=Protection(keys["a"], keys["k"]))  # fmt: skip
    folder = tmp_path / "m" / str(version)
    assert (folder / "model.sig").exists() and sealed.is_sealed(folder / "model.onnx")
    assert "encryption" in json.loads((folder / "conversion.json").read_text())
    np.testing.assert_allclose(served(folder, [keys["a.pub"]], [keys["k"]]), X @ w, rtol=1e-5)
    with pytest.raises(ValueError, match="is encrypted; compress a plain version"):
        compress(tmp_path, "m", "optimize", from_version=version, progress=lambda _: None)


def test_bad_keys_fail_before_any_work(tmp_path, keys):
    publish(tmp_path, "m", weights(1), 1)
    passphrase = tmp_path / "pass"
    passphrase.write_text("correct horse battery staple")
    with pytest.raises(sealed.SealError, match="32 random bytes"):
        compress(tmp_path, "m", "optimize", protection=Protection(encrypt_key_file=passphrase))
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        compress(tmp_path, "m", "optimize", protection=Protection(sign_key=keys["a.pub"]))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


@pytest.mark.parametrize("length", [0, 1, sealed.CHUNK - 1, sealed.CHUNK, 2 * sealed.CHUNK + 5])
def test_sealed_files_round_trip_and_fail_on_any_change(tmp_path, length):
    key = sealed.read_key(key_file(tmp_path, "k", hex_digits=True))
    plain, box = tmp_path / "plain", tmp_path / "model.onnx.data"
    plain.write_bytes(os.urandom(length))
    sealed.encrypt_file(plain, box, sealed.new_data_key(), key)
    assert box.stat().st_size == sealed.HEADER.size + length + max(1, -(-length // sealed.CHUNK)) * sealed.TAG
    assert sealed.decrypt_file(box, [key]).tobytes() == plain.read_bytes()
    with pytest.raises(sealed.SealError, match="fails authentication"):
        sealed.decrypt_file(box, [key], name="model.onnx")  # another file's name: not this file
    data = box.read_bytes()
    for offset in (8, 70, sealed.HEADER.size, len(data) - 1):  # version, chunk size, first and last chunk bytes
        flip(box, offset)
        with pytest.raises(sealed.SealError):
            sealed.decrypt_file(box, [key])
        box.write_bytes(data)
    box.write_bytes(data[:-1])
    with pytest.raises(sealed.SealError, match="cut short"):
        sealed.decrypt_file(box, [key])
    with pytest.raises(sealed.NoMatchingKey, match="not among the decryption keys"):
        sealed.decrypt_file(tmp_path / "model.onnx.data", [sealed.Key(os.urandom(32), "other")])


def test_convert_signs_and_encrypts(tmp_path, keys):
    """`modelport convert --sign-key --encrypt-key-file` with TensorFlow: the served version equals Keras."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(3)
    x = keras.Input((WIDTH,), name="x")
    model = keras.Model(x, keras.layers.Dense(4, name="y")(x))
    source = tmp_path / "m.keras"
    model.save(source)
    repo = tmp_path / "repo"
    assert cli(["convert", str(source), "--model-repository", str(repo), "--name", "m",
                "--sign-key", str(keys["a"]), "--encrypt-key-file", str(keys["k"])]) == 0  # fmt: skip
    folder = repo / "m" / "1"
    assert (folder / "model.sig").exists() and sealed.is_sealed(folder / "model.onnx")
    where = "m"
    memory = open_model(folder / "model.onnx", where, [keys["a.pub"]], [keys["k"]])
    got = OnnxModel(folder / "model.onnx", SessionOptions(1), where, memory).run({"x": ("FP32", X)}, ["y"])["y"]
    np.testing.assert_allclose(got, model.predict(X, verbose=0), rtol=1e-4, atol=1e-5)
