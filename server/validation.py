"""Request checks against a model's signature, before anything runs.

Every message names the model, the tensor and what was expected, because that is all the
caller gets to see.
"""

from __future__ import annotations

from modelport.protocol.types import InferenceRequest, TensorSpec

from .errors import InvalidInput
from .signature import Signature


def validate(where: str, signature: Signature, max_batch_size: int, request: InferenceRequest) -> None:
    """Raise InvalidInput unless `request` fits `signature` exactly."""
    if request.inputs.keys() != signature.input_names:
        expected = [t.name for t in signature.inputs]
        missing = [name for name in expected if name not in request.inputs]
        if missing:
            raise InvalidInput(f"{where}: missing input {_names(missing)}; the model expects inputs {expected}")
        extra = [name for name in request.inputs if signature.input(name) is None]
        raise InvalidInput(f"{where}: unexpected input {_names(extra)}; the model expects inputs {expected}")
    batch = None
    for spec in signature.inputs:
        datatype, array = request.inputs[spec.name]
        _check_tensor(where, spec, datatype, tuple(array.shape))
        if max_batch_size > 0:
            batch = _check_batch(where, spec, array.shape[0], batch, max_batch_size)
    for wanted in request.outputs:
        spec = signature.output(wanted.name)
        if spec is None:
            raise InvalidInput(
                f"{where}: unknown requested output '{wanted.name}'; the model has outputs "
                f"{[t.name for t in signature.outputs]}"
            )
        if wanted.class_count < 0:
            raise InvalidInput(f"{where}: output '{wanted.name}': classification count must be >= 0")


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _check_tensor(where: str, spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
    if datatype != spec.datatype:
        raise InvalidInput(f"{where}: input '{spec.name}': expected datatype {spec.datatype}, got {datatype}")
    if not spec.accepts_shape(shape):
        raise InvalidInput(
            f"{where}: input '{spec.name}': expected shape {list(spec.shape)} (-1 = any size), got {list(shape)}"
        )


def _check_batch(where: str, spec: TensorSpec, size: int, batch: int | None, limit: int) -> int:
    if size > limit:
        raise InvalidInput(f"{where}: input '{spec.name}': batch size {size} exceeds max_batch_size {limit}")
    if batch is not None and size != batch:
        raise InvalidInput(
            f"{where}: input '{spec.name}' has batch size {size} but an earlier input has {batch}; "
            "all inputs must share the batch dimension"
        )
    return size
