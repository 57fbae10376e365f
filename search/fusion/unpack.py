"""Turn chosen fused Attention nodes back into q/k/v MatMuls + MultiHeadAttention, per layer.

ORT's optimizer picks one attention op for the whole model (FusionOptions is global), but the
packed Attention op holds q/k/v in one weight, which takes one bit-width and has an int8 kernel
only with dynamic activations (QAttention). A candidate whose layers differ (the sensitivity
assignment gives q, k and v of one layer their own bits) would otherwise lose the packed kernel
in every layer. So the optimizer runs once with Attention, and only the layers that need their
projections apart are re-expressed as what the optimizer itself emits in MultiHeadAttention
mode: a MatMul per projection (weight = that projection's column block) feeding
MultiHeadAttention with the same packed bias, mask and head count. Nothing is computed
differently; the graph just exposes the three weights again.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Attention attributes MultiHeadAttention also takes, with the same meaning.
_SHARED_ATTRIBUTES = ("num_heads", "mask_filter_value", "scale")


def unpack_attention(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Replace the Attention nodes named in `names`; returns the names of the MultiHeadAttention nodes."""
    initializers = {i.name: i for i in model.graph.initializer}
    out: list[onnx.NodeProto] = []
    done, packed = [], set()
    for node in model.graph.node:
        if node.name not in names:
            out.append(node)
            continue
        if node.op_type != "Attention" or node.input[1] not in initializers:
            raise ValueError(f"{node.name}: only an Attention node with a constant q/k/v weight can be unpacked")
        extra = [name for name in node.input[4:] if name]
        if extra:  # past state or an additive bias: not what an encoder layer fuses into
            raise ValueError(f"{node.name}: an Attention node with inputs past the mask is not unpacked")
        weight = numpy_helper.to_array(initializers[node.input[1]])
        packed.add(node.input[1])
        sizes = next((list(a.ints) for a in node.attribute if a.name == "qkv_hidden_sizes"), None)
        bounds = np.cumsum([0, *(sizes or [weight.shape[1] // 3] * 3)])
        projections = []
        for i, part in enumerate("qkv"):
            name = f"{node.name}_{part}_weight"
            model.graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(weight[:, bounds[i]:bounds[i + 1]]), name))
            matmul = helper.make_node("MatMul", [node.input[0], name], [f"{node.name}_{part}"],
                                      name=f"{node.name}_{part}_MatMul")
            out.append(matmul)
            projections.append(matmul.output[0])
        inputs = [*projections, node.input[2] if len(node.input) > 2 else ""]
        if len(node.input) > 3 and node.input[3]:
            inputs.append(node.input[3])
        mha = helper.make_node("MultiHeadAttention", inputs, list(node.output[:1]), name=f"{node.name}_mha",
                               domain="com.microsoft")
        mha.attribute.extend(a for a in node.attribute if a.name in _SHARED_ATTRIBUTES)
        out.append(mha)
        done.append(mha.name)
    used = {name for node in out for name in node.input}
    kept = [init for init in model.graph.initializer if init.name not in packed or init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.node[:]
    model.graph.node.extend(out)
    return done
