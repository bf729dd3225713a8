"""Fixtures shared by the server test modules (tests/conftest.py starts the servers)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from modelport.server.background import BackgroundServer


@pytest.fixture(scope="module")
def stub(server: BackgroundServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """The raw generated stub on one channel to the module's `server`. The channel sets no
    message-size limits of its own, so every size limit a test meets is the server's."""
    channel = grpc.insecure_channel(
        server.address, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    )
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
