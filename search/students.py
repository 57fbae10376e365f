"""The student cache: trained fp32 students on disk, keyed by what made them.

A recipe's student prefix (the techniques marked `student`: structural cuts, distillation;
`compress.split_recipe`) produces a trained fp32 model that depends only on that prefix, the
task, the model it started from and the seed. Training it is most of a trial's cost (minutes
for MiniLM); quantizing it is seconds. So the first trial with a prefix builds the student and
stores it here, and every later trial with the same prefix (differing only in quantization,
sharing, ...) loads it instead of training again.

Layout, under RESULTS_DIR/cache/students/ (shared by every worker and machine that shares the
results directory):

    <key>/model.pt     the student module (torch.save of the whole module: pruning changes shapes)
    <key>/meta.json    the state beside it (notes, keep_zeros, changed), who built it and when
    locks/<key>.lock   flock: a builder holds it exclusively, a reader shared, eviction skips held ones

An entry appears whole or not at all: it is written into a temporary folder and renamed into
place (os.replace) while the builder holds the key's lock, so a second worker asking for the
same key waits for the first instead of training it twice, then reads the finished entry.
The cache is bounded (least recently used entries go first) by COMPSEARCH_STUDENT_CACHE
(a size such as 20GiB, the default; `off` disables the cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from search.errors import UserError
from search.units import parse_size

if TYPE_CHECKING:
    from search.recipe import Recipe
    from search.tasks.base import Task
    from search.techniques import CompressionState

ENV = "COMPSEARCH_STUDENT_CACHE"
DEFAULT_CAP = 20 * 2**30
MODEL_FILE, META_FILE = "model.pt", "meta.json"


def cache_cap() -> int | None:
    """The cache's size bound in bytes from COMPSEARCH_STUDENT_CACHE, or None when it is off."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_CAP
    if raw.lower() in ("off", "0", "none"):
        return None
    try:
        return parse_size(raw)
    except ValueError as exc:
        raise UserError(f"environment variable {ENV}: {exc}; or 'off' to disable the student cache") from None


