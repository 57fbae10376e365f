"""ONNX Runtime backend: isolated timing, environment beside the figure, no silent fallback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from hardware.agent import PlacementError, check_placement, ort_session
from hardware.artifact import Artifact
from hardware.profiles import load_profile, make_backend
from search.errors import UserError

QUERY = {"x": np.ones((1, 16), np.float32)}


def accuracy_of(run) -> float:
    """A stand-in task metric computed from the backend's own outputs."""
    out = run({"x": np.eye(16, dtype=np.float32)})
    return float(np.isfinite(out).mean())


def test_cpu_measurement_runs_in_a_fresh_process_with_everything_recorded(mlp: Path, fast_profiles: Path) -> None:
    backend = make_backend(load_profile("fast-cpu"))
    m = backend.measure(Artifact(mlp, {"net.0": "gemm0"}), accuracy_of, QUERY)
    assert m.quality == 1.0
    assert m.environment["measured_in_pid"] not in ("", str(os.getpid()))
    assert m.latency is not None and m.latency.queries >= 50 and m.latency.duration_s >= 0.1
    assert m.latency.ci_low_ms <= m.latency.p50_ms <= m.latency.ci_high_ms
    assert m.latency.p50_ms <= m.latency.p90_ms <= m.latency.p99_ms
    assert m.session_init_s > 0 and m.first_run_ms > 0
    assert 10 < m.peak_rss_mb < 400  # the lean agent process, not this torch-laden one
    for key in ("cpu", "cores", "onnxruntime", "provider", "threads", "placement"):
        assert m.environment[key], key
    assert m.environment["threads"] == "1" and m.environment["placement"] == "CPUExecutionProvider=3"
    metrics = m.metrics()
    for key in ("latency_p50_ms", "latency_p50_ci_low_ms", "peak_rss_mb", "contended", "cpu_wall_ratio",
                "other_cpu_cores", "loadavg_1m", "attempts", "throughput_qps"):
        assert key in metrics, key
    assert m.kernels == {"net.0": "com.microsoft.FusedGemm"}  # Gemm+Relu fused by the optimiser


def test_two_thread_profile_pins_two_threads(mlp: Path, fast_profiles: Path) -> None:
    m = make_backend(load_profile("fast-cpu-2t")).measure(Artifact(mlp), accuracy_of, QUERY)
    assert m.environment["threads"] == "2"


@pytest.mark.parametrize(("profile", "package"), [("ort-cuda", "onnxruntime-gpu"), ("ort-trt", "onnxruntime-gpu"),
                                                  ("ort-openvino", "onnxruntime-openvino")])
def test_missing_provider_is_one_line_naming_the_package(profile: str, package: str) -> None:
    provider = load_profile(profile, check=False).provider
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is installed here")
    with pytest.raises(UserError) as err:
        load_profile(profile)
    assert package in str(err.value) and "\n" not in str(err.value)


def test_placement_check_refuses_a_provider_the_session_does_not_run_on(mlp: Path) -> None:
    session = ort_session(str(mlp), "CPUExecutionProvider", {}, 1)
    assert check_placement(session, "CPUExecutionProvider")["nodes_by_provider"] == {"CPUExecutionProvider": 3}
    with pytest.raises(PlacementError, match="not CUDAExecutionProvider"):
        check_placement(session, "CUDAExecutionProvider")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_provider_measures_on_the_gpu(mlp: Path) -> None:
    m = make_backend(load_profile("ort-cuda")).measure(Artifact(mlp), accuracy_of, QUERY)
    assert m.environment["provider"] == "CUDAExecutionProvider"
    assert "CUDAExecutionProvider" in m.environment["placement"]


def test_a_figure_is_the_median_of_several_fresh_processes(mlp: Path, fast_profiles: Path) -> None:
    from dataclasses import replace

    from hardware.isolated import time_onnx

    profile = load_profile("fast-cpu")
    timing = time_onnx(mlp, profile, QUERY, replace(profile.measure, processes=3))
    p50s = timing.host["process_p50_ms"]
    assert timing.host["processes"] == 3 and len(p50s) == 3 and p50s == sorted(p50s)
    assert round(timing.latency.p50_ms, 6) == p50s[1]  # the middle one, whole (the list is rounded to 6 places)
    assert timing.host["process_spread"] == pytest.approx(p50s[2] / p50s[0] - 1)
    assert 0 <= timing.host["processes_contended"] <= 3


def test_persistent_contention_is_not_retried_in_every_process(mlp: Path, fast_profiles: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """When the first process's every attempt was contended, the others time once each: retries cannot
    outlast outside load, and the figure is still the median of fresh processes, marked contended."""
    from dataclasses import replace

    from hardware import isolated

    asked: list[int] = []
    real = isolated.run_child

    def contended(argv: list[str], threads: int, timeout_s: float) -> dict:
        asked.append(int(argv[argv.index("--max-attempts") + 1]))
        result = real(argv, threads, timeout_s)
        result["host"] = {**result["host"], "contended": True, "attempts": asked[-1]}
        return result

    monkeypatch.setattr(isolated, "run_child", contended)
    profile = load_profile("fast-cpu")
    timing = isolated.time_onnx(mlp, profile, QUERY, replace(profile.measure, processes=3, max_attempts=2))
    assert asked == [2, 1, 1]
    assert timing.host["processes"] == 3 and timing.host["processes_contended"] == 3
