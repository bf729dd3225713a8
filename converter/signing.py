"""Signing a version folder with OpenSSF model-signing (private-key mode): the signature goes into
the folder as model.sig and covers every other file of it (model.onnx, model.onnx.data,
conversion.json; the encrypted bytes when the version is encrypted), so a server verifies a version
without decrypting it (`modelport serve --verify-key`).

Keys are elliptic-curve PEM files (`openssl ecparam -name prime256v1 -genkey -noout -out sign.pem`;
the public half: `openssl ec -in sign.pem -pubout -out sign.pub`). Keyless Sigstore signing (an
OIDC identity, the public transparency log) needs the internet; `model_signing` signs that way from
its own command line, and a server would then need Sigstore verification, which modelport does not
do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from modelport.protocol.repository import SIGNATURE_FILE, version_folders

SIGNATURE_FORMAT = "OpenSSF model-signing 1.x, Sigstore bundle signed by an elliptic-curve key"


class SigningError(ValueError):
    """A key that cannot sign, or a version that cannot be signed."""


def check_key(key: str | Path) -> Path:
    """The private key file, checked to be one model-signing can sign with (before any slow work)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(key)
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not an unencrypted PEM private key ({exc}); make one with "
                           "`openssl ecparam -name prime256v1 -genkey -noout -out sign.pem`") from None  # fmt: skip
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise SigningError(f"{path}: model-signing signs with elliptic-curve keys, this is a "
                           f"{type(private).__name__}; make one with `openssl ecparam -name prime256v1 -genkey "
                           "-noout -out sign.pem`")  # fmt: skip
    return path


def sign_folder(folder: Path, key: str | Path, signature: Path | None = None) -> Path:
    """Sign every file of `folder` but the signature file; write the signature to `signature`
    (default folder/model.sig)."""
    from model_signing import hashing, signing

    hashing_config = hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    target = signature or folder / SIGNATURE_FILE
    signing.Config().set_hashing_config(hashing_config).use_elliptic_key_signer(private_key=Path(key)).sign(
        folder, target
    )
    return target


def sign_version(repository: str | Path, name: str, key: str | Path, version: int | None = None) -> Path:
    """Sign a published version (default: the latest) in place. The signature is written beside the
    model folder first and renamed into the version folder, so a server never reads half of one; a
    signature already there is replaced."""
    check_key(key)
    model_dir = Path(repository) / name
    versions = version_folders(model_dir)
    chosen = version if version is not None else (versions[-1] if versions else None)
    if chosen is None or chosen not in versions:
        raise SigningError(f"{model_dir}: no version {version if version is not None else ''} to sign; "
                           f"found {list(versions)}")  # fmt: skip
    folder = model_dir / str(chosen)
    handle, staged = tempfile.mkstemp(prefix=".tmp-sig-", dir=model_dir)
    os.close(handle)
    try:
        os.unlink(staged)  # model-signing writes the file itself
        sign_folder(folder, key, Path(staged))
        os.replace(staged, folder / SIGNATURE_FILE)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    return folder / SIGNATURE_FILE
