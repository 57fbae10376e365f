"""`compsearch bench`: any ONNX file, locally or through a remote command template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardware import agent
from search.cli import main


def bench_json(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["bench", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_local_bench_uses_the_isolated_protocol(mlp: Path, fast_profiles: Path, capsys) -> None:
    out = bench_json(capsys, str(mlp), "--hardware", "fast-cpu")
    assert out["latency"]["queries"] >= 50 and out["latency"]["ci_low_ms"] <= out["latency"]["p50_ms"]
    assert out["host"]["attempts"] == 1 and "contended" in out["host"]
    assert out["environment"]["provider"] == "CPUExecutionProvider" and out["bytes"] > 0


def test_remote_template_launches_the_agent_and_reads_its_json(mlp: Path, fast_profiles: Path, capsys) -> None:
    out = bench_json(capsys, str(mlp), "--hardware", "fast-cpu-2t", "--remote", "python3 {agent} {model}")
    assert out["command"].startswith(f"python3 {agent.__file__} {mlp}")
    assert "--threads 2" in out["command"] and "--lock" not in out["command"]
    assert out["environment"]["threads"] == "2" and out["latency"]["queries"] >= 50


def test_remote_template_with_args_placeholder_and_a_copied_agent(mlp: Path, fast_profiles: Path, tmp_path: Path,
                                                                   capsys) -> None:
    board = tmp_path / "board"  # what a hardware team would do: copy agent.py next to the model
    board.mkdir()
    (board / "agent.py").write_text(Path(agent.__file__).read_text())
    (board / mlp.name).write_bytes(mlp.read_bytes())
    template = f"cd {board} && python3 -I agent.py {{args}} {{name}}"  # -I: nothing of compsearch importable
    out = bench_json(capsys, str(mlp), "--hardware", "fast-cpu", "--remote", template)
    assert out["measured_model"] == mlp.name  # the board's copy, by its relative name
    assert out["latency"]["p50_ms"] > 0


def test_remote_failure_and_bad_template_are_one_line(mlp: Path, fast_profiles: Path, capsys) -> None:
    assert main(["bench", str(mlp), "--hardware", "fast-cpu", "--remote", "python3 {agent} {modle}"]) == 2
    assert "placeholder" in capsys.readouterr().err
    assert main(["bench", str(mlp), "--hardware", "fast-cpu", "--remote", "false"]) == 1
    assert "remote agent printed no JSON" in capsys.readouterr().err


def test_bench_rejects_a_non_onnx_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_text("not a model")
    assert main(["bench", str(bad), "--hardware", "ort-cpu"]) == 2
    assert "not an ONNX model" in capsys.readouterr().err


HOSTILE = "m;touch X;#.onnx"


def test_a_hostile_file_name_never_reaches_a_shell(mlp: Path, fast_profiles: Path, tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    hostile = tmp_path / HOSTILE
    hostile.write_bytes(mlp.read_bytes())
    # `sh -c "..."` parses the command a second time, as ssh does on the remote side.
    for template in ('sh -c "python3 {agent} {model}"', "sh -c 'python3 {agent} /data/{name}'"):
        assert main(["bench", str(hostile), "--hardware", "fast-cpu", "--remote", template]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "would interpret" in err, err
    out = bench_json(capsys, str(hostile), "--hardware", "fast-cpu", "--remote", 'sh -c "python3 {agent} - {args}"')
    assert out["measured_model"] == "-" and out["latency"]["p50_ms"] > 0
    assert not list(tmp_path.rglob("X")) and not Path("X").exists()


def test_provider_options_travel_as_shell_safe_words() -> None:
    from hardware.profiles import load_profile
    from search.bench import remote_command

    profile = load_profile("ort-trt", check=False)
    command = remote_command("ssh board python3 agent.py -", Path("m.onnx"), profile)
    options = command.split("--provider-options ")[1].split()[0]
    assert "'" not in options and "{" not in options
    assert agent.parse_provider_options(options) == profile.options
    assert agent.parse_provider_options('{"device_id": 0}') == {"device_id": 0}
