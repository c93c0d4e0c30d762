"""Whether a job left the worker's interpreter as the worker needs it.

An algorithm runs in the worker's own interpreter, so it can replace what every later job
relies on: a method of the task handler, a function of ``json`` (which the bridge uses), a
module in ``sys.modules``. Such a worker would fail every later job, so the worker is replaced
after a job that changed any of them (``docs/worker-protocol.md`` §3).

The watched objects are the functions, classes and modules of the ``compox`` package and of a
few standard modules the worker depends on, as they are when :func:`remember` runs (once the
worker has imported what it needs). Data attributes (caches, settings) are not watched: they
change legitimately.
"""

from __future__ import annotations

import sys
import types
from typing import Any, List, Optional, Tuple

WATCHED_STANDARD_MODULES = ("json", "contextvars", "threading", "io", "codecs", "traceback")

_MISSING = object()


def _watched(name: str) -> bool:
    return name == "compox" or name.startswith("compox.") or name in WATCHED_STANDARD_MODULES


def _is_code(value: Any) -> bool:
    return callable(value) or isinstance(
        value, (types.ModuleType, staticmethod, classmethod, property)
    )


def _snapshot() -> List[Tuple[str, Any, str, Any]]:
    """(label, namespace owner, name, object) for every watched object. The owner is
    ``sys.modules``, a module or a class; its ``__dict__`` is read at each check."""
    watched: List[Tuple[str, Any, str, Any]] = []
    for name, module in list(sys.modules.items()):
        if not _watched(name):
            continue
        watched.append((f"sys.modules[{name!r}]", None, name, module))
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                for member, member_value in list(vars(value).items()):
                    if _is_code(member_value):
                        watched.append((f"{name}.{attribute}.{member}", value, member, member_value))
            if _is_code(value):
                watched.append((f"{name}.{attribute}", module, attribute, value))
    return watched


_baseline: List[Tuple[str, Any, str, Any]] = []


def remember() -> None:
    """Take the watched objects as they are now as the ones every job must leave in place."""
    global _baseline
    _baseline = _snapshot()


def first_change() -> Optional[str]:
    """The first watched object that is no longer what it was, or ``None``."""
    modules = sys.modules
    for label, owner, name, expected in _baseline:
        namespace = modules if owner is None else owner.__dict__
        if namespace.get(name, _MISSING) is not expected:
            return label
    return None
