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

from compox._process_log import process_log
from compox._time import record_timestamp
from compox.exceptions import CompoxTaskError, TaskStoppedException
from compox.tasks.TaskHandler import VALID_STATUSES, TaskHandler

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

    @property
    def progress(self) -> float:
        return self._progress

    @progress.setter
    def progress(self, value: float) -> None:
        # Kept in memory only: the benchmark record has no progress (§5.2).
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Progress must be between 0 and 1. Got: {value}")
        self._progress = value

    @property
    def status(self) -> Optional[str]:
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        self._raise_if_stopped()
        if value not in VALID_STATUSES:
            raise ValueError(f"Invalid status. Got: {value}")
        self._status = value
        self._write_record({"status": value}, "status")

    def _write_record(self, fields: Dict[str, Any], field_name: str) -> None:
        kept = {k: v for k, v in fields.items() if k in _BENCHMARK_FIELDS}
        if kept:
            super()._write_record(kept, field_name)

    def mark_as_completed(self, data: Optional[Dict[str, Any]] = None) -> None:  # type: ignore[override]
        results = json_safe_results(data)
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

    def mark_as_failed(self, e: Any = None) -> None:
        if isinstance(e, TaskStoppedException) or self._stopped_written:
            return
        if e is not None and e is self._recorded_failure:
            return
        if isinstance(e, BaseException):
            self.logger.opt(exception=e).error("Benchmark failed")
        elif e is not None:
            self.logger.error(f"Benchmark failed: {e}")
        self._log_file_stats()
        now = record_timestamp()
        try:
            self.database_connection.update_record(
                {"status": "FAILED", "time_completed": now, "data": {}, "log": self.log}
            )
            self._recorded_failure = e if isinstance(e, BaseException) else None
        except Exception as write_error:
            process_log.error(
                "Could not record the failure of benchmark %s: %s", self._task_id, write_error
            )
        finally:
            self._status = "FAILED"
            self._time_completed = now
            self._task_log.close()


__all__ = ["BenchmarkHandler", "json_safe_results"]
