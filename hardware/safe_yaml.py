"""Reading YAML that may be hostile: a space or profile file is input, not code.

`yaml.safe_load` already refuses to build arbitrary objects, but it lets other things
through: the last of two equal keys silently wins, aliases can expand a few lines into
gigabytes (the "billion laughs"), deep nesting ends in a RecursionError, `.nan`/`.inf` pass
every `x < low` check, and a file that is not UTF-8 raises a decode error nobody names.
Here each of those is one `SpaceError` naming the file and the key path, before any value
is built: the document is composed into nodes first (aliases stay shared, so that is
cheap), checked with a bounded walk, and only then constructed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from hardware.errors import SpaceError

MAX_BYTES = 1 << 20  # a space or profile is a page of text; a megabyte is already absurd
MAX_DEPTH = 64  # levels of nesting
MAX_VALUES = 100_000  # nodes after alias expansion
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def read_text(path: Path, what: str = "file") -> str:
    """The file's text, at most MAX_BYTES, strictly UTF-8 (a BOM is allowed)."""
    file = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpaceError(file, "", "no such file", None, show_given=False) from None
    except IsADirectoryError:
        raise SpaceError(file, "", f"is a directory, not a {what}", None, show_given=False) from None
    except OSError as exc:
        raise SpaceError(file, "", f"cannot be read ({exc.strerror})", None, show_given=False) from None
    if len(data) > MAX_BYTES:
        raise SpaceError(file, "", f"is larger than {MAX_BYTES // 1024} KiB; a {what} is a page of text, "
                                   "refusing to read it", None, show_given=False)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpaceError(file, "", f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                                   "save it as UTF-8", None, show_given=False) from None


def _check_nodes(file: str, root: yaml.Node) -> None:
    """Duplicate keys, nesting depth and alias expansion, on the node graph before construction."""
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    seen = 0
    while stack:
        node, path, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise SpaceError(file, path, f"expands to more than {MAX_VALUES} values (through YAML aliases); "
                                         "refusing to build it", None, show_given=False)
        if depth > MAX_DEPTH:
            raise SpaceError(file, path, f"is nested deeper than {MAX_DEPTH} levels", None, show_given=False)
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, _join(path, i), depth + 1) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG:  # `<<: *base`: merged keys may be overridden, by design
                    stack.append((value, path, depth + 1))
                    continue
                if isinstance(key, yaml.ScalarNode):
                    ident = (key.tag, key.value)
                    if ident in lines:
                        raise SpaceError(file, _join(path, key.value),
                                         f"duplicate key (first at line {lines[ident]}, again at line "
                                         f"{key.start_mark.line + 1}); a key may appear once, or the later "
                                         "one would silently win", None, show_given=False)
                    lines[ident] = key.start_mark.line + 1
                    stack.append((value, _join(path, key.value), depth + 1))
                else:
                    raise SpaceError(file, path, "keys must be plain values, not lists or mappings", None,
                                     show_given=False)


def _check_finite(file: str, data: Any) -> None:
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise SpaceError(file, path, "must be a finite number (NaN and infinity are not allowed)", value)
        if isinstance(value, dict):
            stack.extend((v, _join(path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, _join(path, i)) for i, v in enumerate(value))


def loads(text: str, file: str) -> Any:
    """Parse YAML text from `file` (for messages) with every check above."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise SpaceError(file, "", f"is nested too deeply (over {MAX_DEPTH} levels)", None,
                             show_given=False) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or exc.__class__.__name__
            raise SpaceError(file, "", f"is not valid YAML{where}: {str(problem)[:200]}", None,
                             show_given=False) from None
        if node is None:
            return None
        _check_nodes(file, node)
        try:
            data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc.__class__.__name__
            raise SpaceError(file, "", f"is not valid YAML: {str(problem)[:200]}", None, show_given=False) from None
    finally:
        loader.dispose()
    _check_finite(file, data)
    return data


def load_file(path: Path, what: str = "YAML file") -> Any:
    """Read and parse one YAML file; any problem is one SpaceError naming it."""
    return loads(read_text(path, what), str(path))
