"""What the Rust worker process calls for each job (``docs/worker-protocol.md`` §1).

:func:`run_job` takes one task (an execution, a training or a benchmark; the job's ``kind``)
from PENDING to a terminal state. For an execution:

1. Apply the job's process settings (runner cache size, module cache dir, device probes).
2. Open the ``TaskSession`` of the record's token and build the ``TaskHandler``, which
   writes ``STARTED`` and the ``session_token``; make it the current handler.
3. Capture ``sys.stdout``/``sys.stderr`` so that algorithm ``print`` output becomes INFO
   lines of the task log.
4. Log ``Fetching algorithm...``, fetch the runner (module zip, cache, device), log how long
   that took, and run it on the record's inputs and ``additional_parameters``.
5. Whatever happens, end with a terminal record (the handler wrote FAILED/STOPPED already;
   a safety net covers anything that escaped it), restore the streams, drop the process
   fallbacks for threads, and collect garbage (and the CUDA cache if torch is loaded).
6. Tell the worker whether the job changed code it relies on (``_interpreter_guard``); such
   a worker is replaced.

A training runs the same way with a ``TrainingHandler`` and a fresh ``TempStore`` (removed at
the end), then ``run_training``; a benchmark with a ``BenchmarkHandler`` (no session), the
latest minor version and ``run_benchmark`` (``training.md`` §3.3, §5.3).

The job runs inside a fresh ``contextvars.Context`` so no ContextVar value leaks into the
next job. ``run_job`` never raises: even ``SystemExit`` or ``KeyboardInterrupt`` raised by an
algorithm only fail its execution.
"""

from __future__ import annotations

import contextvars
import gc
import sys
from datetime import datetime
from typing import Any, Callable, Dict, Optional

from compox import _interpreter_guard
from compox._captured_output import CapturedOutput
from compox._process_log import process_log
from compox._time import log_timestamp, record_timestamp
from compox.algorithm_utils import runner_context
from compox.exceptions import CompoxTaskError, TaskStoppedException, error_failure_payload
from compox.tasks import _job_threads, _runtime, context_handler
from compox.tasks.BenchmarkHandler import BenchmarkHandler
from compox.tasks.TaskHandler import TaskHandler
from compox.tasks.TaskSession import TaskSession
from compox.training.TempStore import TempStore
from compox.training.TrainingHandler import TrainingHandler

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "STOPPED"})


def run_job(job: Dict[str, Any], bridge: Any) -> Optional[str]:
    """Run one job to its terminal state; see the module docs for the steps. Returns why this
    worker must be replaced (the job changed code the worker relies on), else ``None``."""
    context = contextvars.Context()
    _job_threads.begin_job()
    try:
        context.run(_run_job, job, bridge)
    except BaseException as error:  # The last guard: run_job must not raise into Rust.
        _log_process_error("run_job failed outside the execution", error)
    finally:
        context_handler.clear_process_fallback()
        runner_context.clear_process_fallback()
        _job_threads.end_job()
        _release_memory()
    try:
        changed = _interpreter_guard.first_change()
    except BaseException as error:
        return f"the interpreter check failed: {type(error).__name__}: {error}"
    return f"the task changed {changed}" if changed else None


# job kind -> (record id field, what runs once the handler is current)
_JOB_KINDS = ("execution", "training", "benchmark")
_ID_FIELDS = {"execution": "execution_id", "training": "training_id", "benchmark": "benchmark_id"}


def _run_job(job: Dict[str, Any], bridge: Any) -> None:
    record = job.get("record") or {}
    kind = job.get("kind", "execution")
    if kind not in _JOB_KINDS:
        _write_bare_failure(bridge, f"Unsupported job kind: {kind!r}.")
        return
    id_field = _ID_FIELDS[kind]
    if id_field not in record or "algorithm_id" not in record:
        _write_bare_failure(bridge, f"The job record lacks {id_field} or algorithm_id.")
        return

    TaskHandler._ALGORITHM_CACHE_MAXSIZE = max(1, int(job.get("cache_maxsize") or 1))
    _runtime.configure(
        module_cache_dir=job.get("module_cache_dir") or _runtime.runtime_environment.cache_dir(),
        gpu_available=bool(job.get("gpu_available", False)),
        mps_available=bool(job.get("mps_available", False)),
    )

    if kind == "execution":
        with TaskSession(session_token=record.get("session_token")) as session:
            _run_with_handler(
                record,
                lambda: TaskHandler(
                    record["execution_id"], bridge, database_update=True, task_session=session
                ),
                lambda handler: _execute(handler, record, job.get("algorithm_record")),
            )
    elif kind == "benchmark":
        _run_with_handler(
            record,
            lambda: BenchmarkHandler(record["benchmark_id"], bridge, database_update=True),
            lambda handler: _benchmark(handler, record, job.get("algorithm_record")),
        )
    else:
        with TempStore() as temp_store:
            _run_with_handler(
                record,
                lambda: TrainingHandler(
                    record["training_id"],
                    bridge,
                    database_update=True,
                    temp_store=temp_store,
                    training_record=record,
                    algorithm_key=job.get("algorithm_key"),
                    algorithm_record=job.get("algorithm_record"),
                ),
                lambda handler: _train(handler, record, job.get("algorithm_record")),
            )


