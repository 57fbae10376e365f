"""Study names are data, folder names are not: the mapping between them, and the fence around writes.

A study name may be any Unicode text (`--study "nuit d'été"`, a space's `name:`), but it is
never used as a path: `study_folder` turns it into one safe path component (the name itself
when it is plain ASCII, else a readable slug plus a hash of the name, so two names never share
a folder). Everything compsearch writes or removes for a study goes through `inside`, which
refuses a path that would leave the results directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import unicodedata
from pathlib import Path

from search.errors import UserError, short_repr

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_NAME = 512  # Optuna's study_name column


def check_study_name(name: str, flag: str = "--study") -> str:
    """A study name must be printable text (a newline would forge log lines and break tables)."""
    if not name.strip():
        raise UserError(f"{flag} must be a non-empty name, but got {short_repr(name)}")
    if len(name) > MAX_NAME:
        raise UserError(f"{flag} must be at most {MAX_NAME} characters, but got {len(name)}")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")), None)
    if bad is not None:
        raise UserError(f"{flag} must not contain control or unassigned characters (found U+{ord(bad):04X}), "
                        f"but got {short_repr(name)}")
    return name


def study_folder(name: str) -> str:
    """One path component for `name`: itself when plain (`digits`, `nightly-2.1`), else slug + hash."""
    if _PLAIN.fullmatch(name):
        return name
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_).strip("-._")[:40].rstrip("-._")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{slug or 'study'}-{digest}"


def inside(root: Path, path: Path) -> Path:
    """`path` made absolute, refused unless it lies inside `root` (compared without following links,
    so a results folder that is itself a link to another disk still works)."""
    base = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.abspath(path))
    if os.path.commonpath([base, target]) != base:
        raise UserError(f"refusing to write {target}: it is outside the results directory {base}")
    return Path(target)


def study_dir(results_dir: Path, study: str) -> Path:
    """RESULTS_DIR/studies/FOLDER: where a study's trial folders live."""
    return inside(results_dir, Path(results_dir) / "studies" / study_folder(study))


def remove_inside(root: Path, path: Path) -> None:
    """Remove a folder compsearch made, only inside `root`; a link there is removed, never followed."""
    target = inside(root, path)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
