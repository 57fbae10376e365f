"""A tiny BERT-shaped sentence embedder (random weights) and a task around it, for fusion tests.

Same structure as all-MiniLM-L6-v2 under the minilm-sts task (BertModel, mean pooling, L2
normalisation), 2 layers of hidden 64 and 4 heads: it exports and fuses in about a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from search.fusion import FusionSpec, count_encoder_layers
from search.tasks.base import Feeds, Predict, Task
from search.tasks.minilm_model import SentenceEmbedder

VOCAB, SEQ = 120, 16


def tiny_bert(seed: int = 0) -> SentenceEmbedder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    bert = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():  # biases and layer norms off their init values, as in a trained model
        for name, p in bert.named_parameters():
            if not name.endswith("weight") or "LayerNorm" in name:
                p.add_(0.05 * torch.randn_like(p))
    return SentenceEmbedder(bert).eval()


def feeds(batch: int, seq: int = SEQ, seed: int = 0) -> Feeds:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq // 2:] = 0  # one padded sentence: the attention mask must reach the fused op
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64), "attention_mask": mask}


class TinyBertTask(Task):
    """Quality: mean cosine of the backend's embeddings to the fp32 model's (1.0 = identical)."""

    name = "tiny-bert"
    input_names = ["input_ids", "attention_mask"]
    output_names = ["sentence_embedding"]

    def __init__(self, cache_dir: Path, extra_layers: int = 0):
        super().__init__({}, cache_dir)
        self.model = tiny_bert()
        self.extra_layers = extra_layers  # claim more layers than the model has: a baseline that cannot fuse

    def build_model(self, trained: bool = True) -> nn.Module:
        return self.model

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        f = feeds(2, 8)
        return torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])

    def dynamic_shapes(self) -> tuple:
        batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
        return ({0: batch, 1: seq}, {0: batch, 1: seq})

    def calibration_feeds(self) -> list[Feeds]:
        return [feeds(4, seed=s) for s in range(2)]

    def query_feeds(self, batch_size: int) -> Feeds:
        return feeds(batch_size)

    def evaluate(self, predict: Predict) -> float:
        f = feeds(6, seed=7)
        with torch.no_grad():
            ref = self.model(*(torch.from_numpy(f[n]) for n in self.input_names)).numpy()
        return float((predict(f) * ref).sum(axis=1).mean())

    def train_batches(self) -> list:
        f = feeds(4)
        return [((torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])), None)]

    def fusion(self, model: nn.Module) -> FusionSpec:
        return FusionSpec("bert", count_encoder_layers(model) + self.extra_layers)
