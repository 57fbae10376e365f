"""Per-layer bit-widths on a real digits MLP, written by the quantize pass and run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from hardware.profiles import load_profile, make_backend
from search.errors import SpaceError, UserError
from search.export import Artifact, export_onnx
from search.space import load_space
from search.tasks.digits import DigitsTask
from search.techniques import graph as rw
from search.techniques.quantize import (
    BITS,
    Quantize,
    QuantizeConfig,
    int4_dequant,
    lowbit_codes,
    lowbit_dequant,
)
from search.techniques.quantize import quantize_onnx as apply

LAYERS = ("net.0", "net.2", "net.4")


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> DigitsTask:
    return DigitsTask({"hidden": 128, "epochs": 15, "seed": 0}, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def fp32(task: DigitsTask, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return export_onnx(task.build_model(), task.example_inputs(), task.input_names,
                       tmp_path_factory.mktemp("fp32") / "fp32.onnx", output_names=task.output_names)


@pytest.fixture(scope="module")
def backend():
    return make_backend(load_profile("ort-cpu"))


def run(backend, task: DigitsTask, artifact: Artifact) -> tuple[float, dict[str, str]]:
    """Accuracy on ORT's own outputs and the op each layer ran as (no timing loop: fast)."""
    prepared = backend.prepare(artifact)
    return task.evaluate(prepared.run), prepared.kernels()


def quantize(fp32: Artifact, task: DigitsTask, tmp_path: Path, bits: tuple[str, ...], **kw) -> Artifact:
    config = QuantizeConfig(layer_bits=tuple(zip(LAYERS, bits, strict=True)), **kw)
    return apply(fp32, config, task.calibration_feeds(), tmp_path / "q.onnx")


# bits -> (largest bytes ratio against fp32, largest accuracy drop, op the layers must run as)
EXPECT = {
    "fp16": (0.6, 0.01, ("Gemm", "FusedGemm")),  # CPU EP: no fp16 Gemm, ORT casts and runs fp32
    "int8": (0.45, 0.03, ("QGemm",)),
    "int4": (0.3, 0.03, ("MatMulNBits",)),
    "int2": (0.3, 0.1, ("Gemm", "FusedGemm")),  # simulated: fp32 kernel on decoded weights
    "binary": (0.25, 0.5, ("Gemm", "FusedGemm")),
}


@pytest.mark.parametrize("bits", list(EXPECT))
def test_each_bit_width_shrinks_bytes_keeps_quality_and_records_its_kernel(
        bits: str, task: DigitsTask, fp32: Artifact, backend, tmp_path: Path) -> None:
    ratio, max_drop, ops = EXPECT[bits]
    base_quality, _ = run(backend, task, fp32)
    artifact = quantize(fp32, task, tmp_path, (bits,) * 3)
    quality, kernels = run(backend, task, artifact)
    assert artifact.bytes < fp32.bytes * ratio, (artifact.bytes, fp32.bytes)
    assert base_quality > 0.9 and base_quality - quality <= max_drop, (base_quality, quality)
    assert all(kernels[layer].split(".")[-1] in ops for layer in LAYERS), kernels


def test_fp16_stores_fp16_weights_and_computes_the_node_in_fp16(task, fp32, tmp_path: Path) -> None:
    artifact = quantize(fp32, task, tmp_path, ("fp16", "fp32", "fp32"))
    model = onnx.load(str(artifact.path))
    node = rw.node_by_name(model, artifact.layer_nodes["net.0"])
    weight = rw.get_initializer(model, node.input[1])
    assert weight.dtype == np.float16 and weight.shape == (128, 64)
    assert rw.get_initializer(model, "net.2.weight").dtype == np.float32
    casts = [n for n in model.graph.node if n.op_type == "Cast" and n.name.startswith(node.name)]
    assert len(casts) == 2  # fp32 -> fp16 in, fp16 -> fp32 out


def test_low_bit_weights_are_stored_packed_with_a_scale_per_channel(task, fp32, tmp_path: Path) -> None:
    artifact = quantize(fp32, task, tmp_path, ("int2", "binary", "fp32"))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(artifact.path)).graph.initializer}
    assert "net.0.weight" not in inits and "net.2.weight" not in inits
    assert inits["net.0.weight_lowbit_packed"].dtype == np.uint8
    assert inits["net.0.weight_lowbit_packed"].size == 128 * 64 // 4  # 2 bits each
    assert inits["net.2.weight_lowbit_packed"].size == 64 * 128 // 8  # 1 bit each
    assert inits["net.0.weight_lowbit_scale"].shape == (128, 1)


def test_mixed_bits_in_one_artifact_run_their_own_kernels(task, fp32, backend, tmp_path: Path) -> None:
    artifact = quantize(fp32, task, tmp_path, ("int8", "int4", "binary"))
    quality, kernels = run(backend, task, artifact)
    assert kernels["net.0"].endswith("QGemm")
    assert kernels["net.2"] == "com.microsoft.MatMulNBits"
    assert kernels["net.4"].split(".")[-1] in ("Gemm", "FusedGemm")
    assert artifact.layer_nodes["net.2"].endswith("_Q4")  # the node the int4 layer runs as now
    assert quality > 0.7  # binary last layer: 0.885-0.91 over reruns (training is not bit-exact); chance is 0.1


