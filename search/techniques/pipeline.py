"""Apply a recipe to a model: torch-stage techniques in the fixed order, export, ONNX stage.

Order (fixed, documented): transformer_prune -> factorize -> prune -> distill/fine-tune -> share -> quantize.
QAT (quantize mode qat) fine-tunes after share, then the ONNX stage quantizes with the learned
scales; shared fp32 layers are finally stored as codebook + indices.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import torch
from torch import nn

from search.export import Artifact, export_onnx, export_program
from search.layers import discover_layers
from search.recipe import Recipe
from search.tasks.base import Task
from search.techniques import ORDER, TECHNIQUES, qat, share
from search.techniques.base import Context
from search.techniques.quantize import SIMULATED_BITS


def _keeps_zeros(recipe: Recipe) -> bool:
    prune = recipe.get("prune")
    return prune is not None and getattr(prune, "structure", "") == "unstructured"


def compress_model(model: nn.Module, recipe: Recipe, task: Task, notes: dict[str, dict] | None = None) -> nn.Module:
    """Run the torch-stage steps of `recipe` on a copy of `model` (the original is untouched,
    and is the teacher for distillation). `notes`, if given, collects what each step did per layer."""
    ctx = Context(teacher=model, task=task, keep_zeros=_keeps_zeros(recipe))
    if notes is not None:
        ctx.layer_notes = notes
    student = copy.deepcopy(model)
    for name in ORDER:
        step = recipe.get(name)
        technique = TECHNIQUES.get(name)
        if step is not None and technique is not None and technique.stage == "torch":
            student = technique.apply(student, step, ctx)
    return student.eval()


def build_artifact(model: nn.Module, recipe: Recipe, task: Task, workdir: Path, program: bool = False) -> Artifact:
    """Compress, export and (if the recipe says so) quantize: the deployable artifact in `workdir`.

    `program`: also save the compressed module as `model.pt2` (torch.export) for the torch backend."""
    workdir.mkdir(parents=True, exist_ok=True)
    notes: dict[str, dict] = {}
    compressed = compress_model(model, recipe, task, notes)
    quant = recipe.get("quantize")
    quant = map_layer_bits(quant, compressed) if quant is not None else None
    learned = None
    if quant is not None and quant.mode == "qat":
        # QAT fine-tunes through fake quantization; the artifact is written with what it learned.
        ctx = Context(teacher=model, task=task, keep_zeros=_keeps_zeros(recipe))
        compressed, learned = qat.finetune(compressed, quant, ctx).export_ready()
    if program:
        export_program(compressed, task.example_inputs(), workdir / "model.pt2", task.dynamic_shapes())
    # No torch-stage step ran: the model is the task's own, and a task may hand out its cached export
    # (a transformer's export takes longer than quantizing it).
    untouched = learned is None and not any(
        s.type in TECHNIQUES and TECHNIQUES[s.type].stage == "torch" for s in recipe.steps)
    cached = task.cached_fp32_export() if untouched else None
    if cached is not None:
        shutil.copyfile(cached.path, workdir / "fp32.onnx")
        fp32 = Artifact(workdir / "fp32.onnx", dict(cached.layer_nodes))
    else:
        fp32 = export_onnx(compressed, task.example_inputs(), task.input_names, workdir / "fp32.onnx",
                           dynamic_shapes=task.dynamic_shapes(), output_names=task.output_names)
    final_path = workdir / "model.onnx"
    if quant is not None:
        artifact = TECHNIQUES["quantize"].apply(fp32, quant, task.calibration_feeds(), final_path, learned)
        fp32.path.unlink()
    else:
        fp32.path.replace(final_path)
        artifact = Artifact(final_path, fp32.layer_nodes)
    sharing = recipe.get("share")
    if sharing is not None:
        # Quantize wins on a layer it gives other bits: only fp32 layers store codebook + indices.
        shared = share.resolve_layers(compressed, sharing)
        stored = [(layer, k) for layer, k in shared if quant is None or quant.bits_of(layer) == "fp32"]
        artifact = share.encode(artifact, stored)
        for layer, k in shared:
            notes.setdefault(layer, {})["codebook"] = (layer, k) in stored
    artifact.layers = describe_layers(compressed, recipe, artifact, notes)
    artifact.program = workdir / "model.pt2" if program else None
    from search.techniques.macs import count_nonzero_params, count_params_macs

    params, macs = count_params_macs(compressed, task.example_inputs())  # per sample: batch of 1
    artifact.stats = {"params": float(params), "macs": float(macs),
                      "params_nonzero": float(count_nonzero_params(compressed))}
    return artifact


def map_layer_bits(quant, model: nn.Module):
    """The quantize config with its bit-widths moved onto the layers of the *compressed* model.

    Bits are sampled for the layers of the uncompressed model. A layer that still exists keeps
    its bits; a layer replaced by a container (factorize turns `net.0` into `net.0.0` and
    `net.0.1`) gives its bits to every layer inside it; a layer that no longer exists (merged
    away by a shallower distillation student) is dropped. New layers default to fp32.
    """
    names = [info.name for info in discover_layers(model)]
    mapped: list[tuple[str, str]] = []
    for layer, bits in quant.layer_bits:
        if layer in names:
            mapped.append((layer, bits))
        else:
            mapped.extend((name, bits) for name in names if name.startswith(layer + "."))
    return dataclasses.replace(quant, layer_bits=tuple(mapped))


def _notes_for(name: str, notes: dict[str, dict]) -> dict:
    """Notes recorded under a layer's name or any of its ancestors (a factorized layer's halves
    inherit the note of the layer they replaced)."""
    parts = name.split(".")
    merged: dict = {}
    for i in range(1, len(parts) + 1):
        merged.update(notes.get(".".join(parts[:i]), {}))
    return merged


@torch.no_grad()
def describe_layers(model: nn.Module, recipe: Recipe, artifact: Artifact,
                    notes: dict[str, dict] | None = None) -> dict[str, dict]:
    """What each layer became: shape, parameter count, sparsity, bit-width, ONNX node, and what the
    techniques recorded for it (rank, skipped factorizations, channels kept, merged layers)."""
    quant = recipe.get("quantize")
    if quant is not None:
        quant = map_layer_bits(quant, model)
    notes = notes or {}
    out = {}
    for info in discover_layers(model):
        weight = model.get_submodule(info.name).weight
        out[info.name] = {
            "kind": info.kind,
            "shape": list(info.weight_shape),
            "params": int(weight.numel()),
            "sparsity": round(float((weight == 0).float().mean()), 4),
            "bits": quant.bits_of(info.name) if quant is not None else "fp32",
            # int2/binary: stored low-bit, computed by an fp32 kernel (no ORT kernel exists).
            "simulated": quant is not None and quant.bits_of(info.name) in SIMULATED_BITS,
            "node": artifact.layer_nodes.get(info.name),
            **_notes_for(info.name, notes),
        }
    # Layers that no longer exist (merged away) still get their record.
    for name, note in notes.items():
        if name not in out and not any(n.startswith(name + ".") for n in out):
            out[name] = dict(note)
    return out
