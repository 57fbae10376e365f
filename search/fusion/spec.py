"""What a task declares for fusion (FusionSpec) and what one artifact records of it (Fusions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

ATTENTION_OPS = ("Attention", "MultiHeadAttention")


@dataclass(frozen=True)
class FusionSpec:
    """A task's answer to "is this a transformer, and how should it fuse?".

    `model_type`: the transformer optimizer's model type ("bert" covers BERT, RoBERTa, MiniLM).
    `layers`: the encoder layers the model being exported has (after pruning): each should fuse
    into one attention op and two SkipLayerNormalization (after attention, after the FFN)."""

    model_type: str
    layers: int

    def expected(self) -> dict[str, int]:
        return {"attention": self.layers, "SkipLayerNormalization": 2 * self.layers}


@dataclass
class Fusions:
    """What fusion did to one artifact: op counts of the fused graph, which attention op was planned
    and why, and whether every encoder layer fused (written as graph.json, logged as MLflow params)."""

    model_type: str
    attention_op: str  # "Attention" (packed q/k/v) or "MultiHeadAttention" (q/k/v kept as own MatMuls)
    attention_reason: str
    embeddings_unfused: str = ""  # why EmbedLayerNormalization was not fused, or ""
    counts: dict[str, int] = field(default_factory=dict)  # fused op type -> nodes in the artifact
    expected: dict[str, int] = field(default_factory=dict)
    heads: list[int] = field(default_factory=list)  # per fused attention, in graph order
    node_ops: dict[str, str] = field(default_factory=dict, repr=False)  # node name -> op type, not recorded

    @property
    def attention(self) -> int:
        return sum(self.counts.get(op, 0) for op in ATTENTION_OPS)

    @property
    def missing(self) -> list[str]:
        """What should have fused and did not, as readable lines (empty when complete)."""
        have = {"attention": self.attention, "SkipLayerNormalization": self.counts.get("SkipLayerNormalization", 0)}
        return [f"{what}: {have[what]} of {want}" for what, want in self.expected.items() if have[what] < want]

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        ops = ", ".join(f"{n} {op}" for op, n in self.counts.items() if n)
        return f"fused ({self.model_type}): {ops or 'nothing'}" + ("" if self.complete else
                                                                   f"; INCOMPLETE ({'; '.join(self.missing)})")

    def metrics(self) -> dict[str, float]:
        """Counts logged beside a trial's figures (show --json, MLflow, the report)."""
        return {"fused_attention": float(self.attention),
                "fused_skip_layernorm": float(self.counts.get("SkipLayerNormalization", 0)),
                "fused_embed_layernorm": float(self.counts.get("EmbedLayerNormalization", 0)),
                "fused_gelu": float(sum(self.counts.get(op, 0) for op in ("BiasGelu", "FastGelu", "Gelu"))),
                "fusion_complete": float(self.complete)}

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, "attention_op": self.attention_op,
                "attention_reason": self.attention_reason, "embeddings_unfused": self.embeddings_unfused,
                "counts": dict(self.counts),
                "expected": dict(self.expected), "complete": self.complete, "missing": self.missing,
                "heads": list(self.heads)}


def count_encoder_layers(model: nn.Module) -> int:
    """Encoder layers of a BERT-style model that still compute (a removed layer is a pass-through
    module with no attention): what a task passes as `FusionSpec.layers`."""
    return sum(1 for m in model.modules() if hasattr(m, "attention") and hasattr(m, "intermediate"))
