"""Which threads belong to the job the worker is running.

Threads an algorithm starts itself have no ContextVars, so the handler and the runner context
fall back to the process's current ones (``runtime.md`` §2.2, the recommended addition). That
fallback must only serve the current job's threads: a thread an earlier job left running would
otherwise write progress and log lines into a later, unrelated execution.

A thread belongs to the job during which it was started, or, when a thread started it, to that
thread's job: a timer an earlier job keeps re-arming stays that job's. ``threading.Thread.start``
records this on each thread. Threads that exist when a job begins without such a mark (started
before any job, or outside ``threading``) count as earlier ones.

Threads of a long-lived pool that an earlier job created are earlier ones too; they get the
original's behaviour (no handler, ``task_handler_not_set``).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, FrozenSet, Optional

# The running job's number; 0 between jobs, -1 marks threads from before a job.
_EARLIER = -1
_job = 0
_jobs_started = 0
_unmarked_earlier: FrozenSet[threading.Thread] = frozenset()
_raw_earlier_idents: FrozenSet[int] = frozenset()
_OWNER = "_compox_job"


def begin_job() -> None:
    """Start a new job number and remember the unmarked threads alive now as earlier ones."""
    global _job, _jobs_started, _unmarked_earlier, _raw_earlier_idents
    current = threading.current_thread()
    threads = [thread for thread in threading.enumerate() if thread is not current]
    _unmarked_earlier = frozenset(t for t in threads if getattr(t, _OWNER, None) is None)
    # Threads started with `_thread` appear in `threading` only once they call into it.
    known = {thread.ident for thread in threads} | {current.ident}
    _raw_earlier_idents = frozenset(set(sys._current_frames()) - known)
    _jobs_started += 1
    _job = _jobs_started


def end_job() -> None:
    global _job, _unmarked_earlier, _raw_earlier_idents
    _job = 0
    _unmarked_earlier = frozenset()
    _raw_earlier_idents = frozenset()


def started_before_job() -> bool:
    """Whether the calling thread belongs to an earlier job than the running one."""
    return _owner(threading.current_thread()) != _job


def _owner(thread: threading.Thread) -> int:
    marked: Optional[int] = getattr(thread, _OWNER, None)
    if marked is not None:
        return marked
    if thread in _unmarked_earlier:
        return _EARLIER
    dummy = getattr(threading, "_DummyThread", ())
    if isinstance(thread, dummy) and thread.ident in _raw_earlier_idents:
        return _EARLIER
    return _job


_start = threading.Thread.start


def _start_marked(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
    try:
        setattr(self, _OWNER, _owner(threading.current_thread()))
    except AttributeError:  # a subclass with __slots__: judged by the snapshot instead
        pass
    _start(self, *args, **kwargs)


threading.Thread.start = _start_marked  # type: ignore[method-assign]
