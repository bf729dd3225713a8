"""modelport.v1.Rollout: push a rollout to this replica now, and say what it serves."""

from __future__ import annotations

from modelport.protocol.generated import rollout_pb2 as ro
from modelport.protocol.generated import rollout_pb2_grpc as ro_grpc

from .dataplane import DataPlane
from .errors import InvalidInput, rpc_errors
from .statistics import LATENCY_BUCKETS_S


class RolloutServicer(ro_grpc.RolloutServicer):
    """The gRPC face of the data plane's rollout operations."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    @rpc_errors
    async def RolloutRefresh(self, request: ro.RolloutRefreshRequest, context) -> ro.RolloutRefreshResponse:
        if not request.model_name:
            raise InvalidInput("RolloutRefresh needs model_name")
        await self._dp.refresh_model(request.model_name)
        return ro.RolloutRefreshResponse()

    @rpc_errors
    async def RolloutStatus(self, request: ro.RolloutStatusRequest, context) -> ro.RolloutStatusResponse:
        if not request.model_name:
            raise InvalidInput("RolloutStatus needs model_name")
        rollout, default, served = self._dp.rollout_status(request.model_name)
        versions = [
            ro.VersionTraffic(
                version=str(v.version), requests=v.stats.success.count, failures=v.stats.fail.count,
                bucket_bounds_s=LATENCY_BUCKETS_S, bucket_counts=list(v.stats.success.buckets),
            )
            for v in served
        ]  # fmt: skip
        return ro.RolloutStatusResponse(
            model_name=request.model_name, rollout_json=rollout.to_json() if rollout else "",
            default_version=str(default.version) if default else "", versions=versions,
        )  # fmt: skip
