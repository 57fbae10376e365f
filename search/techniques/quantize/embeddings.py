"""Embedding tables stored at 8, 4 or 2 bits: Gather -> com.microsoft GatherBlockQuantized.

In a transformer the word-embedding table is about half of the parameters, and per-layer
bits on the Linear layers never touch it. This rewrite finds every Gather that looks rows up
in a constant 2-D table ([rows, dim]: word, position and token-type embeddings) and replaces
it with ONNX Runtime's GatherBlockQuantized: uint8 codes (two 4-bit or four 2-bit codes per
byte, low bits first), symmetric around 2**(bits-1), one fp16 scale per block of `block`
values along `dim`. Only the looked-up rows are decoded, at run time, so the table stays small
in memory as well as on disk. The kernel's output has the scales' type (fp16): a Cast brings it
back to fp32 under the Gather's original output name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from search.techniques.graph import _drop_unused, _insert_before, get_initializer, pack_codes, set_initializer

MIN_ROWS = 16  # a table with fewer rows (token types: 2) saves nothing worth a custom op
_CLIP_RATIOS = np.linspace(1.0, 0.6, 9)  # per block, the clipping that minimises squared error wins


def embedding_gathers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Gather nodes reading rows (axis 0) of a constant fp32 table of rank 2 with >= MIN_ROWS rows."""
    consts = {init.name: init for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[0] not in consts:
            continue
        init = consts[node.input[0]]
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if len(init.dims) == 2 and init.dims[0] >= MIN_ROWS and axis == 0 and init.data_type == TensorProto.FLOAT:
            found.append(node)
    return found


def block_quantize(table: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [rows, dim], scales float16 [rows, ceil(dim / block)]), symmetric:
    table ~= (codes - 2**(bits-1)) * scale of the block. Each block's scale is chosen among a few
    clipping ratios of its largest magnitude by squared error (plain round-to-nearest at ratio 1)."""
    rows, dim = table.shape
    blocks = -(-dim // block)
    padded = np.zeros((rows, blocks * block), np.float32)
    padded[:, :dim] = table
    w = padded.reshape(rows, blocks, block)
    qmax = (1 << (bits - 1)) - 1  # codes - zero point in [-qmax - 1, qmax]
    amax = np.abs(w).max(axis=2)
    best_err = np.full(amax.shape, np.inf, np.float32)
    best_scale = _as_stored(amax / qmax)
    for ratio in _CLIP_RATIOS:
        # The scale is stored in fp16: choose it as stored, so the error is the deployed one.
        scale = _as_stored(amax * ratio / qmax)
        q = np.clip(np.round(w / scale[:, :, None]), -qmax - 1, qmax)
        err = ((q * scale[:, :, None] - w) ** 2).sum(axis=2)
        better = err < best_err
        best_err[better], best_scale[better] = err[better], scale[better]
    codes = np.clip(np.round(w / best_scale[:, :, None]), -qmax - 1, qmax) + (1 << (bits - 1))
    return codes.reshape(rows, -1)[:, :dim].astype(np.uint8), best_scale.astype(np.float16)


def _as_stored(scale: np.ndarray) -> np.ndarray:
    """`scale` as its fp16 copy reads back, never below fp16's smallest positive value: an all-zero
    block (or one below fp16's range) would otherwise get scale 0 and codes of 0 / 0."""
    return np.maximum(scale.astype(np.float16).astype(np.float32), np.float32(2.0 ** -24))


def block_dequantize(codes: np.ndarray, scales: np.ndarray, bits: int, block: int) -> np.ndarray:
    """What GatherBlockQuantized computes for every row (numpy; for tests and checks)."""
    rows, dim = codes.shape
    per = np.repeat(scales.astype(np.float32), block, axis=1)[:, :dim]
    return (codes.astype(np.float32) - (1 << (bits - 1))) * per


def quantize_gather(model: onnx.ModelProto, node: onnx.NodeProto, bits: int, block: int) -> int:
    """Replace one embedding Gather in place; returns the bytes the table takes now."""
    if bits not in (2, 4, 8):
        raise ValueError(f"embedding bits must be 2, 4 or 8, but got {bits}")
    if block < 16 or block & (block - 1):
        raise ValueError(f"embedding block size must be a power of 2 >= 16, but got {block}")
    table_name = node.input[0]
    table = get_initializer(model, table_name)
    codes, scales = block_quantize(table, bits, block)
    # Codes are packed along the last axis, as the kernel reads them for bits < 8.
    packed = np.stack([pack_codes(row, bits) for row in codes]) if bits < 8 else codes
    data = set_initializer(model, f"{table_name}_q{bits}", packed)
    scale_name = set_initializer(model, f"{table_name}_scales", scales)
    out = node.output[0]
    gather = helper.make_node("GatherBlockQuantized", [data, node.input[1], scale_name], [f"{out}_fp16"],
                              name=node.name, domain="com.microsoft", bits=bits, block_size=block,
                              gather_axis=0, quantize_axis=1)
    cast = helper.make_node("Cast", [f"{out}_fp16"], [out], name=f"{node.name}_to_fp32", to=TensorProto.FLOAT)
    _insert_before(model, node, [gather, cast])
    model.graph.node.remove(node)
    _drop_unused(model, table_name)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return packed.nbytes + scales.nbytes


def quantize_embeddings(model: onnx.ModelProto, bits: int, block: int) -> dict[str, int]:
    """Every embedding Gather of `model` at `bits`; returns {table name: bytes now}."""
    sizes = {}
    for node in embedding_gathers(model):
        table = node.input[0]
        users = [n.name for n in model.graph.node if table in n.input and n is not node]
        if users:  # a tied table (an LM head reads it too) would stay fp32 beside its copy: no saving
            continue
        sizes[table] = quantize_gather(model, node, bits, block)
    return sizes

