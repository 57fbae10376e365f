"""Before a run writes anything: can it write its results, reach its storage and its tracking store?

Each check is quick (a server gets TIMEOUT_S to answer) and fails with one line naming the
flag that is wrong, so a mistyped `--tracking-uri http://...` stops at once instead of after
a created study and minutes of retries, a read-only `--results-dir` is named as such, and an
empty (0-byte) `optuna.db`, which Optuna would silently take for a new store, is refused.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from search.errors import UserError

TIMEOUT_S = 5.0
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(path: Path, flag: str, what: str) -> None:
    """`path` is (or can be created as) a folder this process may write in."""
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise UserError(f"{flag}: cannot create {what} {path}: {base} is not a directory")
    # access(2) also answers EROFS for a read-only file system, even for root.
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: {what} {path} is not writable ({base}: permission denied or read-only file system)")


def check_results_dir(results_dir: Path) -> None:
    _writable_dir(results_dir, "--results-dir", "the results directory")


def check_sqlite_file(path: Path, flag: str, what: str, *, for_writing: bool = True) -> None:
    """An existing file must be a SQLite database with content; a new one must be creatable."""
    if path.exists():
        if not path.is_file():
            raise UserError(f"{flag}: {path} is not a file")
        if path.stat().st_size == 0:
            raise UserError(f"{flag}: {path} is empty (0 bytes), not {what}; an empty file would silently start "
                            f"over: restore it, or remove it to start afresh")
        with open(path, "rb") as fh:
            if fh.read(16) != _SQLITE_MAGIC:
                raise UserError(f"{flag}: {path} is not a SQLite database ({what} expected)")
        if for_writing and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)):
            raise UserError(f"{flag}: {path} is not writable (SQLite also needs to write beside it, in "
                            f"{path.parent})")
    elif for_writing:
        _writable_dir(path.parent, flag, f"the folder of {path.name}")


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a database URL; nothing to hide
        return url


def _check_database(url: str, flag: str) -> None:
    import sqlalchemy

    shown = _hide_password(url)
    kind = url.split(":", 1)[0].split("+", 1)[0]
    args = {"connect_timeout": int(TIMEOUT_S)} if kind in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
    except Exception as exc:  # noqa: BLE001 - a malformed URL or a missing driver
        raise UserError(f"{flag} {shown}: cannot open ({type(exc).__name__}: {_first_line(exc)})") from None
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, no such database, bad password
        line = _first_line(getattr(exc, "orig", None) or exc)
        hint = ""
        if "does not exist" in line and kind == "postgresql":
            hint = "; create it first (see the README: createdb NAME, or CREATE DATABASE NAME in psql)"
        raise UserError(f"{flag} {shown}: cannot connect within {TIMEOUT_S:.0f} s ({line}){hint}") from None
    finally:
        engine.dispose()


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def check_storage(url: str) -> None:
    """The Optuna storage URL: SQLite or journal file usable, database server answering."""
    from search.storage import scheme

    kind = scheme(url)
    if kind == "sqlite":
        path = url.removeprefix("sqlite:///")
        if path and path != url and path != ":memory:":
            check_sqlite_file(Path(path), "--storage", "an Optuna database")
    elif kind == "journal":
        path = Path(url.split(":", 1)[1].removeprefix("//"))
        if path.exists() and not path.is_file():
            raise UserError(f"--storage {url}: {path} is not a file")
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(f"--storage {url}: {path} is not writable")
        if not path.exists():
            _writable_dir(path.parent, "--storage", f"the folder of {path.name}")
    elif kind in ("postgresql", "mysql"):
        _check_database(url, "--storage")


def check_tracking(uri: str) -> None:
    """The MLflow tracking URI: a local store usable, a server or database answering quickly."""
    kind = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if kind == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if path and path != uri:
            check_sqlite_file(Path(path), "--tracking-uri", "an MLflow database")
    elif kind in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:  # noqa: S310 - the user's own server
                if resp.status != 200:
                    raise UserError(f"--tracking-uri {uri}: {url} answered HTTP {resp.status}, not an MLflow server")
        except urllib.error.HTTPError as exc:
            raise UserError(f"--tracking-uri {uri}: {url} answered HTTP {exc.code}; is this an MLflow "
                            "server?") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"--tracking-uri {uri}: no MLflow server answered within {TIMEOUT_S:.0f} s "
                            f"({_first_line(reason)})") from None
    elif kind in ("postgresql", "mysql", "mssql"):
        _check_database(uri, "--tracking-uri")
    elif kind == "file" or "://" not in uri:
        path = Path(uri.removeprefix("file://")) if kind == "file" else Path(uri)
        _writable_dir(path, "--tracking-uri", "the MLflow store")


def check_run(results_dir: Path, storage: str, tracking_uri: str) -> None:
    """Everything `compsearch run` needs, checked in the order a user would fix it."""
    check_results_dir(results_dir)
    check_storage(storage)
    check_tracking(tracking_uri)
