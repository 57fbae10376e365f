"""The HTML report in a real headless Chromium: it loads offline, draws something, runs no script.

Skips cleanly where Chromium is not installed (Debian: `apt-get install -y chromium`).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.driver import default_storage, view_from_storage
from search.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_report import STUDY, run_small_study  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_small_study(tmp_path_factory)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_screenshot_is_not_blank(study_dir: Path, tmp_path: Path) -> None:
    image_mod = pytest.importorskip("PIL.Image")  # pillow comes with matplotlib, which mlflow installs
    paths = write_report(view_from_storage(STUDY, default_storage(study_dir)), tmp_path / "report")
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", paths["html"].as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    image = image_mod.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text, tables and plots, not a single colour
    assert "CONSOLE" not in proc.stderr  # no page errors reported by the browser


@pytest.mark.slow
def test_dom_has_no_script_even_with_hostile_names(study_dir: Path, tmp_path: Path) -> None:
    view = copy.deepcopy(view_from_storage(STUDY, default_storage(study_dir)))
    view.name = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
    paths = write_report(view, tmp_path / "report")
    proc = chromium(tmp_path, "--dump-dom", paths["html"].as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert "Compression search report" in dom
    assert not re.search(r"<script\b", dom, re.I) and not re.search(r"<img\b", dom, re.I)
    assert "pwned" in dom and "<title>Compression search report: &lt;script&gt;" in dom
    assert dom.count("<svg") >= 4  # three objective-pair plots per profile and the hypervolume plot
