"""PyTorch backend: the compressed module's torch.export program, eager, in its own process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hardware.artifact import Artifact
from hardware.profiles import load_profile, make_backend
from search.errors import UserError
from search.export import export_program

X = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)


@pytest.fixture()
def program(tmp_path: Path) -> tuple[Artifact, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    export_program(model, (torch.from_numpy(X[:1]),), tmp_path / "model.pt2")
    return Artifact(tmp_path / "model.onnx", program=tmp_path / "model.pt2"), model  # the program rides along


def agreement(reference: np.ndarray):
    def evaluate(run) -> float:
        return float((run({"x": X}).argmax(1) == reference.argmax(1)).mean())
    return evaluate


@pytest.mark.parametrize("profile", ["fast-torch", "fast-torch-bf16"])
def test_cpu_eager_measures_quality_from_its_own_outputs(program, fast_profiles: Path, profile: str) -> None:
    artifact, model = program
    with torch.no_grad():
        reference = model(torch.from_numpy(X)).numpy()
    m = make_backend(load_profile(profile)).measure(artifact, agreement(reference), {"x": X[:1]})
    assert m.quality >= (1.0 if profile == "fast-torch" else 0.9)  # bf16 may flip a near tie
    assert m.latency is not None and m.latency.queries >= 50
    assert m.environment["measured_in_pid"] != str(os.getpid())
    assert m.environment["precision"] == load_profile(profile).precision
    assert m.bytes == (artifact.path.parent / "model.pt2").stat().st_size


def test_missing_program_is_a_clear_error(tmp_path: Path, fast_profiles: Path) -> None:
    with pytest.raises(UserError, match="model.pt2"):
        make_backend(load_profile("fast-torch")).prepare(Artifact(tmp_path / "model.onnx"))


def test_cuda_profile_refuses_cleanly_without_a_gpu(fast_profiles: Path) -> None:
    import yaml

    (fast_profiles / "fast-torch-cuda.yaml").write_text(yaml.safe_dump(
        {"name": "fast-torch-cuda", "backend": "torch", "device": "cuda", "precision": "fp16"}))
    if torch.cuda.is_available():
        assert load_profile("fast-torch-cuda").device == "cuda"
    else:
        with pytest.raises(UserError, match="device: cuda needs a CUDA build of torch"):
            load_profile("fast-torch-cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_fp16_measures_on_the_gpu(program, fast_profiles: Path) -> None:
    import yaml

    (fast_profiles / "gpu.yaml").write_text(yaml.safe_dump({"name": "gpu", "backend": "torch", "device": "cuda",
                                                            "precision": "fp16"}))
    artifact, model = program
    reference = model(torch.from_numpy(X)).detach().numpy()
    m = make_backend(load_profile("gpu")).measure(artifact, agreement(reference), {"x": X[:1]})
    assert m.quality >= 0.9 and m.environment["gpu"]


@pytest.mark.slow
def test_torch_compile_profile_runs_the_compiled_module(program, fast_profiles: Path) -> None:
    import yaml

    (fast_profiles / "compiled.yaml").write_text(yaml.safe_dump({"name": "compiled", "backend": "torch",
                                                                 "compile": True, "measure": {"min_queries": 20,
                                                                                              "max_attempts": 1}}))
    artifact, model = program
    with torch.no_grad():
        reference = model(torch.from_numpy(X)).numpy()
    m = make_backend(load_profile("compiled")).measure(artifact, agreement(reference), {"x": X[:1]})
    assert m.quality == 1.0 and m.environment["compile"] == "true"
    assert m.first_run_ms > 10 * m.latency.p50_ms  # code generation happened on the first run, untimed
