"""modelport.v1.Feedback: clients report true labels for earlier requests (by id)."""

from __future__ import annotations

from modelport.protocol.generated import feedback_pb2 as fb
from modelport.protocol.generated import feedback_pb2_grpc as fb_grpc

from .errors import InvalidInput, rpc_errors
from .quality import QualityMonitor


class FeedbackServicer(fb_grpc.FeedbackServicer):
    """The gRPC face of the QualityMonitor."""

    def __init__(self, monitor: QualityMonitor) -> None:
        self._monitor = monitor

    @rpc_errors
    async def ReportLabel(self, request: fb.ReportLabelRequest, context) -> fb.ReportLabelResponse:
        if not request.model_name or not request.id or not (request.labels or request.targets):
            raise InvalidInput("ReportLabel needs model_name, id and at least one label (or target)")
        matched = await self._monitor.report(request.model_name, request.id, list(request.labels),
                                             list(request.targets))  # fmt: skip
        return fb.ReportLabelResponse(matched=matched)

    @rpc_errors
    async def GetQuality(self, request: fb.GetQualityRequest, context) -> fb.GetQualityResponse:
        if not request.model_name:
            raise InvalidInput("GetQuality needs model_name")
        quality = await self._monitor.quality(request.model_name, request.model_version, request.include_pairs)
        versions = [q.to_proto() for q in quality.versions.values()]
        return fb.GetQualityResponse(model_name=quality.model, versions=versions)
