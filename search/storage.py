"""Optuna storages from URLs: SQLite (default), PostgreSQL/MySQL for several machines, journal files.

RDB storages get Optuna's heartbeat, so a worker that dies on another machine has its trial
failed after the grace period (and retried once, see search/recovery.py).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import optuna

from search.errors import UserError

HEARTBEAT_S = 20
GRACE_S = 90
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


def scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


def storage_takes_parallel_writers(url: str) -> bool:
    return scheme(url) in ("postgresql", "mysql", "journal")


@lru_cache(maxsize=8)
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """One storage object per URL and process (each RDB storage holds a connection pool)."""
    kind = scheme(url)
    try:
        if kind == "journal":
            from optuna.storages.journal import JournalFileBackend

            path = url.split(":", 1)[1].removeprefix("//")
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        if kind in _RDB_SCHEMES:
            from search.recovery import on_stale_trial

            engine_kwargs = {"connect_args": {"timeout": 60}} if kind == "sqlite" else {"pool_pre_ping": True}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S, heartbeat_stale_trial_callback=on_stale_trial)
    except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, a server that is down
        lines = str(exc).strip().splitlines()
        raise UserError(f"--storage {url}: cannot open ({type(exc).__name__}: {lines[0] if lines else ''})") from None
    raise UserError(f"--storage {url}: unknown scheme {kind!r}; allowed: sqlite:///PATH, postgresql://HOST/DB, "
                    f"mysql://HOST/DB, journal:PATH")
