"""Model files at rest: the encrypted-file format (modelport sealed, version 1) that the converter
writes and the server decrypts in memory, the key files both read, and the name of a version's
signature file. Needs `cryptography` (the server and convert extras); the client never imports it.

A sealed file is a fixed header followed by the plaintext in chunks, each encrypted with
AES-256-GCM under the version's data key (all integers big-endian):

    offset  bytes  field
    0       8      magic b"MPSEALED"
    8       2      format version (1)
    10      2      header length (80)
    12      8      key id: SHA-256(b"modelport key id\\0" + key)[:8] of the key that wraps the data key
    20      40     the data key (32 random bytes, fresh per version) wrapped by that key (AES key
                   wrap, RFC 3394: authenticated, so a wrong key never yields a wrong data key)
    60      7      nonce prefix (random per file)
    67      1      reserved (0)
    68      4      chunk size: plaintext bytes per chunk (4 MiB)
    72      8      plaintext length
    80      ...    chunks: ceil(length / chunk size) of them (one empty chunk for an empty file),
                   each the chunk's ciphertext and its 16-byte GCM tag

Chunk i is encrypted with the nonce prefix + i (4 bytes) + 1 for the last chunk, else 0 (the STREAM
construction: chunks cannot be reordered, dropped or the file cut short without the tags failing),
and with the header plus the file's name as associated data, so a changed header byte, a file
renamed or swapped for another of the version, or any modified byte fails authentication. Memory
while decrypting: the plaintext (which ONNX Runtime needs anyway) plus one chunk; while encrypting,
one chunk.

Key files hold 32 random bytes, raw (`openssl rand -out model.key 32`) or as 64 hex digits
(`openssl rand -hex 32 > model.key`). Not a passphrase: a Secret carries a random key as easily,
a random key has its full 256 bits, and a passphrase would need a deliberately slow derivation
(scrypt) paid again at every load of every version.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

MAGIC = b"MPSEALED"
FORMAT_VERSION = 1
HEADER = struct.Struct(">8sHH8s40s7sxIQ")
CHUNK = 4 * 2**20
TAG = 16
KEY_BYTES = 32
CIPHER = "AES-256-GCM"


class SealError(ValueError):
    """A sealed file that cannot be decrypted (the message says why), or a bad key file."""


class NoMatchingKey(SealError):
    """The file was encrypted with a key none of the given ones is."""


@dataclass(frozen=True)
class Key:
    """A key-encryption key read from a key file."""

    material: bytes
    source: str  # the file it came from, for messages

    @property
    def id(self) -> str:
        """Hex of the 8-byte key id written in sealed files' headers."""
        return key_id(self.material).hex()


@dataclass(frozen=True)
class Header:
    """A sealed file's header."""

    version: int
    key_id: str
    wrapped_key: bytes
    nonce_prefix: bytes
    chunk_size: int
    length: int
    raw: bytes


def key_id(material: bytes) -> bytes:
    """The 8 bytes that name a key in headers (a hash: it reveals nothing of the key)."""
    return hashlib.sha256(b"modelport key id\0" + material).digest()[:8]


def read_key(path: str | Path) -> Key:
    """A key file: 32 raw bytes, or 64 hex digits (surrounding whitespace ignored)."""
    data = Path(path).read_bytes()
    if len(data) == KEY_BYTES:
        return Key(data, str(path))
    text = data.strip()
    try:
        material = bytes.fromhex(text.decode("ascii")) if len(text) == 2 * KEY_BYTES else b""
    except (UnicodeDecodeError, ValueError):
        material = b""
    if len(material) != KEY_BYTES:
        raise SealError(
            f"{path}: a key file holds 32 random bytes, raw or as 64 hex digits (got {len(data)} bytes); make one "
            "with `openssl rand -out model.key 32` (passphrases are not accepted: see README, Protecting models)"
        )
    return Key(material, str(path))


def key_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named: a file itself, a folder every visible regular file in it (a mounted Secret
    or ConfigMap: its `..data` entries are hidden), in name order."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found.extend(p for p in sorted(path.iterdir()) if not p.name.startswith(".") and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(2, "no such key file or folder", str(path))
    return found


def read_keys(paths: Iterable[str | Path]) -> list[Key]:
    """Every key of the named files and folders (see key_files)."""
    return [read_key(p) for p in key_files(paths)]


def new_data_key() -> bytes:
    """A fresh random data key for one version."""
    return AESGCM.generate_key(bit_length=256)


