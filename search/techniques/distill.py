"""Knowledge distillation: fine-tune the compressed student against the uncompressed teacher.

Loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * task loss
(Hinton et al.). It runs after factorization and pruning, so it is also how a pruned model
recovers the quality the cut cost. Tasks without labels distill with alpha = 1.

A shallower student (`drop_blocks`, searchable): before training, that many hidden blocks
(Linear -> activation modules -> Linear) are removed. The dropped block's Linear is folded
into the next one (W = W_next W_block, b = W_next b_block + b_next, activation removed), so the
student starts from the teacher's own weights as the nearest shallower network, then learns
back what the lost nonlinearity did. Each drop takes the block whose folding changes the
outputs least on a training batch. A smaller *width* is not offered here: keeping the
highest-scoring neurons is exactly structured pruning, which composes with distillation.

For encoders (BERT-style), `hidden_weight` adds hidden-state matching: each kept encoder
layer's output is pulled towards the teacher's layer of the same index (relative MSE, see
distill_targets.py). Teacher targets are computed once per batch and cached on disk for the
study. `samples` trains on the first N samples of the task's training batches (the task's
text amount is the most there is); `schedule: linear` decays the learning rate to zero;
`freeze_embeddings` keeps the embedding tables as the teacher's (they hold most of a small
encoder's weights and fit the teacher's vocabulary statistics far better than a few
thousand sentences can).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from torch import nn

from search.errors import UserError
from search.params import Rule
from search.techniques import anchoring as pick
from search.techniques.base import Anchor, CompressionState, SampleContext, Technique, TechniqueConfig, TechniqueSpace
from search.techniques.distill_targets import Target, TeacherTargets, capture_hidden, kept_layers, relative_mse
from search.techniques.factorize import LowRank
from search.techniques.prune import ELEMENTWISE_MODULES, Chain, chains
from search.techniques.registry import register
from search.techniques.training import fine_tune

SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class DistillConfig(TechniqueConfig):
    type = "distill"
    epochs: int
    temperature: float = 4.0
    alpha: float = 0.7
    lr: float = 1e-3
    drop_blocks: int = 0  # hidden blocks removed from the student before training
    hidden_weight: float = 0.0  # encoders: weight of the hidden-state matching loss; 0 = output only
    samples: int = 0  # training samples per epoch (the first N); 0 = all the task gives
    schedule: str = "constant"  # learning rate: constant, or linear decay to zero
    freeze_embeddings: bool = False  # embedding tables stay the teacher's

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.drop_blocks < 0:
            raise ValueError(f"distill drop_blocks must be >= 0, but got drop_blocks={self.drop_blocks}")
        if self.epochs < 1:
            raise ValueError(f"distill epochs must be >= 1, but got epochs={self.epochs}")
        if self.temperature <= 0:
            raise ValueError(f"distill temperature must be > 0, but got temperature={self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill alpha must satisfy 0 <= alpha <= 1, but got alpha={self.alpha}")
        if self.hidden_weight < 0 or self.samples < 0:
            raise ValueError(f"distill hidden_weight and samples must be >= 0, but got "
                             f"hidden_weight={self.hidden_weight}, samples={self.samples}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"distill schedule must be one of {SCHEDULES}, but got {self.schedule!r}")

    def summary(self) -> str:
        fewer = f" -{self.drop_blocks} blocks" if self.drop_blocks else ""
        extra = (f" hidden={self.hidden_weight:g}" if self.hidden_weight else "") + \
            (f" {self.samples} samples" if self.samples else "") + \
            (" lr-linear" if self.schedule == "linear" else "") + (" frozen-emb" if self.freeze_embeddings else "")
        return f"distill {self.epochs}ep T={self.temperature:g} a={self.alpha:g}{fewer}{extra}"


@register
class Distill(Technique):
    """Fine-tune the compressed student against the uncompressed teacher (optionally shallower first)."""

    name = "distill"
    config_type = DistillConfig
    rules = {
        "epochs": Rule("int", minimum=0, maximum=1000, help="epochs of distillation; 0 skips distillation"),
        "temperature": Rule("float", default=4.0, minimum=0.1, maximum=100.0,
                            help="softens both models' outputs before they are compared (Hinton's T)"),
        "alpha": Rule("float", default=0.7, minimum=0.0, maximum=1.0,
                      help="weight of the teacher's loss; the task loss takes the rest (labelled tasks)"),
        "lr": Rule("float", default=1e-3, minimum=1e-7, maximum=1.0, help="Adam learning rate"),
        "drop_blocks": Rule("int", default=0, minimum=0, maximum=64,
                            help="hidden Linear+activation blocks removed from the student (folded into the next "
                                 "layer)"),
        "hidden_weight": Rule("float", default=0.0, minimum=0.0, maximum=100.0,
                              help="encoders: weight of matching each kept layer's output to the teacher's layer "
                                   "of the same index (relative MSE); 0 = outputs only"),
        "samples": Rule("int", default=0, minimum=0,
                        help="training samples per epoch (the first N of the task's batches); 0 = all"),
        "schedule": Rule("str", default="constant", choices=SCHEDULES,
                         help="learning rate: constant, or linear decay to zero over the training"),
        "freeze_embeddings": Rule("bool", default=False, help="keep the embedding tables as the teacher's"),
    }
    conditions = {k: "epochs > 0" for k in ("temperature", "alpha", "lr", "drop_blocks", "hidden_weight", "samples",
                                            "schedule", "freeze_embeddings")}
    # Distillation recovers what the cuts before it cost, before weights are shared and quantized.
    order = 40
    student = True
    recovers = True  # the cuts' anchors run with its first anchor (search/anchors.py)
    training_length = "epochs"  # a promising cut student is also trained twice as long (search/reuse.py)

    def sample(self, trial: optuna.Trial, space: TechniqueSpace,
               context: SampleContext | None = None) -> DistillConfig | None:
        dims = space.dims
        epochs = int(dims["epochs"].suggest(trial, "distill.epochs"))
        if epochs == 0:
            return None
        # Conditional: temperature, alpha and lr exist only when distillation runs.
        return DistillConfig(
            epochs=epochs,
            temperature=float(dims["temperature"].suggest(trial, "distill.temperature")),
            alpha=float(dims["alpha"].suggest(trial, "distill.alpha")),
            lr=float(dims["lr"].suggest(trial, "distill.lr")),
            drop_blocks=int(dims["drop_blocks"].suggest(trial, "distill.drop_blocks")),
            hidden_weight=float(dims["hidden_weight"].suggest(trial, "distill.hidden_weight")),
            samples=int(dims["samples"].suggest(trial, "distill.samples")),
            schedule=str(dims["schedule"].suggest(trial, "distill.schedule")),
            freeze_embeddings=bool(dims["freeze_embeddings"].suggest(trial, "distill.freeze_embeddings")),
        )

    def anchors(self, space: TechniqueSpace) -> list[Anchor]:
        epochs = pick.mild(space.dims["epochs"])
        return [] if epochs is None else [Anchor(f"distill {epochs} epoch(s)", self._params(space, epochs))]

    def off_params(self, space: TechniqueSpace) -> dict:
        return self._params(space, pick.off_or(space.dims["epochs"], 0, pick.lowest))

    @staticmethod
    def _params(space: TechniqueSpace, epochs: int) -> dict:
        # The space's first listed settings (its author's default), and no block removed: the mildest.
        dims = space.dims
        return {"distill.epochs": epochs, "distill.temperature": pick.first(dims["temperature"]),
                "distill.alpha": pick.first(dims["alpha"]), "distill.lr": pick.first(dims["lr"]),
                "distill.drop_blocks": pick.lowest(dims["drop_blocks"]),
                **{f"distill.{k}": pick.first(dims[k]) for k in ("hidden_weight", "samples", "schedule",
                                                                 "freeze_embeddings")}}

    def apply_model(self, state: CompressionState, config: DistillConfig) -> None:
        assert state.task is not None, "distillation needs the task's training data"
        task = state.task
        if config.drop_blocks:
            model = reduce_depth(state.model, config.drop_blocks, task.train_batches()[0][0], state.notes)
        else:
            model = copy.deepcopy(state.model)
        batches = first_samples(task.train_batches(), config.samples)
        layers = kept_layers(model) if config.hidden_weight else []
        cache = getattr(task, "cache_dir", None)
        assert state.teacher is not None
        targets = TeacherTargets(state.teacher, None if cache is None else Path(cache) / "teacher", bool(layers))
        frozen = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        params = [p for p in model.parameters() if not (config.freeze_embeddings and id(p) in frozen)]

        with capture_hidden(model, layers) as hidden:
            def loss(out: torch.Tensor, labels: torch.Tensor | None, target: Callable[[], Target]) -> torch.Tensor:
                t = target()
                # The task decides how outputs are compared (KL on logits for classifiers by default).
                value = task.distill_loss(out, t.output, labels, config)
                if layers:
                    value = value + config.hidden_weight * relative_mse(hidden, t.hidden)
                return value

            fine_tune(state, model, params, epochs=config.epochs, lr=config.lr, loss=loss, batches=batches,
                      targets=targets, schedule=config.schedule)
        state.model = model


def first_samples(batches: list, n: int) -> list:
    """The leading batches that hold the first `n` samples (all of them for n = 0)."""
    if not n:
        return batches
    out, count = [], 0
    for inputs, labels in batches:
        if count >= n:
            break
        take = min(len(inputs[0]), n - count)
        out.append((tuple(x[:take] for x in inputs), None if labels is None else labels[:take]))
        count += take
    return out


def _foldable(model: nn.Module, chain: Chain) -> bool:
    """A Linear -> activation modules -> Linear block outside any factorized layer."""
    layers = (model.get_submodule(chain.producer), model.get_submodule(chain.consumer))
    if chain.functional or chain.flatten or not all(type(m) is nn.Linear for m in layers):
        return False
    if not all(isinstance(model.get_submodule(n), ELEMENTWISE_MODULES) for n in chain.between):
        return False
    parents = {n.rpartition(".")[0] for n in (chain.producer, chain.consumer)}
    return not any(p and isinstance(model.get_submodule(p), LowRank) for p in parents)


@torch.no_grad()
def fold_block(model: nn.Module, chain: Chain) -> nn.Module:
    """A copy of `model` with `chain.producer` folded into `chain.consumer`; the producer and the
    activations between become Identity, so every other layer keeps its name."""
    model = copy.deepcopy(model)
    block, after = model.get_submodule(chain.producer), model.get_submodule(chain.consumer)
    merged = nn.Linear(block.in_features, after.out_features,
                       bias=block.bias is not None or after.bias is not None).to(after.weight)
    merged.weight.copy_(after.weight @ block.weight)
    if merged.bias is not None:
        bias = after.bias.clone() if after.bias is not None else torch.zeros_like(merged.bias)
        if block.bias is not None:
            bias += after.weight @ block.bias
        merged.bias.copy_(bias)
    for name in (chain.producer, *chain.between):
        model.set_submodule(name, nn.Identity(), strict=True)
    model.set_submodule(chain.consumer, merged, strict=True)
    return model


@torch.no_grad()
def reduce_depth(model: nn.Module, n: int, inputs: tuple[torch.Tensor, ...], notes: dict[str, dict]) -> nn.Module:
    """A copy of `model` with `n` hidden blocks removed, each time the one whose folding moves the
    outputs least on `inputs`."""
    model.eval()
    for done in range(n):
        candidates = [c for c in chains(model) if _foldable(model, c)]
        if not candidates:
            raise UserError(f"distill: drop_blocks={n}, but this model has only {done} hidden block(s) that can be "
                            f"dropped (Linear -> activation modules -> Linear, outside factorized layers)")
        reference = model(*inputs)
        folded = [(float((fold_block(model, c)(*inputs) - reference).pow(2).mean()), i, c)
                  for i, c in enumerate(candidates)]
        _, _, best = min(folded)
        model = fold_block(model, best)
        notes.setdefault(best.producer, {})["distill"] = f"dropped: folded into {best.consumer}"
        notes.setdefault(best.consumer, {})["distill_folded"] = best.producer
    return model