def model_identity(model: nn.Module) -> str:
    """A hash of the model's class and every parameter and buffer: two tasks building different
    weights (another checkpoint, other training options) never share a student."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def student_key(task: Task, model_id: str, prefix: Recipe, seed: int) -> str:
    """The cache key of a student: task name and options, the starting model, the student prefix
    and the seed. Every task option is in it (a changed training text changes the student); a
    later stage (quantization, sharing) is not, so trials that differ only there share it."""
    blob = json.dumps({"task": task.name, "options": task.options, "model": model_id,
                       "prefix": prefix.to_dict(), "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@contextlib.contextmanager
def key_lock(folder: Path, key: str, shared: bool, wait: bool = True) -> Iterator[bool]:
    """flock on folder/locks/<key>.lock: exclusive for whoever writes the entry, shared for readers.
    Yields whether it is held (always True when `wait`). A lock dies with its process."""
    (folder / "locks").mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "locks" / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


@dataclass(frozen=True)
class StudentRecord:
    """What a trial records about its student: `cached` is 'hit' or 'miss', `built_by` the trial
    (study/trial-N) whose run trained it."""

    key: str
    cached: str
    built_by: str | None
    seconds: float  # building it (a miss) or loading it (a hit)

    def as_attrs(self) -> dict[str, Any]:
        return {"student_key": self.key, "student_cached": self.cached, "student_from": self.built_by,
                "student_seconds": round(self.seconds, 2)}


class StudentCache:
    def __init__(self, root: Path, cap_bytes: int | None = DEFAULT_CAP):
        self.root, self.cap = root, cap_bytes
        self._ids: dict[int, str] = {}  # id(model) -> identity: the task's model is hashed once per process

    def identity(self, model: nn.Module) -> str:
        if id(model) not in self._ids:
            self._ids[id(model)] = model_identity(model)
        return self._ids[id(model)]

    def _lock(self, key: str, shared: bool, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        return key_lock(self.root, key, shared, wait)

    def _load(self, key: str, state: CompressionState) -> dict[str, Any] | None:
        entry = self.root / key
        try:
            meta = json.loads((entry / META_FILE).read_text())
            model = torch.load(entry / MODEL_FILE, weights_only=False, map_location="cpu")
        except FileNotFoundError:
            return None
        os.utime(entry)  # least recently used goes first
        state.model = model.eval()
        state.notes = meta["notes"]
        state.keep_zeros = bool(meta["keep_zeros"])
        state.changed = bool(meta["changed"])
        return meta

    def _store(self, key: str, state: CompressionState, built_by: str | None, prefix: Recipe) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        try:
            try:
                torch.save(state.model, tmp / MODEL_FILE)
            except (pickle.PicklingError, AttributeError, TypeError):
                return  # a module that cannot be pickled (a local class, a lambda hook) is simply not cached
            meta = {"key": key, "built_by": built_by, "built_at": time.time(), "prefix": prefix.to_dict(),
                    "notes": state.notes, "keep_zeros": state.keep_zeros, "changed": state.changed}
            (tmp / META_FILE).write_text(json.dumps(meta, default=str))
            os.replace(tmp, self.root / key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # left only when something failed

    def obtain(self, key: str, fresh: Callable[[], CompressionState], build: Callable[[CompressionState], None],
               prefix: Recipe, built_by: str | None) -> tuple[CompressionState, StudentRecord]:
        """The student for `key`: loaded into `fresh()`'s state when cached, else built by `build(state)`
        (under the key's exclusive lock, so nobody builds it twice) and stored."""
        started = time.monotonic()
        state = fresh()
        with self._lock(key, shared=True):
            meta = self._load(key, state)
        if meta is None:
            with self._lock(key, shared=False):
                meta = self._load(key, state)  # another worker built it while we waited
                if meta is None:
                    build(state)
                    self._store(key, state, built_by, prefix)
                    self.evict(keep=key)
                    return state, StudentRecord(key, "miss", built_by, time.monotonic() - started)
        return state, StudentRecord(key, "hit", meta.get("built_by"), time.monotonic() - started)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last used, bytes, folder) of every finished entry, oldest first."""
        out = []
        for entry in self.root.iterdir() if self.root.is_dir() else ():
            if entry.name.startswith(".") or entry.name == "locks" or not entry.is_dir():
                continue
            try:
                size = sum(f.stat().st_size for f in entry.iterdir())
                out.append((entry.stat().st_mtime, size, entry))
            except FileNotFoundError:  # evicted meanwhile by another worker
                continue
        return sorted(out)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits its bound; never `keep`, never one a
        worker is reading or building (its lock is held). Returns the keys removed."""
        if self.cap is None:
            return []
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, entry in entries:
            if total <= self.cap:
                break
            if entry.name == keep:
                continue
            with self._lock(entry.name, shared=False, wait=False) as held:
                if not held:
                    continue
                trash = self.root / f".evict-{entry.name}-{os.getpid()}"
                os.replace(entry, trash)  # gone for readers at once; the slow delete follows
                shutil.rmtree(trash, ignore_errors=True)
            total -= size
            removed.append(entry.name)
        return removed


def obtain_student(model: nn.Module, recipe: Recipe, task: Task, seed: int, cache: StudentCache | None,
                   built_by: str | None = None) -> tuple[CompressionState, StudentRecord | None]:
    """The state a trial's `finish` starts from: its student prefix trained, or loaded from `cache`.
    A recipe without student steps has nothing to cache (record None): the task's model is the start."""
    from search.compress import split_recipe, student_state, train_student

    prefix, _ = split_recipe(recipe)
    if cache is None or not prefix.steps:
        started = time.monotonic()
        state = student_state(model, task, seed)
        train_student(state, prefix)
        if not prefix.steps:
            return state, None
        return state, StudentRecord(student_key(task, "", prefix, seed), "off", None, time.monotonic() - started)
    key = student_key(task, cache.identity(model), prefix, seed)
    return cache.obtain(key, lambda: student_state(model, task, seed), lambda s: train_student(s, prefix), prefix,
                        built_by)


def open_cache(results_dir: Path) -> StudentCache | None:
    """The study's student cache under `results_dir`, or None when COMPSEARCH_STUDENT_CACHE is off."""
    cap = cache_cap()
    return None if cap is None else StudentCache(results_dir / "cache" / "students", cap)
