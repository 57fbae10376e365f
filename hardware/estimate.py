"""Analytic latency for targets that are not attached (an edge NPU, a given GPU): a roofline.

Per compressible layer (from the artifact's layer records, `layers.json`: shape, parameters, bit-width,
sparsity) the estimate takes the larger of

    compute = 2 * MACs / (peak ops/s at the layer's precision * compute_efficiency)
    memory  = (weight bytes at the layer's bit-width + activation bytes in and out)
              / (memory bandwidth * memory_efficiency)

plus a per-layer dispatch overhead, and adds a fixed per-inference overhead. MACs per layer
are parameters times output positions (batch x sequence x spatial), with output shapes from
ONNX shape inference at the task's query shape (else the profile's batch size and sequence
length). Element-wise ops, attention score products and anything that is not a Linear/Conv
weight are left out, so the figure is a lower bound dominated by the layers compression changes.

Assumptions, stated: an integer layer runs with int8 activations (static QDQ); a precision
the target lacks runs at the next wider one it has (int4 -> int8 -> fp16 -> fp32, weights
still moved at their own bit-width); zeros are skipped only if the spec says `skips_zeros`.
Quality is not estimated: it is measured by running the artifact on ONNX Runtime's CPU
provider in this process (recorded as `quality_from`). Every latency metric carries `est`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hardware import agent
from hardware.artifact import Artifact
from hardware.base import Backend, Feeds, Measurement, Prepared, Profile
from hardware.environment import environment
from hardware.errors import SpaceError, UserError
from hardware.lock import compute_slot
from hardware.schema import Rule, validate

PRECISIONS = ("int4", "int8", "fp16", "bf16", "fp32")
WIDER = {"int4": "int8", "int8": "fp16", "fp16": "fp32", "bf16": "fp32"}
_POSITIVE = {"minimum": 0, "min_exclusive": True}
_FRACTION = {"minimum": 0, "maximum": 1, "min_exclusive": True}
SPEC_SCHEMA: dict[str, Rule] = {
    "peak_tops": Rule("mapping", keys=PRECISIONS, items=Rule("float", **_POSITIVE),
                      text=f"a mapping of precisions ({', '.join(PRECISIONS)}) to tera-ops/s",
                      help="tera-ops/s per precision (1 MAC = 2 ops), e.g. {int8: 6, fp16: 1.5}"),
    "memory_bandwidth_gbs": Rule("float", **_POSITIVE, help="memory bandwidth, GB/s"),
    "compute_efficiency": Rule("float", default=0.5, **_FRACTION, help="fraction of the peak a layer reaches"),
    "memory_efficiency": Rule("float", default=0.7, **_FRACTION, help="fraction of the bandwidth a layer reaches"),
    "layer_overhead_us": Rule("float", default=0.0, minimum=0, help="dispatch overhead per layer, microseconds"),
    "fixed_overhead_us": Rule("float", default=0.0, minimum=0, help="overhead per inference, microseconds"),
    "float_precision": Rule("str", default="fp32", choices=PRECISIONS, help="the precision fp32 layers run at"),
    "skips_zeros": Rule("bool", default=False, help="whether the target skips zero weights"),
    "source": Rule("str", default="", help="where the figures come from"),
}


def layer_precision(bits: str) -> tuple[str, int]:
    """(compute precision, weight bits): ('int8', 8) from 'int8', ('int4', 2) from 'int2' (no 2-bit
    units assumed), ('int4', 1) from 'binary'; unknown labels count as fp32."""
    if bits == "binary":
        return "int4", 1
    m = re.fullmatch(r"(u?int|fp|bf)(\d+)", str(bits))
    if not m:
        return "fp32", 32
    kind, width = m.group(1), int(m.group(2))
    if kind in ("int", "uint"):
        return ("int4" if width <= 4 else "int8"), width
    return ("bf16" if kind == "bf" else f"fp{width}"), width


def output_positions(model_path: Path, layers: dict[str, dict], batch: int, seq: int,
                     input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """Per layer, the number of output positions (everything but the feature/channel dim).

    Dynamic input dims take the task's query shape where given, else batch / sequence length."""
    proto = onnx.load(str(model_path), load_external_data=False)
    for inp in proto.graph.input:
        given = (input_shapes or {}).get(inp.name)
        for i, dim in enumerate(inp.type.tensor_type.shape.dim):
            if given is not None and i < len(given):
                dim.dim_value = int(given[i])
            elif dim.dim_value <= 0:
                dim.dim_value = batch if i == 0 else max(seq, 1)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - unknown shapes fall back to one position per sample
        pass
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*proto.graph.value_info, *proto.graph.output]}
    nodes = {n.name: n for n in proto.graph.node}
    out = {}
    for name, info in layers.items():
        node = nodes.get(info.get("node") or "")
        shape = shapes.get(node.output[0]) if node is not None else None
        if not shape or any(d <= 0 for d in shape):
            out[name] = batch
        elif info.get("kind") == "conv" or (node is not None and node.op_type in ("Conv", "QLinearConv")):
            out[name] = shape[0] * math.prod(shape[2:])
        else:
            out[name] = math.prod(shape[:-1])
    return out


