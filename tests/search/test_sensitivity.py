"""Per-layer sensitivity and the sensitivity-guided bit assignment."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from search.cli import main
from search.errors import SpaceError
from search.sensitivity import calibration_batches, deployed_weight, layer_errors, study_sensitivity
from search.space import load_space
from search.tasks.digits import DigitsTask
from search.techniques import SampleContext
from search.techniques.quantize import Quantize, assign_by_ranking, uniform_params
from search.techniques.quantize.passes import int4_dequant

LAYERS = ["net.0", "net.2", "net.4"]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 32, "epochs": 4, "seed": 0}, tmp_path_factory.mktemp("models"))


def fragile(task: DigitsTask) -> torch.nn.Module:
    """The digits MLP with net.2 made fragile and nothing else changed: hidden unit 0 never fires
    (its bias is far below zero), and net.2 reads it with a huge weight in every row. In fp32 that
    weight multiplies zero; quantized per channel, its scale crushes every other weight of the row."""
    model = task.build_model()
    with torch.no_grad():
        model.net[0].bias[0] = -1e4
        model.net[2].weight[:, 0] = 1e4
    return model


def test_a_fragile_layer_ranks_first(task: DigitsTask) -> None:
    model = fragile(task)
    errors = layer_errors(model, calibration_batches(task), LAYERS, ["int8", "int4", "fp16"])
    for bits in ("int8", "int4"):
        assert SampleContext(errors).ranking(bits, LAYERS)[0] == "net.2", errors[bits]
        assert errors[bits]["net.2"] > 10 * max(errors[bits]["net.0"], errors[bits]["net.4"])
    assert all(errors["fp16"][name] < errors["int8"][name] for name in LAYERS)
    assert errors["int4"]["net.0"] > errors["int8"]["net.0"]  # fewer bits, more error
    torch.testing.assert_close(model.net[2].weight[:, 0], torch.full((16,), 1e4))  # weights put back


def test_deployed_int4_weight_is_ort_s_own() -> None:
    w = torch.randn(16, 64)
    expected = torch.from_numpy(int4_dequant(w.numpy().T, 32).T.copy())
    torch.testing.assert_close(deployed_weight(w, "int4", True, 32), expected)
    per_channel = deployed_weight(w, "int8", True, 32)
    assert (per_channel - w).abs().max() <= w.abs().max() / 127 / 2 + 1e-6


def test_assignment_follows_the_ranking() -> None:
    layers = ["a", "b", "c", "d", "e"]
    # At int4, d then b are the most fragile; at int8, b is more fragile than d.
    context = SampleContext({"int4": {"a": 0.1, "b": 0.5, "c": 0.0, "d": 0.9, "e": 0.2},
                             "int8": {"a": 0.01, "b": 0.3, "c": 0.0, "d": 0.02, "e": 0.01}})
    listed = ("fp32", "int8", "int4")
    bits = assign_by_ranking(layers, "int4", {"fp32": 1, "int8": 1}, listed, context)
    assert bits == {"a": "int4", "b": "fp32", "c": "int4", "d": "int8", "e": "int4"}
    bits = assign_by_ranking(layers, "int4", {"fp32": 0, "int8": 3}, listed, context)
    assert bits == {"a": "int4", "b": "int8", "c": "int4", "d": "int8", "e": "int8"}
    assert set(assign_by_ranking(layers, "int8", {"fp32": 9}, listed, context).values()) == {"fp32"}
    assert set(assign_by_ranking(layers, "int8", {"fp32": 0}, listed, context).values()) == {"int8"}


def write_space(tmp_path: Path, quantize: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "sens", "task": {"name": "digits", "options": {"hidden": 32, "epochs": 4}},
                                    "hardware": {"profiles": ["ort-cpu"]}, "constraints": {"max_quality_drop": 0.5},
                                    "sampler": "random", "techniques": {"quantize": quantize}}))
    return path


def test_sensitivity_mode_samples_a_floor_and_keeps(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, {"assign": "sensitivity", "bits": ["fp32", "int8", "int4"]}),
                       tmp_path / "models")
    tech = space.techniques[0]
    context = SampleContext({"int4": {"net.0": 0.1, "net.2": 0.9, "net.4": 0.5},
                             "int8": {"net.0": 0.1, "net.2": 0.2, "net.4": 0.3}})
    trial = optuna.trial.FixedTrial({"quantize.floor": "int4", "quantize.keep.fp32": 1, "quantize.keep.int8": 1,
                                     "quantize.embedding_bits": "fp32", "quantize.mode": "ptq",
                                     "quantize.activations": "static", "quantize.block_size": 32})
    config = Quantize().sample(trial, tech, context)
    # Kept above int4: net.2 and net.4 (most fragile there); of those, net.4 is the more fragile at int8.
    assert dict(config.layer_bits) == {"net.0": "int4", "net.2": "int8", "net.4": "fp32"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    Quantize().sample(trial, tech, context)
    assert not any(k.startswith("quantize.bits.") for k in trial.params)  # no per-layer categoricals
    for bits in ("int8", "int4"):
        params = {**uniform_params(tech, bits), "quantize.embedding_bits": "fp32", "quantize.mode": "ptq",
                  "quantize.activations": "dynamic", "quantize.per_channel": True, "quantize.block_size": 32}
        config = Quantize().sample(optuna.trial.FixedTrial(params), tech, context)
        assert set(config.layer_bits.values()) == {bits}
    per_layer = load_space(write_space(tmp_path, {"bits": ["fp32", "int8"]}), tmp_path / "models").techniques[0]
    assert uniform_params(per_layer, "int8") == {f"quantize.bits.{name}": "int8" for name in LAYERS}
    with pytest.raises(SpaceError, match="groups.*assign: per_layer"):
        load_space(write_space(tmp_path, {"assign": "sensitivity", "groups": {"all": "*"}}), tmp_path / "models")


def test_the_table_is_measured_once_and_cached(task: DigitsTask, tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, {"assign": "sensitivity", "bits": ["fp32", "int8", "int4"]}),
                       tmp_path / "models")
    model = fragile(task)
    first = study_sensitivity(space, task, model, tmp_path / "results")
    assert not first["cached"] and first["bits"] == ["int8", "int4"] and first["layers"] == LAYERS
    assert first["inputs"] == 200 and "simulation" in first["metric"]
    again = study_sensitivity(space, task, model, tmp_path / "results")
    assert again["cached"] and again["error"] == first["error"]
    with torch.no_grad():
        model.net[4].weight.mul_(1.01)  # other weights: another table
    assert not study_sensitivity(space, task, model, tmp_path / "results")["cached"]


@pytest.mark.slow
def test_a_study_in_sensitivity_mode_records_its_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path, {"assign": "sensitivity", "bits": ["fp32", "int8", "int4"],
                                   "activations": "dynamic"})
    results = tmp_path / "results"
    assert main(["run", str(space), "--results-dir", str(results), "--trials", "3", "--seed", "0", "--quiet",
                 "--no-remeasure"]) == 0
    import optuna as o
    study = o.load_study(study_name="sens", storage=f"sqlite:///{results / 'optuna.db'}")
    table = study.user_attrs["sensitivity"]
    assert set(table["error"]) == {"int8", "int4"} and set(table["error"]["int8"]) == set(LAYERS)
    trials = [t for t in study.trials if not t.user_attrs.get("baseline")]
    assert all("quantize.floor" in t.params for t in trials)
    assert all(t.state == o.trial.TrialState.COMPLETE for t in trials), [t.user_attrs for t in trials]
    assert json.loads(json.dumps(table)) == table

    # For hardware teams: the table and its chart in MLflow and in the HTML report.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sens")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("compsearch.role") == "study")
    logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "sensitivity.json")).read_text())
    assert logged["error"] == table["error"]
    svg = Path(client.download_artifacts(parent.info.run_id, "plots/sensitivity.svg")).read_text()
    assert svg.startswith("<svg") and svg.count("<rect") >= 1 + 2 * len(LAYERS)
    assert main(["report", "sens", "--results-dir", str(results), "--out", str(tmp_path / "report")]) == 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Per-layer sensitivity" in html and "net.2 at int4" in html


def test_replaying_what_runs_before_a_layer_changes_no_figure(task: DigitsTask) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=16)).eval()
    ids = torch.randint(0, 50, (4, 8))
    batches = [(ids, torch.ones_like(ids)), (ids.flip(0), torch.ones_like(ids))]
    layers = [n for n, m in bert.named_modules() if isinstance(m, torch.nn.Linear) and "encoder" in n]
    mlp = fragile(task)
    inplace = torch.nn.Sequential(mlp.net[0], torch.nn.ReLU(inplace=True), mlp.net[2], torch.nn.ReLU(inplace=True),
                                  mlp.net[4])  # a parent changing its child's output in place
    digits = [(torch.from_numpy(f["x"]),) for f in task.calibration_feeds()[:2]]
    for model, inputs, names in ((bert, batches, layers), (inplace, digits, ["0", "2", "4"])):
        fast = layer_errors(model, inputs, names, ["int8", "int4"])
        slow = layer_errors(model, inputs, names, ["int8", "int4"], replay=False)
        for bits in ("int8", "int4"):
            assert fast[bits] == pytest.approx(slow[bits], rel=1e-4, abs=1e-9)
    from search.prefix_replay import PrefixReplay

    replay = PrefixReplay(bert, batches, layers)
    assert replay.skip["encoder.layer.1.output.dense"][:3] == ["embeddings", "encoder.layer.0",
                                                              "encoder.layer.1.attention"]
