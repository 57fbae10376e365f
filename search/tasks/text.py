"""Plain-text sentence files (one sentence per line) for distillation and calibration text.

Paths are given in a task's options; a missing folder or file, or one with no sentences, is
one line naming the option, the path and what is allowed (a UserError: exit status 2, before
any study is written).
"""

from __future__ import annotations

from pathlib import Path

from search.errors import UserError


def text_paths(base: Path, text_dir: str, text_files: str, who: str) -> list[Path]:
    """The files named by `text_dir` (every *.txt in it) and `text_files` (comma-separated),
    relative paths starting at `base`; [] when both are empty."""
    paths: list[Path] = []
    if text_dir:
        folder = base / Path(text_dir).expanduser()  # an absolute path stays absolute
        if not folder.is_dir():
            raise UserError(f"{who}: task.options.text_dir {text_dir!r} ({folder}) is not a folder; give a folder "
                            f"of .txt files (one sentence per line), relative to {base}, or '' for none")
        found = sorted(folder.glob("*.txt"))
        if not found:
            raise UserError(f"{who}: task.options.text_dir {text_dir!r} ({folder}) holds no .txt files "
                            "(one sentence per line)")
        paths += found
    for name in (n.strip() for n in text_files.split(",")):
        if not name:
            continue
        path = base / Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"{who}: task.options.text_files entry {name!r} ({path}) is not a file; give "
                            f"comma-separated .txt files (one sentence per line), relative to {base}")
        paths.append(path)
    return paths


def read_sentences(paths: list[Path], who: str) -> list[str]:
    """Non-empty stripped lines of every file, in file order (duplicates kept: callers deduplicate)."""
    out: list[str] = []
    for path in paths:
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{who}: cannot read text file {path} ({type(exc).__name__}: {exc}); "
                            "expected UTF-8 text, one sentence per line") from None
        kept = [line for line in lines if line]
        if not kept:
            raise UserError(f"{who}: text file {path} has no sentences (expected one sentence per line)")
        out += kept
    return out
