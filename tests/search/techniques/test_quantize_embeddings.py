"""Embedding tables at 8/4/2 bits (GatherBlockQuantized), int4 block sizes and dynamic int8,
on tiny real models run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from torch import nn

from search.errors import SpaceError, UserError
from search.export import Artifact, export_onnx
from search.space import load_space
from search.tasks.digits import DigitsTask
from search.techniques.quantize import Quantize, QuantizeConfig
from search.techniques.quantize import quantize_onnx as apply
from search.techniques.quantize.embeddings import block_dequantize, block_quantize

LAYERS = ("net.0", "net.2", "net.4")


class TinyEncoder(nn.Module):
    """Token ids -> embedding (a 300 x 64 table, most of the bytes) -> mean -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(300, 64)
        self.head = nn.Linear(64, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


IDS = np.random.default_rng(0).integers(0, 300, size=(16, 12)).astype(np.int64)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    model = TinyEncoder().eval()
    return export_onnx(model, (torch.from_numpy(IDS[:2]),), ["ids"], tmp_path_factory.mktemp("enc") / "enc.onnx")


@pytest.mark.parametrize(("bits", "ratio", "max_error"), [("int8", 0.32, 0.01), ("int4", 0.19, 0.12),
                                                         ("int2", 0.13, 0.5)])
def test_embedding_table_shrinks_and_ort_runs_it_from_the_quantized_rows(
        encoder: Artifact, tmp_path: Path, bits: str, ratio: float, max_error: float) -> None:
    config = QuantizeConfig(layer_bits=(("head", "fp32"),), embedding_bits=bits, block_size=32)
    quantized = apply(encoder, config, [], tmp_path / "q.onnx")
    ops = [n.op_type for n in onnx.load(str(quantized.path)).graph.node]
    assert "GatherBlockQuantized" in ops and "Gather" not in ops
    assert quantized.bytes < encoder.bytes * ratio, (quantized.bytes, encoder.bytes)
    ref = session(encoder.path).run(None, {"ids": IDS})[0]
    out = session(quantized.path).run(None, {"ids": IDS})[0]
    error = np.linalg.norm(out - ref) / np.linalg.norm(ref)  # measured: int8 0.005, int4 0.09, int2 0.41
    assert error < max_error, error


def test_numpy_reference_is_exactly_what_the_kernel_gathers(tmp_path: Path) -> None:
    table = np.random.default_rng(1).standard_normal((40, 96)).astype(np.float32)
    model = nn.Embedding(40, 96)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(table))
    ids = np.array([[0, 5, 39, 5]], np.int64)
    artifact = export_onnx(model.eval(), (torch.from_numpy(ids),), ["ids"], tmp_path / "e.onnx")
    for bits in (8, 4, 2):
        name = {8: "int8", 4: "int4", 2: "int2"}[bits]
        q = apply(artifact, QuantizeConfig(layer_bits=(), embedding_bits=name, block_size=32), [],
                  tmp_path / f"q{bits}.onnx")
        out = session(q.path).run(None, {"ids": ids})[0]
        codes, scales = block_quantize(table, bits, 32)
        expect = block_dequantize(codes, scales, bits, 32)[ids]
        np.testing.assert_allclose(out, expect, rtol=1e-3, atol=1e-3)
        # Error shrinks with bits: each level is a real trade.
        assert np.abs(expect - table[ids]).mean() < {8: 0.01, 4: 0.1, 2: 0.45}[bits]


def test_larger_blocks_store_fewer_scales(encoder: Artifact, tmp_path: Path) -> None:
    sizes = [apply(encoder, QuantizeConfig(layer_bits=(("head", "int4"),), embedding_bits="int4", block_size=b),
                   [], tmp_path / f"b{b}.onnx").bytes for b in (16, 32, 64)]
    assert sizes[0] > sizes[1] > sizes[2], sizes


