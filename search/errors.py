"""Errors a user can fix. The CLI catches `UserError`, prints it as one line and exits with status 2.

They live in `hardware.errors` (the package both `search` and `hardware` import, so that
`hardware/` never imports `search`); this module is where the search side imports them from.
"""

from hardware.errors import (
    ECHO_MAX,
    SpaceError,
    UserError,
    allowed_list,
    did_you_mean,
    one_of,
    short_repr,
    unknown_key,
)

__all__ = ["ECHO_MAX", "SpaceError", "UserError", "allowed_list", "did_you_mean", "one_of", "short_repr", "unknown_key"]
