"""Converter defaults, importable without TensorFlow (the CLI's --help needs them)."""

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_ROWS = 64
DEFAULT_MAX_BATCH_SIZE = 64
