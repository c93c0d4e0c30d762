"""Which threads belong to the job the worker is running.

Threads an algorithm starts itself have no ContextVars, so the handler and the runner context
fall back to the process's current ones (``runtime.md`` §2.2, the recommended addition). That
fallback must only serve threads started during the current job: a thread an earlier job left
running would otherwise write progress and log lines into a later, unrelated execution.
``run_job`` snapshots the threads alive when a job starts; those are the earlier ones.

Threads of a long-lived pool that an earlier job created count as earlier ones too; they get
the original's behaviour (no handler, ``task_handler_not_set``). A thread an earlier job left
running that starts new threads during a later job cannot be told apart from the later job's.
"""

from __future__ import annotations

import threading
from typing import FrozenSet

_earlier: FrozenSet[threading.Thread] = frozenset()


def begin_job() -> None:
    """Remember every thread alive now, but the caller, as started before the job."""
    global _earlier
    current = threading.current_thread()
    _earlier = frozenset(thread for thread in threading.enumerate() if thread is not current)


def end_job() -> None:
    global _earlier
    _earlier = frozenset()


def started_before_job() -> bool:
    """Whether the calling thread was already running when the current job began."""
    return threading.current_thread() in _earlier
