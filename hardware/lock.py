"""The host-wide measurement lock.

Timing taken while anything else computes on the host is wrong, and not only in absolute
terms (ratios between candidates flip). Two sides share one lock file per host:

- a measurement holds it exclusively around warm-up and timing (`measurement_lock`; the
  measuring process in `hardware.agent` takes it itself);
- compression work (building an artifact, evaluating quality) holds it shared
  (`compute_slot`), so any number of workers compress in parallel, but a measurement
  waits for the running slots to end and no new slot starts until it is done.

A turnstile file gives the waiting measurement priority over new slots (flock has no
writer preference). Long compression work (distillation, fine-tuning: minutes) calls
`let_measurements_through()` between batches, so a waiting timing runs then instead of
after the whole build. Locks die with their holder, so a killed worker never wedges the host.
The lock lives in a private folder of the user (`user_lock_dir`), is opened without following
links, and is created 0600. `COMPSEARCH_MEASURE_LOCK` names another lock file (a path that
every worker of one user shares is the point); `none` turns locking off (for comparisons).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hardware import agent


def user_lock_dir() -> Path:
    """A folder for this user's lock files: `$XDG_RUNTIME_DIR/compsearch`, else `TMP/compsearch-UID`.

    Never a fixed name in the shared temp folder: another user could hold it (blocking every
    search here) or plant a link there. The folder is made 0700 and refused unless it is a real
    folder owned by this user that nobody else can write."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    uid = os.getuid()
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == uid:
        path = Path(runtime) / "compsearch"
    else:
        path = Path(tempfile.gettempdir()) / f"compsearch-{uid}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise RuntimeError(f"cannot make the lock folder {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        raise RuntimeError(f"the lock folder {path} is not a private folder of this user (a link, another "
                           "owner, or writable by others); remove it, or set COMPSEARCH_MEASURE_LOCK")
    return path


def lock_path() -> Path | None:
    value = os.environ.get("COMPSEARCH_MEASURE_LOCK")
    if value is None:
        return user_lock_dir() / "measure.lock"
    return None if value.lower() == "none" else Path(value)


@contextlib.contextmanager
def measurement_lock() -> Iterator[None]:
    """Exclusive: nothing else of ours computes or times on this host meanwhile."""
    path = lock_path()
    with agent.measurement_lock(str(path) if path else None):
        yield


_slot_depth = 0  # compute slots this process holds (nested ones share the outer lock)
_slot_files: tuple = ()  # (turnstile, main) files of the outermost slot, while it is held


def holding_compute_slot() -> bool:
    return _slot_depth > 0


@contextlib.contextmanager
def compute_slot() -> Iterator[None]:
    """Shared: compression work runs beside other compression work, never beside timing.

    Re-entrant within a process; a timing started while this process holds a slot would wait
    for itself, so `hardware.isolated` refuses it (see `holding_compute_slot`).
    """
    global _slot_depth
    path = lock_path()
    if path is None or _slot_depth:
        _slot_depth += 1
        try:
            yield
        finally:
            _slot_depth -= 1
        return
    global _slot_files
    with agent.open_lock_file(str(path) + ".turn") as turn, agent.open_lock_file(str(path)) as main:
        _enter_slot(turn, main)
        _slot_depth += 1
        _slot_files = (turn, main)
        try:
            yield
        finally:
            _slot_depth -= 1
            _slot_files = ()
            fcntl.flock(main, fcntl.LOCK_UN)


def _enter_slot(turn, main) -> None:
    fcntl.flock(turn, fcntl.LOCK_EX)  # wait behind a measurement that is waiting or running
    fcntl.flock(turn, fcntl.LOCK_UN)
    fcntl.flock(main, fcntl.LOCK_SH)


def let_measurements_through() -> None:
    """Inside a compute slot: if a measurement waits, step out until it is done, then go on.

    A measurement holds the turnstile from the moment it asks until it finishes, so taking the
    turnstile here returns at once when none waits and blocks exactly while one runs."""
    if not _slot_files:
        return
    turn, main = _slot_files
    fcntl.flock(main, fcntl.LOCK_UN)
    _enter_slot(turn, main)
