"""ONNX Runtime backend: one execution provider per profile, no silent fallback.

Quality comes from a session built in this process exactly as the profile says (same
provider, threads and optimisation level as the timed one); latency, session creation,
first run and peak memory come from a fresh agent process (`hardware.isolated`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from hardware import agent
from hardware.artifact import Artifact
from hardware.base import Backend, Feeds, Measurement, MeasureSettings, Prepared, Profile, Timing
from hardware.environment import environment
from hardware.errors import UserError
from hardware.isolated import MeasurementError, time_onnx
from hardware.lock import compute_slot

# Which distribution brings which provider, for the "not installed" message.
_PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu in place of onnxruntime",
    "TensorrtExecutionProvider": "onnxruntime-gpu in place of onnxruntime, with the TensorRT libraries",
    "OpenVINOExecutionProvider": "onnxruntime-openvino in place of onnxruntime",
}


class OrtPrepared(Prepared):
    def __init__(self, session: ort.InferenceSession, kernels: dict[str, str], placement: dict):
        self.session = session
        self._kernels = kernels
        self.placement = placement

    def run(self, feeds: Feeds) -> np.ndarray:
        return self.session.run(None, feeds)[0]

    def kernels(self) -> dict[str, str]:
        return dict(self._kernels)


class OrtBackend(Backend):
    @classmethod
    def check_available(cls, profile: Profile) -> None:
        available = ort.get_available_providers()
        if profile.provider not in available:
            package = _PROVIDER_PACKAGES.get(profile.provider, "an onnxruntime build with it")
            raise UserError(
                f"{profile.source}: provider: {profile.provider} is not available in the installed onnxruntime "
                f"(available: {', '.join(available)}); install {package}")

    def prepare(self, artifact: Artifact) -> OrtPrepared:
        with tempfile.TemporaryDirectory(prefix="compsearch-ort-") as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            session = agent.ort_session(str(artifact.path), self.profile.provider, self.profile.options,
                                        self.profile.threads, self.profile.graph_optimization, str(optimized))
            try:
                placement = agent.check_placement(session, self.profile.provider)
            except agent.PlacementError as exc:
                raise MeasurementError(f"{self.profile.name}: {exc}; refusing to measure a silent fallback") from None
            kernels = _layer_kernels(onnx.load(str(optimized)), artifact.layer_nodes) if optimized.exists() else {}
        return OrtPrepared(session, kernels, placement)

    def time(self, artifact: Artifact, query: Feeds | None, settings: MeasureSettings | None = None) -> Timing:
        return time_onnx(artifact.path, self.profile, query, settings or self.profile.measure)

    def measure(self, artifact: Artifact, evaluate: Callable[[Callable[[Feeds], np.ndarray]], float],
                query: Feeds) -> Measurement:
        with compute_slot():  # evaluation is compute: it must not overlap another worker's timing
            prepared = self.prepare(artifact)
            quality = float(evaluate(prepared.run))
            kernels = prepared.kernels()
        del prepared  # free the session's threads before the timed process starts
        timing = self.time(artifact, query)
        env = {**environment(), **timing.environment, "quality_from": "onnxruntime " + self.profile.provider}
        return Measurement(
            profile=self.profile.name, quality=quality, latency=timing.latency,
            bytes=artifact.bytes, bytes_compressed=artifact.bytes_compressed(),
            session_init_s=timing.session_init_s, first_run_ms=timing.first_run_ms,
            kernels=kernels, environment=env,
            peak_rss_mb=timing.peak_rss_mb, host=timing.host)


def _layer_kernels(optimized: onnx.ModelProto, layer_nodes: dict[str, str]) -> dict[str, str]:
    """The op each layer runs as after ONNX Runtime's graph optimisation.

    Fused nodes keep the original node's name (QGemm for a QDQ Gemm, FusedGemm for
    Gemm+Relu), so a layer whose Q/DQ pair was not fused shows up as plain Gemm/MatMul.
    """
    by_name = {n.name: n for n in optimized.graph.node}
    out = {}
    for layer, node_name in layer_nodes.items():
        node = by_name.get(node_name)
        if node is None:  # fusions rename, e.g. Gemm+Relu -> "fused node_linear_1"
            node = next((n for n in optimized.graph.node if node_name in n.name.split()), None)
        if node is None:  # or invent names ("node_conv2d_token_1"): find the op that consumes the weight
            weight = f"{layer}.weight"
            node = next((n for n in optimized.graph.node
                         if any(i == weight or i.startswith(weight + "_") for i in n.input)), None)
        if node is not None:
            out[layer] = f"{node.domain + '.' if node.domain else ''}{node.op_type}"
    return out
