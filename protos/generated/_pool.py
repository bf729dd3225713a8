"""modelport's private descriptor pool (written by protos/generate.py; do not edit).

The upstream Triton client registers `inference.*` messages in protobuf's default pool; ours
live here so both can be imported in one process.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
