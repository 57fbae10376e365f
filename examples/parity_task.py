"""A complete user task (see the README, "Bring your own model"): a small classifier on seeded data.

    compsearch run examples/parity.yaml

The data are generated from a fixed seed; the model is trained once with a fixed seed and its
weights cached under the results directory, so every trial compresses the same trained model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from search.params import Rule
from search.tasks import Task

rng = np.random.default_rng(7)
X = rng.standard_normal((2000, 16)).astype(np.float32)
Y = ((X[:, 0] + 0.5 * X[:, 1] - 0.25 * X[:, 2] * X[:, 3]) > 0).astype(np.int64)
TRAIN, CALIB, TEST = slice(0, 1400), slice(1400, 1600), slice(1600, 2000)  # the test split is never trained on


class ParityTask(Task):
    name = "parity"
    quality_name = "accuracy"  # higher is better
    input_names, output_names = ["x"], ["logits"]
    OPTIONS = {"hidden": Rule("int", default=64, minimum=2, searchable=False),
               "epochs": Rule("int", default=60, minimum=1, searchable=False)}

    def _net(self) -> nn.Module:
        h = self.options["hidden"]
        return nn.Sequential(nn.Linear(16, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))

    def build_model(self, trained: bool = True) -> nn.Module:
        torch.manual_seed(0)
        model = self._net()
        if not trained:
            return model.eval()
        cache = self.cache_dir / f"parity-h{self.options['hidden']}-e{self.options['epochs']}.pt"
        if cache.exists():
            model.load_state_dict(torch.load(cache))
            return model.eval()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        x, y = torch.from_numpy(X[TRAIN]), torch.from_numpy(Y[TRAIN])
        for _ in range(self.options["epochs"]):
            for i in range(0, len(x), 100):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[i:i + 100]), y[i:i + 100]).backward()
                opt.step()
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
        return model.eval()

    def example_inputs(self):  # for export
        return (torch.from_numpy(X[:1]),)

    def calibration_feeds(self):  # never the test split
        return [{"x": X[CALIB]}]

    def query_feeds(self, batch_size):  # one latency query
        return {"x": X[:batch_size]}

    def evaluate(self, predict):  # predict runs the artifact on the backend: quality is measured there
        return float((predict({"x": X[TEST]}).argmax(1) == Y[TEST]).mean())

    def train_batches(self):  # for distillation and QAT
        return [((torch.from_numpy(X[i:i + 100]),), torch.from_numpy(Y[i:i + 100])) for i in range(0, 1400, 100)]


def make_task():
    return ParityTask
