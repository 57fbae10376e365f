"""Inference backends and hardware profiles: where compressed artifacts are measured."""

from hardware.base import Backend, LatencyStats, Measurement, MeasureSettings, Profile, Timing
from hardware.profiles import available_profiles, load_profile, make_backend

__all__ = ["Backend", "LatencyStats", "MeasureSettings", "Measurement", "Profile", "Timing",
           "available_profiles", "load_profile", "make_backend"]
