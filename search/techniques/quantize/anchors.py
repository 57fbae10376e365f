"""The quantize technique's anchors: every searched layer at one listed bit-width, made the most
accurate way the space lists, as the Optuna params `Quantize.sample` reads.

These are the one-liners a user would otherwise run by hand (`quantize_dynamic` per-channel,
MatMulNBits int4): a study that tries them first can never end with a front worse than them.
"""

from __future__ import annotations

from typing import Any

from hardware.environment import int8_saturates
from search.techniques import anchoring as pick
from search.techniques.base import Anchor, TechniqueSpace
from search.techniques.quantize.assign import uniform_params

# Most useful first: int8 has kernels everywhere and keeps quality; int4 halves the bytes again
# (then its compact form, below); fp16 and the simulated widths (no kernel) come last.
PREFERENCE = ("int8", "int4", "fp16", "int2", "binary")
# ONNX Runtime's calibrators, most robust to activation outliers first (an assumption: which is
# best depends on the model; the sampler tries the others).
CALIBRATION_PREFERENCE = ("percentile", "entropy", "minmax")


def settings_params(space: TechniqueSpace, bits: str, embedding_bits: str, compact: bool = False) -> dict[str, Any]:
    """The most accurate settings the space lists for layers at `bits` (the params `sample` reads after
    the per-layer ones, which `uniform_params` gives in either `assign` mode); `compact`: the same with
    the largest listed block, the fewest scales."""
    dims = space.dims
    params: dict[str, Any] = {"quantize.embedding_bits": embedding_bits}
    mode = pick.first(dims["mode"], ("ptq",))
    params["quantize.mode"] = mode
    if mode == "qat":
        params["quantize.qat_epochs"] = pick.lowest(dims["qat_epochs"])
    if bits == "int8":
        # The more accurate weight range on the host that builds and times the artifact: full 8 bits,
        # unless its int8 kernels saturate (AVX2 without VNNI), where 7-bit weights are (measured on
        # MiniLM, AVX2: drop 0.17 with reduce_range against 0.24 without, at the same speed).
        params["quantize.reduce_range"] = pick.first(dims["reduce_range"],
                                                     (True, False) if int8_saturates() else (False, True))
    if mode == "ptq" and bits == "int8":
        # Per-batch activation ranges and per-channel weight scales: what `quantize_dynamic` does.
        params["quantize.activations"] = pick.first(dims["activations"], ("dynamic",))
        params["quantize.per_channel"] = pick.first(dims["per_channel"], (True,))
        if params["quantize.activations"] == "static":
            params["quantize.calibration"] = pick.first(dims["calibration"], CALIBRATION_PREFERENCE)
            params["quantize.symmetric_activations"] = pick.first(dims["symmetric_activations"], (False,))
        # ORT's option (issue 12): pre-processing measured no different on MiniLM and costs time per trial.
        params["quantize.preprocess"] = pick.first(dims["preprocess"], (False,))
    if bits == "int4":
        # int8 dot products: what the expert int4 baseline uses (search/benchmarks/baselines.py), faster on CPU.
        params["quantize.int4_accuracy_level"] = pick.first(dims["int4_accuracy_level"], (4, 0))
    if bits == "int4" or embedding_bits != "fp32":
        # Smallest block: most accurate; the compact form takes the largest.
        params["quantize.block_size"] = int((pick.highest if compact else pick.lowest)(dims["block_size"]))
    return params


def quantize_anchors(space: TechniqueSpace) -> list[Anchor]:
    dims = space.dims
    listed = pick.values(dims["bits"])
    anchors = []
    for bits in (b for b in PREFERENCE if b in listed):
        # Embeddings go along at the same bits when the space lists them, else stay as they are.
        embedding = bits if pick.can_be(dims["embedding_bits"], bits) else _embedding_off(space)
        params = {**uniform_params(space, bits), **settings_params(space, bits, embedding)}
        anchors.append(Anchor(_label(bits, params), params))
        if bits == "int4":
            # The size one-liner beside the accurate one: MatMulNBits (and the embeddings) at the largest
            # block, as the smallest expert baseline is built. One fp32 scale per 32 weights is 1 bit in 5;
            # per 128, 1 in 17: all-MiniLM-L6-v2 became 7.5x smaller than fp32 instead of 6.6x (measured).
            compact = {**uniform_params(space, bits), **settings_params(space, bits, embedding, compact=True)}
            if compact != params:
                anchors.append(Anchor(_label(bits, compact), compact))
    return anchors


def quantize_off(space: TechniqueSpace) -> dict[str, Any]:
    listed = pick.values(space.dims["bits"])
    # A space that cannot leave every layer fp32 gets its highest listed precision instead.
    bits = next(b for b in ("fp32", "fp16", *PREFERENCE) if b in listed)
    embedding = _embedding_off(space)
    params = uniform_params(space, bits)
    if bits != "fp32" or embedding != "fp32":
        params.update(settings_params(space, bits, embedding))
    else:
        params["quantize.embedding_bits"] = embedding
    return params


def _embedding_off(space: TechniqueSpace) -> str:
    dim = space.dims["embedding_bits"]
    return "fp32" if pick.can_be(dim, "fp32") else next(b for b in ("int8", "int4", "int2") if pick.can_be(dim, b))


def _label(bits: str, params: dict[str, Any]) -> str:
    words = ["quantize", bits]
    if params.get("quantize.mode") == "qat":
        words.append(f"qat {params['quantize.qat_epochs']}ep")
    if "quantize.activations" in params:
        words.append("dynamic" if params["quantize.activations"] == "dynamic"
                     else f"static {params['quantize.calibration']}")
        words.append("per-channel" if params["quantize.per_channel"] else "per-tensor")
    if bits == "int4":
        words.append(f"block {params['quantize.block_size']}")
    if params["quantize.embedding_bits"] != "fp32":
        words.append(f"+ embeddings {params['quantize.embedding_bits']}")
    return " ".join(words)
