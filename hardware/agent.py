"""Measuring agent: times one ONNX model on ONNX Runtime and prints one JSON object.

Self-contained on purpose (numpy, onnxruntime and the standard library; no compsearch
import), so a hardware team can copy this one file to a board and run

    python3 agent.py model.onnx --provider CPUExecutionProvider --threads 4

`compsearch bench --remote` launches it through a command template (ssh, adb, a job
submission), and the search runs this same file in a fresh local process for every
measurement, so local and remote figures come from the same code.

Protocol: session creation and the first run are timed on their own; then untimed warm-up;
then each query is timed alone until both a minimum count and a minimum duration are met.
While timing, the agent watches the host: its own CPU time against wall time, the CPU time
every other process used (from /proc/stat) and the load average. A figure taken while
others computed is marked `contended` and timed again, a bounded number of times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# Ops a GPU provider may leave on the CPU on purpose (shape arithmetic); anything else
# placed off the requested provider is a silent fallback and fails the measurement.
SHAPE_OPS = {"Shape", "Reshape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Constant", "ConstantOfShape",
             "Slice", "Range", "Expand", "Size", "Identity", "MemcpyToHost", "MemcpyFromHost"}

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


def open_lock_file(path: str):  # noqa: ANN201 - a binary file object
    """Open (or create, 0600) a lock file without following a link planted at its name."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open the lock file {path} ({exc.strerror}; a link there is "
                                 "never followed)") from None
    return os.fdopen(fd, "r+b")


@contextlib.contextmanager
def measurement_lock(path: str | None, waited: dict[str, float] | None = None) -> Iterator[None]:
    """Exclusive host lock around timing (see hardware/lock.py for the compute side).

    The turnstile gives a waiting measurement priority over new compute slots, which hold
    the main lock shared; flock locks die with their holder, so a crash never wedges a host.
    `waited`, if given, receives the seconds spent waiting for the lock (`lock_wait_s`).
    """
    if not path:
        yield
        return
    import fcntl

    start = time.perf_counter()
    with open_lock_file(path + ".turn") as turn, open_lock_file(path) as main:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(main, fcntl.LOCK_EX)
            if waited is not None:
                waited["lock_wait_s"] = waited.get("lock_wait_s", 0.0) + time.perf_counter() - start
            try:
                yield
            finally:
                fcntl.flock(main, fcntl.LOCK_UN)
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)


