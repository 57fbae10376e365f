"""Transformer graph fusion: the exported model rewritten so that ONNX Runtime runs fused kernels.

ONNX Runtime's transformer optimizer (the library, not hand-written fusions) turns a BERT-style
encoder's attention, residual layer norms, bias + GELU and embedding layer norm into Attention
(or MultiHeadAttention), SkipLayerNormalization, BiasGelu and EmbedLayerNormalization: the
fp32 model alone runs ~1.1x faster, and int8 on the fused graph keeps more quality than on the
unfused one. The optimizer recognises only the patterns of the TorchScript exporter with eager
attention; this project's dynamo export fuses only BiasGelu. So a task that declares itself a
transformer (`Task.fusion`) is exported for fusion here instead:

    export.py     TorchScript export with eager attention, head counts pinned per layer
    optimize.py   run the optimizer, count what fused, check it against what should have
    spec.py       what a task declares (FusionSpec) and what an artifact records (Fusions)
    unpack.py     one layer's packed Attention back to q/k/v MatMuls + MultiHeadAttention
    stage.py      one candidate: fuse, unpack the layers whose bits need it, check the baseline

The stage runner (search/compress.py) calls `fuse_model` between export and the ONNX-stage
techniques, which then quantize the fused graph; search/layer_map.py finds each layer's node
in it by the weight's values, since fusion renames and packs nodes.
"""

from search.fusion.optimize import fuse_model
from search.fusion.spec import Fusions, FusionSpec, count_encoder_layers

__all__ = ["FusionSpec", "Fusions", "count_encoder_layers", "fuse_model"]
