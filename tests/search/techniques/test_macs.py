"""Parameter and multiply-accumulate counts, checked against hand-computed figures."""

from __future__ import annotations

import torch
from torch import nn

from search.techniques.macs import count_nonzero_params, count_params_macs


def test_counts_match_hand_arithmetic() -> None:
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2, bias=False), nn.Flatten(),
                          nn.Linear(64, 10))
    params, macs = count_params_macs(model, (torch.zeros(1, 64),))
    assert params == (4 * 9 + 4) + (4 * 2 * 9) + (64 * 10 + 10)
    # conv1: 4x8x8 outputs x 9; conv2 (groups 2): 4x4x4 outputs x 2x9; linear: 10 x 64.
    assert macs == 4 * 64 * 9 + 4 * 16 * 18 + 640
    assert count_params_macs(model, (torch.zeros(3, 64),))[1] == 3 * macs  # per batch, as documented
    with torch.no_grad():
        model[5].weight[:, :32] = 0.0
    assert count_nonzero_params(model) == params - 320
    assert model.training  # the model's mode is restored
