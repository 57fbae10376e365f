"""The CLI contract for bad input: one line, exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_validate_prints_dimensions_and_layer_count(capsys) -> None:
    assert main(["validate", str(ROOT / "spaces" / "digits.yaml")]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "prune.ratio" in out
    assert "bit-widths searched for 3 layer(s)" in out


@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_space_is_one_line_exit_2_and_writes_nothing(command: str, tmp_path: Path, capsys) -> None:
    space = tmp_path / "bad.yaml"
    data = yaml.safe_load((ROOT / "spaces" / "digits.yaml").read_text())
    data["techniques"]["prune"]["ratio"] = {"low": 0.9, "high": 0.1}
    space.write_text(yaml.safe_dump(data))
    results = tmp_path / "results"
    args = [command, str(space), "--results-dir", str(results)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{space}: techniques.prune.ratio: low <= high must hold, but got (low=0.9, high=0.1)" in err
    assert not results.exists() or not any(results.rglob("*.db"))


def test_bad_flags_exit_2(tmp_path: Path, capsys) -> None:
    space = str(ROOT / "spaces" / "digits.yaml")
    assert main(["run", space, "--timeout", "soon", "--results-dir", str(tmp_path)]) == 2
    assert "--timeout" in capsys.readouterr().err
    assert main(["show", "nope", "--results-dir", str(tmp_path)]) == 2
    assert "no Optuna storage at" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists()


def test_validate_explain_prints_each_key_with_its_help(capsys) -> None:
    from search.techniques import REGISTRY

    assert main(["validate", str(ROOT / "spaces" / "digits_all.yaml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "budget.trial_memory: a size (512MB, 4GB, 2GiB) or bytes (optional) - " in out
    assert "task.options.hidden: an integer in [4, 4096] (default 256) - width of the first hidden layer" in out
    assert "techniques.prune.ratio: a number in [0.0, 1.0); a value, a list or a range (required) - " in out
    for name in ("factorize", "prune", "distill", "share", "quantize"):  # the techniques digits_all searches
        technique = REGISTRY.named(name)
        for key, rule in {**technique.rules, **technique.settings}.items():
            assert f"techniques.{name}.{key}: " in out and rule.help in out, (name, key)
    assert "other techniques (not in this space): transformer_prune" in out


DIGITS = str(ROOT / "spaces" / "digits.yaml")


@pytest.mark.parametrize(("argv", "fragment"), [
    (["run", DIGITS, "--trials", "abc"], "run: argument --trials: invalid int value: 'abc'"),
    (["run", DIGITS, "--trial-memory", "-5GB"], "--trial-memory=VALUE"),
    (["run", DIGITS, "--trial-memory=-5GB"], "--trial-memory: a memory size looks like"),
    (["run", DIGITS, "--seed", "-1"], "--seed must be in"),
    (["export", "s"], "the following arguments are required: --trial, --out"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_mistakes_are_one_line(argv: list[str], fragment: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        code = main([*argv, "--results-dir", str(tmp_path)] if argv[0] != "frobnicate" else argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not any(tmp_path.iterdir())
