"""The per-execution attribute dict of runners (``runtime.md`` sections 2.2 and 6).

``BaseRunner.initialize`` puts a fresh dict into :data:`current_runner_context`; attributes
an algorithm sets outside ``load_assets`` live there, so each execution (and each thread that
calls ``initialize`` itself) sees its own values.

A thread started by an algorithm begins with an empty context. For that case the module
remembers the dict of the most recent ``initialize`` in the process; readers fall back to it
when the ContextVar is unset, which is right for a worker that runs one execution at a time.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Dict, Optional

from compox.tasks._job_threads import started_before_job

current_runner_context: ContextVar[Dict[str, Any]] = ContextVar("current_runner_context")

_process_context: Optional[Dict[str, Any]] = None


def begin_runner_context() -> Dict[str, Any]:
    """Install and return a new empty context for the calling thread."""
    global _process_context
    context: Dict[str, Any] = {}
    current_runner_context.set(context)
    _process_context = context
    return context


def active_runner_context() -> Optional[Dict[str, Any]]:
    """The context of this thread, else the process fallback for threads of the current job,
    else ``None``."""
    context = current_runner_context.get(None)
    if context is None and not started_before_job():
        context = _process_context
    return context


def clear_process_fallback() -> None:
    """Forget the fallback once an execution is over, so no later thread inherits it."""
    global _process_context
    _process_context = None


__all__ = ["current_runner_context"]
