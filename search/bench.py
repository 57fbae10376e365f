"""`compsearch bench`: latency and size of any ONNX file on a hardware profile.

Without a task there is no quality to measure, so inputs are random data shaped from the
model's declared inputs (dynamic dimensions: the profile's batch size and sequence length).
The timing is the search's own protocol: the agent (`hardware/agent.py`) in a fresh process,
under the host-wide lock, contention recorded and re-timed.

`--remote TEMPLATE` runs the agent elsewhere through a shell command template; compsearch
copies nothing itself. Placeholders: {agent} (this install's agent.py), {model} (ARTIFACT as
given), {name} (its file name) and {args} (the agent flags for the profile; appended at the
end when the template has no {args}). The model's bytes are also offered on standard input,
so `-` in place of a path sends the model without naming it anywhere. Examples:
    'python3 {agent} {model}'                              (this host, as a check)
    'ssh board python3 /opt/compsearch/agent.py -'         (the model travels on stdin)
    'ssh board python3 /opt/compsearch/agent.py /data/{name}'
    'adb shell /data/local/tmp/python3 /data/local/tmp/agent.py /data/local/tmp/{name}'
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from hardware import agent
from hardware.artifact import Artifact
from hardware.base import Profile
from hardware.environment import environment
from hardware.isolated import MeasurementError, agent_argv, child_timeout_s
from hardware.profiles import load_profile, make_backend
from hardware.sizes import artifact_bytes, compressed_bytes
from search.errors import UserError, short_repr


def _check_onnx(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not an ONNX model ({type(exc).__name__})") from None


_SHELL_SAFE = re.compile(r"[A-Za-z0-9._+=:,@%/-]+")  # no POSIX shell changes such a word, however often parsed


def _shell_safe(flag_value: str) -> bool:
    return bool(_SHELL_SAFE.fullmatch(flag_value)) and not flag_value.startswith("-")


def remote_command(template: str, path: Path, profile: Profile) -> str:
    """The shell command for `template`: the agent's flags for `profile`, no lock, random inputs.

    The template is the user's own shell command line, run by a shell here, and through ssh or
    adb parsed once more on the other side. So the values put into it must mean the same after
    any number of parses: {model} and {name} are refused unless every character is shell-safe
    (the way around is `-` in place of {model}: the model then travels on standard input), and
    the flags are built from shell-safe words (provider options as key=value,key=value)."""
    for field_name, value in (("model", str(path)), ("name", path.name)):
        if "{" + field_name + "}" in template and not _shell_safe(value):
            raise UserError(f"--remote: {{{field_name}}} would be {short_repr(value)}, which a shell (here, and again "
                            "on the remote side) would interpret; rename the file to letters, digits and ._+=:,@%/-, "
                            "or write - in place of {model} to send the model on standard input")
    flags = agent_argv(path, profile, profile.measure, feeds=None)[2:]  # drop the agent path and model
    flags = [f for i, f in enumerate(flags) if f != "--lock" and (i == 0 or flags[i - 1] != "--lock")]
    if "--provider-options" in flags:
        i = flags.index("--provider-options") + 1
        pairs = ",".join(f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in profile.options.items())
        if _shell_safe(pairs):
            flags[i] = pairs
    args = " ".join(shlex.quote(f) for f in flags)
    fields = {"agent": shlex.quote(agent.__file__), "model": str(path), "name": path.name, "args": args}
    try:
        command = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"--remote: unknown or malformed placeholder ({exc}); allowed: {{agent}}, {{model}}, "
                        f"{{name}}, {{args}}") from None
    return command if "{args}" in template else f"{command} {args}"


def run_remote(command: str, timeout_s: float, model: Path | None = None) -> dict[str, Any]:
    """Run the user's command line; the model's bytes are offered on standard input (for `-`)."""
    data = model.read_bytes() if model is not None else b""
    try:
        done = subprocess.run(command, shell=True, input=data, capture_output=True, timeout=timeout_s)
        proc = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                           done.stderr.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"remote agent timed out after {timeout_s:.0f}s: {command}") from None
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise MeasurementError(f"remote agent printed no JSON ({tail}): {command}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise MeasurementError(f"remote agent: {result['error']}")
    return result


def _say_if_lock_busy(say: Callable[[str], None]) -> None:
    """Tell the user before a wait that may last minutes (another search compressing or timing here)."""
    import fcntl

    from hardware.agent import open_lock_file
    from hardware.lock import lock_path

    path = lock_path()
    if path is None:
        return
    with open_lock_file(str(path)) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh, fcntl.LOCK_UN)
        except BlockingIOError:
            say(f"waiting for the host's timing lock ({path}): another measurement or compression on this host "
                "holds it, and timing beside it would be wrong")


def bench_artifact(path: Path, profile_name: str, remote: str | None = None,
                   say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    _check_onnx(path)
    # A remote target's runtime is not this host's: check the profile, not its provider here.
    profile = load_profile(profile_name, where="--hardware", key="profile", check=remote is None)
    if profile.backend != "onnxruntime":
        raise UserError(f"--hardware {profile_name}: bench measures ONNX files on onnxruntime profiles; "
                        f"{profile.backend!r} profiles measure inside a search")
    out: dict[str, Any] = {"artifact": str(path), "profile": profile.name, "remote": remote,
                           "bytes": artifact_bytes(path), "bytes_compressed": compressed_bytes(path)}
    if remote:
        command = remote_command(remote, path, profile)
        result = run_remote(command, child_timeout_s(profile.measure), path)
        out.update(command=command, measured_model=result["model"], session_init_s=result["session_init_s"],
                   first_run_ms=result["first_run_ms"],
                   latency=result["latency"], host=result["host"], peak_rss_mb=result["peak_rss_mb"],
                   placement=result.get("placement"), environment=result["environment"])
        return out
    _say_if_lock_busy(say)
    timing = make_backend(profile).time(Artifact(path), None, profile.measure)
    out.update(session_init_s=timing.session_init_s, first_run_ms=timing.first_run_ms,
               latency=timing.latency.__dict__, host=timing.host, peak_rss_mb=timing.peak_rss_mb,
               environment={**environment(), **timing.environment})
    return out
