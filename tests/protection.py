"""Keys and protected versions for the tests of signing and encryption at rest: elliptic-curve key
pairs and 32-byte key files, and versions published through the converter's own staging (signed,
encrypted, with or without external data) from onnx.helper models, so no TensorFlow is needed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from onnx import TensorProto, helper, numpy_helper

from modelport.converter.publish import Protection, Staging
from tests import models

WIDTH, OUT = 256, 8


def key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """(private.pem, public.pem): what `openssl ecparam -name prime256v1 -genkey` and `openssl ec -pubout` make."""
    private = ec.generate_private_key(ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    key, pub = folder / f"{name}.pem", folder / f"{name}.pub"
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return key, pub


def key_file(folder: Path, name: str, hex_digits: bool = False) -> Path:
    """A 32-byte key file (`openssl rand -out KEY 32`, or `-hex 32`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    material = os.urandom(32)
    path.write_bytes(material.hex().encode() + b"\n" if hex_digits else material)
    return path


def weights(seed: int = 0) -> np.ndarray:
    """The dense layer's weights: random, so any 32 bytes of them are a pattern found nowhere else."""
    return np.random.default_rng(seed).standard_normal((WIDTH, OUT)).astype(np.float32)


def dense(w: np.ndarray) -> onnx.ModelProto:
    """y = x @ w (x FP32 [batch, WIDTH])."""
    return models.graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", TensorProto.FLOAT, [None, WIDTH])], [("y", TensorProto.FLOAT, [None, OUT])],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip


def publish(
    repository: Path, name: str, w: np.ndarray, version: int = 1, *, external: bool = True,
    sign_key: Path | None = None, encrypt_key: Path | None = None,
) -> Path:
    """Publish `dense(w)` as a version the way the converter does (staging folder, conversion.json
    with `files`, encrypted then signed, renamed in); the weights in model.onnx.data when `external`."""
    with Staging(repository / name, version) as staging:
        model = dense(w)
        if external:
            onnx.save(model, staging.model_path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location="model.onnx.data", size_threshold=0)  # fmt: skip
        else:
            staging.write_model(model)
        return staging.commit({"source": {"kind": "test"}}, Protection(sign_key, encrypt_key))


def flip(path: Path, offset: int = -1) -> None:
    """Flip one bit of one byte (default: the last)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
