"""User tasks: a space names its own model as `module:function` or `path/to/file.py:function`.

    task:
      name: "mypkg.tasks:make_task"        # an importable module
      name: "tasks/my_task.py:make_task"   # or a file, relative to the space file (then the CWD)

The named object is either a `Task` subclass or a function taking no arguments that returns
a `Task` subclass or a `Task` instance. Naming a module imports it, and importing runs its
code (as `import` does); beyond that nothing is called unless it is a task factory: a
function defined in that module, taking no arguments, in a module that has a Task class.
It is loaded when the space is validated, checked
against the contract, and registered in `TASKS` under the spec string, so the driver finds
it like a built-in. Any failure is one `SpaceError` line naming the file and `task.name`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from search.errors import SpaceError, allowed_list, did_you_mean
from search.mlflow_names import RESERVED, key_problem
from search.params import Rule
from search.tasks.base import Task

KEY = "task.name"


def is_user_spec(name: object) -> bool:
    return isinstance(name, str) and ":" in name


def resolve_task(name: object, file: str, tasks: dict[str, type[Task]]) -> type[Task]:
    """The Task class for a built-in name or a user spec; user tasks are added to `tasks`."""
    if isinstance(name, str) and name in tasks:
        return tasks[name]
    if not is_user_spec(name):
        raise SpaceError(file, KEY, f"must be a built-in task ({allowed_list(tasks)}) or 'module:function' / "
                                    f"'path/to/file.py:function'{did_you_mean(str(name), tasks)}", name)
    cls = load_user_task(str(name), file)
    tasks[str(name)] = cls
    return cls


def load_user_task(spec: str, file: str) -> type[Task]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise SpaceError(file, KEY, "a user task must be 'module:function' or 'path/to/file.py:function'", spec)
    module = _import_file(target, spec, file) if _looks_like_file(target) else _import_module(target, spec, file)
    if not hasattr(module, attr):
        public = [n for n in vars(module) if not n.startswith("_")]
        raise SpaceError(file, KEY, f"{target} has no attribute {attr!r}{did_you_mean(attr, public)}", spec)
    obj = getattr(module, attr)
    if not (inspect.isclass(obj) and issubclass(obj, Task)):
        # Never call just anything a space names (`sys:exit`, `os:abort`): only a function written
        # as a task factory, i.e. defined in that module, taking no arguments, beside a Task class.
        why = _not_a_factory(obj, module)
        if why:
            raise SpaceError(file, KEY, f"{attr} is not a task factory ({why}); give a search.tasks.Task subclass "
                                        "or a function without arguments, defined in that module, that returns one",
                             spec)
        try:
            obj = obj()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure in user code is reported on one line
            raise SpaceError(file, KEY, f"{attr}() raised {type(exc).__name__}: {_first_line(exc)}", spec) from None
    return _check_contract(obj, spec, file)


def _not_a_factory(obj: object, module: Any) -> str:
    """Why `obj` is not a task factory of `module` (empty when it is one)."""
    if inspect.isclass(obj):
        return f"it is the class {obj.__name__}, not a subclass of search.tasks.Task"
    if not inspect.isfunction(obj):
        return f"it is a {type(obj).__name__}, not a Python function"
    if getattr(obj, "__module__", None) != module.__name__:
        return f"it is defined in {getattr(obj, '__module__', '?')}, not in the module named"
    required = [p.name for p in inspect.signature(obj).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        return f"it takes arguments: {', '.join(required)}"
    if not any(inspect.isclass(v) and issubclass(v, Task) for v in vars(module).values()):
        return "its module has no search.tasks.Task class"
    return ""


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_module(target: str, spec: str, file: str) -> Any:
    try:
        return importlib.import_module(target)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - ImportError or an error inside the user's module
        raise SpaceError(file, KEY, f"cannot import module {target!r} ({type(exc).__name__}: "
                                    f"{_first_line(exc)})", spec) from None


def _import_file(target: str, spec: str, file: str) -> Any:
    # Relative paths: next to the space file first (a space travels with its task), then the CWD.
    candidates = [Path(target)] if Path(target).is_absolute() else [Path(file).parent / target, Path(target)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        tried = ", ".join(str(p) for p in dict.fromkeys(candidates))
        raise SpaceError(file, KEY, f"no such file {target!r} (looked at {tried})", spec)
    path = path.resolve()
    # One module per file path: loading the same file twice reuses the first module.
    mod_name = "compsearch_user_task_" + "".join(c if c.isalnum() else "_" for c in str(path))
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise SpaceError(file, KEY, f"{path} cannot be imported as a Python module", spec)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a syntax or import error inside the user's file
        del sys.modules[mod_name]
        raise SpaceError(file, KEY, f"importing {path} failed ({type(exc).__name__}: {_first_line(exc)})",
                         spec) from None
    return module


def _check_contract(obj: object, spec: str, file: str) -> type[Task]:
    if isinstance(obj, Task):
        cls = _bind_instance(obj)
    elif inspect.isclass(obj) and issubclass(obj, Task):
        cls = obj
    else:
        raise SpaceError(file, KEY, "must give a subclass of search.tasks.Task (or an instance of one); "
                                    f"it gave a {type(obj).__name__}", spec)
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise SpaceError(file, KEY, f"task class {cls.__name__} does not implement {', '.join(missing)}", spec)
    if not isinstance(getattr(cls, "quality_name", None), str):
        raise SpaceError(file, KEY, f"task class {cls.__name__}: quality_name must be a string", spec)
    problem = key_problem(cls.quality_name) or (
        "is one of compsearch's own metric names" if cls.quality_name in RESERVED else None)
    if problem:
        raise SpaceError(file, KEY, f"task class {cls.__name__}: quality_name {cls.quality_name!r} {problem}", spec)
    options = getattr(cls, "OPTIONS", None)
    if not isinstance(options, dict) or not all(isinstance(r, Rule) for r in options.values()):
        raise SpaceError(file, KEY, f"task class {cls.__name__}: OPTIONS must map option names to "
                                    "search.params.Rule", spec)
    if not isinstance(getattr(cls, "name", None), str):
        cls.name = spec  # the spec is as good a name as any for reports
    return cls


def _bind_instance(instance: Task) -> type[Task]:
    """A class whose construction hands back `instance` with the space's options and cache dir.

    The driver builds tasks as `cls(options, cache_dir)`; a factory that already built its
    task keeps its own state this way instead of being constructed a second time.
    """
    base = type(instance)

    def __new__(cls, options: dict[str, Any], cache_dir: Path) -> Task:  # noqa: N807
        instance.options = {**getattr(instance, "options", {}), **options}
        instance.cache_dir = cache_dir
        return instance

    # __new__ returns an instance of `base`, not of the bound class, so __init__ is not run again.
    return type(f"{base.__name__}Instance", (base,), {"__new__": __new__, "__module__": base.__module__})


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""
