"""TensorFlow ops tf2onnx 1.17 does not convert, written in ONNX ops it does have. Importing this
module registers the handlers with tf2onnx (its `tf_op` decorator is the extension point)."""

from __future__ import annotations

import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op


# TensorFlow >= 2.16 writes exact GELU (Keras `activation="gelu"`, every BERT-style model) as
# 0.5 * x * erfc(-x / sqrt(2)); tf2onnx knows Erf but not Erfc, and passes it through as an op
# no ONNX runtime has ("No Op registered for Erfc").
@tf_op("Erfc")
class Erfc:
    """erfc(x) = 1 - erf(x): ONNX Erf (opset 9+) followed by a subtraction from one."""

    @classmethod
    def version_9(cls, ctx, node, **kwargs) -> None:
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        node.type = "Erf"
        one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
        output = node.output[0]
        subtract = ctx.insert_new_node_on_output("Sub", output, name=utils.make_name(f"{node.name}_complement"))
        # insert_new_node_on_output gives the new node the old output as its only input; put the
        # constant first so the node computes 1 - erf(x).
        ctx.replace_inputs(subtract, [one.output[0], output])
        ctx.copy_shape(output, subtract.output[0])
