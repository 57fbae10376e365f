"""The shortest path: a trained model file, its data, and a score function (search.tasks.simple)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from search.errors import UserError
from search.tasks.simple import ArrayData, ModelTask

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_net import DigitsNet, splits  # noqa: E402


class SavedDigits(ModelTask):
    name = "saved-digits"
    quality_name = "accuracy"

    def check_data(self) -> None:  # runs at `compsearch validate`: one clear line if the weights are missing
        if not (HERE / "digits_mlp.pt").exists():
            raise UserError(f"{HERE / 'digits_mlp.pt'} is missing: run python {HERE / 'make_model.py'} first")

    def load_model(self):
        net = DigitsNet()
        net.load_state_dict(torch.load(HERE / "digits_mlp.pt"))
        return net

    def data(self) -> ArrayData:
        (x_train, y_train), (x_eval, y_eval) = splits()
        return ArrayData(x_train, y_train, x_eval, y_eval)

    def score(self, outputs, labels) -> float:
        return float((outputs.argmax(1) == labels).mean())