def test_embedding_bits_on_a_model_without_a_table_is_a_clear_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    artifact = export_onnx(model, (torch.randn(2, 16),), ["x"], tmp_path / "mlp.onnx")
    with pytest.raises(UserError, match="no embedding table"):
        apply(artifact, QuantizeConfig(layer_bits=(), embedding_bits="int4"), [], tmp_path / "q.onnx")


def test_dynamic_int8_needs_no_calibration_and_runs_integer_matmuls(tmp_path: Path) -> None:
    task = DigitsTask({"hidden": 128, "epochs": 15, "seed": 0}, tmp_path / "cache")
    fp32 = export_onnx(task.build_model(), task.example_inputs(), task.input_names, tmp_path / "fp32.onnx",
                       output_names=task.output_names)
    config = QuantizeConfig(layer_bits=tuple((layer, "int8") for layer in LAYERS), activations="dynamic")
    quantized = apply(fp32, config, [], tmp_path / "q.onnx")  # no calibration feeds at all
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    base = task.evaluate(lambda f: session(fp32.path).run(None, f)[0])
    sess = ort.InferenceSession(str(quantized.path), so, providers=["CPUExecutionProvider"])
    quality = task.evaluate(lambda f: sess.run(None, f)[0])
    assert base - quality <= 0.03, (base, quality)
    assert quantized.bytes < fp32.bytes * 0.45
    ran = {n.name: n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    for layer in LAYERS:
        assert ran.get(quantized.layer_nodes[layer]) in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"), ran
    assert "int8 dynamic" in config.summary()


def write_space(tmp_path: Path, quantize_yaml: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("name: t\ntask:\n  name: digits\n  options:\n    hidden: 16\n"
                    f"techniques:\n  quantize:\n{quantize_yaml}")
    return path


def test_block_size_must_be_a_power_of_two_listed_not_ranged(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"quantize\.block_size: must be a power of 2.*but got 48"):
        load_space(write_space(tmp_path, "    bits: [int4]\n    block_size: [32, 48]\n"), tmp_path / "c")
    with pytest.raises(SpaceError, match=r"quantize\.block_size: takes a value or a list"):
        load_space(write_space(tmp_path, "    bits: [int4]\n    block_size: {low: 16, high: 64}\n"), tmp_path / "c")
    with pytest.raises(SpaceError, match=r"quantize\.embedding_bits\[0\]: must be one of"):
        load_space(write_space(tmp_path, "    embedding_bits: [int3]\n"), tmp_path / "c")


def test_activation_and_block_knobs_are_sampled_only_where_they_apply(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, "    bits: [fp32, int8, int4]\n    activations: [static, dynamic]\n"
                                             "    calibration: [minmax, percentile]\n"
                                             "    block_size: [32, 64]\n"), tmp_path / "c")
    tech = space.techniques[0]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        config = Quantize().sample(trial, tech)
        if config is not None:
            bits = set(config.layer_bits.values())
            assert ("quantize.activations" in trial.params) == ("int8" in bits)
            assert ("quantize.calibration" in trial.params) == ("int8" in bits and config.activations == "static")
            assert ("quantize.block_size" in trial.params) == ("int4" in bits)
            seen.add(config.activations)
        study.tell(trial, 0.0)
    assert seen == {"static", "dynamic"}


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_zero_and_tiny_rows_quantize_without_dividing_by_zero(bits: int) -> None:
    # A padding row of zeros and one below fp16's range: scales stay positive, the rows read back
    # as (nearly) what they were, and numpy never divides 0 by 0.
    table = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    table[1] = 0.0
    table[2] = 1e-9
    with np.errstate(divide="raise", invalid="raise"):
        codes, scales = block_quantize(table, bits, 32)
    assert (scales.astype(np.float32) > 0).all()
    back = block_dequantize(codes, scales, bits, 32)
    assert np.abs(back[1]).max() == 0.0 and np.abs(back[2]).max() < 1e-6
    assert np.abs(back[0] - table[0]).max() < np.abs(table[0]).max()  # a normal row is still coded
