"""Per-layer quantization: the config (`config.py`), the technique and its stages (`technique.py`),
the ONNX passes (`passes.py`), embedding tables (`embeddings.py`) and quantization-aware training
(`qat.py`). See `passes.py` for what each bit-width becomes in the artifact."""

from search.techniques.quantize.assign import ASSIGN, assign_by_ranking, uniform_params
from search.techniques.quantize.config import (
    ACTIVATIONS,
    BITS,
    CALIBRATIONS,
    EMBEDDING_BITS,
    INT4_BLOCK,
    MODES,
    SIMULATED_BITS,
    QuantizeConfig,
)
from search.techniques.quantize.passes import int4_dequant, lowbit_codes, lowbit_dequant, quantize_onnx
from search.techniques.quantize.technique import Quantize

__all__ = ["ACTIVATIONS", "ASSIGN", "BITS", "CALIBRATIONS", "EMBEDDING_BITS", "INT4_BLOCK", "MODES", "SIMULATED_BITS",
           "Quantize", "QuantizeConfig", "assign_by_ranking", "int4_dequant", "lowbit_codes", "lowbit_dequant",
           "quantize_onnx", "uniform_params"]
