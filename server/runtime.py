"""ONNX Runtime behind one small interface: load a model file, describe it, run it. Inputs and
outputs are wire-ready arrays (BYTES as object arrays of UTF-8 `bytes`), so nothing above this
module knows ONNX Runtime's string or bfloat16 conventions."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modelport.protocol.datatypes import ONNX_TO_DATATYPE
from modelport.protocol.types import TensorSpec

from .errors import InferenceFailed, InvalidInput, ModelLoadError
from .signature import Signature

log = logging.getLogger(__name__)

# Our provider names (the --execution-provider flag) -> ONNX Runtime's.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

# Triton's onnxruntime backend graph `level`: -1 basic only, 1 extended, unset/0 everything.
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
_BF16 = 16  # onnx.TensorProto.BFLOAT16, without importing onnx in the server


@dataclass(frozen=True)
class SessionOptions:
    """How a session is built; 0 threads means ONNX Runtime's own default."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_level: int = 0
    providers: tuple[str, ...] = ("cpu",)
    device_id: int = 0
    # ONNX Runtime session config entries (config.pbtxt parameters named "session.*"). By default
    # idle intra-op threads do not spin: spinning threads take the CPU the event loop needs to
    # decode the next request, which costs a server more than the wake-up latency it saves.
    config_entries: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class InMemoryModel:
    """A model that exists only in memory (decrypted by model_files.py): model.onnx's bytes, and
    its external data files by the name its tensors' `location` gives (uint8 arrays)."""

    model: bytes
    files: Mapping[str, Any] = field(default_factory=dict)


