"""Errors a user can fix (bad input: a space, a flag, a profile, a missing package).

Shared by `hardware` and `search` (re-exported as `search.errors`). The CLI prints them as one line and exits
with status 2.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable

ECHO_MAX = 100  # characters of a given value an error shows: input may be huge or hostile


def short_repr(value: object) -> str:
    """repr() bounded in size and in work (an alias bomb or a megabyte string stays one short line)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxtuple, r.maxset, r.maxlevel = 80, 80, 8, 8, 8, 8, 3
    text = r.repr(value)
    return text if len(text) <= ECHO_MAX else text[:ECHO_MAX - 3] + "..."


class UserError(Exception):
    """Bad input (a space, a flag, a profile, a missing package): one line, no traceback."""


class SpaceError(UserError):
    """A problem at one key of one YAML file.

    The message names the file, the key path, what is allowed and what was given, in the
    style of Optuna's errors: state the rule, then show the values.
    """

    def __init__(self, file: str, key: str, rule: str, given: object = None, *, show_given: bool = True):
        self.file, self.key, self.rule, self.given = file, key, rule, given
        where = f"{file}: {key}" if key else file
        text = f"{where}: {rule}"
        if show_given:
            text += f", but got {short_repr(given)}"
        super().__init__(text)


def did_you_mean(given: str, allowed: Iterable[str]) -> str:
    if len(str(given)) > ECHO_MAX:  # no typo is that long, and difflib is quadratic
        return ""
    close = difflib.get_close_matches(str(given), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def allowed_list(allowed: Iterable[object]) -> str:
    return ", ".join(repr(a) if isinstance(a, str) else str(a) for a in allowed)


def one_of(allowed: Iterable[str], given: object) -> str:
    """'must be one of 'a', 'b' (did you mean 'a'?)': the usual rule for a name from a set."""
    allowed = list(allowed)
    return f"must be one of {allowed_list(allowed)}{did_you_mean(str(given), allowed)}"


def unknown_key(allowed: Iterable[str]) -> str:
    return "unknown key; " + one_of(allowed, "").replace("must be one of", "allowed:")
