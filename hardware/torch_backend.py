"""PyTorch backend: eager (optionally torch.compile) on CPU or CUDA, in fp32, fp16 or bf16.

Artifact contract: the artifact's `program` is a `torch.export.save` file of the compressed
module (a search writes it when a torch profile is listed; see `search.export.export_program`). It is
the torch-stage model: factorized, pruned, distilled and weight-shared, but *without* the
ONNX-stage quantization, which has no PyTorch kernel to run on. The profile's precision
casts the whole module (fp16/bf16), so this backend answers "what does the compressed
network deliver in PyTorch on this device", and its quality is computed from its own outputs.

Timing runs in a fresh process (`python -m hardware.torch_backend REQUEST --out FILE`) with
`torch.set_num_threads` pinned to the profile's threads; CUDA queries synchronize before the
clock is read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardware import agent
from hardware.artifact import Artifact
from hardware.base import Backend, Feeds, Measurement, MeasureSettings, Prepared, Profile, Timing
from hardware.environment import environment
from hardware.errors import UserError
from hardware.isolated import child_timeout_s, median_of_processes, run_child, save_feeds, timing_from_json
from hardware.lock import compute_slot, lock_path
from hardware.sizes import compressed_bytes

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def program_path(artifact: Artifact) -> Path:
    """The torch.export program the artifact carries, or a clear error."""
    if artifact.program is None or not Path(artifact.program).exists():
        raise UserError(f"{artifact.path}: the torch backend runs the torch.export program of the compressed module "
                        f"(model.pt2), and this artifact has none (a search writes it when a torch profile is listed)")
    return Path(artifact.program)


def load_module(path: Path, device: str, precision: str, compile_: bool) -> Callable[..., Any]:
    module = torch.export.load(str(path)).module().to(device=device, dtype=DTYPES[precision])
    return torch.compile(module) if compile_ else module


class TorchPrepared(Prepared):
    def __init__(self, module: Callable[..., Any], device: str, precision: str):
        self.module, self.device, self.dtype = module, device, DTYPES[precision]

    def tensors(self, feeds: Feeds) -> list[torch.Tensor]:
        out = []
        for array in feeds.values():  # positional, in the task's input order
            t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
            out.append(t.to(self.dtype) if t.is_floating_point() else t)
        return out

    @torch.no_grad()
    def run(self, feeds: Feeds) -> np.ndarray:
        out = self.module(*self.tensors(feeds))
        first = out[0] if isinstance(out, (tuple, list)) else out
        return first.float().cpu().numpy()


class TorchBackend(Backend):
    needs_program = True

    @classmethod
    def check_available(cls, profile: Profile) -> None:
        if profile.device == "cuda" and not torch.cuda.is_available():
            raise UserError(f"{profile.source}: device: cuda needs a CUDA build of torch and a GPU "
                            f"(installed torch {torch.__version__}; torch.cuda.is_available() is False)")
        if profile.precision == "fp16" and profile.device == "cpu" and profile.compile:
            raise UserError(f"{profile.source}: precision: fp16 with compile: true is not supported on the CPU; "
                            "use bf16 or compile: false")

    def prepare(self, artifact: Artifact) -> TorchPrepared:
        path = program_path(artifact)
        p = self.profile
        return TorchPrepared(load_module(path, p.device, p.precision, p.compile), p.device, p.precision)

    def time(self, artifact: Artifact, query: Feeds | None, settings: MeasureSettings | None = None) -> Timing:
        if query is None:
            raise UserError(f"{artifact.path}: the torch backend times a task's query; it cannot shape one itself")
        settings = settings or self.profile.measure
        p = self.profile
        with tempfile.TemporaryDirectory(prefix="compsearch-torch-") as tmp:
            request = {"program": str(program_path(artifact)), "feeds": str(save_feeds(query, Path(tmp))),
                       "device": p.device, "precision": p.precision, "compile": p.compile, "threads": p.threads,
                       "settings": asdict(settings), "lock": str(lock_path()) if lock_path() else None}
            req = Path(tmp) / "request.json"
            req.write_text(json.dumps(request))
            return median_of_processes(lambda: timing_from_json(
                run_child(["-m", "hardware.torch_backend", str(req)], p.threads, child_timeout_s(settings))),
                settings.processes)

    def measure(self, artifact: Artifact, evaluate: Callable[[Callable[[Feeds], np.ndarray]], float],
                query: Feeds) -> Measurement:
        with compute_slot():
            prepared = self.prepare(artifact)
            quality = float(evaluate(prepared.run))
        del prepared
        timing = self.time(artifact, query)
        path = program_path(artifact)
        env = {**environment(), **timing.environment,
               "quality_from": f"torch {self.profile.device} {self.profile.precision}",
               "measures": "torch-stage model (model.pt2): ONNX-stage quantization not applied"}
        return Measurement(
            profile=self.profile.name, quality=quality, latency=timing.latency, bytes=path.stat().st_size,
            bytes_compressed=compressed_bytes(path), session_init_s=timing.session_init_s,
            first_run_ms=timing.first_run_ms, environment=env, peak_rss_mb=timing.peak_rss_mb, host=timing.host)


def _child(request: dict[str, Any]) -> dict[str, Any]:
    """Runs in the fresh measuring process."""
    threads = int(request["threads"])
    if threads > 0:
        torch.set_num_threads(threads)
    device = request["device"]
    cuda = device == "cuda"
    t0 = time.perf_counter()
    module = load_module(Path(request["program"]), device, request["precision"], request["compile"])
    if cuda:
        torch.cuda.synchronize()
    session_init_s = time.perf_counter() - t0
    with np.load(request["feeds"]) as data:
        prepared = TorchPrepared(module, device, request["precision"])
        inputs = prepared.tensors({k: data[k] for k in data.files})

    @torch.no_grad()
    def run_once() -> None:
        module(*inputs)
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    run_once()  # with compile: tracing and code generation happen here
    first_run_ms = (time.perf_counter() - t0) * 1e3
    timed = agent.measure_loop(run_once, request["settings"], threads, request["lock"], cpu_bound=not cuda)
    env = {**agent.base_environment(), "torch": torch.__version__, "provider": f"torch-{device}",
           "precision": request["precision"], "compile": str(request["compile"]).lower(),
           "threads": str(torch.get_num_threads())}
    if cuda:
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
        timed["host"]["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {"pid": os.getpid(), "session_init_s": session_init_s, "first_run_ms": first_run_ms, **timed,
            "peak_rss_mb": agent.peak_rss_mb(), "environment": env}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time a torch.export program in this process (internal).")
    parser.add_argument("request")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        result, status = _child(json.loads(Path(args.request).read_text())), 0
    except Exception as exc:  # noqa: BLE001 - the parent reads one JSON object
        first = (str(exc).strip().splitlines() or [""])[0]
        result, status = {"error": f"{type(exc).__name__}: {first}"}, 1
    Path(args.out).write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main())
