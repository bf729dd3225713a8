"""Load anything a TensorFlow user has (.keras, .h5, SavedModel, an in-memory Keras model) into
one shape: a traced tf.function with a dynamic batch dimension and named inputs and outputs.

Known fact: with TensorFlow 2.21 / Keras 3, tf2onnx.convert.from_keras fails (KeyError on
keras_tensor_N); converting a tf.function that calls the model works, and names come from the
Keras layers instead of tf2onnx's `unk__N`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our progress

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from .errors import ModelError  # noqa: E402


@dataclass(frozen=True)
class SourceTensor:
    """A named input or output: numpy dtype and shape (None = any size)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


@dataclass
class Source:
    """A model ready for conversion."""

    kind: str  # "keras", "h5", "saved_model" or "keras (in memory)"
    path: Path | None
    function: Any  # tf.function taking the inputs positionally, returning {output name: tensor}
    inputs: list[SourceTensor]
    outputs: list[str]

    def input_signature(self) -> list[tf.TensorSpec]:
        """The traced signature (batch dimension dynamic)."""
        return [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in self.inputs]

    def weight_bytes(self) -> int:
        """Bytes of the variables and of the tensors captured by value that the traced function
        reads: the size of the weights the ONNX model will hold."""
        concrete = self.function.get_concrete_function()
        tensors = [*concrete.variables, *(t for t in concrete.captured_inputs if t.dtype != tf.resource)]
        return sum((t.shape.num_elements() or 0) * t.dtype.size for t in _unique_variables(tensors))

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """TensorFlow's outputs for `feeds`, by output name."""
        result = self.function(*[tf.constant(feeds[t.name]) for t in self.inputs])
        return {name: np.asarray(result[name]) for name in self.outputs}


def load(source: Any) -> Source:
    """Dispatch on what `source` is: a Keras model, a .keras/.h5 file or a SavedModel folder."""
    if not isinstance(source, (str, os.PathLike)):
        return from_keras(source, "keras (in memory)", None)
    path = Path(source)
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return from_saved_model(path)
        raise ModelError(f"{path} is a folder without saved_model.pb: not a SavedModel")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    import keras

    kind = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}.get(path.suffix.lower())
    if kind is None:
        raise ModelError(f"{path}: expected a .keras or .h5 file, or a SavedModel folder")
    return from_keras(keras.models.load_model(path, compile=False), kind, path)


def _batch_dynamic(shape: Any) -> tuple[int | None, ...]:
    dims = tuple(None if d is None else int(d) for d in shape)
    return (None, *dims[1:]) if dims else dims


def from_keras(model: Any, kind: str, path: Path | None) -> Source:
    """A Keras 3 model (functional, Sequential or subclassed with known inputs)."""
    model = _strip_pruning(model)
    if not getattr(model, "inputs", None):
        raise ModelError("the Keras model has no defined inputs: build it (call it once, or give it an Input)")
    inputs = [
        SourceTensor(_layer_name(t, f"input_{i}"), _numpy_dtype(t.dtype), _batch_dynamic(t.shape))
        for i, t in enumerate(model.inputs)
    ]
    outputs = _unique([_layer_name(t, f"output_{i}") for i, t in enumerate(model.outputs)])
    specs = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in inputs]
    single_input = len(inputs) == 1

    @tf.function(input_signature=specs)
    def function(*args):
        result = model(args[0] if single_input else list(args), training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(outputs, result))

    return Source(kind, path, function, inputs, outputs)


def from_saved_model(path: Path) -> Source:
    """A SavedModel folder (tf.saved_model.save, or Keras' model.export): its serving signature."""
    loaded = tf.saved_model.load(str(path))
    signatures = dict(loaded.signatures)
    signature = signatures.get("serving_default") or (next(iter(signatures.values())) if signatures else None)
    if signature is None:
        raise ModelError(f"{path}: the SavedModel has no signature to convert")
    specs = signature.structured_input_signature[1]
    inputs = [
        SourceTensor(name, np.dtype(s.dtype.as_numpy_dtype), _batch_dynamic(s.shape))
        for name, s in sorted(specs.items())
    ]
    outputs = sorted(signature.structured_outputs)
    tf_specs = [tf.TensorSpec(t.shape, tf.as_dtype(t.dtype), name=t.name) for t in inputs]
    names = [t.name for t in inputs]

    @tf.function(input_signature=tf_specs)
    def function(*args):
        result = signature(**dict(zip(names, args)))
        return {name: result[name] for name in outputs}

    function.keep_alive = loaded  # the signature's variables live as long as the function
    return Source("saved_model", path, function, inputs, outputs)


def _numpy_dtype(dtype: Any) -> np.dtype:
    """Keras 3 gives dtype names, tf-keras (Keras 2, e.g. pruned models) gives tf.DType."""
    return np.dtype(tf.as_dtype(dtype).as_numpy_dtype)


def _layer_name(tensor: Any, fallback: str) -> str:
    history = getattr(tensor, "_keras_history", None)
    name = getattr(history[0], "name", None) if history else None
    return name or getattr(tensor, "name", None) or fallback


def _unique_variables(tensors: list[Any]) -> list[Any]:
    """Each variable once (a variable shared by two layers is one set of weights)."""
    seen: set[int] = set()
    unique = []
    for tensor in tensors:
        key = id(getattr(tensor, "handle", tensor))
        if key not in seen:
            seen.add(key)
            unique.append(tensor)
    return unique


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def _strip_pruning(model: Any) -> Any:
    """Models pruned with tensorflow-model-optimization carry wrapper layers; serve the weights."""
    if not any(type(layer).__name__ == "PruneLowMagnitude" for layer in getattr(model, "layers", [])):
        return model
    import tensorflow_model_optimization as tfmot  # only when such a model is given

    return tfmot.sparsity.keras.strip_pruning(model)
