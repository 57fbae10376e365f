"""User tasks named in a space as `file.py:function` or `module:function`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.errors import SpaceError
from search.space import load_space
from search.tasks import TASKS, Task

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def write_space(folder: Path, task_name: str, **task_options: object) -> Path:
    space = {
        "name": "user-task",
        "task": {"name": task_name, **({"options": task_options} if task_options else {})},
        "hardware": {"profiles": ["ort-cpu"]},
        "constraints": {"max_quality_drop": 0.1},
        "techniques": {"quantize": {"bits": ["fp32", "int8"]}},
    }
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(FIXTURES / "user_task.py", tmp_path / "user_task.py")
    return tmp_path


def test_file_spec_relative_to_the_space_file_loads_and_registers(folder: Path) -> None:
    space = load_space(write_space(folder, "user_task.py:make_task", hidden=12), folder / "cache")
    assert space.task_name == "user_task.py:make_task"
    cls = TASKS[space.task_name]
    assert issubclass(cls, Task) and cls.quality_name == "accuracy"
    assert [layer.name for layer in space.layers] == ["0", "2"]
    assert space.layers[0].weight_shape == (12, 8)  # the YAML option reached the user's model


def test_module_spec_and_instance_factory(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(folder))
    space = load_space(write_space(folder, "user_task:make_instance", hidden=6), folder / "cache")
    task = TASKS[space.task_name]({"hidden": 6}, folder / "cache")
    assert isinstance(task, Task) and task.cache_dir == folder / "cache"
    assert space.layers[0].weight_shape == (6, 8)


@pytest.mark.parametrize(("spec", "expected"), [
    ("nosuchpkg.tasks:make_task", "cannot import module 'nosuchpkg.tasks' (ModuleNotFoundError"),
    ("missing.py:make_task", "no such file 'missing.py'"),
    ("user_task.py:make_taks", "has no attribute 'make_taks' (did you mean 'make_task'?)"),
    ("user_task.py:make_wrong", "must give a subclass of search.tasks.Task"),
    ("user_task.py:make_incomplete", "task class Incomplete does not implement calibration_feeds, evaluate"),
    ("user_task.py:make_raises", "make_raises() raised RuntimeError: dataset folder is missing"),
    ("digitz", "must be a built-in task ('digits', 'minilm-sts'"),
])
def test_bad_user_task_is_one_line_naming_file_and_key(folder: Path, spec: str, expected: str) -> None:
    path = write_space(folder, spec)
    with pytest.raises(SpaceError) as info:
        load_space(path, folder / "cache")
    message = str(info.value)
    assert message.startswith(f"{path}: task.name: ")
    assert expected in message
    assert "\n" not in message


def test_cli_validate_says_what_is_wrong_with_exit_status_2(folder: Path, capsys) -> None:
    path = write_space(folder, "user_task.py:make_wrong")
    assert main(["validate", str(path), "--results-dir", str(folder / "results")]) == 2
    err = capsys.readouterr().err
    assert "task.name" in err and "Traceback" not in err


@pytest.mark.slow
def test_user_task_runs_a_study_end_to_end(folder: Path, capsys) -> None:
    path = write_space(folder, "user_task.py:make_task")
    results = folder / "results"
    assert main(["run", str(path), "--trials", "2", "--results-dir", str(results), "--seed", "0", "--quiet",
                 "--no-remeasure"]) == 0
    capsys.readouterr()
    assert main(["show", "user-task", "--json", "--results-dir", str(results)]) == 0
    view = json.loads(capsys.readouterr().out)
    complete = [t for t in view["trials"] if t["state"] == "COMPLETE"]
    assert len(complete) == 2, view["trials"]
    assert all(0.5 < t["values"]["accuracy"] <= 1.0 for t in complete)
