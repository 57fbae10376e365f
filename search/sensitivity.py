"""Per-layer sensitivity: how much the model's output moves when one layer alone goes to a lower bit-width.

Measured once per study (and cached on disk across studies) for every searched layer and every
bit-width below fp32 that the space lists; `assign: sensitivity` (quantize/assign.py) ranks the
layers by it, and the report draws it for hardware teams.

What is measured is a proxy, and named so: the relative squared error of the model's output
(embeddings, logits) against the fp32 output, ||y' - y||^2 / ||y||^2, on up to `MAX_INPUTS`
calibration inputs, with that one layer computed as deployed. The deployed weights are exactly
the quantizers' (ORT's own int4 block quantizer; per-channel symmetric int8; the int2/binary codes
of passes.py), and int8 activations are quantized per batch as ONNX Runtime's dynamic kernels do.
It runs in PyTorch, one forward pass per (layer, bit-width), with no ONNX graph built: building
and running a quantized graph per layer took over ten minutes for MiniLM.

Cached as RESULTS_DIR/cache/sensitivity/<key>.json, the key naming the model's weights, the task
and its options, the layers, the bit-widths and the settings that shape the deployed weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from search.prefix_replay import PrefixReplay
from search.students import key_lock, model_identity
from search.techniques.quantize.config import BITS, INT4_BLOCK, SIMULATED_BITS

if TYPE_CHECKING:
    from search.space import SearchSpace
    from search.tasks.base import Task
    from search.techniques import TechniqueSpace

MAX_INPUTS = 256  # calibration samples: enough to rank layers, cheap enough to do 72 passes of MiniLM
METRIC = "relative output error, one layer at a time (PyTorch simulation of the deployed weights)"
VERSION = 1  # bump when what is measured changes: old cache entries are then not read


def quantize_space(space: SearchSpace) -> TechniqueSpace | None:
    return next((t for t in space.techniques if t.name == "quantize"), None)


def needs_sensitivity(space: SearchSpace) -> bool:
    """The space samples bits by sensitivity (and has more than fp32 to choose)."""
    tech = quantize_space(space)
    return (tech is not None and tech.settings.get("assign") == "sensitivity"
            and any(b != "fp32" for b in tech.dims["bits"].choices))


def _act_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """uint8, one asymmetric range per batch that includes 0: DynamicQuantizeLinear's arithmetic."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def deployed_weight(weight: torch.Tensor, bits: str, per_channel: bool, block: int) -> torch.Tensor:
    """The weight a layer computes with at `bits` (as the ONNX passes write it)."""
    from search.techniques.quantize.passes import int4_dequant, lowbit_dequant

    w = weight.detach().float()
    if bits == "fp16":
        return w.half().float()
    if bits == "int8":
        flat = w.reshape(w.shape[0], -1)
        amax = flat.abs().amax(dim=1, keepdim=True) if per_channel else flat.abs().max().expand(w.shape[0], 1)
        scale = torch.clamp(amax, min=1e-12) / 127.0
        return (torch.clamp(torch.round(flat / scale), -127, 127) * scale).reshape(w.shape)
    if bits == "int4":  # Linear [out, in]: MatMulNBits quantizes W^T [K=in, N=out] in blocks along K
        return torch.from_numpy(np.ascontiguousarray(int4_dequant(w.numpy().T, block).T)).float()
    if bits in SIMULATED_BITS:
        return torch.from_numpy(lowbit_dequant(w.numpy(), bits, axis=0)).float()
    raise ValueError(f"sensitivity: no simulation for bits {bits!r}")


