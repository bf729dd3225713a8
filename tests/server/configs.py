"""config.pbtxt texts that several server test modules serve."""

from __future__ import annotations

# add_mul (inputs a, b; outputs sum, prod, all FP32 [batch, 4]) batched up to 4 rows. Triton
# style: with max_batch_size > 0 the dims exclude the batch dimension.
BATCHED_CONFIG = """
max_batch_size: 4
input [
  { name: "a" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "b" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "sum" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "prod" data_type: TYPE_FP32 dims: [ 4 ] }
]
"""

# The same with dynamic batching (requests merge for up to 0.5 ms).
DYNAMIC_BATCHED_CONFIG = BATCHED_CONFIG + "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
