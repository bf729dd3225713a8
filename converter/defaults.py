"""Converter defaults, importable without TensorFlow (the CLI's --help needs them)."""

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
DEFAULT_ROWS = 64
DEFAULT_MAX_BATCH_SIZE = 64

# Models whose weights exceed this are written with ONNX external data (model.onnx + model.onnx.data)
# unless told otherwise. Not 1 GiB or 2 GiB: tf2onnx's ordinary path holds one copy of the weights per
# optimizer pass and grappler rewrite (about 20 for a 0.57 GiB embedding: 13.9 GiB peak), so from a few
# hundred MiB on the external-data path (about one copy) is what keeps a conversion inside a laptop's memory.
EXTERNAL_DATA_THRESHOLD = 256 * 2**20
# An ONNX file is one protobuf message, which cannot exceed 2 GiB.
PROTOBUF_LIMIT = 2**31 - 1
# In an external-data conversion, TensorFlow variables of at least this many bytes never enter tf2onnx:
# they reach it as graph inputs and are written straight from TensorFlow's buffers to model.onnx.data.
# Smaller ones (biases, norms, shape-like values) stay constants that tf2onnx can fold.
STREAMED_WEIGHT_BYTES = 2**20
