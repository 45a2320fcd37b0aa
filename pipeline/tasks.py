"""Find a task's functions from the spec's ``task:`` string.

A task is any importable module with ``run(params, ctx) -> dict`` and
``summarize(raw) -> dict``, and optionally ``validate(params)`` and
``plots(df, outdir)``. The spec names it as ``package.module:run`` (the function after
the colon is the entry point; the others are looked up in the same module) or by a
short name from ``ecc_kv.experiments.TASKS``, imported lazily so the pipeline works
without ``ecc_kv`` installed.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

REGISTRY_MODULE = "ecc_kv.experiments"


class TaskError(ValueError):
    """The task string does not name a usable task (import failure, missing function)."""


@dataclass(frozen=True)
class Task:
    """A resolved task: its dotted path and the functions the pipeline calls."""

    path: str
    run: Callable[..., dict[str, Any]]
    summarize: Callable[[dict[str, Any]], dict[str, Any]]
    validate: Callable[[dict[str, Any]], Any] | None
    plots: Callable[..., Any] | None
    module: ModuleType


def registry() -> dict[str, str]:
    """Short task names -> dotted paths; empty when the registry package is not importable."""
    try:
        mod = importlib.import_module(REGISTRY_MODULE)
    except ImportError:
        return {}
    tasks = getattr(mod, "TASKS", {})
    return dict(tasks) if isinstance(tasks, dict) else {}


def resolve_task_path(name: str) -> str:
    """``"gemm_shapes"`` -> ``"ecc_kv.experiments.gemm_shapes:run"``; dotted paths pass through."""
    name = name.strip()
    if ":" in name:
        module, _, func = name.partition(":")
        if not module or not func or not all(p.isidentifier() for p in module.split(".")) or not func.isidentifier():
            raise TaskError(f"malformed task path {name!r}: expected 'package.module:function'")
        return name
    known = registry()
    if name in known:
        return known[name]
    if not known:
        raise TaskError(f"unknown task {name!r}: not a 'package.module:function' path, and no short names "
                        f"are available ({REGISTRY_MODULE} is not importable)")
    raise TaskError(f"unknown task {name!r}: use 'package.module:function' or one of: {', '.join(sorted(known))}")


def load_task(path: str) -> Task:
    """Import the task module and pick its functions; ``TaskError`` says what is missing."""
    path = resolve_task_path(path)
    module_name, _, func_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise TaskError(f"cannot import task module '{module_name}': module '{exc.name}' not found") from None
        raise TaskError(f"importing task module '{module_name}' failed: {exc}\n{traceback.format_exc()}") from None
    except Exception as exc:  # a task module that crashes at import: show where
        raise TaskError(f"importing task module '{module_name}' failed: {type(exc).__name__}: {exc}\n"
                        f"{traceback.format_exc()}") from None
    run = getattr(module, func_name, None)
    if not callable(run):
        funcs = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise TaskError(f"module '{module_name}' has no function '{func_name}'; it has: {', '.join(funcs) or 'none'}")
    summarize = getattr(module, "summarize", None)
    if not callable(summarize):
        raise TaskError(f"module '{module_name}' has no 'summarize(raw) -> dict' function; every task needs one")
    validate = getattr(module, "validate", None)
    plots = getattr(module, "plots", None)
    return Task(path=path, run=run, summarize=summarize, validate=validate if callable(validate) else None,
                plots=plots if callable(plots) else None, module=module)