class Roofline:
    """A target's peak numbers, from the profile's `spec`."""

    def __init__(self, spec: dict[str, Any], where: str):
        values = validate(where, "spec", SPEC_SCHEMA, spec)
        if not values["peak_tops"]:
            raise SpaceError(where, "spec.peak_tops", f"must map precisions ({', '.join(PRECISIONS)}) to "
                             "tera-ops/s", values["peak_tops"])
        self.peak = {p: v * 1e12 for p, v in values["peak_tops"].items()}
        self.bandwidth = values["memory_bandwidth_gbs"] * 1e9
        self.compute_eff = values["compute_efficiency"]
        self.memory_eff = values["memory_efficiency"]
        self.layer_overhead_s = values["layer_overhead_us"] * 1e-6
        self.fixed_overhead_s = values["fixed_overhead_us"] * 1e-6
        self.float_precision = values["float_precision"]
        self.skips_zeros = values["skips_zeros"]

    def runs_at(self, precision: str) -> str:
        """The precision a layer really computes at: its own, else the next wider one the target has."""
        if precision == "fp32":
            precision = self.float_precision
        while precision not in self.peak and precision in WIDER:
            precision = WIDER[precision]
        if precision not in self.peak:
            precision = max(self.peak, key=self.peak.get)  # a target without fp32 runs floats at its best
        return precision

    def estimate(self, layers: dict[str, dict], positions: dict[str, int]) -> dict[str, float]:
        compute_s = memory_s = total_s = macs_total = bytes_total = 0.0
        for name, info in layers.items():
            precision, width = layer_precision(info.get("bits", "fp32"))
            runs = self.runs_at(precision)
            params = float(info["params"])
            dense = params * (1 - float(info.get("sparsity", 0.0))) if self.skips_zeros else params
            macs = dense * positions.get(name, 1)
            shape = info.get("shape") or [1, 1]
            act_bytes = 1 if runs.startswith("int") else int(re.sub(r"\D", "", runs)) // 8
            act_elems = positions.get(name, 1) * (shape[0] + (shape[1] if len(shape) > 1 else 1))
            moved = params * width / 8 + act_elems * act_bytes
            c = 2 * macs / (self.peak[runs] * self.compute_eff)
            m = moved / (self.bandwidth * self.memory_eff)
            compute_s, memory_s = compute_s + c, memory_s + m
            total_s += max(c, m) + self.layer_overhead_s
            macs_total, bytes_total = macs_total + macs, bytes_total + moved
        total_s += self.fixed_overhead_s
        return {"latency_est_ms": total_s * 1e3, "compute_est_ms": compute_s * 1e3, "memory_est_ms": memory_s * 1e3,
                "throughput_est_qps": 1.0 / total_s if total_s > 0 else 0.0, "macs_est": macs_total,
                "bytes_moved_est": bytes_total}


class _CpuPrepared(Prepared):
    def __init__(self, session: Any):
        self.session = session

    def run(self, feeds: Feeds) -> np.ndarray:
        return self.session.run(None, feeds)[0]


class EstimateBackend(Backend):
    measures_latency = False

    @classmethod
    def check_available(cls, profile: Profile) -> None:
        Roofline(profile.spec, profile.source)

    def prepare(self, artifact: Artifact) -> Prepared:
        return _CpuPrepared(agent.ort_session(str(artifact.path), "CPUExecutionProvider", {}, 1))

    def estimates(self, artifact: Artifact, query: Feeds | None = None) -> dict[str, float]:
        if not artifact.layers:
            raise UserError(f"{artifact.path}: profile {self.profile.name} estimates from what each layer became "
                            f"(the artifact's layer records, which a search writes), and this artifact has none")
        positions = output_positions(artifact.path, artifact.layers, self.profile.batch_size,
                                     self.profile.sequence_length, {k: v.shape for k, v in (query or {}).items()})
        return Roofline(self.profile.spec, self.profile.source).estimate(artifact.layers, positions)

    def measure(self, artifact: Artifact, evaluate: Callable[[Callable[[Feeds], np.ndarray]], float],
                query: Feeds) -> Measurement:
        with compute_slot():
            quality = float(evaluate(self.prepare(artifact).run))
        env = {**environment(), "target": self.profile.description, "estimate": "roofline (hardware/estimate.py)",
               "spec_source": str(self.profile.spec.get("source", "")),
               "quality_from": "onnxruntime CPUExecutionProvider on this host",
               "batch_size": str(self.profile.batch_size)}
        return Measurement(profile=self.profile.name, quality=quality, latency=None, bytes=artifact.bytes,
                           bytes_compressed=artifact.bytes_compressed(), environment=env,
                           estimates=self.estimates(artifact, query))
