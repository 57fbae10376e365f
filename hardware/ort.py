"""ONNX Runtime backend: one execution provider per profile, no silent fallback."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from hardware.base import Backend, Feeds, Measurement, Prepared, Profile
from hardware.environment import environment
from hardware.lock import measurement_lock
from hardware.sizes import artifact_bytes, compressed_bytes
from hardware.timing import time_queries
from search.errors import UserError

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# Which distribution brings which provider, for the "not installed" message.
_PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu (with TensorRT libraries)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
}


class OrtPrepared(Prepared):
    def __init__(self, session: ort.InferenceSession, kernels: dict[str, str]):
        self.session = session
        self._kernels = kernels

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

    def _session_options(self, optimized_path: Path | None) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.profile.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = _OPT_LEVELS[self.profile.graph_optimization]
        so.log_severity_level = 3
        if optimized_path is not None:
            so.optimized_model_filepath = str(optimized_path)
        return so

    def prepare(self, model_path: Path, layer_nodes: dict[str, str]) -> OrtPrepared:
        with tempfile.TemporaryDirectory(prefix="compsearch-ort-") as tmp:
            optimized = Path(tmp) / "optimized.onnx"
            session = ort.InferenceSession(
                str(model_path), self._session_options(optimized),
                providers=[(self.profile.provider, self.profile.options)] if self.profile.options
                else [self.profile.provider])
            if session.get_providers()[0] != self.profile.provider:
                raise UserError(f"{self.profile.source}: session runs on {session.get_providers()[0]}, "
                                f"not {self.profile.provider}; refusing to measure a silent fallback")
            kernels = _layer_kernels(onnx.load(str(optimized)), layer_nodes) if optimized.exists() else {}
        return OrtPrepared(session, kernels)

    def measure(self, model_path: Path, layer_nodes: dict[str, str],
                evaluate: Callable[[Callable[[Feeds], np.ndarray]], float], query: Feeds) -> Measurement:
        t0 = time.perf_counter()
        prepared = self.prepare(model_path, layer_nodes)
        session_init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepared.run(query)
        first_run_ms = (time.perf_counter() - t0) * 1e3
        quality = float(evaluate(prepared.run))
        with measurement_lock():
            latency = time_queries(lambda: prepared.session.run(None, query), self.profile.measure)
        env = dict(environment())
        env.update(provider=self.profile.provider, threads=str(self.profile.threads),
                   batch_size=str(self.profile.batch_size), graph_optimization=self.profile.graph_optimization)
        return Measurement(
            profile=self.profile.name, quality=quality, latency=latency,
            bytes=artifact_bytes(model_path), bytes_compressed=compressed_bytes(model_path),
            session_init_s=session_init_s, first_run_ms=first_run_ms, kernels=prepared.kernels(), environment=env)


def _layer_kernels(optimized: onnx.ModelProto, layer_nodes: dict[str, str]) -> dict[str, str]:
    """The op each layer runs as after ONNX Runtime's graph optimisation.

    Fused nodes keep the original node's name (QGemm for a QDQ Gemm, FusedGemm for
    Gemm+Relu), so a layer whose Q/DQ pair was not fused shows up as plain Gemm/MatMul.
    """
    by_name = {n.name: n for n in optimized.graph.node}
    out = {}
    for layer, node_name in layer_nodes.items():
        node = by_name.get(node_name)
        if node is None:
            node = next((n for n in optimized.graph.node if n.name.startswith(node_name)), None)
        if node is not None:
            out[layer] = f"{node.domain + '.' if node.domain else ''}{node.op_type}"
    return out
