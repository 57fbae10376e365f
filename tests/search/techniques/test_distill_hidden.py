"""Hidden-state distillation on a tiny BERT-shaped encoder: the layer mapping, the loss, the teacher cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from search.tasks.base import Task
from search.tasks.minilm_model import SentenceEmbedder
from search.techniques.base import CompressionState
from search.techniques.distill import Distill, DistillConfig, first_samples
from search.techniques.distill_targets import TeacherTargets, capture_hidden, kept_layers, relative_mse
from search.techniques.transformer_prune import TransformerPruneConfig, prune_encoder

transformers = pytest.importorskip("transformers")


def tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    return SentenceEmbedder(transformers.BertModel(config, add_pooling_layer=False)).eval()


class TinyTextTask(Task):
    name = "tiny-text"
    input_names = ["input_ids", "attention_mask"]

    def build_model(self, trained: bool = True) -> nn.Module:
        return tiny_encoder()

    def example_inputs(self):
        return self.train_batches()[0][0]

    def calibration_feeds(self):
        return []

    def query_feeds(self, batch_size):
        return {}

    def evaluate(self, predict) -> float:
        return 0.0

    def train_batches(self):
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(6):
            ids = torch.randint(1, 64, (8, 12), generator=g)
            out.append(((ids, torch.ones_like(ids)), None))
        return out

    def distill_loss(self, student_out, teacher_out, labels, config):
        return (1 - nn.functional.cosine_similarity(student_out, teacher_out, dim=-1)).mean()


def hidden_distance(student: nn.Module, teacher: nn.Module, task: Task) -> float:
    layers = kept_layers(student)
    total = 0.0
    with torch.no_grad():
        for inputs, _ in task.train_batches():
            with capture_hidden(student, layers) as s, capture_hidden(teacher, layers) as t:
                student(*inputs), teacher(*inputs)
            total += float(relative_mse(s, t))
    return total


def test_kept_layers_match_the_teacher_layer_they_came_from(tmp_path: Path) -> None:
    task = TinyTextTask({}, tmp_path)
    teacher = task.build_model()
    student = prune_encoder(teacher, TransformerPruneConfig(keep_layers=3), task.train_batches()[0][0])
    kept = kept_layers(student)
    assert len(kept) == 3 and kept_layers(teacher) == [0, 1, 2, 3]
    removed = ({0, 1, 2, 3} - set(kept)).pop()
    inputs = task.train_batches()[0][0]
    with torch.no_grad(), capture_hidden(student, kept) as s, capture_hidden(teacher, [0, 1, 2, 3]) as t:
        student(*inputs), teacher(*inputs)
    # Layers before the removed one compute exactly what the teacher's did; those after it do not.
    for i in kept:
        distance = float(relative_mse({i: s[i]}, {i: t[i]}))
        assert (distance < 1e-10) == (i < removed), (i, removed, distance)


def test_hidden_state_loss_decreases_and_teacher_targets_are_cached(tmp_path: Path) -> None:
    task = TinyTextTask({}, tmp_path)
    teacher = task.build_model()
    student = prune_encoder(teacher, TransformerPruneConfig(keep_layers=2), task.train_batches()[0][0])
    with torch.no_grad():  # a student far from the teacher in every kept layer, as after heavy cuts
        for m in student.modules():
            if isinstance(m, nn.Linear):
                m.weight.add_(0.2 * torch.randn_like(m.weight))
    before = hidden_distance(student, teacher, task)
    state = CompressionState(model=student, task=task, teacher=teacher)
    config = DistillConfig(epochs=4, lr=3e-3, hidden_weight=1.0, schedule="linear", freeze_embeddings=True)
    Distill().apply_model(state, config)
    after = hidden_distance(state.model, teacher, task)
    assert after < 0.6 * before, (before, after)
    emb = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(state.model.state_dict()[emb], teacher.state_dict()[emb])  # frozen

    files = sorted((tmp_path / "teacher").rglob("*-h.pt"))
    assert len(files) == len(task.train_batches())  # once per batch, not per epoch
    again = TeacherTargets(teacher, tmp_path / "teacher", hidden=True)
    batches = task.train_batches()
    first = again(0, batches[0][0])
    assert (again.computed, again.loaded) == (0, 1)  # read back: the teacher did not run
    assert set(first.hidden) == {0, 1, 2, 3}
    with torch.no_grad(), capture_hidden(teacher, [2]) as seen:
        torch.testing.assert_close(first.output, teacher(*batches[0][0]))
    torch.testing.assert_close(first.hidden[2], seen[2], atol=2e-3, rtol=2e-3)  # stored in float16
    other = nn.Module.__new__(type(teacher))
    other.__dict__ = dict(tiny_encoder().__dict__)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert TeacherTargets(other, tmp_path / "teacher", hidden=True).folder != again.folder  # other weights


def test_first_samples_cuts_the_last_batch() -> None:
    batches = [((torch.zeros(8, 3),), torch.arange(8)) for _ in range(4)]
    cut = first_samples(batches, 20)
    assert [len(b[0][0]) for b in cut] == [8, 8, 4] and len(cut[2][1]) == 4
    assert first_samples(batches, 0) is batches
