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
