"""The ContextVar holding the active handler (``runtime.md`` section 6).

``TaskHandler.set_as_current_handler`` sets it before the algorithm is loaded, so
``load_assets`` can already fetch assets. Like the runner context, the most recent handler
of the process is remembered for threads an algorithm starts itself.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Optional

from compox.tasks._job_threads import started_before_job

current_handler: ContextVar[Any] = ContextVar("current_handler")

_process_handler: Optional[Any] = None


def set_current_handler(handler: Any) -> None:
    global _process_handler
    current_handler.set(handler)
    _process_handler = handler


def active_handler() -> Optional[Any]:
    """The handler of this thread, else the process fallback for threads of the current job,
    else ``None``."""
    handler = current_handler.get(None)
    if handler is None and not started_before_job():
        handler = _process_handler
    return handler


def clear_process_fallback() -> None:
    global _process_handler
    _process_handler = None


__all__ = ["current_handler"]
