"""TLS and mutual TLS for the gRPC port, with certificates reloaded from disk without a restart.

gRPC asks the fetcher for a new configuration before each handshake; it returns one only when a
file changed (by mtime and size), so renewed certificates (cert-manager, a mounted Secret) apply
to new connections while existing ones keep theirs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from .logs import event

log = logging.getLogger(__name__)


class CertificateFiles:
    """The server key, certificate chain and optional client CA, watched for changes."""

    def __init__(self, key: Path, cert: Path, root: Path | None) -> None:
        self.paths = [p for p in (key, cert, root) if p is not None]
        self.key, self.cert, self.root = key, cert, root
        self._stamp = self._current_stamp()
        self._lock = threading.Lock()

    def _current_stamp(self) -> tuple:
        return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in self.paths)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The certificate configuration as the files say now."""
        root = self.root.read_bytes() if self.root else None
        return grpc.ssl_server_certificate_configuration([(self.key.read_bytes(), self.cert.read_bytes())], root)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration if the files changed since the last one, else None."""
        try:
            with self._lock:
                stamp = self._current_stamp()
                if stamp == self._stamp:
                    return None
                config = self.configuration()
                self._stamp = stamp
            event(log, logging.INFO, "tls_certificates_reloaded", cert=str(self.cert))
            return config
        except (OSError, ValueError) as exc:  # half-written files: keep the current ones, try again later
            event(log, logging.WARNING, "tls_reload_failed", reason=str(exc))
            return None


def server_credentials(key: Path, cert: Path, root: Path | None, mutual: bool) -> grpc.ServerCredentials:
    """Reloading TLS credentials; with `mutual`, clients must present a certificate signed by `root`."""
    if mutual and root is None:
        raise ValueError("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA that signs client certificates)")
    files = CertificateFiles(key, cert, root)
    return grpc.dynamic_ssl_server_credentials(files.configuration(), files.fetch, require_client_authentication=mutual)
