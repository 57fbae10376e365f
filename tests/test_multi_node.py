"""Two machines, simulated by two results directories, one Optuna storage and one MLflow server.

The server is a real `mlflow server --serve-artifacts` process on localhost. Node A runs the
search; its results directory then disappears from view (another machine's disk); node B
exports a trial and writes a report through the server's artifact store.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from search.cli import main

SPACE = {
    "name": "nodes",
    "task": {"name": "digits", "options": {"hidden": 32, "epochs": 3}},
    "hardware": {"profiles": ["ort-cpu"]},
    "constraints": {"max_quality_drop": 0.05},
    "budget": {"trials": 2},
    "techniques": {"quantize": {"bits": ["fp32", "int8"]}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_export_and_report_from_another_node_through_the_mlflow_server(mlflow_server: str, tmp_path: Path,
                                                                       capsys) -> None:
    space = tmp_path / "nodes.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    storage = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"  # stands for the shared PostgreSQL
    (tmp_path / "shared").mkdir()
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"
    common = ["--storage", storage, "--tracking-uri", mlflow_server]
    assert main(["run", str(space), "--results-dir", str(node_a), "--seed", "0", "--no-remeasure", *common]) == 0
    hint = capsys.readouterr().out.split("\nstudy 'nodes'", 1)[1]  # the closing lines name the stores it used
    assert f"compsearch show nodes --json --storage {storage}" in hint and f"--tracking-uri {mlflow_server}" in hint
    original = (node_a / "studies" / "nodes" / "trial-1" / "model.onnx").read_bytes()
    shutil.move(node_a, tmp_path / "elsewhere")  # node A's disk, out of node B's reach

    out = tmp_path / "exported.onnx"
    assert main(["export", "nodes", "--trial", "1", "--out", str(out), "--results-dir", str(node_b), *common]) == 0
    assert out.read_bytes() == original
    assert "| layer |" in out.with_suffix(".md").read_text()  # layers.json came along

    assert main(["report", "nodes", "--results-dir", str(node_b), *common]) == 0
    md = (node_b / "reports" / "nodes" / "report.md").read_text()
    assert "| layer |" in md  # the picks' layer tables, from the artifact store

    # Without the server, node B says where the model is not.
    capsys.readouterr()
    assert main(["export", "nodes", "--trial", "0", "--out", str(tmp_path / "x.onnx"), "--results-dir",
                 str(tmp_path / "node-c"), "--storage", storage]) == 2
    assert "neither in this machine's results" in capsys.readouterr().err
