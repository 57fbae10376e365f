"""`--workers`: each worker gets the coordinator's run options as numbers, exactly."""

from __future__ import annotations

from pathlib import Path

from search.cli import build_parser, run_options
from search.options import RunOptions
from search.space import load_space
from search.workers import worker_command

ROOT = Path(__file__).resolve().parents[2]


def test_a_worker_reads_back_exactly_the_limits_it_was_given(tmp_path: Path) -> None:
    space = load_space(ROOT / "spaces" / "digits.yaml", tmp_path / "cache")
    options = RunOptions(study="s", trials=9, timeout_s=None, storage=f"journal:{tmp_path / 'j'}",
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", results_dir=tmp_path, seed=3, workers=2,
                         trial_timeout_s=90.75, trial_memory_bytes=4 * 10**9 + 7)
    left = 1234.5678901234567  # what is left of the coordinator's --timeout, to the last bit
    argv = worker_command(str(ROOT / "spaces" / "digits.yaml"), options, 1, left)
    assert "--trial-memory" not in argv and "--trial-timeout" not in argv and "--timeout" not in argv
    args = build_parser().parse_args(argv[3:])  # drop `python -m search`
    got = run_options(args, space)
    assert got.timeout_s == left and got.trial_timeout_s == 90.75
    assert got.trial_memory_bytes == 4 * 10**9 + 7  # bytes, not MiB read back as MB
    assert (got.study, got.trials, got.seed, got.worker_index) == ("s", 9, 3, 1)
    assert (got.storage, got.tracking_uri, got.results_dir) == (options.storage, options.tracking_uri, tmp_path)
