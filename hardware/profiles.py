"""Hardware profiles (YAML in hardware/profiles/) and the lazy backend registry."""

from __future__ import annotations

import importlib
from dataclasses import fields
from pathlib import Path

import yaml

from hardware.base import Backend, MeasureSettings, Profile
from search.errors import SpaceError, UserError, allowed_list, did_you_mean, one_of, unknown_key

PROFILE_DIR = Path(__file__).parent / "profiles"

# backend name -> "module:Class", imported only when a profile needs it.
BACKENDS = {"onnxruntime": "hardware.ort:OrtBackend"}

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


def available_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.yaml"))}


def load_profile(name: str, *, where: str = "", key: str = "hardware.profiles") -> Profile:
    """Load and validate the profile called `name`; `where`/`key` say who asked, for errors."""
    profiles = available_profiles()
    if name not in profiles:
        raise SpaceError(where or "<profile>", key,
                         f"unknown hardware profile; allowed: {allowed_list(profiles)}{did_you_mean(name, profiles)}",
                         name)
    path = profiles[name]
    file = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(file, "", f"is not valid YAML ({exc.__class__.__name__})", None, show_given=False) from None
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
    return Profile(
        name=name, backend=backend, description=str(raw.get("description", "")),
        provider=str(raw.get("provider", "CPUExecutionProvider")), threads=int(raw.get("threads", 1)),
        batch_size=int(raw.get("batch_size", 1)), graph_optimization=opt, options=dict(raw.get("options") or {}),
        measure=MeasureSettings(**measure_raw), source=file,
    )


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
