"""Graph surgery on exported ONNX models, by node name: what the ONNX-stage techniques share.

Every rewrite keeps the layer's compute node under its original name (the backend finds the
kernel a layer ran on by that name), and works in place on a `ModelProto`:

  - `gemm_to_matmul`: Gemm -> MatMul + Add, so weight-only int4 (MatMulNBits) can take it;
  - `to_fp16`: the node computes in fp16 with fp16 weights, Casts at its edges;
  - `replace_weight`: a weight initializer becomes a small stored form (packed codes, a
    codebook, scales) plus an in-graph decoder whose output keeps the weight's name;
  - `qdq_linear`: explicit QuantizeLinear/DequantizeLinear around a Linear's node with given scales
    (quantization-aware training exports the scales it learned this way).

Decoders read only initializers, so ONNX Runtime folds them into dense fp32 weights when the
session is built: the file stores the small form, inference runs the usual fp32 kernel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from search.errors import UserError

WEIGHTED_OPS = ("Gemm", "MatMul", "Conv")


def node_by_name(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    for node in model.graph.node:
        if node.name == name:
            return node
    raise UserError(f"ONNX graph has no node named {name!r}")


def get_initializer(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> str:
    remove_initializer(model, name)
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def remove_initializer(model: onnx.ModelProto, name: str) -> None:
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            del model.graph.initializer[i]
            return


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _insert_before(model: onnx.ModelProto, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
    # Keep the graph topologically sorted: new producers go right before their consumer.
    index = list(model.graph.node).index(anchor)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(index + offset, node)


def weighted_node(model: onnx.ModelProto, name: str) -> tuple[onnx.NodeProto, np.ndarray, int]:
    """The node, its weight array and the weight's output-channel axis."""
    node = node_by_name(model, name)
    if node.op_type not in WEIGHTED_OPS:
        raise UserError(f"node {name!r} is {node.op_type}; weight rewrites handle {', '.join(WEIGHTED_OPS)}")
    weight = get_initializer(model, node.input[1])
    if weight is None:
        raise UserError(f"node {name!r}: its weight {node.input[1]!r} is not a constant initializer")
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            raise UserError(f"Gemm {name!r}: only transA=0, alpha=1, beta=1 are handled")
        axis = 0 if _attr(node, "transB", 0) else 1
    else:
        axis = weight.ndim - 1 if node.op_type == "MatMul" else 0
    return node, weight, axis


def gemm_to_matmul(model: onnx.ModelProto, name: str) -> None:
    """Gemm(A, W, b) -> MatMul(A, W') + Add(b). The MatMul keeps the Gemm's name."""
    node = node_by_name(model, name)
    if node.op_type == "MatMul":
        return
    _, weight, axis = weighted_node(model, name)
    if node.op_type != "Gemm" or weight.ndim != 2:
        raise UserError(f"node {name!r} ({node.op_type}) cannot become a MatMul; a 2-D Gemm is needed")
    kn = weight.T if axis == 0 else weight  # MatMul wants [K, N]
    w_name = set_initializer(model, f"{node.input[1]}_kn", kn)
    out = node.output[0]
    has_bias = len(node.input) > 2 and node.input[2]
    matmul = helper.make_node("MatMul", [node.input[0], w_name], [f"{out}_matmul" if has_bias else out], name=name)
    new = [matmul]
    if has_bias:
        new.append(helper.make_node("Add", [matmul.output[0], node.input[2]], [out], name=f"{name}_bias"))
    _insert_before(model, node, new)
    model.graph.node.remove(node)
    _drop_unused(model, node.input[1])


def to_fp16(model: onnx.ModelProto, name: str) -> None:
    """Store the node's constant inputs as fp16 and compute the node in fp16.

    Activations are cast to fp16 on the way in and back to fp32 on the way out. An execution
    provider without an fp16 kernel for the op (ONNX Runtime's CPU provider for Gemm/MatMul)
    inserts its own casts and runs fp32: the stored bytes still halve.
    """
    node = node_by_name(model, name)
    before, after = [], []
    for i, inp in enumerate(node.input):
        if not inp:
            continue
        const = get_initializer(model, inp)
        if const is not None:
            if const.dtype == np.float32:
                node.input[i] = set_initializer(model, f"{inp}_fp16", const.astype(np.float16))
                _drop_unused(model, inp)
            continue
        cast = helper.make_node("Cast", [inp], [f"{name}_in{i}_fp16"], name=f"{name}_cast_in{i}",
                                to=TensorProto.FLOAT16)
        before.append(cast)
        node.input[i] = cast.output[0]
    for i, out in enumerate(node.output):
        node.output[i] = f"{out}_fp16"
        after.append(helper.make_node("Cast", [node.output[i]], [out], name=f"{name}_cast_out{i}",
                                      to=TensorProto.FLOAT))
    _insert_before(model, node, before)
    index = list(model.graph.node).index(node)
    for offset, cast in enumerate(after):
        model.graph.node.insert(index + 1 + offset, cast)


def pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Pack non-negative integer codes (< 2**nbits), row-major, lowest bits first, into uint8."""
    if nbits not in (1, 2, 4, 8):
        raise ValueError(f"nbits must be 1, 2, 4 or 8, but got {nbits}")
    flat = codes.astype(np.uint8).ravel()
    if flat.size and int(flat.max()) >= 1 << nbits:
        raise ValueError(f"a code ({int(flat.max())}) does not fit in {nbits} bits")
    per_byte = 8 // nbits
    flat = np.pad(flat, (0, (-flat.size) % per_byte))
    groups = flat.reshape(-1, per_byte).astype(np.uint16)
    shifts = np.arange(per_byte, dtype=np.uint16) * nbits
    return (groups << shifts).sum(axis=1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes` (numpy; the graph does the same with BitShift/BitwiseAnd)."""
    per_byte = 8 // nbits
    shifts = np.arange(per_byte, dtype=np.uint8) * nbits
    return ((packed[:, None] >> shifts) & ((1 << nbits) - 1)).reshape(-1)[:count]


def _unpack_nodes(prefix: str, packed_name: str, nbits: int, shape: tuple[int, ...],
                  model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that turn a packed uint8 initializer into uint8 codes of `shape`."""
    count = int(np.prod(shape))
    if nbits == 8:
        set_initializer(model, f"{prefix}_shape", np.array(shape, np.int64))
        return [helper.make_node("Reshape", [packed_name, f"{prefix}_shape"], [f"{prefix}_codes"],
                                 name=f"{prefix}_reshape")], f"{prefix}_codes"
    per_byte = 8 // nbits
    # Constants that do not depend on the layer are stored once per graph.
    shifts = set_initializer(model, f"unpack{nbits}_shifts", (np.arange(per_byte) * nbits).astype(np.uint8))
    mask = set_initializer(model, f"unpack{nbits}_mask", np.array((1 << nbits) - 1, np.uint8))
    one = set_initializer(model, "unpack_one", np.array([1], np.int64))
    flat = set_initializer(model, "unpack_flat", np.array([-1], np.int64))
    zero = set_initializer(model, "unpack_zero", np.array([0], np.int64))
    set_initializer(model, f"{prefix}_count", np.array([count], np.int64))
    set_initializer(model, f"{prefix}_shape", np.array(shape, np.int64))
    p = prefix
    nodes = [
        helper.make_node("Unsqueeze", [packed_name, one], [f"{p}_col"], name=f"{p}_unsqueeze"),
        helper.make_node("BitShift", [f"{p}_col", shifts], [f"{p}_shifted"], name=f"{p}_shift", direction="RIGHT"),
        helper.make_node("BitwiseAnd", [f"{p}_shifted", mask], [f"{p}_masked"], name=f"{p}_and"),
        helper.make_node("Reshape", [f"{p}_masked", flat], [f"{p}_all"], name=f"{p}_flatten"),
        helper.make_node("Slice", [f"{p}_all", zero, f"{p}_count"], [f"{p}_sliced"], name=f"{p}_slice"),
        helper.make_node("Reshape", [f"{p}_sliced", f"{p}_shape"], [f"{p}_codes"], name=f"{p}_reshape"),
    ]
    return nodes, f"{p}_codes"


def replace_weight_codebook(model: onnx.ModelProto, node_name: str, codes: np.ndarray, codebook: np.ndarray,
                            nbits: int) -> None:
    """weight = codebook[codes]: one shared table, codes packed `nbits` each (weight sharing)."""
    node = node_by_name(model, node_name)
    weight_name = node.input[1]
    p = f"{weight_name}_cb"
    packed = set_initializer(model, f"{p}_packed", pack_codes(codes, nbits))
    table = set_initializer(model, f"{p}_table", codebook.astype(np.float32))
    nodes, codes_out = _unpack_nodes(p, packed, nbits, codes.shape, model)
    nodes += [
        helper.make_node("Cast", [codes_out], [f"{p}_idx"], name=f"{p}_cast", to=TensorProto.INT64),
        helper.make_node("Gather", [table, f"{p}_idx"], [f"{p}_decoded"], name=f"{p}_gather", axis=0),
    ]
    _swap_weight(model, node, weight_name, nodes, f"{p}_decoded")


def replace_weight_scaled(model: onnx.ModelProto, node_name: str, codes: np.ndarray, levels: np.ndarray,
                          scales: np.ndarray, nbits: int, axis: int) -> None:
    """weight = levels[codes] * scale per output channel (int2 / binary simulation)."""
    node = node_by_name(model, node_name)
    weight_name = node.input[1]
    p = f"{weight_name}_lowbit"
    packed = set_initializer(model, f"{p}_packed", pack_codes(codes, nbits))
    table = set_initializer(model, f"lowbit{nbits}_levels", levels.astype(np.float32))
    scale_shape = [1] * codes.ndim
    scale_shape[axis] = -1
    scale = set_initializer(model, f"{p}_scale", scales.astype(np.float32).reshape(scale_shape))
    nodes, codes_out = _unpack_nodes(p, packed, nbits, codes.shape, model)
    nodes += [
        helper.make_node("Cast", [codes_out], [f"{p}_idx"], name=f"{p}_cast", to=TensorProto.INT64),
        helper.make_node("Gather", [table, f"{p}_idx"], [f"{p}_unit"], name=f"{p}_gather", axis=0),
        helper.make_node("Mul", [f"{p}_unit", scale], [f"{p}_decoded"], name=f"{p}_mul"),
    ]
    _swap_weight(model, node, weight_name, nodes, f"{p}_decoded")


def _swap_weight(model: onnx.ModelProto, node: onnx.NodeProto, weight_name: str, nodes: list[onnx.NodeProto],
                 decoded: str) -> None:
    node.input[1] = decoded
    _insert_before(model, node, nodes)
    _drop_unused(model, weight_name)


def qdq_linear(model: onnx.ModelProto, name: str, act_scale: float, act_zero_point: int, weight_q: np.ndarray,
               weight_scales: np.ndarray, bias_q: np.ndarray | None, out_scale: float, out_zero_point: int) -> None:
    """Explicit QDQ around a torch Linear's node: uint8 input and output, int8 weight per output
    channel (`weight_q` is [out, in] as in torch).

    Gemm (transB=1, 2-D input): the bias is int32 at scale act_scale * weight_scale, all fused into
    QGemm (the output pair matters: without it ORT fuses a following Relu into the float Gemm).
    MatMul (3-D input; the bias is a separate float Add after it): fused into QLinearMatMul."""
    node, _, axis = weighted_node(model, name)
    gemm = node.op_type == "Gemm" and axis == 0
    if not gemm and node.op_type != "MatMul":
        raise UserError(f"node {name!r}: explicit int8 QDQ is written for a torch Linear (Gemm or MatMul), "
                        f"not {node.op_type}")
    if not gemm:
        weight_q, axis = weight_q.T, 1  # MatMul takes the weight as [in, out]
    p = node.name
    s_a = set_initializer(model, f"{p}_x_scale", np.array(act_scale, np.float32))
    z_a = set_initializer(model, f"{p}_x_zero_point", np.array(act_zero_point, np.uint8))
    w_q = set_initializer(model, f"{p}_w_quantized", np.ascontiguousarray(weight_q, np.int8))
    s_w = set_initializer(model, f"{p}_w_scale", weight_scales.astype(np.float32))
    z_w = set_initializer(model, f"{p}_w_zero_point", np.zeros(len(weight_scales), np.int8))
    nodes = [
        helper.make_node("QuantizeLinear", [node.input[0], s_a, z_a], [f"{p}_x_q"], name=f"{p}_x_QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{p}_x_q", s_a, z_a], [f"{p}_x_dq"], name=f"{p}_x_DequantizeLinear"),
        helper.make_node("DequantizeLinear", [w_q, s_w, z_w], [f"{p}_w_dq"], name=f"{p}_w_DequantizeLinear",
                         axis=axis),
    ]
    old_weight = node.input[1]
    node.input[0], node.input[1] = f"{p}_x_dq", f"{p}_w_dq"
    if gemm and bias_q is not None and len(node.input) > 2:
        old_bias = node.input[2]
        b_q = set_initializer(model, f"{p}_b_quantized", bias_q.astype(np.int32))
        s_b = set_initializer(model, f"{p}_b_scale", (act_scale * weight_scales).astype(np.float32))
        z_b = set_initializer(model, f"{p}_b_zero_point", np.zeros(len(weight_scales), np.int32))
        nodes.append(helper.make_node("DequantizeLinear", [b_q, s_b, z_b], [f"{p}_b_dq"],
                                      name=f"{p}_b_DequantizeLinear", axis=0))
        node.input[2] = f"{p}_b_dq"
        _drop_unused(model, old_bias)
    _insert_before(model, node, nodes)
    _drop_unused(model, old_weight)
    s_o = set_initializer(model, f"{p}_y_scale", np.array(out_scale, np.float32))
    z_o = set_initializer(model, f"{p}_y_zero_point", np.array(out_zero_point, np.uint8))
    out = node.output[0]
    node.output[0] = f"{p}_y_float"
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index + 1, helper.make_node("QuantizeLinear", [node.output[0], s_o, z_o], [f"{p}_y_q"],
                                                        name=f"{p}_y_QuantizeLinear"))
    model.graph.node.insert(index + 2, helper.make_node("DequantizeLinear", [f"{p}_y_q", s_o, z_o], [out],
                                                        name=f"{p}_y_DequantizeLinear"))


def _drop_unused(model: onnx.ModelProto, name: str) -> None:
    if any(name in n.input for n in model.graph.node):
        return
    if any(o.name == name for o in model.graph.output):
        return
    remove_initializer(model, name)
