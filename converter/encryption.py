"""Encrypting a version's model files at rest (the format: modelport.protocol.sealed). A fresh
data key per version, wrapped by the key in `--encrypt-key-file`; model.onnx and model.onnx.data are
replaced by their sealed forms under the same names, so the layout (and external data locations)
stay as they are. conversion.json stays readable: it holds no weights, and the server reads its
input statistics; its `files` then list the encrypted bytes, and `encryption` says how.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelport.protocol import sealed
from modelport.protocol.repository import CONVERSION_FILE, SIGNATURE_FILE


def check_key(path: str | Path) -> sealed.Key:
    """The key file, read and checked before any slow work."""
    return sealed.read_key(path)


def encrypt_folder(folder: Path, key_file: str | Path) -> dict:
    """Seal every file of a staging folder but conversion.json and the signature, in place (each
    written beside itself, then renamed over it); returns conversion.json's `encryption`."""
    key = sealed.read_key(key_file)
    data_key = sealed.new_data_key()
    names = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name in (CONVERSION_FILE, SIGNATURE_FILE):
            continue
        if sealed.is_sealed(path):
            raise ValueError(f"{path} is encrypted already")
        staged = path.with_name(f".{path.name}.sealing")
        try:
            sealed.encrypt_file(path, staged, data_key, key, name=path.name)
            os.replace(staged, path)
        finally:
            staged.unlink(missing_ok=True)
        names.append(path.name)
    return {"format": f"modelport sealed {sealed.FORMAT_VERSION}", "cipher": sealed.CIPHER,
            "chunk_bytes": sealed.CHUNK, "key_id": key.id, "files": names}  # fmt: skip
