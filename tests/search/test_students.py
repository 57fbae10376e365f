"""The student cache: keys, reuse across trials, concurrent builders, the size bound."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from search.cli import main
from search.errors import UserError
from search.recipe import Recipe
from search.students import StudentCache, cache_cap, obtain_student, student_key
from search.tasks.digits import DigitsTask
from search.techniques.distill import DistillConfig
from search.techniques.prune import PruneConfig
from search.techniques.quantize import QuantizeConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 32, "epochs": 4, "seed": 0}, tmp_path_factory.mktemp("models"))


def recipe(ratio: float, bits: str = "int8", epochs: int = 1) -> Recipe:
    return Recipe((PruneConfig(ratio=ratio, structure="structured"), DistillConfig(epochs=epochs),
                   QuantizeConfig(layer_bits={"net.0": bits})))


def test_key_changes_with_the_student_prefix_not_with_quantization(task: DigitsTask) -> None:
    def key(r: Recipe, seed: int = 0, model: str = "m") -> str:
        from search.compress import split_recipe
        return student_key(task, model, split_recipe(r)[0], seed)

    base = key(recipe(0.5))
    assert key(recipe(0.5, bits="fp16")) == base  # a later stage: same student
    assert key(recipe(0.4)) != base  # another pruning ratio
    assert key(recipe(0.5, epochs=2)) != base  # another distillation
    assert key(recipe(0.5), seed=1) != base
    assert key(recipe(0.5), model="other weights") != base
    other_task = DigitsTask({**task.options, "epochs": 5}, task.cache_dir)
    from search.compress import split_recipe
    assert student_key(other_task, "m", split_recipe(recipe(0.5))[0], 0) != base


def test_a_second_trial_loads_the_student_the_first_built(task: DigitsTask, tmp_path: Path) -> None:
    model = task.build_model()
    cache = StudentCache(tmp_path / "students")
    first, record = obtain_student(model, recipe(0.5), task, 0, cache, "study/trial-1")
    assert record is not None and record.cached == "miss" and record.built_by == "study/trial-1"
    again, hit = obtain_student(model, recipe(0.5, bits="fp16"), task, 0, cache, "study/trial-2")
    assert hit is not None and (hit.cached, hit.key, hit.built_by) == ("hit", record.key, "study/trial-1")
    for (name, a), (_, b) in zip(first.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert again.notes == json.loads(json.dumps(first.notes)) and again.changed and again.teacher is model
    assert again.model is not first.model
    _, missed = obtain_student(model, recipe(0.3), task, 0, cache, "study/trial-3")
    assert missed is not None and missed.cached == "miss" and missed.key != record.key
    _, none = obtain_student(model, Recipe((QuantizeConfig(layer_bits={"net.0": "int8"}),)), task, 0, cache)
    assert none is None  # no student steps: nothing to cache


BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from search.compress import student_state
    from search.recipe import Recipe
    from search.students import StudentCache
    from search.tasks.digits import DigitsTask

    root, log = Path(sys.argv[1]), Path(sys.argv[2])
    task = DigitsTask({"hidden": 8, "epochs": 1, "seed": 0}, root / "models")
    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10))

    def build(state):
        with log.open("a") as fh:
            fh.write("built\\n")
        time.sleep(1.5)  # long enough for the other process to ask meanwhile
        torch.manual_seed(1)
        state.model = torch.nn.Sequential(torch.nn.Linear(64, 4), torch.nn.ReLU(), torch.nn.Linear(4, 10))

    state, record = StudentCache(root / "students").obtain("k", lambda: student_state(model, task), build,
                                                           Recipe(), sys.argv[3])
    print(record.cached, record.built_by, float(state.model[0].weight.sum()))
""")


def test_concurrent_builders_train_once_and_read_a_whole_entry(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path), str(log), f"w{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    lines = sorted(out.split() for out, _ in outs)
    assert log.read_text().count("built") == 1
    assert sorted(line[0] for line in lines) == ["hit", "miss"]
    assert lines[0][1] == lines[1][1]  # the hit names the process that built it
    assert lines[0][2] == lines[1][2]  # the same weights
    assert not [p for p in (tmp_path / "students").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache = StudentCache(tmp_path)
    from search.compress import student_state

    def build(width: int):
        def go(state) -> None:
            state.model = nn.Linear(64, width)
        return go

    for key in ("a", "b", "c"):
        cache.obtain(key, lambda: student_state(nn.Linear(1, 1), None), build(256), Recipe(), key)
    sizes = {e.name: size for _, size, e in cache.entries()}
    cache.obtain("a", lambda: student_state(nn.Linear(1, 1), None), build(256), Recipe(), "a")  # a is used again
    # Room for exactly the two kept: the entries differ by a byte or two (their metadata holds a time stamp).
    cache.cap = sizes["a"] + sizes["c"]
    assert cache.evict() == ["b"]
    assert sorted(e.name for _, _, e in cache.entries()) == ["a", "c"]


def test_cache_bound_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPSEARCH_STUDENT_CACHE", "2GiB")
    assert cache_cap() == 2 * 2**30
    monkeypatch.setenv("COMPSEARCH_STUDENT_CACHE", "off")
    assert cache_cap() is None
    monkeypatch.setenv("COMPSEARCH_STUDENT_CACHE", "lots")
    with pytest.raises(UserError, match="COMPSEARCH_STUDENT_CACHE"):
        cache_cap()


SPACE = {
    "name": "students",
    "task": {"name": "digits", "options": {"hidden": 32, "epochs": 4}},
    "hardware": {"profiles": ["ort-cpu"]},
    "constraints": {"max_quality_drop": 0.5},
    "sampler": "random",
    "techniques": {"prune": {"structure": "structured", "ratio": 0.5}, "distill": {"epochs": 1},
                   "quantize": {"bits": ["fp32", "int8", "fp16"], "calibration": ["minmax", "entropy"]}},
}


def test_a_study_reuses_its_student_and_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "students.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    results = tmp_path / "results"
    assert main(["run", str(space), "--results-dir", str(results), "--trials", "3", "--seed", "3", "--quiet",
                 "--no-remeasure"]) == 0
    capsys.readouterr()
    assert main(["show", "students", "--json", "--results-dir", str(results)]) == 0
    trials = json.loads(capsys.readouterr().out)["trials"]
    assert trials[0]["student"] is None  # the baseline has no student steps
    first, second = trials[1]["student"], trials[2]["student"]
    assert first["cached"] == "miss" and first["from"] == "students/trial-1"
    assert second["cached"] == "hit" and second["key"] == first["key"] and second["from"] == "students/trial-1"
    assert trials[1]["recipe_hash"] != trials[2]["recipe_hash"]
    phases = trials[2]["timings"]
    assert set(phases) >= {"student", "compress", "evaluate", "measure", "total"}
    assert phases["total"] >= phases["student"] + phases["compress"]
    assert (results / "cache" / "students" / first["key"] / "model.pt").is_file()
