"""The digits task's CNN option: flat input, trained and cached apart from the MLP, compressible."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

from search.errors import SpaceError
from search.export import export_onnx
from search.space import load_space
from search.tasks.digits import DigitsCNN, DigitsTask

SPACES = Path(__file__).resolve().parents[3] / "spaces"


@pytest.mark.slow
def test_cnn_trains_caches_apart_from_the_mlp_and_exports(tmp_path: Path) -> None:
    cnn = DigitsTask({"model": "cnn", "channels": 4, "epochs": 8, "seed": 0}, tmp_path)
    mlp = DigitsTask({"model": "mlp", "hidden": 16, "epochs": 8, "seed": 0}, tmp_path)
    assert cnn.training_key() != mlp.training_key()
    assert cnn.training_key() != DigitsTask({"model": "cnn", "channels": 8, "epochs": 8}, tmp_path).training_key()
    assert [(i.name, i.kind) for i in cnn.layers()] == [("net.1", "conv"), ("net.3", "conv"), ("net.7", "linear")]

    model = cnn.build_model()
    assert isinstance(model, DigitsCNN)
    cached = sorted(p.name for p in tmp_path.glob("digits-*.pt"))
    assert cached == [f"digits-cnn-{cnn.training_key()}.pt"]
    again = cnn.build_model()  # loaded from the cache, not retrained
    x = cnn.example_inputs()[0]
    assert x.shape == (1, 64)
    torch.testing.assert_close(again(x), model(x))

    art = export_onnx(model, cnn.example_inputs(), cnn.input_names, tmp_path / "cnn.onnx")
    assert set(art.layer_nodes) == {"net.1", "net.3", "net.7"}
    session = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    accuracy = cnn.evaluate(lambda feeds: session.run(None, feeds)[0])
    assert accuracy > 0.8, accuracy


def test_model_option_is_checked_and_the_cnn_space_validates(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text("name: s\ntask: {name: digits, options: {model: rnn}}\n")
    with pytest.raises(SpaceError, match=r"task.options.model: must be one of 'mlp', 'cnn'"):
        load_space(space, tmp_path / "cache")
    cnn = load_space(SPACES / "digits_cnn.yaml", tmp_path / "cache")
    assert cnn.task_options["model"] == "cnn"
    lines = cnn.dimension_lines()
    assert "factorize layers (2): net.1, net.3" in lines
    assert any(line.startswith("prune.scope:") for line in lines)


@pytest.mark.slow
def test_cnn_factorized_pruned_and_int8_runs_integer_convs(tmp_path: Path) -> None:
    from search.compress import build_artifact
    from search.recipe import Recipe
    from search.techniques.factorize import FactorizeConfig
    from search.techniques.prune import PruneConfig
    from search.techniques.quantize import QuantizeConfig

    task = DigitsTask({"model": "cnn", "channels": 8, "epochs": 8, "seed": 0}, tmp_path / "cache")
    model = task.build_model()
    names = ("net.1", "net.3", "net.7")
    recipe = Recipe((FactorizeConfig(layers=("net.3",), rank_ratio=0.5),
                     PruneConfig(ratio=0.25, structure="structured"),
                     QuantizeConfig(layer_bits=tuple((n, "int8") for n in names))))
    base = build_artifact(model, Recipe(), task, tmp_path / "base")
    art = build_artifact(model, recipe, task, tmp_path / "small")
    layers = art.layers
    assert layers["net.1"]["shape"] == [6, 1, 3, 3]  # 8 -> 6 channels
    assert layers["net.3.0"]["shape"] == [8, 6, 3, 3] and layers["net.3.0"]["rank"] == 8  # rank 16 * 0.5
    assert layers["net.3.1"]["shape"] == [12, 8, 1, 1]  # 16 -> 12 channels
    assert layers["net.7"]["shape"] == [10, 12 * 16]  # the head's flattened inputs shrank with them
    assert all(layers[n]["bits"] == "int8" for n in ("net.1", "net.3.0", "net.3.1", "net.7"))
    params = sum(v["params"] for v in layers.values())
    assert params < 0.7 * sum(v["params"] for v in base.layers.values())  # weights only: 2502 vs 3784
    assert art.bytes < base.bytes * 0.85  # on a model this small, Q/DQ scales and names weigh in
    # Which op consumes each layer's weight after ONNX Runtime's optimisation: the int8 conv halves
    # must run as integer convolutions (read by weight name: the layout optimiser renames nodes).
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(art.path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    ops = {i.split(".weight")[0]: n.op_type for n in optimized.graph.node for i in n.input if ".weight" in i}
    assert ops["net.3.0"] == ops["net.3.1"] == ops["net.1"] == "QLinearConv", ops
    accuracy = task.evaluate(lambda feeds: session.run(None, feeds)[0])
    assert accuracy > 0.6, accuracy
