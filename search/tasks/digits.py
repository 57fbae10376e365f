"""Handwritten digits (scikit-learn's bundled 8x8 images) with a small MLP or CNN.

The input is always a flat (batch, 64) float tensor; the CNN reshapes it to 1x8x8 itself,
so export, calibration and measurement are the same for both models.

Fixed split from a seeded permutation: 400 test (the selection split: quality constraint and
every choice) / 200 calibration / 300 report (held out: evaluated only for the final front,
never trained, calibrated or selected on) / 897 train. The report split is carved from what
was the tail of the training data, so the test split is the same 400 images as before. The
model is trained once and cached under `cache_dir`, keyed by a hash of everything that
changes its weights, so a second run reuses it and a changed recipe retrains.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property

import numpy as np
import torch
from torch import nn

from search.params import Rule
from search.tasks.base import Feeds, Predict, ReportQuality, Task

_SPLIT_SEED = 20261127
N_CALIBRATION, N_TEST, N_REPORT = 200, 400, 300


class DigitsMLP(nn.Module):
    def __init__(self, hidden: tuple[int, ...]):
        super().__init__()
        sizes = (64, *hidden)
        blocks: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        blocks.append(nn.Linear(sizes[-1], 10))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """Two 3x3 Conv + ReLU (channels, 2 x channels), a 2x2 max-pool, then a Linear head."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 4 * 4, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS = ("mlp", "cnn")


class DigitsTask(Task):
    name = "digits"
    quality_name = "accuracy"
    input_names = ["x"]
    output_names = ["logits"]
    OPTIONS = {
        "model": Rule("str", default="mlp", choices=MODELS, searchable=False,
                      help="mlp (64-hidden-hidden/2-10) or cnn (two 3x3 convs, max-pool, Linear head)"),
        "channels": Rule("int", default=16, minimum=1, maximum=512, searchable=False,
                         help="cnn only: channels of the first conv; the second has twice as many"),
        "hidden": Rule("int", default=256, minimum=4, maximum=4096, searchable=False,
                       help="width of the first hidden layer; the second is half of it"),
        "epochs": Rule("int", default=60, minimum=1, maximum=1000, searchable=False,
                       help="training epochs of the uncompressed model (cached once trained)"),
        "seed": Rule("int", default=0, minimum=0, searchable=False, help="seed of the data split and the training"),
    }

    @cached_property
    def _splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from sklearn.datasets import load_digits

        data = load_digits()
        x = (data.data / 16.0).astype(np.float32)
        y = data.target.astype(np.int64)
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
        test, calib, train = np.split(order, [N_TEST, N_TEST + N_CALIBRATION])
        train, report = train[:-N_REPORT], train[-N_REPORT:]
        return {"train": (x[train], y[train]), "calibration": (x[calib], y[calib]), "test": (x[test], y[test]),
                "report": (x[report], y[report])}

    def _hidden(self) -> tuple[int, ...]:
        h = int(self.options.get("hidden", 256))
        return (h, max(2, h // 2))

    def _kind(self) -> str:
        return str(self.options.get("model", "mlp"))

    def _architecture(self) -> object:
        return self._hidden() if self._kind() == "mlp" else int(self.options.get("channels", 16))

    def training_key(self) -> str:
        recipe = {"task": self.name, "model": self._kind(), "architecture": self._architecture(),
                  "epochs": self.options.get("epochs", 60),
                  "seed": self.options.get("seed", 0), "split": _SPLIT_SEED, "report": N_REPORT, "version": 2}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    def build_model(self, trained: bool = True) -> nn.Module:
        model = DigitsMLP(self._hidden()) if self._kind() == "mlp" else DigitsCNN(self._architecture())
        if not trained:
            return model.eval()
        path = self.cache_dir / f"digits-{self._kind()}-{self.training_key()}.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        self._train(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)  # atomic: a parallel worker never reads half a file
        return model.eval()

    def _train(self, model: nn.Module) -> None:
        torch.manual_seed(int(self.options.get("seed", 0)))
        x, y = (torch.from_numpy(a) for a in self._splits["train"])
        opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
        model.train()
        for _ in range(int(self.options.get("epochs", 60))):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                idx = perm[i:i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        model.eval()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self._splits["test"][0][:1]),)

    def calibration_feeds(self) -> list[Feeds]:
        x = self._splits["calibration"][0]
        return [{"x": x[i:i + 50]} for i in range(0, len(x), 50)]

    def query_feeds(self, batch_size: int) -> Feeds:
        return {"x": self._splits["test"][0][:batch_size]}

    def _accuracy(self, predict: Predict, split: str) -> float:
        x, y = self._splits[split]
        logits = np.concatenate([predict({"x": x[i:i + 100]}) for i in range(0, len(x), 100)])
        return float((logits.argmax(axis=1) == y).mean())

    def evaluate(self, predict: Predict) -> float:
        return self._accuracy(predict, "test")

    def proxy_quality(self, predict: Predict) -> float:
        """Accuracy on every other image of the test split (200 of its 400)."""
        x, y = (a[::2] for a in self._splits["test"])
        logits = np.concatenate([predict({"x": x[i:i + 100]}) for i in range(0, len(x), 100)])
        return float((logits.argmax(axis=1) == y).mean())

    def evaluate_report(self, predict: Predict) -> ReportQuality:
        return ReportQuality(self._accuracy(predict, "report"))

    def train_batches(self) -> list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]:
        x, y = (torch.from_numpy(a) for a in self._splits["train"])
        return [((x[i:i + 64],), y[i:i + 64]) for i in range(0, len(x), 64)]
