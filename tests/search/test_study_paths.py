"""Study names map to safe folder names; nothing is written or removed outside the results directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.errors import UserError
from search.study_paths import check_study_name, inside, remove_inside, study_dir, study_folder


@pytest.mark.parametrize("name", ["../../victim", "..", ".", "/etc", "a/b", "a\\b", "nuit d'été", "日本語", "-rf",
                                  "x" * 300, "CON", " lead"])
def test_every_name_maps_to_one_plain_component_inside_the_results(name: str, tmp_path: Path) -> None:
    folder = study_folder(name)
    assert "/" not in folder and "\\" not in folder and folder not in (".", "..") and len(folder) <= 80
    assert folder[0].isalnum()
    assert study_dir(tmp_path, name).parent == tmp_path / "studies"


def test_plain_names_keep_their_folder_and_others_never_collide() -> None:
    assert study_folder("digits") == "digits" and study_folder("nightly-2.1_a") == "nightly-2.1_a"
    names = ["a/b", "a-b", "a b", "a:b", "A/b", "a//b", "été", "ete"]
    assert len({study_folder(n) for n in names}) == len(names)


@pytest.mark.parametrize("name", ["", "  ", "a\nb", "a\x1b[31mred", "a\u2028b", "x" * 600])
def test_unprintable_names_are_refused(name: str) -> None:
    with pytest.raises(UserError):
        check_study_name(name)


def test_inside_refuses_paths_that_leave_the_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="outside the results directory"):
        inside(tmp_path / "results", tmp_path / "results" / ".." / "victim")
    assert inside(tmp_path, tmp_path / "a" / ".." / "b") == tmp_path / "b"


def test_remove_inside_removes_a_link_never_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("user data")
    results = tmp_path / "results"
    (results / "studies" / "s").mkdir(parents=True)
    link = results / "studies" / "s" / "trial-0"
    link.symlink_to(victim)
    remove_inside(results, link)
    assert not link.exists() and (victim / "keep.txt").read_text() == "user data"
    with pytest.raises(UserError):
        remove_inside(results, results / ".." / "victim")
    assert victim.exists()
