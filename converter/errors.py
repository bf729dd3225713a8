"""The converter's own errors: each message is one paragraph naming the cause and what to do, and
carries the `modelport` exit code (client/cli.py prints the message, and the traceback only with
--verbose)."""

from __future__ import annotations


class ConversionError(RuntimeError):
    """A conversion step failed; nothing was published. Raised `from` the original exception when
    there is one, so --verbose shows its traceback."""

    exit_code = 2  # like any other model the converter cannot take (1 is kept for a refusing gate)


class UnsupportedOpsError(ConversionError):
    """tf2onnx has no ONNX equivalent for some TensorFlow ops of the model (`ops`: their types)."""

    def __init__(self, message: str, ops: list[str]) -> None:
        super().__init__(message)
        self.ops = ops


class ModelError(ValueError):
    """The model, its files or the options asked for cannot be converted as they are; the message
    says why and what to do. Nothing was published."""