def _trim_padding(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A transformer's calibration batch is padded to the query length; the padding changes no output
    (the mask hides it) but costs most of the compute: cut every [batch, seq] input to the longest row."""
    mask = feeds.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return feeds
    longest = max(1, int(mask.sum(axis=1).max()))
    return {k: v[:, :longest] if v.ndim == 2 and v.shape[1] == mask.shape[1] else v for k, v in feeds.items()}


def calibration_batches(task: Task) -> list[tuple[torch.Tensor, ...]]:
    out, count = [], 0
    for feeds in task.calibration_feeds():
        feeds = _trim_padding(feeds)
        take = min(MAX_INPUTS - count, len(next(iter(feeds.values()))))
        out.append(tuple(torch.from_numpy(np.ascontiguousarray(feeds[name][:take])) for name in task.input_names))
        count += take
        if count >= MAX_INPUTS:
            break
    return out


def _main_output(out: Any) -> torch.Tensor:
    """The model's output tensor (the first one of a tuple or mapping)."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


@torch.no_grad()
def layer_errors(model: nn.Module, batches: list[tuple[torch.Tensor, ...]], layers: list[str], bits_list: list[str],
                 per_channel: bool = True, block: int = INT4_BLOCK, replay: bool = True) -> dict[str, dict[str, float]]:
    """bits -> {layer: relative output error over `batches` with that layer alone at bits}.

    `replay`: what runs before the layer hands back its recorded outputs (search/prefix_replay.py),
    the same figures for about half the compute."""
    model = model.eval()
    prefix = PrefixReplay(model, batches, layers if replay else [])
    reference = [_main_output(out) for out in prefix.reference]
    energy = sum(float((r * r).sum()) for r in reference) or 1.0
    table: dict[str, dict[str, float]] = {}
    for bits in bits_list:
        table[bits] = {}
        for name in layers:
            layer = model.get_submodule(name)
            original = layer.weight.data
            hook = None
            if bits == "int8":
                hook = layer.register_forward_pre_hook(lambda _m, args: (_act_fake_quant(args[0]), *args[1:]))
            elif bits == "fp16":
                hook = layer.register_forward_pre_hook(lambda _m, args: (args[0].half().float(), *args[1:]))
            layer.weight.data = deployed_weight(original, bits, per_channel, block).to(original.dtype)
            err = 0.0
            try:
                for i, (batch, ref) in enumerate(zip(batches, reference, strict=True)):
                    with prefix.replaying(name, i):
                        err += float(((_main_output(model(*batch)) - ref) ** 2).sum())
            finally:
                layer.weight.data = original
                if hook is not None:
                    hook.remove()
            table[bits][name] = err / energy
    return table


def sensitivity_key(task: Task, model_id: str, layers: list[str], bits: list[str], per_channel: bool,
                    block: int) -> str:
    blob = json.dumps({"version": VERSION, "task": task.name, "options": task.options, "model": model_id,
                       "layers": layers, "bits": bits, "per_channel": per_channel, "block": block,
                       "inputs": MAX_INPUTS}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def study_sensitivity(space: SearchSpace, task: Task, model: nn.Module, results_dir: Path,
                      model_id: str | None = None) -> dict[str, Any]:
    """The sensitivity table of `space`'s quantized layers, from the cache or measured (and cached).

    Settings that shape the deployed weights take their most accurate listed value (per-channel
    int8 if listed, the smallest int4 block): the ranking is of layers, not of settings."""
    tech = quantize_space(space)
    assert tech is not None
    listed = tuple(tech.dims["bits"].choices)
    bits = [b for b in BITS if b in listed and b != "fp32"]
    layers = [layer.name for layer in tech.layers]
    per_channel = True in tech.dims["per_channel"].choices
    block = int(min(tech.dims["block_size"].choices))
    key = sensitivity_key(task, model_id or model_identity(model), layers, bits, per_channel, block)
    folder = results_dir / "cache" / "sensitivity"
    path = folder / f"{key}.json"
    with key_lock(folder, key, shared=False):  # two workers starting together measure it once
        if path.is_file():
            table = json.loads(path.read_text())
            table["cached"] = True
            return table
        started = time.monotonic()
        batches = calibration_batches(task)
        errors = layer_errors(model, batches, layers, bits, per_channel, block)
        table = {"key": key, "metric": METRIC, "inputs": sum(len(b[0]) for b in batches),
                 "bits": bits, "layers": layers, "per_channel": per_channel, "block_size": block,
                 "error": errors, "seconds": round(time.monotonic() - started, 1)}
        fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as fh:
            json.dump(table, fh)
        os.replace(tmp, path)
    table["cached"] = False
    return table