def _run_with_handler(
    record: Dict[str, Any], make_handler: Callable[[], Any], body: Callable[[Any], None]
) -> None:
    """Build the handler (which writes STARTED), run ``body`` with it current, and make sure
    the task ends in a terminal state."""
    try:
        handler = make_handler()
    except TaskStoppedException:
        process_log.info("Task was interrupted by stop request.")
        return
    except BaseException as error:
        # The constructor has already recorded its own failure.
        _note_failure(record, error)
        return

    handler.set_as_current_handler()
    try:
        with CapturedOutput(handler):
            body(handler)
    except TaskStoppedException:
        process_log.info("Task was interrupted by stop request.")
    except BaseException as error:
        # Usually recorded already (mark_as_failed is idempotent); this covers the rest.
        handler.mark_as_failed(error)
        _note_failure(record, error)

    if handler.status not in TERMINAL_STATUSES:
        handler.mark_as_failed(
            CompoxTaskError(
                "The task ended without reaching a terminal state.",
                code="task_not_terminated",
            )
        )


def _fetch_runner(handler: Any, record: Dict[str, Any], message: str, **options: Any) -> Any:
    """Log ``message``, fetch the record's algorithm with ``options`` and log how long it took."""
    handler.logger.info(message)
    started = datetime.now()
    runner = handler.fetch_algorithm(record["algorithm_id"], **options)
    handler.logger.info(
        f"Algorithm fetched in {(datetime.now() - started).total_seconds()} seconds."
    )
    return runner


def _execute(handler: TaskHandler, record: Dict[str, Any], algorithm_record: Any) -> None:
    runner = _fetch_runner(
        handler,
        record,
        "Fetching algorithm...",
        execution_device_override=record.get("execution_device_override"),
        checkpoint_id=record.get("checkpoint_id"),
        algorithm_minor_version=record.get("algorithm_minor_version"),
        algorithm_record=algorithm_record,
    )
    runner.run(
        {"input_dataset_ids": record.get("input_dataset_ids") or []},
        args=record.get("additional_parameters"),
    )


def _benchmark(handler: Any, record: Dict[str, Any], algorithm_record: Any) -> None:
    """``training.md`` §5.3: latest minor version, no checkpoint, default device."""
    runner = _fetch_runner(
        handler, record, "Fetching algorithm for benchmark...", algorithm_record=algorithm_record
    )
    runner.run_benchmark(args=record.get("additional_parameters"))


def _train(handler: Any, record: Dict[str, Any], algorithm_record: Any) -> None:
    """``training.md`` §3.3 steps 4–5: default device, the requested checkpoint and minor."""
    runner = _fetch_runner(
        handler,
        record,
        "Fetching algorithm...",
        checkpoint_id=record.get("checkpoint_id"),
        algorithm_minor_version=record.get("algorithm_minor_version"),
        algorithm_record=algorithm_record,
    )
    runner.run_training(list(record.get("training_data") or []), args=record.get("additional_parameters"))


def _note_failure(record: Dict[str, Any], error: BaseException) -> None:
    _log_process_error(f"Execution {record.get('execution_id')} failed", error)


def _write_bare_failure(bridge: Any, error: Any) -> None:
    """A FAILED record for failures that happened before a handler existed."""
    payload = error_failure_payload(error)
    fields = {
        "status": "FAILED",
        "progress": 1.0,
        "time_completed": record_timestamp(),
        "output_dataset_ids": [],
        "log": f"{log_timestamp()} ERROR Task failed: {payload['message']}\n",
        "error": payload,
    }
    try:
        bridge.update_record(fields)
    except Exception as write_error:
        _log_process_error("Could not record the failure", write_error)


def _log_process_error(message: str, error: BaseException) -> None:
    process_log.error("%s: %s: %s", message, type(error).__name__, error)


def _release_memory() -> None:
    """Frees what the job left behind (`runtime.md` §9.2, CUDAMemoryManager).

    A full collection costs milliseconds once numpy, h5py and pydantic are loaded — most of a
    no-op execution — so it runs only when torch is loaded (cycles may pin GPU memory that
    `empty_cache` can then return). Otherwise collecting the young generations is enough;
    Python's own collector handles the old one.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        gc.collect(1)
        return
    gc.collect()
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.ipc_collect()
    except Exception as error:
        _log_process_error("Could not release CUDA memory", error)


# Everything the worker runs is imported now: this is the state every job must leave.
_interpreter_guard.remember()

__all__ = ["run_job"]
