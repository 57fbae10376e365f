"""Trial isolation: recipes are evaluated in a child process with a time and memory limit.

One child serves trials one after another (importing torch and warming up the exporter once,
not per trial) and is replaced whenever a trial takes it down: a crash of the interpreter, a
memory limit exceeded, or a time limit passed. The parent records which of these happened,
so a failed trial says why, and the study goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from search.space import SearchSpace

_POLL_S = 0.1


class TrialFailure(Exception):
    """A trial failed; the message is the reason recorded on the trial."""


def _rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (the measuring process is one)."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _serve(space: SearchSpace, cache_dir: str, conn: Connection) -> None:
    # Ctrl-C reaches the whole process group; the parent decides what an interrupt means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from search.evaluate import evaluate_recipe, evaluate_report_split
    from search.recipe import Recipe
    from search.students import open_cache
    from search.tasks import TASKS
    from search.tasks.loader import resolve_task

    task = resolve_task(space.task_name, space.file, TASKS)(space.task_options, Path(cache_dir))
    model = task.build_model()
    # cache_dir is RESULTS_DIR/cache/models: the students live beside the task's models.
    students = open_cache(Path(cache_dir).parent.parent)
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        if message[0] == "report":  # the report split of a finished trial's artifact (study/report_split.py)
            try:
                conn.send(("ok", evaluate_report_split(space, task, Path(message[1]))))
            except Exception as exc:  # noqa: BLE001 - the reason is recorded, the study goes on
                conn.send(("error", f"{type(exc).__name__}: {str(exc).strip()[:300]}"))
            continue
        try:
            if message[0] == "sensitivity":
                from search.sensitivity import study_sensitivity

                result = study_sensitivity(space, task, model, Path(cache_dir).parent.parent,
                                           students.identity(model) if students else None)
            elif message[0] == "probe":  # ("probe", recipe, workdir, baseline artifact dir)
                from search.standard_probe import time_beside_baseline

                result = time_beside_baseline(space, task, model, message[1], Path(message[2]), Path(message[3]))
            else:
                # ("eval", recipe, workdir, rejection spec): search/rejection.py, None = no proxy
                _, recipe_json, workdir, rejection = message
                result = evaluate_recipe(space, task, model, Recipe.from_json(recipe_json), Path(workdir),
                                         students, rejection)
            conn.send(("ok", result))
        except MemoryError:
            conn.send(("error", "out of memory: MemoryError while evaluating the trial"))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the trial's recorded reason
            lines = str(exc).strip().splitlines()
            conn.send(("error", f"{type(exc).__name__}: {lines[0] if lines else ''}"[:500]))


class TrialRunner:
    def __init__(self, space: SearchSpace, cache_dir: Path, timeout_s: float | None, memory_bytes: int | None):
        self.space, self.cache_dir = space, cache_dir
        self.timeout_s, self.memory_bytes = timeout_s, memory_bytes
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that has run torch
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(self.space, str(self.cache_dir), child), daemon=True,
                                 name="compsearch-trial")
        self._proc.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc, self._conn = None, None

    def evaluate(self, recipe_json: str, workdir: Path, rejection: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate one recipe; raise TrialFailure with the reason if it fails in any way.

        `rejection`: the early-rejection spec (search/rejection.py; {} scores the proxy only, None skips it);
        a rejected trial's result holds "rejected" (the reason) and no "values"."""
        return self._ask(("eval", recipe_json, str(workdir), rejection))

    def sensitivity(self) -> dict[str, Any]:
        """The space's per-layer sensitivity table (search/sensitivity.py), measured in the trial process
        (which holds the model) under the same limits as a trial, or read from its cache."""
        return self._ask(("sensitivity",))

    def probe(self, recipe_json: str, workdir: Path, baseline_dir: Path) -> dict[str, Any]:
        """The standard recipe's latency beside the baseline's (search/standard_probe.py), measured in the
        trial process under the same limits as a trial; raises TrialFailure with the reason if it fails."""
        return self._ask(("probe", recipe_json, str(workdir), str(baseline_dir)))

    def evaluate_report(self, artifact_dir: Path) -> dict[str, Any] | None:
        """The report-split quality of the artifact in `artifact_dir` ({"quality", "per_file"}), or None
        when the task has none; raises TrialFailure with the reason if it fails."""
        return self._ask(("report", str(artifact_dir)))

    def _ask(self, message: tuple) -> Any:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None and self._proc is not None
        self._conn.send(message)
        started = time.monotonic()
        peak = 0
        while True:
            if self._conn.poll(_POLL_S):
                try:
                    status, payload = self._conn.recv()
                except EOFError:
                    status, payload = "died", None
                if status == "ok":
                    return payload
                if status == "error":
                    raise TrialFailure(payload)
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self._kill()
                raise TrialFailure(_death_reason(code))
            if self.memory_bytes is not None:
                peak = max(peak, _rss_bytes(self._proc.pid))
                if peak > self.memory_bytes:
                    self._kill()
                    raise TrialFailure(f"out of memory: the trial process used {peak / 2**20:.0f} MiB, over the "
                                       f"limit of {self.memory_bytes / 2**20:.0f} MiB")
            if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                self._kill()
                raise TrialFailure(f"timed out: still running after the trial time limit of {self.timeout_s:g} s")

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            try:
                self._conn.send(("stop",))
                self._proc.join(5)
            except (BrokenPipeError, OSError):
                pass
        self._kill()


def _death_reason(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return f"crashed: the trial process was killed ({name}; the kernel's OOM killer does this)"
        return f"crashed: the trial process died of signal {name}"
    return f"crashed: the trial process exited with status {code}"

