"""modelport.converter: TensorFlow / Keras models to ONNX, gated by numerical parity.

    from modelport.converter import convert, convert_keras
    result = convert("model.keras", "./models", "mlp")          # .keras, .h5 or a SavedModel folder
    result = convert_keras(model, "./models", "mlp", sample=x)  # an in-memory Keras model

TensorFlow is imported only when a conversion runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import ConversionResult


def convert(source: str, repository: str, name: str, **options: Any) -> ConversionResult:
    """Convert a model file or SavedModel folder and publish it as a new version. See pipeline.convert."""
    from .pipeline import convert as run

    return run(source, repository, name, **options)


def convert_keras(model: Any, repository: str, name: str, **options: Any) -> ConversionResult:
    """Convert an in-memory Keras model and publish it as a new version. See pipeline.convert."""
    from .pipeline import convert as run

    return run(model, repository, name, **options)


__all__ = ["convert", "convert_keras"]