@pytest.mark.parametrize("bits", [("int8", "int4", "fp16"), ("fp16", "int8", "int4"), ("int4", "fp16", "int8")])
def test_int8_dynamic_beside_int4_and_fp16_layers_runs(task, fp32, backend, tmp_path: Path, bits) -> None:
    """Sensitivity-guided assignments mix bit-widths in any order: each pass leaves the others' nodes
    runnable (int4 and fp16 beside int8 dynamic once broke the graph)."""
    artifact = quantize(fp32, task, tmp_path, bits, activations="dynamic")
    quality, kernels = run(backend, task, artifact)
    by_bits = dict(zip(bits, LAYERS, strict=True))
    assert kernels[by_bits["int4"]] == "com.microsoft.MatMulNBits"
    assert kernels[by_bits["int8"]].split(".")[-1] in ("DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat")
    assert quality > 0.8


def test_int4_reference_matches_what_matmulnbits_computes(task, fp32, tmp_path: Path) -> None:
    import onnxruntime as ort

    artifact = quantize(fp32, task, tmp_path, ("int4", "int4", "int4"))
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    model = task.build_model()
    with torch.no_grad():
        for layer in LAYERS:
            linear = model.get_submodule(layer)
            linear.weight.copy_(torch.from_numpy(int4_dequant(linear.weight.numpy().T).T.copy()))
        x = task.query_feeds(64)["x"]
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, atol=1e-4)


def test_lowbit_codes_use_their_levels_and_int2_beats_binary() -> None:
    w = np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32)
    codes, levels, scales = lowbit_codes(w, "binary")
    assert set(np.unique(codes)) == {0, 1} and scales.shape == (16,)
    assert np.allclose(np.abs(lowbit_dequant(w, "binary")), scales[:, None])
    codes2, _, _ = lowbit_codes(w, "int2")
    assert set(np.unique(codes2)) <= {0, 1, 2, 3}
    err = {b: float(((w - lowbit_dequant(w, b)) ** 2).mean()) for b in ("int2", "binary")}
    assert err["int2"] < err["binary"] < float((w ** 2).mean())


@pytest.mark.parametrize("nbits", [1, 2, 4, 8])
def test_pack_unpack_round_trip(nbits: int) -> None:
    codes = np.random.default_rng(nbits).integers(0, 1 << nbits, size=(7, 5))
    packed = rw.pack_codes(codes, nbits)
    assert packed.size == -(-codes.size * nbits // 8)
    np.testing.assert_array_equal(rw.unpack_codes(packed, nbits, codes.size).reshape(7, 5), codes)
    if nbits < 8:
        with pytest.raises(ValueError, match="does not fit"):
            rw.pack_codes(np.array([1 << nbits]), nbits)


def test_bad_configs_and_layers_fail_clearly(task, fp32, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantizeConfig(layer_bits=(("net.0", "int3"),))
    with pytest.raises(ValueError, match="qat_epochs >= 1"):
        QuantizeConfig(layer_bits=(("net.0", "int8"),), mode="qat", qat_epochs=0)
    with pytest.raises(UserError, match="no node in the exported ONNX graph"):
        apply(fp32, QuantizeConfig(layer_bits=(("net.9", "int4"),)), [], tmp_path / "q.onnx")


def test_int4_on_a_conv_layer_is_a_clear_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.Flatten()).eval()
    artifact = export_onnx(model, (torch.randn(1, 64),), ["x"], tmp_path / "conv.onnx")
    with pytest.raises(UserError, match="cannot become a MatMul"):
        apply(artifact, QuantizeConfig(layer_bits=(("1", "int4"),)), [], tmp_path / "q.onnx")


def write_space(tmp_path: Path, quantize_yaml: str, task_options: str = "hidden: 16") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"name: t\ntask:\n  name: digits\n  options:\n    {task_options}\n"
                    f"techniques:\n  quantize:\n{quantize_yaml}")
    return path


def test_qat_epochs_is_sampled_only_under_qat(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, "    bits: [int8, int4]\n    mode: [ptq, qat]\n"
                                             "    qat_epochs: {low: 1, high: 3}\n"), tmp_path / "cache")
    tech = space.techniques[0]
    layers = space.technique_layers(tech)
    assert [layer.name for layer in layers] == list(LAYERS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        config = Quantize().sample(trial, tech)
        seen.add(config.mode)
        assert ("quantize.qat_epochs" in trial.params) == (config.mode == "qat")
        assert config.mode == "qat" or config.qat_epochs == 0
        study.tell(trial, 0.0)
    assert seen == {"ptq", "qat"}
    assert set(BITS) == {"fp32", "fp16", "int8", "int4", "int2", "binary"}


def test_space_rejects_int4_and_qat_on_conv_layers(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"quantize\.bits.*'int4' handles Linear layers only"):
        load_space(write_space(tmp_path, "    bits: [fp32, int4]\n", "model: cnn"), tmp_path / "cache")
    with pytest.raises(SpaceError, match=r"quantize\.mode.*'qat' handles Linear layers only"):
        load_space(write_space(tmp_path, "    bits: [fp32, int8]\n    mode: [ptq, qat]\n", "model: cnn"),
                   tmp_path / "cache")
    load_space(write_space(tmp_path, "    layers: 'net.7'\n    bits: [fp32, int4]\n", "model: cnn"),
               tmp_path / "cache")


def test_int4_leaves_the_other_matmul_layers_alone(tmp_path: Path) -> None:
    # Linear on 3-D input exports as MatMul, which ORT's int4 quantizer takes by default.
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    artifact = export_onnx(model, (torch.randn(1, 4, 32),), ["x"], tmp_path / "seq.onnx")
    quantized = apply(artifact, QuantizeConfig(layer_bits=(("0", "int4"), ("2", "fp32"))), [], tmp_path / "q.onnx")
    ops = {n.name: n.op_type for n in onnx.load(str(quantized.path)).graph.node}
    assert ops[quantized.layer_nodes["0"]] == "MatMulNBits"
    assert ops[quantized.layer_nodes["2"]] == "MatMul"
