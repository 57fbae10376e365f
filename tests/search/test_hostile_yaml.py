"""Hostile or broken space files: each is one line naming file and key, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import main

ROOT = Path(__file__).resolve().parents[2]
DIGITS = (ROOT / "spaces" / "digits.yaml").read_text()

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)) + "name: *j\n"


def _replace(old: str, new: str) -> str:
    assert old in DIGITS, old
    return DIGITS.replace(old, new, 1)


CASES = {
    "nan ratio": (_replace("{low: 0.0, high: 0.9, step: 0.05}", "{low: .nan, high: 0.9, step: 0.05}"),
                  "techniques.prune.ratio.low: must be a finite number", "nan"),
    "inf drop": (_replace("max_quality_drop: 0.02", "max_quality_drop: .inf"),
                 "constraints.max_quality_drop: must be a finite number", "inf"),
    "nan timeout": (_replace("trials: 24", "trials: 24\n  timeout: .NaN"), "budget.timeout: must be a finite",
                    "nan"),
    "inf temperature": (_replace("temperature: [2.0, 4.0]", "temperature: [2.0, -.inf]"),
                        "techniques.distill.temperature[1]: must be a finite number", "-inf"),
    "duplicate top key": (DIGITS + "sampler: random\n", "sampler: duplicate key (first at line", None),
    "duplicate nested key": (_replace("    epochs: {low: 0, high: 10}", "    epochs: {low: 0, high: 10, low: 3}"),
                             "techniques.distill.epochs.low: duplicate key", None),
    "alias bomb": (BOMB, "expands to more than 100000 values", None),
    "deep nesting": ("name: " + "[" * 5000 + "]" * 5000 + "\n", "nested", None),
    "deep but parseable": ("name: " + "[" * 80 + "]" * 80 + "\n", "is nested deeper than 64 levels", None),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_hostile_space_is_one_short_line_and_writes_nothing(case: str, command: str, tmp_path: Path, capsys) -> None:
    text, fragment, given = CASES[case]
    space = tmp_path / "space.yaml"
    space.write_text(text)
    results = tmp_path / "results"
    assert main([command, str(space), "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err[:500]
    assert len(err) < 400, err[:500]
    assert err.startswith(f"compsearch: error: {space}: "), err
    assert fragment in err, err
    if given is not None:
        assert err.rstrip().endswith(f"but got {given}"), err
    assert not results.exists()


def test_not_utf8_names_the_file_and_the_byte(tmp_path: Path, capsys) -> None:
    space = tmp_path / "latin1.yaml"
    space.write_bytes(DIGITS.replace("# absolute accuracy", "# caf\xe9").encode("latin-1"))
    assert main(["validate", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"compsearch: error: {space}: is not UTF-8 text (byte 0xe9 at offset"), err


def test_a_huge_file_is_refused_unread(tmp_path: Path, capsys) -> None:
    space = tmp_path / "huge.yaml"
    space.write_text(DIGITS + "description: '" + "x" * (2 << 20) + "'\n")
    assert main(["validate", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is larger than 1024 KiB" in err and len(err) < 300


def test_a_long_value_is_echoed_truncated(tmp_path: Path, capsys) -> None:
    space = tmp_path / "long.yaml"
    space.write_text(_replace("sampler: tpe", "sampler: " + "y" * 5000))
    assert main(["validate", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sampler: must be one of" in err and "..." in err and len(err) < 300, err


def test_merge_keys_still_override(tmp_path: Path) -> None:
    from hardware.safe_yaml import loads

    data = loads("base: &b {low: 0, high: 1}\nr:\n  <<: *b\n  high: 2\n", "x.yaml")
    assert data["r"] == {"low": 0, "high": 2}
