"""The stage runner: apply a recipe to a model and write the deployable artifact.

    build_student   the student stages (techniques marked `student`: their output is a trained
                    fp32 model that depends only on the recipe up to them), on a copy of the model
    finish          the other model-stage techniques, export to ONNX (for a transformer task: exported
                    for fusion and fused, search/fusion/), the ONNX-stage techniques, then what each
                    layer became (graph.json: what fused)
    build_artifact  both, one after the other

Both stages loop over the technique registry in its orders (search/techniques/registry.py);
this module names no technique. A recipe step runs the hooks of the technique registered for
its config; a technique the recipe leaves out does not run.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch
from torch import nn

from hardware.artifact import MODEL_FILE, PROGRAM_FILE, Artifact
from search.export import export_onnx, export_program
from search.fusion.stage import fuse_stage
from search.layers import discover_layers
from search.recipe import Recipe
from search.techniques import REGISTRY, CompressionState, Technique
from search.techniques.macs import count_nonzero_params, count_params_macs

if TYPE_CHECKING:
    from search.tasks.base import Task

__all__ = ["build_artifact", "build_student", "describe_layers", "finish", "split_recipe", "student_state",
           "train_student"]


def split_recipe(recipe: Recipe) -> tuple[Recipe, Recipe]:
    """(the student steps, the rest): the student prefix names a student model's cache entry."""
    student = tuple(s for s in recipe.steps if REGISTRY.of(s).student)
    return Recipe(student), Recipe(tuple(s for s in recipe.steps if not REGISTRY.of(s).student))


def _run_model_stage(state: CompressionState, recipe: Recipe, techniques: list[Technique]) -> None:
    for technique in techniques:
        config = recipe.get(technique.name)
        if config is None:
            continue
        before = state.model
        technique.apply_model(state, config)
        state.changed |= state.model is not before


def student_state(model: nn.Module, task: Task, seed: int = 0) -> CompressionState:
    """A state whose teacher is `model` (the original, untouched): the student stages start from it."""
    return CompressionState(model=model, task=task, teacher=model, seed=seed)


def train_student(state: CompressionState, recipe: Recipe) -> None:
    """Run the student stages of `recipe` on a copy of the state's model. The state's model is then
    the trained fp32 student; `finish` takes it from there."""
    state.model = copy.deepcopy(state.model)
    _run_model_stage(state, recipe, [t for t in REGISTRY.model_order() if t.student])
    state.model.eval()


def build_student(model: nn.Module, recipe: Recipe, task: Task, seed: int = 0) -> CompressionState:
    """The student stages of `recipe` on a copy of `model` (the original is the teacher). A trial
    takes its student from the cache instead when it can (search/students.py)."""
    state = student_state(model, task, seed)
    train_student(state, recipe)
    return state


def finish(state: CompressionState, recipe: Recipe, workdir: Path, program: bool = False) -> Artifact:
    """The rest of `recipe` on a student's state: the other model-stage techniques, export, the
    ONNX-stage techniques, and the per-layer record. Writes `workdir/model.onnx`.

    `program`: also save the compressed module (torch.export) for backends that run it."""
    assert state.task is not None
    task = state.task
    workdir.mkdir(parents=True, exist_ok=True)
    _run_model_stage(state, recipe, [t for t in REGISTRY.model_order() if not t.student])
    model = state.model.eval()
    path = workdir / MODEL_FILE
    # No model-stage step replaced the model: it is the task's own, and a task may hand out its
    # cached export (a transformer's export takes longer than quantizing it).
    fusion = task.fusion(model)
    cached = task.cached_fp32_export() if not state.changed and fusion is None else None
    if fusion is not None:
        # A transformer: exported the way ONNX Runtime's optimizer recognises, then fused (search/fusion/).
        fusions = fuse_stage(state, fusion, path)
        assert state.artifact is not None
        state.artifact.graph = {"fusion": fusions.to_dict(), "metrics": fusions.metrics()}
    elif cached is not None:
        shutil.copyfile(cached.path, path)
        state.artifact = Artifact(path, dict(cached.layer_nodes))
    else:
        state.artifact = export_onnx(model, task.example_inputs(), task.input_names, path,
                                     dynamic_shapes=task.dynamic_shapes(), output_names=task.output_names)
    if program:
        state.artifact.program = export_program(model, task.example_inputs(), workdir / PROGRAM_FILE,
                                                task.dynamic_shapes())
    # The ONNX-stage techniques work on the exported graph, fused above when the task is a transformer.
    for technique in REGISTRY.graph_order():
        config = recipe.get(technique.name)
        if config is not None:
            technique.apply_graph(state, config)
    artifact = state.artifact
    artifact.layers = describe_layers(state)
    params, macs = count_params_macs(model, task.example_inputs())  # per sample: batch of 1
    artifact.stats = {"params": float(params), "macs": float(macs),
                      "params_nonzero": float(count_nonzero_params(model)), **artifact.graph.get("metrics", {})}
    return artifact


def build_artifact(model: nn.Module, recipe: Recipe, task: Task, workdir: Path, program: bool = False,
                   seed: int = 0) -> Artifact:
    """Compress `model` per `recipe` and export it: the deployable artifact in `workdir`."""
    return finish(build_student(model, recipe, task, seed), recipe, workdir, program)


def _notes_for(name: str, notes: dict[str, dict]) -> dict:
    """Notes recorded under a layer's name or any of its ancestors (the two halves of a layer split
    in two inherit the note of the layer they replaced)."""
    parts = name.split(".")
    merged: dict = {}
    for i in range(1, len(parts) + 1):
        merged.update(notes.get(".".join(parts[:i]), {}))
    return merged


def _node_ops(path: Path) -> dict[str, str]:
    """Node name -> op type (with its domain when not the default one) in the ONNX file at `path`."""
    if not path.exists():
        return {}
    graph = onnx.load(str(path)).graph
    return {n.name: f"{n.domain + '.' if n.domain and n.domain != 'ai.onnx' else ''}{n.op_type}" for n in graph.node}


@torch.no_grad()
def describe_layers(state: CompressionState) -> dict[str, dict]:
    """What each layer became: shape, parameter count, sparsity, bit-width, ONNX node, and what the
    techniques recorded for it (rank, channels kept, merged layers, ...)."""
    model, notes = state.model, state.notes
    ops = _node_ops(state.artifact.path) if state.artifact is not None else {}
    sharing: dict[str, list[str]] = {}
    for layer, node in state.layer_nodes.items():
        sharing.setdefault(node, []).append(layer)
    out = {}
    for info in discover_layers(model):
        weight = model.get_submodule(info.name).weight
        node = state.layer_nodes.get(info.name)
        packed = [la for la in sharing.get(node, []) if la != info.name] if node else []
        out[info.name] = {
            "kind": info.kind,
            "shape": list(info.weight_shape),
            "params": int(weight.numel()),
            "sparsity": round(float((weight == 0).float().mean()), 4),
            "bits": state.bits_of(info.name),
            "node": node,
            # The op the artifact computes this layer with (runtimes may fuse further: the backend
            # records what really ran); layers packed into one node take one bit-width.
            "kernel": ops.get(node) if node else None,
            **({"packed_with": ", ".join(packed)} if packed else {}),
            **_notes_for(info.name, notes),
        }
    # Layers that no longer exist (merged away) still get their record.
    for name, note in notes.items():
        if name not in out and not any(n.startswith(name + ".") for n in out):
            out[name] = dict(note)
    return out
