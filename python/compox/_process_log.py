"""The worker process's own log (not a task log): lines for the operator, on the real stderr.

It writes to ``sys.__stderr__`` on purpose: while a job runs, ``sys.stderr`` is the capture
that feeds the task log, and process messages must not land in an execution's record.
"""

from __future__ import annotations

import logging
import sys

process_log = logging.getLogger("compox.worker")

if not process_log.handlers and sys.__stderr__ is not None:
    _handler = logging.StreamHandler(sys.__stderr__)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    process_log.addHandler(_handler)
    process_log.setLevel(logging.INFO)
    process_log.propagate = False
