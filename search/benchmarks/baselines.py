"""What an expert gets from ONNX Runtime alone: the strongest baselines a search must beat.

Each is made with ONNX Runtime's own tools, called the way their documentation shows, from
the fused fp32 graph (ORT's transformer optimizer on the export search/fusion/ makes; the
search's own baseline is the same file):

    fused fp32                  the optimizer's fusions, nothing else
    fused int8 dynamic          quant_pre_process, then quantize_dynamic per-channel, reduce_range
                                (int8 weights everywhere ORT's dynamic quantizer takes them:
                                QAttention, MatMulInteger, QEmbedLayerNormalization)
    fused int4 bB + int4 emb    MatMulNBits (block B, accuracy level 4: int8 dot products) on every
                                MatMul, and the embedding tables as GatherBlockQuantized int4 (which
                                needs the embedding lookups unfused: EmbedLayerNormalization off)

The packed q/k/v weight of a fused Attention op has no int4 kernel, so the int4 baselines keep
it fp32: exactly what an expert running these tools gets.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from search.fusion import FusionSpec, count_encoder_layers, fuse_model

__all__ = ["expert_baselines"]


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    # ORT's quantizers log hints on the root logger and print progress.
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(old)


def _fused(task, out: Path, keep_embedding_gathers: str = "") -> Path:
    if not out.exists():
        model = task.build_model()
        spec = task.fusion(model) or FusionSpec("bert", count_encoder_layers(model))
        tmp = out.with_suffix(".tmp.onnx")
        _, fusions = fuse_model(model, task.example_inputs(), task.input_names, task.output_names, tmp, spec,
                                dynamic_shapes=task.dynamic_shapes(), keep_embedding_gathers=keep_embedding_gathers)
        if not fusions.complete:
            raise RuntimeError(f"the fused fp32 baseline did not fuse: {fusions.summary()}")
        tmp.replace(out)
    return out


def _int8_dynamic(fused: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not out.exists():
        with tempfile.TemporaryDirectory(prefix="compsearch-base-") as tmp, quiet_ort():
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fused), str(pre), auto_merge=True)
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _int4(fused_gathers: Path, out: Path, block: int) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from search.techniques.quantize.embeddings import quantize_embeddings

    if not out.exists():
        with quiet_ort():
            quantizer = MatMulNBitsQuantizer(onnx.load(str(fused_gathers)), bits=4, block_size=block,
                                             is_symmetric=False, accuracy_level=4, op_types_to_quantize=("MatMul",))
            quantizer.process()
        model = quantizer.model.model
        # ORT's quantizer left the word-embedding table fp32 when asked for Gather too (measured here);
        # GatherBlockQuantized is ORT's int4 table kernel, written by the project's rewrite.
        if not quantize_embeddings(model, 4, block):
            raise RuntimeError("int4 baseline: no embedding table found to quantize")
        onnx.save(model, str(out))
    return out


def expert_baselines(task, work: Path) -> list[tuple[str, str, Path]]:
    """(name, method, path) of each expert baseline, built once into `work` (kept between runs)."""
    work.mkdir(parents=True, exist_ok=True)
    fused = _fused(task, work / "fused_fp32.onnx")
    gathers = _fused(task, work / "fused_fp32_gathers.onnx", keep_embedding_gathers="int4 embeddings baseline")
    return [("fused fp32", "fused fp32", fused),
            ("fused + quantize_dynamic per-channel reduce_range preprocess", "fused int8 dynamic",
             _int8_dynamic(fused, work / "fused_int8_dynamic.onnx")),
            ("fused + MatMulNBits int4 b32 acc4 + int4 embeddings", "fused int4",
             _int4(gathers, work / "fused_int4_b32.onnx", 32)),
            ("fused + MatMulNBits int4 b128 acc4 + int4 embeddings", "fused int4",
             _int4(gathers, work / "fused_int4_b128.onnx", 128))]