def median_ci(ms: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Nonparametric confidence interval of the median from order statistics.

    The number of samples below the median is Binomial(n, 1/2); with the normal approximation
    the interval is [x_(j), x_(k)], j = floor((n - z sqrt n) / 2), k = ceil(1 + (n + z sqrt n) / 2)
    (1-based), as in Le Boudec, "Performance Evaluation", and Hoefler & Belli (SC'15).
    """
    x = np.sort(np.asarray(ms, dtype=np.float64))
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    j = int(np.floor((n - z * np.sqrt(n)) / 2))
    k = int(np.ceil(1 + (n + z * np.sqrt(n)) / 2))
    return float(x[max(j, 1) - 1]), float(x[min(k, n) - 1])


def summarize(samples_ns: np.ndarray, duration_s: float, confidence: float = 0.95) -> dict[str, float]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    lo, hi = median_ci(ms, confidence)
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "queries": int(len(ms)),
            "duration_s": float(duration_s), "throughput_qps": float(len(ms) / duration_s) if duration_s > 0 else 0.0,
            "std_ms": float(ms.std()), "ci_low_ms": lo, "ci_high_ms": hi, "confidence": confidence}


def time_queries(run_once: Callable[[], object], warmup_s: float, warmup_queries: int, min_queries: int,
                 min_duration_s: float, max_duration_s: float) -> tuple[np.ndarray, float]:
    """Untimed warm-up, then each call timed alone until both minima are met (or the maximum
    duration is reached). Returns per-query nanoseconds and the timed duration in seconds."""
    warm_end = time.perf_counter() + warmup_s
    done = 0
    while done < warmup_queries or time.perf_counter() < warm_end:
        run_once()
        done += 1
    samples: list[int] = []
    min_ns, max_ns = int(min_duration_s * 1e9), int(max_duration_s * 1e9)
    start = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        run_once()
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        if (len(samples) >= min_queries and t1 - start >= min_ns) or t1 - start >= max_ns:
            break
    return np.asarray(samples, dtype=np.int64), (time.perf_counter_ns() - start) / 1e9


def _host_busy_s() -> float | None:
    """CPU seconds all processes on the host have used since boot (None off Linux)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class HostWatch:
    """CPU time of this process against wall time, and what every other process used."""

    def __enter__(self) -> HostWatch:
        self.wall0, self.cpu0, self.host0 = time.perf_counter(), time.process_time(), _host_busy_s()
        self.ivcsw0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self.wall0, 1e-9)
        cpu = time.process_time() - self.cpu0
        host = _host_busy_s()
        other = None if host is None or self.host0 is None else max(0.0, (host - self.host0 - cpu) / wall)
        self.result = {"cpu_wall_ratio": cpu / wall, "other_cpu_cores": other, "loadavg_1m": os.getloadavg()[0],
                       "involuntary_switches": resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - self.ivcsw0}


def is_contended(watch: dict[str, Any], threads: int, max_other_cpu: float, cpu_bound: bool = True) -> bool:
    """Others used more than `max_other_cpu` cores while we timed, or (one CPU thread) we were
    descheduled for more than 15% of the wall time. A GPU timing waits on the device, so its
    CPU time says nothing about being descheduled."""
    other = watch["other_cpu_cores"]
    if other is not None and other > max_other_cpu:
        return True
    return cpu_bound and threads == 1 and watch["cpu_wall_ratio"] < 0.85


def measure_loop(run_once: Callable[[], object], settings: dict[str, Any], threads: int,
                 lock: str | None, cpu_bound: bool = True) -> dict[str, Any]:
    """Time `run_once` per the settings under the host lock; re-time a contended figure.

    Stops at the first quiet attempt. If every attempt was contended, keeps the one with the
    lowest p50: interference only ever slows a query down, so the least disturbed attempt is
    the closest to the quiet figure (and `contended` stays true). Every attempt's p50 is kept.
    """
    attempts: list[tuple[dict[str, Any], dict[str, Any]]] = []
    waited = {"lock_wait_s": 0.0}
    for attempt in range(max(1, int(settings.get("max_attempts", 3)))):
        if attempt:
            time.sleep(float(settings.get("retry_wait_s", 1.0)))
        with measurement_lock(lock, waited), HostWatch() as watch:
            samples, duration = time_queries(
                run_once, float(settings.get("warmup_s", 0.2)), int(settings.get("warmup_queries", 20)),
                int(settings.get("min_queries", 200)), float(settings.get("min_duration_s", 1.0)),
                float(settings.get("max_duration_s", 30.0)))
        host = dict(watch.result)
        host["contended"] = is_contended(host, threads, float(settings.get("max_other_cpu", 0.3)), cpu_bound)
        attempts.append((summarize(samples, duration, float(settings.get("confidence", 0.95))), host))
        if not host["contended"]:
            break
    latency, host = min(attempts, key=lambda a: (a[1]["contended"], a[0]["p50_ms"]))
    host["attempts"] = len(attempts)
    host["lock_wait_s"] = round(waited["lock_wait_s"], 3)
    host["attempt_p50_ms"] = [a[0]["p50_ms"] for a in attempts]
    return {"latency": latency, "host": host}


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    VmHWM on Linux: ru_maxrss survives exec, so a child forked from a big parent (the search
    process, with torch loaded) would report the parent's footprint.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU flags of /proc/cpuinfo; None where there is none (not Linux, no flags line)."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((line for line in fh if line.startswith("flags")), None)
    except OSError:
        return None
    return None if line is None else frozenset(line.split(":", 1)[-1].split())


def int8_features() -> str:
    """The CPU flags that decide int8 speed (VNNI dot products, AMX tiles), recorded with every figure."""
    flags = cpu_flags()
    if flags is None:
        return "unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return ", ".join(found) or "none of avx2/avx512/vnni/amx"


def base_environment() -> dict[str, str]:
    # The int8 flags are read where the figure is timed (this agent may run on another machine): int8
    # is about twice as fast with VNNI as without, so a latency ratio only reads against that host.
    return {"cpu": cpu_model(), "cpu_int8": int8_features(), "cores": str(os.cpu_count()),
            "machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "host": platform.node()}


# ---- ONNX Runtime -------------------------------------------------------------------------

def ort_session(model: str, provider: str, provider_options: dict[str, Any], threads: int,
                graph_optimization: str = "all", optimized_path: str | None = None) -> Any:
    """A session on exactly `provider`, recording which provider got which node."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = levels[graph_optimization]
    so.log_severity_level = 3
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    providers = [(provider, provider_options)] if provider_options else [provider]
    return ort.InferenceSession(model, so, providers=providers)


class PlacementError(RuntimeError):
    pass


def check_placement(session: Any, provider: str) -> dict[str, Any]:
    """Where the nodes went; raises PlacementError on a silent fallback.

    ONNX Runtime treats the provider list as a priority list and quietly runs unsupported
    nodes on the CPU, so the requested provider heading `get_providers()` proves nothing.
    """
    if session.get_providers()[0] != provider:
        raise PlacementError(f"session runs on {session.get_providers()[0]}, not {provider}")
    counts: dict[str, int] = {}
    elsewhere: dict[str, int] = {}
    for sub in session.get_provider_graph_assignment_info():
        for node in sub.get_nodes():
            counts[sub.ep_name] = counts.get(sub.ep_name, 0) + 1
            if sub.ep_name != provider:
                elsewhere[node.op_type] = elsewhere.get(node.op_type, 0) + 1
    compute_elsewhere = {op: n for op, n in elsewhere.items() if op not in SHAPE_OPS}
    if compute_elsewhere:
        raise PlacementError(f"{sum(compute_elsewhere.values())} compute node(s) fell back off {provider}: "
                             + ", ".join(f"{op} x{n}" for op, n in sorted(compute_elsewhere.items())))
    return {"nodes_by_provider": counts, "shape_ops_elsewhere": sum(elsewhere.values())}


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def random_feeds(session: Any, batch_size: int, sequence_length: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs shaped from the model: dynamic dim 0 = batch, other dynamic dims = sequence length (or 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        dtype = _ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has a type the agent cannot generate ({inp.type})")
        shape = [d if isinstance(d, int) and d > 0 else (batch_size if i == 0 else max(sequence_length, 1))
                 for i, d in enumerate(inp.shape)]
        if np.issubdtype(dtype, np.integer):
            feeds[inp.name] = rng.integers(0, 100, shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = np.ones(shape, dtype=bool)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def parse_provider_options(text: str) -> dict[str, Any]:
    """A JSON object, or `key=value,key=value` (no quotes or braces: survives a remote shell's parse)."""
    text = (text or "").strip()
    if not text or text.startswith("{"):
        return json.loads(text or "{}")
    out: dict[str, Any] = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def measure_onnx(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    if args.provider not in ort.get_available_providers():
        raise PlacementError(f"provider {args.provider} is not available in this onnxruntime "
                             f"(available: {', '.join(ort.get_available_providers())})")
    # `-`: the model arrives on standard input, so its file name never passes through a shell.
    model: Any = sys.stdin.buffer.read() if args.model == "-" else args.model
    t0 = time.perf_counter()
    session = ort_session(model, args.provider, parse_provider_options(args.provider_options), args.threads,
                          args.graph_optimization)
    session_init_s = time.perf_counter() - t0
    placement = check_placement(session, args.provider)
    if args.feeds:
        with np.load(args.feeds) as data:
            feeds = {k: data[k] for k in data.files}
    else:
        feeds = random_feeds(session, args.batch_size, args.sequence_length)
    t0 = time.perf_counter()
    session.run(None, feeds)
    first_run_ms = (time.perf_counter() - t0) * 1e3
    settings = {k: getattr(args, k) for k in ("warmup_s", "warmup_queries", "min_queries", "min_duration_s",
                                             "max_duration_s", "max_attempts", "max_other_cpu", "retry_wait_s",
                                             "confidence")}
    timed = measure_loop(lambda: session.run(None, feeds), settings, args.threads, args.lock,
                         cpu_bound=args.provider in ("CPUExecutionProvider", "DnnlExecutionProvider"))
    env = {**base_environment(), "onnxruntime": ort.__version__, "provider": args.provider,
           "provider_options": args.provider_options or "{}", "threads": str(args.threads),
           "batch_size": str(args.batch_size), "graph_optimization": args.graph_optimization}
    return {"model": args.model, "pid": os.getpid(), "session_init_s": session_init_s, "first_run_ms": first_run_ms,
            **timed, "peak_rss_mb": peak_rss_mb(), "placement": placement, "environment": env}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Time one ONNX model on ONNX Runtime; print JSON.")
    p.add_argument("model", help="the .onnx file, or - to read the model from standard input")
    p.add_argument("--provider", default="CPUExecutionProvider")
    p.add_argument("--provider-options", default="", help="provider options: a JSON object or key=value,key=value")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = runtime default)")
    p.add_argument("--graph-optimization", choices=GRAPH_OPTIMIZATIONS, default="all")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--sequence-length", type=int, default=0)
    p.add_argument("--feeds", help=".npz of input arrays (default: random inputs shaped from the model)")
    p.add_argument("--warmup-s", type=float, default=0.2)
    p.add_argument("--warmup-queries", type=int, default=20)
    p.add_argument("--min-queries", type=int, default=200)
    p.add_argument("--min-duration-s", type=float, default=1.0)
    p.add_argument("--max-duration-s", type=float, default=30.0)
    p.add_argument("--max-attempts", type=int, default=3, help="timings of a contended figure, at most")
    p.add_argument("--max-other-cpu", type=float, default=0.3,
                   help="cores other processes may use while timing before a figure counts as contended")
    p.add_argument("--retry-wait-s", type=float, default=1.0)
    p.add_argument("--confidence", type=float, default=0.95, help="of the median's confidence interval")
    p.add_argument("--lock", help="host-wide lock file shared with other measuring processes")
    p.add_argument("--out", help="write the JSON here instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result, status = measure_onnx(args), 0
    except PlacementError as exc:
        result, status = {"error": str(exc), "kind": "placement"}, 2
    except Exception as exc:  # noqa: BLE001 - the caller reads one JSON line, never a traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        result, status = {"error": f"{type(exc).__name__}: {first}", "kind": "failure"}, 1
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
