"""``BenchmarkHandler``: the task handler of a benchmark job (``training.md`` §5).

A benchmark record (``benchmark-store``) holds only ``status``, ``time_completed``, ``log``
and ``data`` besides what the server wrote at submission. So this handler keeps ``progress``,
the resolved device and the session token in memory, writes nothing else, and finishes in a
single write each way:

* COMPLETED: ``status``, ``time_completed``, ``log`` and ``data`` together (the original wrote
  ``status`` before ``data``, so a poller could see COMPLETED with ``data={}``, §5.7).
* FAILED: ``status``, ``time_completed``, ``data={}`` and ``log``.

``data`` must be a dict; numpy scalars and arrays in it become plain numbers and lists, and
anything else that JSON cannot carry fails the benchmark with a clear code (§5.7 fix).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from compox._time import record_timestamp
from compox.exceptions import CompoxTaskError
from compox.tasks.TaskHandler import TaskHandler

# The fields of a benchmark record a worker may write.
_BENCHMARK_FIELDS = frozenset({"status", "time_completed", "log", "data"})


def json_safe_results(results: Any) -> Dict[str, Any]:
    """The benchmark's return value as a JSON-safe dict (None becomes ``{}``)."""
    if results is None:
        return {}
    if not isinstance(results, dict):
        raise CompoxTaskError(
            f"benchmark() must return a dict, got {type(results).__name__}.",
            code="invalid_benchmark_results",
            details={"type": type(results).__name__},
        )

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        for method in ("tolist", "item"):
            if hasattr(value, method) and type(value).__module__.startswith("numpy"):
                return convert(getattr(value, method)())
        return value

    converted = convert(results)
    try:
        json.dumps(converted, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise CompoxTaskError(
            f"benchmark() returned values that are not JSON-serialisable: {error}",
            code="benchmark_results_not_serializable",
            cause=error,
        ) from error
    return converted


class BenchmarkHandler(TaskHandler):
    """Record writes of a benchmark; see the module docs for what is stored."""

    _RECORD_STORAGE_NAME = "benchmark-store"
    _RECORD_ID_FIELD = "benchmark_id"
    _TASK_KIND = "benchmark"

    @property
    def progress(self) -> float:
        return self._progress

    @progress.setter
    def progress(self, value: float) -> None:
        # Kept in memory only: the benchmark record has no progress (§5.2).
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Progress must be between 0 and 1. Got: {value}")
        self._progress = value

    def _write_record(self, fields: Dict[str, Any], field_name: str) -> None:
        kept = {k: v for k, v in fields.items() if k in _BENCHMARK_FIELDS}
        if kept:
            super()._write_record(kept, field_name)

    def mark_as_completed(self, data: Optional[Dict[str, Any]] = None) -> None:  # type: ignore[override]
        results = json_safe_results(data)
        self._task_log.drain()
        self._progress = 1.0
        now = record_timestamp()
        self._log_file_stats()
        self._time_completed = now
        self._task_log.close()
        self._write_record(
            {"status": "COMPLETED", "time_completed": now, "log": self.log, "data": results},
            "status",
        )
        self._status = "COMPLETED"

    def _failed_fields(self, e: Any, now: str) -> Dict[str, Any]:
        return {"status": "FAILED", "time_completed": now, "data": {}, "log": self.log}

    def _forget_results(self) -> None:
        # Nothing to forget: progress stays in memory as it was and there are no output ids.
        pass


__all__ = ["BenchmarkHandler", "json_safe_results"]
