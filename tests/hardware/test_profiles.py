"""Hardware profiles: every shipped YAML loads; bad ones get one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hardware.profiles import BACKENDS, PROFILE_DIR, available_profiles, load_profile
from search.errors import SpaceError


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_every_shipped_profile_parses(name: str) -> None:
    profile = load_profile(name, check=False)
    assert profile.backend in BACKENDS and profile.description
    if profile.backend == "estimate":
        assert profile.spec["source"] and "estimate" in profile.description


def write(d: Path, name: str, body: dict) -> None:
    (d / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "backend": "onnxruntime", **body}))


@pytest.mark.parametrize(("body", "key", "text"), [
    ({"thread": 2}, "thread", "did you mean 'threads'"),
    ({"backend": "tensorflow"}, "backend", "must be one of"),
    ({"precision": "fp8"}, "precision", "must be one of"),
    ({"measure": {"confidence": 95}}, "measure.confidence", "between 0 and 1"),
    ({"measure": {"min_querys": 5}}, "measure.min_querys", "unknown key"),
    ({"sequence_length": -1}, "sequence_length", ">= 0"),
])
def test_bad_profile_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: dict, key: str,
                                 text: str) -> None:
    write(tmp_path, "bad", body)
    monkeypatch.setenv("COMPSEARCH_PROFILE_PATH", str(tmp_path))
    with pytest.raises(SpaceError) as err:
        load_profile("bad")
    message = str(err.value)
    assert f"bad.yaml: {key}" in message and text in message and "\n" not in message


def test_user_profile_directory_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "ort-cpu", {"threads": 3})
    monkeypatch.setenv("COMPSEARCH_PROFILE_PATH", str(tmp_path))
    assert load_profile("ort-cpu").threads == 3
    assert "est-a100" in available_profiles()  # the built-in ones are still there


@pytest.mark.parametrize(("body", "message"), [
    ({"threads": -1}, "bad.yaml: threads: must be an integer >= 0 (0 = runtime default), but got -1"),
    ({"batch_size": 0}, "bad.yaml: batch_size: must be an integer >= 1, but got 0"),
    ({"compile": "yes"}, "bad.yaml: compile: must be true or false, but got 'yes'"),
    ({"measure": {"processes": 0}}, "bad.yaml: measure.processes: must be an integer >= 1, but got 0"),
    ({"measure": {"min_queries": 2.5}}, "bad.yaml: measure.min_queries: must be an integer >= 0, but got 2.5"),
    ({"graph_optimization": "al"}, "bad.yaml: graph_optimization: must be one of 'disable', 'basic', 'extended', "
                                   "'all' (did you mean 'all'?), but got 'al'"),
    ({"options": [1]}, "bad.yaml: options: must be a mapping, but got [1]"),
    ({"backend": "estimate", "spec": {"peak_tops": {"int8": 6}, "memory_bandwidth_gbs": 0}},
     "bad.yaml: spec.memory_bandwidth_gbs: must be a number > 0, but got 0"),
])
def test_profiles_are_checked_by_the_one_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: dict,
                                                 message: str) -> None:
    """The same Rule that checks a space checks a profile: file, key path, rule, given value, one line."""
    write(tmp_path, "bad", body)
    monkeypatch.setenv("COMPSEARCH_PROFILE_PATH", str(tmp_path))
    with pytest.raises(SpaceError) as err:
        load_profile("bad")
    assert str(err.value).endswith(message), str(err.value)


def test_profile_keys_explain_themselves() -> None:
    from hardware.profiles import PROFILE_SCHEMA
    from hardware.schema import explain

    lines = list(explain(PROFILE_SCHEMA))
    assert any(line.startswith("measure.processes: an integer >= 1 (default 1) - fresh processes") for line in lines)
    assert all(" - " in line or line.endswith(":") or line.startswith("measure:") for line in lines), lines
