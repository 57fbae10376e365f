"""Hardware profiles (YAML in hardware/profiles/) and the lazy backend registry."""

from __future__ import annotations

import importlib
import os
from dataclasses import fields
from pathlib import Path

from hardware.base import Backend, MeasureSettings, Profile
from search.errors import SpaceError, UserError, allowed_list, did_you_mean, one_of, unknown_key
from search.safe_yaml import load_file

PROFILE_DIR = Path(__file__).parent / "profiles"

# backend name -> "module:Class", imported only when a profile needs it.
BACKENDS = {
    "onnxruntime": "hardware.ort:OrtBackend",
    "torch": "hardware.torch_backend:TorchBackend",
    "estimate": "hardware.estimate:EstimateBackend",
}

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")


def profile_dirs() -> list[Path]:
    """Directories searched for profiles: COMPSEARCH_PROFILE_PATH (os.pathsep-separated, first wins),
    then the built-in hardware/profiles/. Users add their own targets without editing the package."""
    extra = [Path(p) for p in os.environ.get("COMPSEARCH_PROFILE_PATH", "").split(os.pathsep) if p]
    return [*extra, PROFILE_DIR]


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in profile_dirs():
        for p in sorted(directory.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return dict(sorted(found.items()))


def load_profile(name: str, *, where: str = "", key: str = "hardware.profiles", check: bool = True) -> Profile:
    """Load and validate the profile called `name`; `where`/`key` say who asked, for errors.

    With `check`, also ask its backend whether it can run here (imports that runtime), so
    `compsearch validate` rejects a CUDA profile on a CPU-only install with one line.
    """
    profiles = available_profiles()
    if name not in profiles:
        raise SpaceError(where or "<profile>", key,
                         f"unknown hardware profile; allowed: {allowed_list(profiles)}{did_you_mean(name, profiles)}",
                         name)
    path = profiles[name]
    file = str(path)
    raw = load_file(path, "profile file")  # the same guarded YAML reading as a space
    if not isinstance(raw, dict):
        raise SpaceError(file, "", "must be a mapping", raw)
    allowed = {f.name for f in fields(Profile)} - {"source"}
    for k in raw:
        if k not in allowed:
            raise SpaceError(file, k, unknown_key(sorted(allowed)) + did_you_mean(k, allowed), k)
    if raw.get("name") != name:
        raise SpaceError(file, "name", f"must equal the file name {name!r}", raw.get("name"))
    backend = raw.get("backend")
    if backend not in BACKENDS:
        raise SpaceError(file, "backend", one_of(BACKENDS, backend), backend)
    for k in ("threads", "batch_size"):
        v = raw.get(k, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (k == "batch_size" and v < 1):
            rule = "must be a positive integer" + (" (0 = runtime default)" if k == "threads" else "")
            raise SpaceError(file, k, rule, v)
    opt = raw.get("graph_optimization", "all")
    if opt not in GRAPH_OPTIMIZATIONS:
        raise SpaceError(file, "graph_optimization", f"must be one of {allowed_list(GRAPH_OPTIMIZATIONS)}", opt)
    measure_raw = raw.get("measure") or {}
    measure_fields = {f.name: f for f in fields(MeasureSettings)}
    for k, v in measure_raw.items():
        if k not in measure_fields:
            raise SpaceError(file, f"measure.{k}", f"unknown key; allowed: {allowed_list(measure_fields)}", k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise SpaceError(file, f"measure.{k}", "must be a number >= 0", v)
        if k == "confidence" and not 0 < v < 1:
            raise SpaceError(file, "measure.confidence", "must be between 0 and 1 (e.g. 0.95)", v)
        if k in ("max_attempts", "remeasure_factor", "processes") and v < 1:
            raise SpaceError(file, f"measure.{k}", "must be >= 1", v)
    device, precision = raw.get("device", "cpu"), raw.get("precision", "fp32")
    if device not in DEVICES:
        raise SpaceError(file, "device", one_of(DEVICES, device), device)
    if precision not in PRECISIONS:
        raise SpaceError(file, "precision", one_of(PRECISIONS, precision), precision)
    if not isinstance(raw.get("compile", False), bool):
        raise SpaceError(file, "compile", "must be true or false", raw.get("compile"))
    seq = raw.get("sequence_length", 0)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise SpaceError(file, "sequence_length", "must be an integer >= 0 (0: not applicable)", seq)
    for k in ("options", "spec"):
        if not isinstance(raw.get(k) or {}, dict):
            raise SpaceError(file, k, "must be a mapping", raw.get(k))
    profile = Profile(
        name=name, backend=backend, description=str(raw.get("description", "")),
        provider=str(raw.get("provider", "CPUExecutionProvider")), threads=int(raw.get("threads", 1)),
        batch_size=int(raw.get("batch_size", 1)), graph_optimization=opt, options=dict(raw.get("options") or {}),
        measure=MeasureSettings(**{k: type(measure_fields[k].default)(v) for k, v in measure_raw.items()}),
        source=file, device=device, precision=precision,
        compile=bool(raw.get("compile", False)), sequence_length=seq, spec=dict(raw.get("spec") or {}),
    )
    if check:
        try:
            backend_class(profile).check_available(profile)
        except UserError as exc:
            if not where:
                raise
            raise UserError(f"{where}: {key}: {exc}") from None  # who asked for it, then why it cannot run
    return profile


def backend_class(profile: Profile) -> type[Backend]:
    module_name, _, cls_name = BACKENDS[profile.backend].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{profile.source}: backend {profile.backend!r} cannot be imported ({exc}); "
                        f"install its package") from None
    return getattr(module, cls_name)


def make_backend(profile: Profile) -> Backend:
    cls = backend_class(profile)
    cls.check_available(profile)
    return cls(profile)
