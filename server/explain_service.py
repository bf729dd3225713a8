"""modelport.v1.Explain: feature attributions for a served model's predictions (explain.py)."""

from __future__ import annotations

import time

from modelport.protocol import codec
from modelport.protocol.generated import explain_pb2 as ex
from modelport.protocol.generated import explain_pb2_grpc as ex_grpc

from .errors import InvalidInput, rpc_errors
from .explain import Explainer, ExplainRequest, Explanation


class ExplainServicer(ex_grpc.ExplainServicer):
    """The gRPC face of the Explainer: decode, explain, encode."""

    def __init__(self, explainer: Explainer, max_tensor_elements: int = 0) -> None:
        self._explainer = explainer
        self._max_elements = max_tensor_elements

    @rpc_errors
    async def ModelExplain(self, request: ex.ModelExplainRequest, context) -> ex.ModelExplainResponse:
        if not request.request.model_name:
            raise InvalidInput("ModelExplain needs request.model_name and the rows to explain as its inputs")
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        call = ExplainRequest(
            codec.decode_request(request.request, self._max_elements, deadline),
            request.target if request.HasField("target") else None,
            request.permutations, request.patch_size, request.seed,
        )  # fmt: skip
        return encode(await self._explainer.explain(call))


def encode(explanation: Explanation) -> ex.ModelExplainResponse:
    """The protobuf answer."""
    rows = [
        ex.RowExplanation(
            target=row.target, output=row.output, base_value=row.base_value,
            inputs=[ex.InputAttributions(name=name, shape=values.shape, values=values.reshape(-1).tolist())
                    for name, values in row.attributions.items()],
        )
        for row in explanation.rows
    ]  # fmt: skip
    return ex.ModelExplainResponse(
        model_name=explanation.model, model_version=explanation.version, method=explanation.method,
        space=explanation.space, output_name=explanation.output_name, background=explanation.background,
        background_rows=explanation.background_rows, features=explanation.features,
        permutations=explanation.permutations, patch_size=explanation.patch_size, rows=rows,
    )  # fmt: skip
