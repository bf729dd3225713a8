"""A version's files as the loader opens them, when the server protects models at rest:

- `--verify-key`: the version's signature (model.sig, OpenSSF model-signing, private-key mode) must
  verify against one of the public keys, over every file of the version folder (a file changed,
  added or removed fails it). Checked before ONNX Runtime reads a byte.
- `--decrypt-key-file`: sealed files (modelport.protocol.sealed) are decrypted into memory only.
  model.onnx's plaintext goes to ONNX Runtime as bytes, its external data files as in-memory files
  (SessionOptions.add_external_initializers_from_files_in_memory, matched by the `location` the
  graph's tensors name; ONNX Runtime copies the tensors while it builds the session). Nothing is
  written to disk, and the plaintext buffers are dropped once the version's sessions exist.

Every failure is a ModelLoadError naming the model, the version and the reason, so the registry
keeps what was serving and says why in the version's state, log line and metric.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from modelport.protocol import sealed
from modelport.protocol.repository import CONVERSION_FILE, SIGNATURE_FILE

from .errors import ModelLoadError
from .runtime import InMemoryModel


def check_keys(verify_keys: Sequence[Path], decrypt_keys: Sequence[Path]) -> None:
    """Read every key once at start-up, so a missing or malformed one stops the server with its
    name instead of failing every load; ValueError or OSError otherwise."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    for path in sealed.key_files(verify_keys):
        try:
            key = load_pem_public_key(path.read_bytes())
        except ValueError as exc:
            raise ValueError(f"--verify-key {path}: not a PEM public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"--verify-key {path}: model-signing keys are elliptic-curve keys, not "
                             f"{type(key).__name__}")  # fmt: skip
    for path in sealed.key_files(decrypt_keys):
        try:
            sealed.read_key(path)
        except sealed.SealError as exc:
            raise ValueError(f"--decrypt-key-file {exc}") from None
    if verify_keys and not sealed.key_files(verify_keys):
        raise ValueError(f"--verify-key {', '.join(map(str, verify_keys))}: no key files there")
    if decrypt_keys and not sealed.key_files(decrypt_keys):
        raise ValueError(f"--decrypt-key-file {', '.join(map(str, decrypt_keys))}: no key files there")


def open_model(
    path: Path, where: str, verify_keys: Sequence[Path] = (), decrypt_keys: Sequence[Path] = ()
) -> InMemoryModel | None:
    """Verify the version folder of `path` (with verify keys) and decrypt its sealed files (with
    decryption keys); None when the model is plain and ONNX Runtime should read it from its path."""
    folder = path.parent
    if verify_keys:
        verify(folder, where, verify_keys)
    others = [p for p in sorted(folder.iterdir()) if p != path and _may_be_sealed(p) and sealed.is_sealed(p)]
    if not sealed.is_sealed(path):
        if others:
            raise ModelLoadError(f"{where}: {', '.join(p.name for p in others)} encrypted but {path.name} is not; "
                                 "publish the version again with --encrypt-key-file")  # fmt: skip
        return None
    try:
        header = sealed.read_header(path)
        if not decrypt_keys:
            raise ModelLoadError(f"{where}: {path.name} is encrypted (key id {header.key_id}); start the server with "
                                 "--decrypt-key-file naming that key")  # fmt: skip
        keys = sealed.read_keys(decrypt_keys)
        model = sealed.decrypt_file(path, keys)
        files = {p.name: sealed.decrypt_file(p, keys) for p in others}
    except sealed.NoMatchingKey as exc:
        raise ModelLoadError(f"{where}: wrong decryption key: {exc}") from None
    except (sealed.SealError, OSError) as exc:
        raise ModelLoadError(f"{where}: cannot decrypt: {exc}") from None
    return InMemoryModel(model.tobytes(), files)


def verify(folder: Path, where: str, key_paths: Sequence[Path]) -> Path:
    """Check the folder's signature against the keys; the key that verified it, else ModelLoadError:
    not signed, signed with another key, files that differ from the signed ones, or a signature
    that does not verify."""
    from model_signing import verifying

    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise ModelLoadError(f"{where}: not signed: {signature} is missing, and this server loads only signed "
                             "versions (--verify-key); sign it with `modelport sign`")  # fmt: skip
    try:
        keys = sealed.key_files(key_paths)
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot read the verification keys: {exc}") from None
    other_key, failures = [], []
    for key in keys:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).verify(folder, signature)
            return key
        except Exception as exc:  # model-signing raises ValueError, sigstore and cryptography errors
            text = " ".join(str(exc).split()) or type(exc).__name__
            if text.startswith("Key mismatch"):
                other_key.append(key.name)
            elif text.startswith("Signature mismatch"):
                raise ModelLoadError(f"{where}: files differ from the signed ones ({_differences(text)}); the "
                                     f"signature ({key.name}) is valid, the files were modified") from None  # fmt: skip
            else:
                failures.append(f"{key.name}: {text[:300]}")
    if failures:
        raise ModelLoadError(f"{where}: the signature {signature.name} does not verify: {'; '.join(failures)}")
    raise ModelLoadError(f"{where}: signed with a key that is not among the verification keys "
                         f"({', '.join(other_key)})")  # fmt: skip


def _differences(text: str) -> str:
    """model-signing's mismatch list, without the digests: changed, extra and missing files."""
    parts = []
    # The list's repr escapes quotes when a digest holds one: allow a backslash before them.
    changed = re.findall(r"Hash mismatch for \\*'([^'\\]+)", text)
    if changed:
        parts.append("changed: " + ", ".join(changed))
    for what, label in (("Extra files found", "not signed"), ("Missing files", "missing")):
        found = re.search(what + r" in model \\*'[^'\\]*\\*': ([^'\"\\\]]+)", text)
        if found:
            parts.append(f"{label}: {found.group(1).strip()}")
    return "; ".join(parts) or text[:300]


def _may_be_sealed(path: Path) -> bool:
    plain = (CONVERSION_FILE, SIGNATURE_FILE)
    return path.is_file() and path.name not in plain and not path.name.startswith(".")
