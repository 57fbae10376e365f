"""Apply a recipe to a model: torch-stage techniques in the fixed order, export, ONNX stage.

Order (fixed, documented): factorize -> prune -> distill/fine-tune -> share -> quantize.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from search.export import Artifact, export_onnx
from search.layers import discover_layers
from search.recipe import Recipe
from search.tasks.base import Task
from search.techniques import ORDER, TECHNIQUES
from search.techniques.base import Context


def compress_model(model: nn.Module, recipe: Recipe, task: Task) -> nn.Module:
    """Run the torch-stage steps of `recipe` on a copy of `model` (the original is untouched,
    and is the teacher for distillation)."""
    prune = recipe.get("prune")
    ctx = Context(teacher=model, task=task,
                  keep_zeros=prune is not None and getattr(prune, "structure", "") == "unstructured")
    student = copy.deepcopy(model)
    for name in ORDER:
        step = recipe.get(name)
        technique = TECHNIQUES.get(name)
        if step is not None and technique is not None and technique.stage == "torch":
            student = technique.apply(student, step, ctx)
    return student.eval()


def build_artifact(model: nn.Module, recipe: Recipe, task: Task, workdir: Path) -> Artifact:
    """Compress, export and (if the recipe says so) quantize: the deployable artifact in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    compressed = compress_model(model, recipe, task)
    fp32 = export_onnx(compressed, task.example_inputs(), task.input_names, workdir / "fp32.onnx",
                       dynamic_shapes=task.dynamic_shapes(), output_names=task.output_names)
    final_path = workdir / "model.onnx"
    quant = recipe.get("quantize")
    if quant is not None:
        artifact = TECHNIQUES["quantize"].apply(fp32, quant, task.calibration_feeds(), final_path)
        fp32.path.unlink()
    else:
        fp32.path.replace(final_path)
        artifact = Artifact(final_path, fp32.layer_nodes)
    artifact.layers = describe_layers(compressed, recipe, artifact)
    return artifact


@torch.no_grad()
def describe_layers(model: nn.Module, recipe: Recipe, artifact: Artifact) -> dict[str, dict]:
    """What each layer became: shape, parameter count, sparsity, bit-width, ONNX node."""
    quant = recipe.get("quantize")
    out = {}
    for info in discover_layers(model):
        weight = model.get_submodule(info.name).weight
        out[info.name] = {
            "kind": info.kind,
            "shape": list(info.weight_shape),
            "params": int(weight.numel()),
            "sparsity": round(float((weight == 0).float().mean()), 4),
            "bits": quant.bits_of(info.name) if quant is not None else "fp32",
            "node": artifact.layer_nodes.get(info.name),
        }
    return out
