"""Parameter and multiply-accumulate counts of a PyTorch model, as the issue asks per trial.

MACs are counted for the layers that carry the arithmetic: Linear (output elements x
in_features) and Conv1d/Conv2d (output elements x in_channels/groups x kernel elements),
measured with forward hooks on one run of `example_inputs`, so factorized and pruned
layers are counted at the shapes they really have. Activations, norms, pooling and adds
are not counted (they are a small fraction for these models). Unstructured zeros still
count: dense kernels multiply them, which is exactly why unstructured pruning gives no
speed-up on them; `count_nonzero_params` gives the stored-information view.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def count_params_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(parameter count, MACs of one forward pass on `example_inputs`). MACs scale with the batch
    size of `example_inputs`; pass a batch of 1 for per-sample MACs."""
    params = sum(p.numel() for p in model.parameters())
    macs = 0

    def linear_hook(module: nn.Linear, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        macs += output.numel() * module.in_features

    def conv_hook(module: nn.Conv1d | nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        per_output = (module.in_channels // module.groups) * module.weight[0, 0].numel()
        macs += output.numel() * per_output

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            handles.append(module.register_forward_hook(conv_hook))
    was_training = model.training
    try:
        model.eval()
        model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(params), int(macs)


def count_nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero (what unstructured pruning reduces)."""
    return int(sum(int((p != 0).sum()) for p in model.parameters()))
