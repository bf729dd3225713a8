"""The asyncio twin of `Client`: the same methods, awaited."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from modelport.protocol import codec
from modelport.protocol.generated import explain_pb2_grpc as ex_grpc
from modelport.protocol.generated import feedback_pb2 as fb
from modelport.protocol.generated import feedback_pb2_grpc as fb_grpc
from modelport.protocol.generated import grpc_service_pb2 as pb
from modelport.protocol.generated import grpc_service_pb2_grpc as pb_grpc
from modelport.protocol.generated import model_config_pb2 as mc
from modelport.protocol.generated import rollout_pb2 as ro
from modelport.protocol.generated import rollout_pb2_grpc as ro_grpc
from modelport.protocol.types import ModelIndexEntry, ModelMetadata, ModelQuality, ServerMetadata

from . import upload
from ._common import channel_spec, chunks, is_http, label_request, predict_plan, prepare
from .deploy import deploy_async
from .errors import InferenceServerError
from .explanation import Explanation, explain_inputs, explain_request


class AsyncClient:
    """`Client` for asyncio code: `await client.predict("mlp", x)`; use `async with`."""

    def __new__(cls, url: str | Sequence[str] | None = None, *args: Any, **kwargs: Any) -> AsyncClient:
        # As Client: http(s):// URLs get the HTTP/REST transport (client/http.py).
        if cls is AsyncClient and is_http(url):
            from .http import AsyncHttpClient

            cls = AsyncHttpClient
        return super().__new__(cls)

    def __init__(
        self, url: str | Sequence[str], *, timeout: float | None = None, token: str | None = None, **channel: Any
    ) -> None:
        spec = channel_spec(url, **channel)
        self.url = spec.target
        # A bearer token rides in each call's metadata (servers started with --auth-token-file).
        self._auth = (("authorization", f"Bearer {token}"),) if token else None
        if spec.credentials is None:
            self._channel = grpc.aio.insecure_channel(spec.target, options=spec.options)
        else:
            self._channel = grpc.aio.secure_channel(spec.target, spec.credentials, options=spec.options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # RepositoryModelLoad takes wire bytes built by upload.grpc_request (a model's files copied once).
        self._load = self._channel.unary_unary(upload.LOAD_METHOD,
                                               response_deserializer=pb.RepositoryModelLoadResponse.FromString)
        self._feedback = fb_grpc.FeedbackStub(self._channel)
        self._rollout = ro_grpc.RolloutStub(self._channel)
        self._explain = ex_grpc.ExplainStub(self._channel)
        self.timeout = timeout
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}

    async def _call(self, rpc, request, timeout: float | None):
        try:
            return await rpc(request, timeout=self.timeout if timeout is None else timeout, metadata=self._auth)
        except grpc.RpcError as exc:
            raise InferenceServerError.from_rpc_error(exc) from None

    async def is_server_live(self, *, timeout: float | None = None) -> bool:
        """ServerLive."""
        return (await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)).live

    async def is_server_ready(self, *, timeout: float | None = None) -> bool:
        """ServerReady; False (not an error) while the server cannot be reached."""
        try:
            return (await self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout)).ready
        except InferenceServerError as exc:
            if exc.code == grpc.StatusCode.UNAVAILABLE:
                return False
            raise

    async def is_model_ready(self, name: str, version: str = "", *, timeout: float | None = None) -> bool:
        """ModelReady."""
        request = pb.ModelReadyRequest(name=name, version=version)
        return (await self._call(self._stub.ModelReady, request, timeout)).ready

    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        """ServerMetadata."""
        msg = await self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(), timeout)
        return ServerMetadata(msg.name, msg.version, tuple(msg.extensions))

    async def model_metadata(self, name: str, version: str = "", *, timeout: float | None = None) -> ModelMetadata:
        """ModelMetadata: inputs, outputs, served versions."""
        request = pb.ModelMetadataRequest(name=name, version=version)
        meta = ModelMetadata.from_proto(await self._call(self._stub.ModelMetadata, request, timeout))
        self._metadata[(name, version)] = meta
        return meta

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str = "",
        outputs: Sequence[str] | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """See Client.infer."""
        request = codec.build_request(model, inputs, version=version, outputs=outputs, request_id=request_id)
        return codec.decode_response(await self._call(self._stub.ModelInfer, request, timeout))

    async def predict(
        self, model: str, x: object, *, version: str = "", batch_size: int | None = None, timeout: float | None = None
    ) -> np.ndarray:
        """See Client.predict."""
        meta = self._metadata.get((model, version)) or await self.model_metadata(model, version, timeout=timeout)
        plan = predict_plan(meta)
        results = [
            (
                await self.infer(
                    model, {plan.input_name: part}, version=version, outputs=[plan.output_name], timeout=timeout
                )
            )[plan.output_name]
            for part in chunks(prepare(plan, x), batch_size)
        ]
        return np.concatenate(results) if len(results) > 1 else results[0]

    def model(self, name: str, version: str = "") -> AsyncModel:
        """A handle bound to one model."""
        return AsyncModel(self, name, version)

    async def report_label(self, model: str, request_id: str, labels, *, timeout: float | None = None) -> bool:
        """Report the truth of each row of an earlier request sent with `request_id`: integer class
        labels (classifiers) or float targets (regressors). With a shared feedback store any
        replica pairs it. False if no prediction waits under that id (unknown, expired, already
        reported)."""
        request = label_request(model, request_id, labels)
        return (await self._call(self._feedback.ReportLabel, request, timeout)).matched

    async def quality(
        self, model: str, version: str = "", *, include_pairs: bool = False, timeout: float | None = None
    ) -> ModelQuality:
        """Rolling quality per version over the server's labelled windows (cluster-wide with a
        shared feedback store); `.to_dict()` is the shape `modelport quality --json` prints. With
        `include_pairs`, each version's window of (predicted, true) pairs comes too."""
        request = fb.GetQualityRequest(model_name=model, model_version=version, include_pairs=include_pairs)
        return ModelQuality.from_proto(await self._call(self._feedback.GetQuality, request, timeout))

    async def explain(
        self, model: str, x: object, version: str = "", target: int | None = None, *, output: str | None = None,
        permutations: int = 0, patch_size: int = 0, seed: int = 0, timeout: float | None = None,
    ) -> Explanation:
        """Why the model predicted what it did for each row of `x` (an array for a single-input
        model, else {input: array}): per-element attributions of the predicted class's score (or
        class `target`'s; for a regressor, its output), relative to the base value, in
        `.rows`; `.to_dict()` is what `modelport explain --json` prints. `output` names the output
        to explain (default: the first); `permutations`, `patch_size` (images) and `seed` tune the
        method (0: the server's choice). Needs the `inference` scope when the server has auth."""
        meta = None
        if not isinstance(x, Mapping):
            meta = self._metadata.get((model, version)) or await self.model_metadata(model, version, timeout=timeout)
        request = explain_request(model, explain_inputs(meta, x), version=version, target=target, output=output,
                                  permutations=permutations, patch_size=patch_size, seed=seed)
        return Explanation.from_proto(await self._call(self._explain.ModelExplain, request, timeout))

    # ------------------------------------------------------------ rollouts

    async def rollout_status(self, model: str, *, timeout: float | None = None) -> ro.RolloutStatusResponse:
        """The model's rollout as this server serves it, and each version's traffic."""
        return await self._call(self._rollout.RolloutStatus, ro.RolloutStatusRequest(model_name=model), timeout)

    async def rollout_refresh(self, model: str, *, timeout: float | None = None) -> None:
        """Make the server reread the model's folder (its rollout.json) now; needs the admin scope."""
        await self._call(self._rollout.RolloutRefresh, ro.RolloutRefreshRequest(model_name=model), timeout)

    # ------------------------------------------------------------ repository, config, statistics

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[ModelIndexEntry]:
        """RepositoryIndex: every model (version) of the repository with its state and reason."""
        msg = await self._call(self._stub.RepositoryIndex, pb.RepositoryIndexRequest(ready=ready_only), timeout)
        return [ModelIndexEntry(m.name, m.version, m.state, m.reason) for m in msg.models]

    async def load_model(
        self, name: str, *, config: upload.Config = None, files: upload.Files = None, timeout: float | None = None
    ) -> None:
        """See Client.load_model: RepositoryModelLoad, an upload with `config` and/or `files`."""
        request = upload.grpc_request(name, config, files)
        try:
            await self._call(self._load, request, timeout)
        except InferenceServerError as exc:
            raise upload.explain_refusal(exc, name, files, self.url, http=False) from None

    async def deploy(
        self, source: Any, name: str, *, version: int | None = None, sample: Any = None, config: upload.Config = None,
        sign_key: str | Path | None = None, encrypt_key_file: str | Path | None = None,
        labels: Sequence[str] | None = None, progress: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> AsyncModel:  # fmt: skip
        """See Client.deploy; the packaging (a conversion takes seconds) runs in a worker thread
        (asyncio.to_thread), so the event loop keeps serving, and `progress` is called from there."""
        return await deploy_async(self, source, name, version=version, timeout=timeout, progress=progress,
                                  sample=sample, config=config, sign_key=sign_key,
                                  encrypt_key_file=encrypt_key_file, labels=labels)  # fmt: skip

    async def unload_model(self, name: str, *, timeout: float | None = None) -> None:
        """RepositoryModelUnload: stop serving `name` once its running requests finish."""
        await self._call(self._stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=name), timeout)

    async def model_config(self, name: str, version: str = "", *, timeout: float | None = None) -> mc.ModelConfig:
        """ModelConfig: the effective configuration (protobuf `inference.ModelConfig`)."""
        request = pb.ModelConfigRequest(name=name, version=version)
        return (await self._call(self._stub.ModelConfig, request, timeout)).config

    async def model_statistics(
        self, name: str = "", version: str = "", *, timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """ModelStatistics (protobuf answer, as Triton's): counts and cumulative durations per version."""
        return await self._call(
            self._stub.ModelStatistics, pb.ModelStatisticsRequest(name=name, version=version), timeout
        )

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncModel:
    """One model of a server, async: `await model.predict(x)`. `deployed_version` as on Model."""

    def __init__(self, client: AsyncClient, name: str, version: str = "") -> None:
        self.client, self.name, self.version = client, name, version
        self.deployed_version: int | None = None
        # Rows per request in predict() when the call gives no batch_size, as Keras batches; deploy()
        # sets the model's max_batch_size, so any number of rows works.
        self.batch_size: int | None = None

    async def predict(self, x: object, **kwargs: Any) -> np.ndarray:
        """See Client.predict; `batch_size` defaults to the handle's."""
        kwargs.setdefault("batch_size", self.batch_size)
        return await self.client.predict(self.name, x, version=self.version, **kwargs)

    async def infer(self, inputs: Mapping[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
        """See Client.infer."""
        return await self.client.infer(self.name, inputs, version=self.version, **kwargs)

    async def metadata(self) -> ModelMetadata:
        """See Client.model_metadata."""
        return await self.client.model_metadata(self.name, self.version)

    async def explain(self, x: object, target: int | None = None, **kwargs: Any) -> Explanation:
        """See Client.explain."""
        return await self.client.explain(self.name, x, version=self.version, target=target, **kwargs)

    async def is_ready(self) -> bool:
        """See Client.is_model_ready."""
        return await self.client.is_model_ready(self.name, self.version)
