"""Quantization-aware training: fine-tune with the deployed quantization in the forward pass.

torch's own FakeQuantize does not survive the dynamo ONNX exporter, so the fake quantization
lives in small modules here, the straight-through estimator passes gradients through the
rounding, and the artifact is written from what was learned:

  int8    input and output activations (uint8, per tensor) and weights (int8, symmetric, per
          output channel) with learned scales (LSQ-style: the scale is a parameter), bias on
          the int32 grid (Gemm) or a float bias after the output Q/DQ (MatMul, rank > 2 inputs).
          The exporter writes explicit Q/DQ with exactly these scales (`graph.qdq_linear`).
  int4    the forward pass uses the weights ONNX Runtime's own MatMulNBits quantizer makes
          of the current weights, so the exported int4 layer computes what training saw.
  int2,   the same per-channel codes and scales the quantize pass stores.
  binary
  fp16    inputs, weights and outputs rounded to fp16.

QAT wraps Linear layers; a Conv layer with a bit-width under QAT is a clear error.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from search.errors import UserError
from search.techniques.base import CompressionState
from search.techniques.quantize.config import INT4_BLOCK, QuantizeConfig, layers_with
from search.techniques.quantize.passes import int4_dequant, lowbit_dequant
from search.techniques.training import fine_tune, task_or_teacher_loss

LR = 5e-4


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _ste(x: torch.Tensor, deployed: torch.Tensor) -> torch.Tensor:
    """Forward: the deployed value; backward: identity to `x`."""
    return x + (deployed - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int,
               qmax: int) -> torch.Tensor:
    """Quantize-dequantize as ONNX Runtime does (round half to even, saturate); gradients reach
    both `x` and `scale` through the straight-through rounding."""
    q = torch.clamp(_round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


class FakeQuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, bits: str, in_range: tuple[float, float], out_range: tuple[float, float],
                 matmul: bool = False, block: int = INT4_BLOCK, reduce_range: bool = False):
        super().__init__()
        self.block = block  # int4: MatMulNBits block size
        # int8 weights in [-127, 127], or in 7 bits ([-64, 64], ORT's reduce_range) so that x86 CPUs
        # without VNNI, whose u8 x s8 kernels add products in saturating int16, compute exactly
        # what training saw (full-range weights overflow there: the deployed model drifts).
        self.w_qmax = 64 if reduce_range else 127
        # `matmul`: inputs of rank > 2, which the exporter writes as MatMul + a float bias Add
        # (2-D inputs become one Gemm, bias inside): the output is quantized before the bias.
        self.linear, self.bits, self.matmul = linear, bits, matmul
        if bits == "int8":
            # Output Q/DQ too: without it ORT fuses Gemm+Relu first and the layer loses QGemm.
            for key, (lo, hi) in (("act", in_range), ("out", out_range)):
                lo, hi = min(lo, 0.0), max(hi, 0.0)
                scale = max(hi - lo, 1e-8) / 255.0
                self.register_buffer(f"{key}_zero_point", torch.tensor(float(np.clip(round(-lo / scale), 0, 255))))
                setattr(self, f"{key}_log_scale", nn.Parameter(torch.tensor(float(np.log(scale)))))
            w_max = linear.weight.detach().abs().amax(dim=1).clamp_min(1e-8)
            self.weight_log_scale = nn.Parameter(torch.log(w_max / self.w_qmax))

    def scales(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.exp(self.act_log_scale), torch.exp(self.weight_log_scale), torch.exp(self.out_log_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.linear.weight, self.linear.bias
        if self.bits == "int8":
            s_a, s_w, s_o = self.scales()
            x = fake_quant(x, s_a, self.act_zero_point, 0, 255)
            w = fake_quant(w, s_w[:, None], 0.0, -self.w_qmax, self.w_qmax)
            if self.matmul:
                y = fake_quant(nn.functional.linear(x, w), s_o, self.out_zero_point, 0, 255)
                return y if b is None else y + b
            if b is not None:
                s_b = s_a * s_w
                # int32 like the deployed bias: a pruned (all-zero) row has a tiny scale.
                b = torch.clamp(_round_ste(b / s_b), -(2**31), 2**31 - 1) * s_b
            return fake_quant(nn.functional.linear(x, w, b), s_o, self.out_zero_point, 0, 255)
        elif self.bits == "int4":
            w = _ste(w, torch.from_numpy(int4_dequant(w.detach().numpy().T, self.block).T.copy()))
        elif self.bits in ("int2", "binary"):
            w = _ste(w, torch.from_numpy(lowbit_dequant(w.detach().numpy(), self.bits, axis=0)))
        elif self.bits == "fp16":
            x, w = _ste(x, x.half().float()), _ste(w, w.half().float())
            b = None if b is None else _ste(b, b.half().float())
            out = nn.functional.linear(x, w, b)
            return _ste(out, out.half().float())
        return nn.functional.linear(x, w, b)

    @torch.no_grad()
    def learned(self) -> dict:
        """The int8 parameters the exporter writes: exactly what the forward pass uses."""
        s_a, s_w, s_o = self.scales()
        w_q = torch.clamp(torch.round(self.linear.weight / s_w[:, None]), -self.w_qmax, self.w_qmax)
        out = {"act_scale": float(s_a), "act_zero_point": int(self.act_zero_point),
               "weight_q": w_q.numpy().astype(np.int8), "weight_scales": s_w.numpy().astype(np.float32),
               "bias_q": None, "out_scale": float(s_o), "out_zero_point": int(self.out_zero_point)}
        if self.linear.bias is not None and not self.matmul:
            bias_q = torch.clamp(torch.round(self.linear.bias.double() / (s_a * s_w).double()), -(2**31), 2**31 - 1)
            out["bias_q"] = bias_q.numpy().astype(np.int32)
        return out


@dataclass
class QatModel:
    """The fine-tuned model with its fake-quant wrappers (what training saw) and the wrapped layers."""

    model: nn.Module
    wrapped: dict[str, FakeQuantLinear]

    def export_ready(self) -> tuple[nn.Module, dict[str, dict]]:
        """A plain copy of the model for export, and the learned int8 parameters per layer."""
        plain = copy.deepcopy(self.model)
        for name, wrapper in self.wrapped.items():
            plain.set_submodule(name, copy.deepcopy(wrapper.linear), strict=True)
        learned = {name: w.learned() for name, w in self.wrapped.items() if w.bits == "int8"}
        return plain.eval(), learned


@torch.no_grad()
def _ranges(model: nn.Module, layers: list[str], state: CompressionState) -> dict[str, tuple]:
    """Min/max of each layer's input and output over the calibration split (the initial scales),
    and whether its input has rank > 2 (the exporter's MatMul form)."""
    ranges: dict[str, list[float]] = {name: [np.inf, -np.inf, np.inf, -np.inf, 2] for name in layers}
    hooks = []
    for name in layers:
        def hook(module, args, output, name=name):
            r, x = ranges[name], args[0]
            if x.dim() > 2:  # MatMul form: the range to quantize is the output before the bias
                output = output - module.bias if module.bias is not None else output
            r[:] = min(r[0], float(x.min())), max(r[1], float(x.max())), \
                min(r[2], float(output.min())), max(r[3], float(output.max())), x.dim()
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        for feeds in state.task.calibration_feeds():
            model(*(torch.from_numpy(feeds[n]) for n in state.task.input_names))
    finally:
        for h in hooks:
            h.remove()
    return {name: ((r[0], r[1]), (r[2], r[3]), r[4] > 2) for name, r in ranges.items()}


def wrap(model: nn.Module, config: QuantizeConfig, state: CompressionState,
         bits: Mapping[str, str] | None = None) -> QatModel:
    """A copy of `model` with each quantized Linear wrapped in its fake-quant module.

    `bits`: the bit-width of each layer of `model` (default: the config's own)."""
    bits = config.layer_bits if bits is None else bits
    model = copy.deepcopy(model).eval()
    layers = [layer for layer, b in bits.items() if b != "fp32"]
    for name in layers:
        if not isinstance(model.get_submodule(name), nn.Linear):
            raise UserError(f"quantize: QAT handles Linear layers; layer {name!r} is "
                            f"{type(model.get_submodule(name)).__name__} (use mode: ptq for it)")
    ranges = _ranges(model, layers_with(bits, "int8"), state)
    wrapped = {}
    for name in layers:
        wrapper = FakeQuantLinear(model.get_submodule(name), bits[name],
                                  *ranges.get(name, ((0.0, 1.0), (0.0, 1.0), False)), block=config.block_size,
                                  reduce_range=config.reduce_range)
        model.set_submodule(name, wrapper, strict=True)
        wrapped[name] = wrapper
    return QatModel(model, wrapped)


def finetune(state: CompressionState, config: QuantizeConfig, bits: Mapping[str, str] | None = None) -> QatModel:
    """`state.model` fine-tuned for `config.qat_epochs` epochs through the fake quantization."""
    qat = wrap(state.model, config, state, bits)
    # Only the quantized layers (and their scales) train: fp32 layers keep what earlier steps
    # made of them (shared values, for one).
    fine_tune(state, qat.model, [p for w in qat.wrapped.values() for p in w.parameters()], epochs=config.qat_epochs,
              lr=LR, loss=task_or_teacher_loss(state))
    return qat
