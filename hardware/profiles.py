"""Hardware profiles (YAML in hardware/profiles/) and the lazy backend registry."""

from __future__ import annotations

import importlib
import os
from dataclasses import fields
from pathlib import Path

from hardware.base import Backend, MeasureSettings, Profile
from hardware.errors import SpaceError, UserError, allowed_list, did_you_mean
from hardware.safe_yaml import load_file
from hardware.schema import Rule, validate

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


def _measure_schema() -> dict[str, Rule]:
    d = MeasureSettings()
    help_ = {
        "warmup_s": "untimed warm-up, seconds (at least)", "warmup_queries": "untimed warm-up queries (at least)",
        "min_queries": "timed queries, at least", "min_duration_s": "timed seconds, at least",
        "max_duration_s": "stop timing after this long even below min_queries",
        "max_attempts": "timings taken at most when other processes use the CPU (contended)",
        "max_other_cpu": "cores other processes may use before a timing counts as contended",
        "retry_wait_s": "pause before timing a contended figure again",
        "confidence": "of the median's confidence interval (order statistics)",
        "remeasure_factor": "contested Pareto candidates are timed again up to this many times longer at the end of "
                            "a study (lowered, down to 2, to fit a third of the search time)",
        "processes": "fresh processes per figure; the one with the median p50 is kept",
    }
    out = {}
    for f in fields(MeasureSettings):
        default = getattr(d, f.name)
        kind = "int" if isinstance(default, int) else "float"
        if f.name == "confidence":
            out[f.name] = Rule("float", default=default, minimum=0, maximum=1, min_exclusive=True,
                               max_exclusive=True, text="a number between 0 and 1 (e.g. 0.95)", help=help_[f.name])
        else:
            low = 1 if f.name in ("max_attempts", "remeasure_factor", "processes") else 0
            out[f.name] = Rule(kind, default=default, minimum=low, help=help_[f.name])
    return out


PROFILE_SCHEMA: dict[str, Rule] = {
    "name": Rule("str", help="the profile's name: the file name without .yaml"),
    "backend": Rule("str", choices=tuple(BACKENDS), help="the runtime that measures"),
    "description": Rule("str", default="", help="what the target is, for reports"),
    "provider": Rule("str", default="CPUExecutionProvider", help="onnxruntime: the execution provider"),
    "options": Rule("mapping", default={}, help="onnxruntime: provider options, passed as they are"),
    "threads": Rule("int", default=1, minimum=0, text="an integer >= 0 (0 = runtime default)",
                    help="intra-op threads"),
    "batch_size": Rule("int", default=1, minimum=1, help="samples per timed query"),
    "graph_optimization": Rule("str", default="all", choices=GRAPH_OPTIMIZATIONS,
                               help="onnxruntime: graph optimisation level"),
    "measure": Rule("mapping", fields=_measure_schema(), help="the single-stream timing protocol"),
    "device": Rule("str", default="cpu", choices=DEVICES, help="torch: the device"),
    "precision": Rule("str", default="fp32", choices=PRECISIONS, help="torch: the module's dtype"),
    "compile": Rule("bool", default=False, help="torch: torch.compile the module before timing"),
    "sequence_length": Rule("int", default=0, minimum=0, text="an integer >= 0 (0: not applicable)",
                            help="length of dynamic non-batch input dimensions"),
    "spec": Rule("mapping", default={}, help="estimate: the target's peak numbers (see hardware/estimate.py)"),
}


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
    values = validate(file, "", PROFILE_SCHEMA, raw)
    if values["name"] != name:
        raise SpaceError(file, "name", f"must equal the file name {name!r}", values["name"])
    profile = Profile(**{**values, "measure": MeasureSettings(**values["measure"]), "source": file})
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
