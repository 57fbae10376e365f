"""Surviving crashes: stale trials, exactly-once retries, heartbeats and the budget lock.

A trial whose worker died stays RUNNING in the storage. A worker on the same host is
recognised at once (its pid is gone); a worker on another machine through Optuna's
heartbeat (RDB storages). Either way the trial is marked failed with a reason and its
recipe is enqueued again, once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_alive(worker: str) -> bool:
    """Whether the worker that ran a trial may still log it itself. Workers on other hosts are
    assumed alive (their trials are theirs to log); on this host the pid tells."""
    host, _, pid = worker.rpartition(":")
    if not pid.isdigit():
        return False
    return host != HOST or (int(pid) != os.getpid() and _pid_alive(int(pid)))


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue `trial`'s recipe again, unless it already is a retry (retry once, never loop)."""
    if trial.user_attrs.get("retry_of") is not None:
        return
    attrs: dict[str, object] = {"retry_of": trial.number}
    if trial.user_attrs.get("baseline"):
        attrs["baseline"] = True
    for key in ("variant_of", "longer_of", "pushed_from", "stepped_back_from"):  # still a follow-up (reuse.py, push.py)
        if trial.user_attrs.get(key) is not None:
            attrs[key] = trial.user_attrs[key]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)


def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback: the trial was already failed by the storage; retry it."""
    retry_trial(study, trial)


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Fail and retry RUNNING trials whose worker is gone; returns their numbers."""
    storage = study._storage  # noqa: SLF001 - Optuna exposes trial state changes only on the storage
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host != HOST or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "failure_reason",  # noqa: SLF001
                                        f"interrupted: its worker {host}:{pid} died mid-trial; retried once")
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):  # noqa: SLF001
                recovered.append(t.number)
                retry_trial(study, t)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker recovered it first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other machines: by heartbeat, RDB storages only
    return recovered


class _Heartbeat:
    def __init__(self, storage: Any, trial_id: int):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if storage is not None:
            interval = storage.get_heartbeat_interval() or 30
            self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval), daemon=True)
            self._thread.start()

    def _beat(self, storage: Any, trial_id: int, interval: int) -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def start_heartbeat(study: optuna.Study, trial: optuna.Trial) -> _Heartbeat:
    storage = study._storage  # noqa: SLF001
    # Duck-typed: Optuna keeps its heartbeat base class private (RDBStorage has one).
    enabled = hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() is not None
    return _Heartbeat(storage if enabled else None, trial._trial_id)  # noqa: SLF001


@lru_cache(maxsize=4)
def _pg_engine(url: str):  # noqa: ANN202 - a SQLAlchemy engine
    import sqlalchemy

    return sqlalchemy.create_engine(url, pool_pre_ping=True)


@contextlib.contextmanager
def budget_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """Held while a worker counts the study's trials and asks for a new one, so that workers on
    every machine together start exactly the budget. PostgreSQL: an advisory lock; anything
    else is single-host: a file lock."""
    key = int.from_bytes(hashlib.sha256(f"compsearch:{study_name}".encode()).digest()[:8], "big", signed=True)
    if storage_url.startswith("postgresql"):
        import sqlalchemy

        with _pg_engine(storage_url).connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    from hardware.agent import open_lock_file
    from hardware.lock import user_lock_dir

    digest = hashlib.sha256(f"{storage_url}|{study_name}".encode()).hexdigest()[:16]
    path = user_lock_dir() / f"budget-{digest}.lock"  # private to the user, never a link
    with open_lock_file(str(path)) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
