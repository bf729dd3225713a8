"""The one exception the client raises for a failed call."""

from __future__ import annotations

import grpc


class InferenceServerError(Exception):
    """A call failed; `code` is the gRPC status and `message` the server's explanation."""

    exit_code = 1  # the `modelport` command's exit code when a call fails

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"[{code.name}] {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc_error(cls, exc: grpc.RpcError) -> InferenceServerError:
        """Wrap a grpc error (sync or aio)."""
        return cls(exc.code(), exc.details() or "")
