"""Inference backends and hardware profiles: where compressed artifacts are measured.

`hardware` depends on nothing in `search`: its neutral pieces (the Artifact a backend is
handed, the errors a user can fix, the schema every YAML input is checked with) are
imported by `search` from here.
"""

from hardware.artifact import Artifact
from hardware.base import Backend, LatencyStats, Measurement, MeasureSettings, Prepared, Profile, Timing
from hardware.errors import SpaceError, UserError
from hardware.profiles import available_profiles, load_profile, make_backend
from hardware.schema import Rule

__all__ = ["Artifact", "Backend", "LatencyStats", "MeasureSettings", "Measurement", "Prepared", "Profile", "Rule",
           "SpaceError", "Timing", "UserError", "available_profiles", "load_profile", "make_backend"]