def available_providers(requested: Sequence[str], device_id: int = 0) -> list[tuple[str, dict[str, str]]]:
    """ONNX Runtime providers (with options) for `requested`, dropping (and logging) those this
    build lacks; CPU is always last as the fallback."""
    if any(name != "cpu" for name in requested):
        _preload_gpu_libraries()
    have = set(ort.get_available_providers())
    chosen: list[tuple[str, dict[str, str]]] = []
    for name in requested:
        provider = PROVIDERS.get(name)
        if provider is None:
            raise ValueError(f"unknown execution provider '{name}'; expected one of {', '.join(PROVIDERS)}")
        if provider in have:
            options = {} if name == "cpu" else {"device_id": str(device_id)}
            if name == "cuda":
                # Dynamic batching makes many batch sizes; an exhaustive cuDNN algorithm search for
                # each new shape stalls the GPU for seconds, the heuristic choice does not.
                options["cudnn_conv_algo_search"] = "HEURISTIC"
            chosen.append((provider, options))
        else:
            log.warning(
                "execution provider %s is not available in this onnxruntime build; using the next one", provider
            )
    if all(p != "CPUExecutionProvider" for p, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    return chosen


_preloaded = False


def _preload_gpu_libraries() -> None:
    """onnxruntime-gpu finds CUDA and cuDNN from the nvidia-* wheels (or PyTorch's) only after
    preload_dlls(); without it the CUDA provider fails to load and sessions fall back to CPU."""
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # no CUDA libraries here: the provider check below says what happens
        log.warning("onnxruntime.preload_dlls() failed: %s", exc)


class OnnxModel:
    """One ONNX Runtime session. `run` is thread-safe (ONNX Runtime allows concurrent runs)."""

    def __init__(self, path: Path, options: SessionOptions, where: str, memory: InMemoryModel | None = None) -> None:
        """A session on the model file at `path`, or on `memory` (then nothing is read from disk)."""
        self.where = where
        self.options = options
        session_options = _session_options(options)
        if memory is not None and memory.files:
            names = list(memory.files)
            buffers = [memory.files[n] for n in names]
            session_options.add_external_initializers_from_files_in_memory(names, buffers, [len(b) for b in buffers])
        try:
            self._session = ort.InferenceSession(
                str(path) if memory is None else memory.model,
                sess_options=session_options,
                providers=available_providers(options.providers, options.device_id),
            )
        except Exception as exc:  # ONNX Runtime raises several unrelated types
            held = "" if memory is None else " (decrypted in memory)"
            raise ModelLoadError(f"{where}: ONNX Runtime cannot load {path.name}{held}: {exc}") from exc
        self.signature = Signature(
            tuple(_spec(where, a) for a in self._session.get_inputs()),
            tuple(_spec(where, a) for a in self._session.get_outputs()),
        )
        self.providers = tuple(self._session.get_providers())
        wanted = PROVIDERS[options.providers[0]] if options.providers else "CPUExecutionProvider"
        if self.providers[0] != wanted:
            log.warning("%s: runs on %s, not %s (CPU fallback)", where, self.providers[0], wanted)
        bf16_out = [t.name for t in self.signature.outputs if t.datatype == "BF16"]
        if bf16_out:
            raise ModelLoadError(
                f"{where}: BF16 outputs {bf16_out} cannot be returned through ONNX Runtime's Python API"
            )
        self._needs_ort_values = any(t.datatype == "BF16" for t in self.signature.inputs)
        self._string_outputs = frozenset(t.name for t in self.signature.outputs if t.datatype == "BYTES")
        # Inputs ONNX Runtime takes as the wire's arrays (no strings, no bfloat16): most models.
        self._plain_inputs = all(t.datatype not in ("BYTES", "BF16") for t in self.signature.inputs)
        self._binding = _binding(self._session) if self._plain_inputs else None

    def release(self) -> None:
        """Drop the session (and with it the weights) now, not whenever the last reference to this
        object goes: a hot swap of a large model then holds both versions' weights only for the
        swap itself. Nothing may run afterwards."""
        self._session = None
        self._binding = None

    def run(self, inputs: Mapping[str, tuple[str, np.ndarray]], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the session on already validated inputs; returns the requested outputs, wire-ready."""
        if self._plain_inputs:
            feed = {name: array for name, (_, array) in inputs.items()}
        else:
            feed = {name: _to_ort(self.where, name, datatype, array) for name, (datatype, array) in inputs.items()}
        try:
            if self._needs_ort_values:
                values = {
                    n: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
                    for n, v in feed.items()
                }
                results = [v.numpy() for v in self._session.run_with_ort_values(list(outputs), values)]
            elif self._binding is not None:
                results = self._binding.run(list(outputs), feed, None)
            else:
                results = self._session.run(list(outputs), feed)
        except Exception as exc:
            raise InferenceFailed(f"{self.where}: ONNX Runtime failed: {exc}") from exc
        named = dict(zip(outputs, results))
        if self._string_outputs:
            for name in self._string_outputs.intersection(named):
                named[name] = _from_ort_strings(named[name])
        return named


def _binding(session: ort.InferenceSession):
    """The session's native binding, to run numpy inputs that the data plane has already
    validated, on a CPU-only session; None otherwise. The Python wrapper around it (session.run)
    re-checks input names and OrtValue ownership and handles provider fallback, which only GPU
    providers need: ~1.5 us a request, which a small model's throughput pays."""
    binding = getattr(session, "_sess", None)
    if binding is None or tuple(session.get_providers()) != ("CPUExecutionProvider",):
        return None
    return binding


def _session_options(options: SessionOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    if options.inter_op_threads > 1:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = _GRAPH_LEVELS.get(options.graph_level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    entries = {
        "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0", **dict(options.config_entries)
    }
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    return so


def _spec(where: str, arg: ort.NodeArg) -> TensorSpec:
    datatype = ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"{where}: tensor '{arg.name}' has type {arg.type}, which modelport cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def _to_ort(where: str, name: str, datatype: str, array: np.ndarray):
    """numpy as ONNX Runtime wants it: strings as str, BF16 as a typed OrtValue."""
    if datatype == "BYTES":
        try:
            return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array) if array.size else array
        except UnicodeDecodeError:
            raise InvalidInput(
                f"{where}: input '{name}' holds bytes that are not UTF-8; ONNX Runtime string tensors must be UTF-8"
            ) from None
    if datatype == "BF16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array), _BF16)
    return array


def _from_ort_strings(array: np.ndarray) -> np.ndarray:
    """ONNX Runtime's str elements as the protocol's UTF-8 bytes."""
    if not array.size:
        return array
    return np.vectorize(lambda s: s.encode("utf-8") if isinstance(s, str) else bytes(s), otypes=[object])(array)
