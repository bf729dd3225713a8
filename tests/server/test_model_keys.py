"""Signed and encrypted versions served by real servers: `--verify-key` loads only versions whose
signature verifies, `--decrypt-key-file` decrypts in memory only; every kind of tampering fails the
load with its own reason while the other models keep serving; key rotation; no plaintext on disk."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from modelport.client import Client
from modelport.converter.signing import sign_version
from modelport.protocol import sealed
from modelport.server.background import BackgroundServer
from modelport.server.loader import LoaderSettings
from modelport.server.settings import ServerSettings
from tests.protection import WIDTH, flip, key_file, key_pair, publish, weights

X = np.random.default_rng(1).standard_normal((4, WIDTH)).astype(np.float32)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    a_key, a_pub = key_pair(folder, "a")
    b_key, b_pub = key_pair(folder, "b")
    return {"a": a_key, "a.pub": a_pub, "b": b_key, "b.pub": b_pub,
            "k1": key_file(folder / "k1", "k1"), "k2": key_file(folder / "k2", "k2", hex_digits=True)}  # fmt: skip


def index(server: BackgroundServer) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in Client(server.address).repository_index()}


def failures_metric(server: BackgroundServer, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.running.metrics_port}/metrics", timeout=10).read().decode()
    lines = [line for line in text.splitlines()
             if line.startswith("modelport_model_load_failures_total{") and f'model="{model}"' in line]  # fmt: skip
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_signed_encrypted_versions_serve_like_plain_ones_and_no_plaintext_touches_disk(tmp_path, keys):
    w = weights(7)
    plain = tmp_path / "plain"
    publish(plain, "inline", w, external=False)
    publish(plain, "external", w)
    with BackgroundServer(plain) as server:
        expected = {name: Client(server.address).predict(name, X) for name in ("inline", "external")}
    np.testing.assert_allclose(expected["external"], X @ w, rtol=1e-5)
    shutil.rmtree(plain)  # from here on, no file may hold the weights in plain

    repo = tmp_path / "protected"
    publish(repo, "inline", w, external=False, sign_key=keys["a"], encrypt_key=keys["k1"])
    publish(repo, "external", w, sign_key=keys["a"], encrypt_key=keys["k1"])
    pattern = w.tobytes()[4096:4128]  # 32 bytes from the middle of the weights
    started = time.time()
    with BackgroundServer(repo, verify_key=(keys["a.pub"],), decrypt_key_file=(keys["k1"],)) as server:
        client = Client(server.address)
        for name in ("inline", "external"):
            np.testing.assert_array_equal(client.predict(name, X), expected[name])
        assert sealed.is_sealed(repo / "external" / "1" / "model.onnx.data")
        # No plaintext weight on disk: not in the repository, not in any file this process holds
        # open, not in any file written to the temporary folders while it served.
        searched = [p for p in repo.rglob("*") if p.is_file()]
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = Path(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
            if target.is_absolute() and target.is_file():
                searched.append(target)
        for folder in {Path(tempfile.gettempdir()), Path("/tmp"), Path("/dev/shm")}:
            for p in folder.rglob("*") if folder.is_dir() else ():
                try:
                    if p.is_file() and not p.is_symlink() and p.stat().st_mtime >= started - 1:
                        searched.append(p)
                except OSError:
                    continue
        holding = [str(p) for p in searched if _contains(p, pattern)]
        assert not holding, f"plaintext weights on disk: {holding}"
        assert len(searched) > 5


def _contains(path: Path, pattern: bytes) -> bool:
    try:
        if path.stat().st_size > 2**30:
            return False
        with open(path, "rb") as file:
            return pattern in file.read()
    except OSError:
        return False


def test_each_kind_of_tampering_fails_its_load_with_its_own_reason(tmp_path, keys, caplog):
    repo, w = tmp_path / "repo", weights(3)
    signed = {"sign_key": keys["a"], "encrypt_key": keys["k1"]}
    for name in ("good", "onnx_flipped", "data_flipped", "json_flipped", "sig_flipped", "unsigned", "extra_file"):
        publish(repo, name, w, **signed)
    publish(repo, "other_signer", w, sign_key=keys["b"], encrypt_key=keys["k1"])
    publish(repo, "other_key", w, sign_key=keys["a"], encrypt_key=keys["k2"])
    flip(repo / "onnx_flipped" / "1" / "model.onnx", 90)
    flip(repo / "data_flipped" / "1" / "model.onnx.data", 5000)
    flip(repo / "json_flipped" / "1" / "conversion.json", 10)
    signature = repo / "sig_flipped" / "1" / "model.sig"
    flip(signature, signature.read_bytes().index(b'"sig":"') + 20)  # in the signature's bytes
    (repo / "unsigned" / "1" / "model.sig").unlink()
    (repo / "extra_file" / "1" / "notes.txt").write_text("added later")
    expected = {
        "onnx_flipped": "files differ from the signed ones (changed: model.onnx)",
        "data_flipped": "files differ from the signed ones (changed: model.onnx.data)",
        "json_flipped": "files differ from the signed ones (changed: conversion.json)",
        "sig_flipped": "the signature model.sig does not verify",
        "unsigned": "not signed: ",
        "extra_file": "files differ from the signed ones (not signed: notes.txt)",
        "other_signer": "signed with a key that is not among the verification keys (a.pub)",
        "other_key": "wrong decryption key: model.onnx is encrypted with key id",
    }
    caplog.set_level(logging.ERROR, logger="modelport.server.registry")
    with BackgroundServer(repo, verify_key=(keys["a.pub"],), decrypt_key_file=(keys["k1"],)) as server:
        np.testing.assert_allclose(Client(server.address).predict("good", X), X @ w, rtol=1e-5)
        rows = index(server)
        assert rows[("good", "1")] == ("READY", "")
        for name, reason in expected.items():
            state, said = rows[(name, "1")]
            assert state == "UNAVAILABLE" and said.startswith(f"model '{name}' version 1: ") and reason in said, said
            assert failures_metric(server, name) == 1
            assert any("model_load_failed" in r.getMessage() and name in r.getMessage() for r in caplog.records)
        assert failures_metric(server, "good") == 0

    # Without --verify-key the ciphertext's own authentication catches a modified byte, in the
    # graph or in the weights, and a header.
    for name, offset in (("data_flipped", None), ("header_flipped", 30)):
        if offset is not None:
            publish(repo, name, w, **signed)
            flip(repo / name / "1" / "model.onnx", offset)
    with BackgroundServer(repo, decrypt_key_file=(keys["k1"],)) as server:
        rows = index(server)
        assert rows[("good", "1")] == ("READY", "") and rows[("unsigned", "1")] == ("READY", "")
        assert "cannot decrypt: model.onnx.data fails authentication" in rows[("data_flipped", "1")][1]
        assert "cannot decrypt: model.onnx fails authentication" in rows[("onnx_flipped", "1")][1]
        assert "model.onnx: the wrapped data key in its header does not unwrap" in rows[("header_flipped", "1")][1]
    with BackgroundServer(repo) as server:  # no key at all
        state, reason = index(server)[("good", "1")]
        assert state == "UNAVAILABLE" and "is encrypted (key id " in reason and "--decrypt-key-file" in reason


def test_a_failing_reload_keeps_the_verified_version_serving(tmp_path, keys):
    repo, w = tmp_path / "repo", weights(4)
    publish(repo, "m", w, sign_key=keys["a"], encrypt_key=keys["k1"])
    settings = {"verify_key": (keys["a.pub"],), "decrypt_key_file": (keys["k1"],), "model_control_mode": "explicit",
                "load_model": ("*",)}  # fmt: skip
    with BackgroundServer(repo, **settings) as server:
        client = Client(server.address)
        before = client.predict("m", X)
        sign_version(repo, "m", keys["b"])  # re-signed by a key the server does not trust
        with pytest.raises(Exception, match="signed with a key that is not among"):
            client.load_model("m")
        state, reason = index(server)[("m", "1")]
        assert state == "READY" and reason.startswith("reload failed, previous files still serving: ")
        np.testing.assert_array_equal(client.predict("m", X), before)
        sign_version(repo, "m", keys["a"])
        client.load_model("m")
        assert index(server)[("m", "1")] == ("READY", "")


def test_two_verify_and_two_decrypt_keys_serve_versions_made_with_either(tmp_path, keys):
    repo = tmp_path / "repo"
    (repo / "m").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('name: "m"\nversion_policy: { all: {} }\n')
    publish(repo, "m", weights(1), 1, sign_key=keys["a"], encrypt_key=keys["k1"])
    publish(repo, "m", weights(2), 2, sign_key=keys["b"], encrypt_key=keys["k2"])
    # The decryption keys as a folder, as a mounted Secret is (its ..data entries are hidden).
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(keys["k1"], secret / "old.key")
    shutil.copy(keys["k2"], secret / "new.key")
    (secret / "..data").mkdir()
    with BackgroundServer(repo, verify_key=(keys["a.pub"], keys["b.pub"]), decrypt_key_file=(secret,)) as server:
        client = Client(server.address)
        for version in (1, 2):
            y = client.infer("m", {"x": X}, version=str(version))["y"]
            np.testing.assert_allclose(y, X @ weights(version), rtol=1e-5)


def test_bad_key_files_stop_the_server_before_loading(tmp_path, keys):
    short = tmp_path / "short.key"
    short.write_bytes(b"a passphrase")
    with pytest.raises(ValueError, match="32 random bytes"):
        LoaderSettings.of(ServerSettings(model_repository=tmp_path, decrypt_key_file=(short,)))
    with pytest.raises(ValueError, match="not a PEM public key"):
        LoaderSettings.of(ServerSettings(model_repository=tmp_path, verify_key=(keys["k1"],)))
    with pytest.raises(FileNotFoundError):
        LoaderSettings.of(ServerSettings(model_repository=tmp_path, verify_key=(tmp_path / "missing.pub",)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no key files"):
        LoaderSettings.of(ServerSettings(model_repository=tmp_path, verify_key=(empty,)))