def is_sealed(path: str | Path) -> bool:
    """Whether a file starts with the sealed format's magic."""
    with open(path, "rb") as file:
        return file.read(len(MAGIC)) == MAGIC


def read_header(path: str | Path) -> Header:
    """A sealed file's header; SealError when the file is not one modelport can read."""
    with open(path, "rb") as file:
        return _parse_header(file.read(HEADER.size), Path(path).name)


def _parse_header(raw: bytes, name: str) -> Header:
    if len(raw) < HEADER.size or raw[: len(MAGIC)] != MAGIC:
        raise SealError(f"{name} is not a modelport sealed file (no {MAGIC.decode()} header)")
    magic, version, size, kid, wrapped, prefix, chunk, length = HEADER.unpack(raw[: HEADER.size])
    if version != FORMAT_VERSION or size != HEADER.size:
        raise SealError(f"{name} is sealed in format version {version}; this modelport reads version {FORMAT_VERSION}")
    if chunk <= 0:
        raise SealError(f"{name}: its header is damaged (chunk size 0)")
    return Header(version, kid.hex(), wrapped, prefix, chunk, length, raw[: HEADER.size])


def encrypt_file(source: Path, target: Path, data_key: bytes, key: Key, name: str | None = None) -> None:
    """Write `source` sealed to `target` (created, never overwritten) under `data_key`, wrapped by
    `key`; `name` (default: target's) is authenticated with every chunk."""
    length = source.stat().st_size
    prefix = os.urandom(7)
    raw = HEADER.pack(MAGIC, FORMAT_VERSION, HEADER.size, key_id(key.material), aes_key_wrap(key.material, data_key),
                      prefix, CHUNK, length)  # fmt: skip
    aad = raw + (name or target.name).encode()
    cipher = AESGCM(data_key)
    count = max(1, -(-length // CHUNK))
    with open(source, "rb") as reader, open(target, "xb") as writer:
        writer.write(raw)
        for index in range(count):
            chunk = reader.read(CHUNK)
            writer.write(cipher.encrypt(_nonce(prefix, index, index == count - 1), chunk, aad))


def decrypt_file(path: Path, keys: Sequence[Key], name: str | None = None) -> np.ndarray:
    """The plaintext of a sealed file as a uint8 array, decrypted chunk by chunk straight into it
    (nothing is written anywhere); NoMatchingKey or SealError (tampered, truncated) otherwise."""
    name = name or path.name
    with open(path, "rb") as file:
        header = _parse_header(file.read(HEADER.size), name)
        cipher = AESGCM(unwrap(header, keys, name))
        aad = header.raw + name.encode()
        out = np.empty(header.length, dtype=np.uint8)
        count = max(1, -(-header.length // header.chunk_size))
        expected = HEADER.size + header.length + count * TAG
        if os.fstat(file.fileno()).st_size != expected:
            raise SealError(f"{name} has {os.fstat(file.fileno()).st_size} bytes, its header says {expected}: "
                            "cut short or extended")  # fmt: skip
        buffer = bytearray(header.chunk_size + TAG)
        view, target = memoryview(buffer), memoryview(out)
        for index in range(count):
            start = index * header.chunk_size
            size = min(header.chunk_size, header.length - start)
            got = file.readinto(view[: size + TAG])
            if got != size + TAG:
                raise SealError(f"{name} is cut short at chunk {index}")
            try:
                cipher.decrypt_into(_nonce(header.nonce_prefix, index, index == count - 1), view[: size + TAG], aad,
                                    target[start : start + size])  # fmt: skip
            except InvalidTag:
                raise SealError(
                    f"{name} fails authentication at chunk {index} of {count} (byte {HEADER.size + start + index * TAG}"
                    " onwards): the file or its header was modified, or it is not this version's file"
                ) from None
    return out


def unwrap(header: Header, keys: Sequence[Key], name: str) -> bytes:
    """The file's data key, unwrapped by the key its header names."""
    matching = [k for k in keys if k.id == header.key_id]
    if not matching:
        have = ", ".join(f"{k.id} ({k.source})" for k in keys) or "none"
        raise NoMatchingKey(f"{name} is encrypted with key id {header.key_id}, which is not among the decryption "
                            f"keys (key ids: {have})")  # fmt: skip
    try:
        return aes_key_unwrap(matching[0].material, header.wrapped_key)
    except InvalidUnwrap:
        raise SealError(f"{name}: the wrapped data key in its header does not unwrap with key {header.key_id} "
                        "(the header was modified)") from None  # fmt: skip


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)
