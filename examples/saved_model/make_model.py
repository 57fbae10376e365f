"""Train the model this example starts from and save its weights, as you would your own.

    python examples/saved_model/make_model.py      # writes digits_mlp.pt beside this file

scikit-learn's bundled digits (nothing is downloaded), a fixed seed, a fixed split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_net import DigitsNet, splits  # noqa: E402


def main(out: Path) -> None:
    torch.manual_seed(0)
    (x, y), _ = splits()
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(40):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    torch.save(net.state_dict(), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "digits_mlp.pt")
