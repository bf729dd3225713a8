"""A minimal ONNX Runtime model for MLServer (which has no official ONNX runtime), so that
benchmarks/http_vs_grpc.py can load MLServer's v2 HTTP endpoint with the same model file as
modelport. Runs in MLServer's own environment (e.g. /tmp/mlserver-venv), never in modelport's:

    python3.11 -m venv /tmp/mlserver-venv
    /tmp/mlserver-venv/bin/pip install mlserver==1.7.1 onnxruntime==1.31.1 uvloop==0.21.0

(uvloop 0.22 and later stop MLServer 1.7.1's inference workers as they start, "There is no current
event loop in thread 'MainThread'": SeldonIO/MLServer#2286.)

model-settings.json: {"name": "mlp", "implementation": "mlserver_onnx.OnnxModel",
"parameters": {"uri": "/path/model.onnx", "version": "1", "extra": {"intra_op_threads": 2}}},
with this folder on PYTHONPATH. Inputs are decoded and outputs encoded by MLServer's NumpyCodec,
as its own runtimes do; the session is called like modelport's (every output, one run a request).
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

DATATYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
             "tensor(bool)": "BOOL", "tensor(string)": "BYTES", "tensor(float16)": "FP16", "tensor(uint8)": "UINT8"}


def _spec(arg) -> MetadataTensor:
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape]
    return MetadataTensor(name=arg.name, datatype=DATATYPES.get(arg.type, arg.type), shape=shape)


class OnnxModel(MLModel):
    """One ONNX model in an ONNX Runtime CPU session."""

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(await get_model_uri(self.settings), options,
                                             providers=["CPUExecutionProvider"])  # fmt: skip
        self._outputs = [o.name for o in self._session.get_outputs()]
        # The signature, for GET /v2/models/{name} (what `modelport bench` shapes its inputs from).
        self.inputs = self.inputs or [_spec(i) for i in self._session.get_inputs()]
        self.outputs = self.outputs or [_spec(o) for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._outputs, results)],
        )
