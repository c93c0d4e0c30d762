"""The per-task handler an algorithm reaches as ``self.task_handler`` (``runtime.md`` §8).

A handler owns one task record and writes it field by field through its
``database_connection`` (the worker's bridge, or an ``InMemoryBridge``):
``update_record(fields, task_id)`` merges the fields and answers whether a stop was requested.
The bridge refuses a write for another task than the running one (and a job's bridge dies
with the job), so a thread an earlier execution left behind cannot change a later record.

Lifecycle of one execution, as driven by ``compox._worker.run_job``:

1. The constructor writes ``status=STARTED`` and the ``session_token``.
2. ``fetch_algorithm`` loads (or reuses) the runner and writes ``resolved_execution_device``.
3. The runner's stages write ``status=RUNNING``, ``progress`` and ``log``.
4. ``mark_as_completed``, ``mark_as_failed`` or ``mark_as_stopped`` finish the record and
   close the task log.

Stops are cooperative: the record write that learns of a stop request logs it, finishes the
record as STOPPED and raises :class:`TaskStoppedException`. From then on every record write
raises it again, so an algorithm that swallows the first one still ends STOPPED.

Helpers (``fetch_data``, ``post_data``, ``fetch_asset``, the session helpers) raise typed
errors without marking the task failed; whoever lets the error escape (``BaseRunner.run``,
``fetch_algorithm``, the worker) records the failure. An algorithm that catches such an
error and carries on therefore still completes normally.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Type

from pydantic import ValidationError

from compox._process_log import process_log
from compox._time import record_timestamp
from compox.algorithm_utils import _hdf5_io
from compox.exceptions import (
    CompoxAlgorithmError,
    CompoxAssetError,
    CompoxCheckpointError,
    CompoxError,
    CompoxExecutionError,
    CompoxImportError,
    CompoxNotFoundError,
    CompoxStateError,
    CompoxTaskError,
    TaskStoppedException,
    error_failure_payload,
)
from compox.tasks import _runtime
from compox.tasks._algorithm_cache import algorithm_cache, make_cache_key
from compox.tasks._device import resolve_device
from compox.tasks._module_loader import load_runner_class
from compox.tasks._task_log import TaskLog, TaskLogger
from compox.tasks.context_handler import set_current_handler

VALID_STATUSES = ("RUNNING", "COMPLETED", "FAILED", "PENDING", "STARTED", "STOPPED")


class StopRequest:
    """What this handler knows about the stop request of its task."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.requested = False
        self.acknowledged = False

    def exists(self) -> bool:
        return self.requested


class TaskHandler:
    """Record writes, task log, data/asset/session helpers and algorithm loading."""

    _RECORD_STORAGE_NAME = "execution-store"
    _RECORD_ID_FIELD = "execution_id"
    _ALGORITHM_CACHE_MAXSIZE = 1
    # What log lines call this handler's task ("Task failed", "benchmark 42").
    _TASK_KIND = "task"

    def __init__(
        self,
        task_id: str,
        database_connection: Any,
        database_update: bool = True,
        task_session: Any = None,
        emergency_record_store: Any = None,
    ) -> None:
        self._task_id = task_id
        self.database_connection = database_connection
        self.database_update = database_update
        self.stop_request = StopRequest(task_id)
        self._progress: float = 0.0
        self._status: Optional[str] = None
        self._output_dataset_ids: List[str] = []
        self._time_completed: str = ""
        self._session_token: Optional[str] = None
        self._state: Optional[Dict[str, Any]] = None
        # Emergency records are written by the Rust side; the store is kept for API parity.
        self.emergency_record_store = emergency_record_store
        self.algorithm_assets: Optional[Dict[str, str]] = None
        self._task_log = TaskLog(console=self._console_stream())
        self.logger = TaskLogger(self._task_log, {"task_id": task_id})
        self.file_fetching_stats: Dict[str, float] = {"count": 0.0, "time": 0.0}
        self.file_posting_stats: Dict[str, float] = {"count": 0.0, "time": 0.0}
        self.task_session = task_session
        self._stopping = False
        self._stopped_written = False
        self._recorded_failure: Optional[BaseException] = None
        self._loaded_minor: Optional[str] = None

        try:
            self.status = "STARTED"
            if task_session is not None:
                self.session_token = task_session.session_token
        except TaskStoppedException:
            raise
        except BaseException as error:
            # Nobody holds this handler yet, so it records its own failure.
            self.mark_as_failed(error)
            raise

    def _console_stream(self) -> Optional[Callable[[], TextIO]]:
        """Where log lines go besides the record; the server keeps them in the record only."""
        return None

    # -- record fields ---------------------------------------------------------------------

    @property
    def task_id(self) -> str:
        return self._task_id

    @property
    def progress(self) -> float:
        return self._progress

    @progress.setter
    def progress(self, value: float) -> None:
        self._raise_if_stopped()
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Progress must be between 0 and 1. Got: {value}")
        self._progress = value
        self._write_record({"progress": value}, "progress")

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

    @property
    def output_dataset_ids(self) -> List[str]:
        return self._output_dataset_ids

    @output_dataset_ids.setter
    def output_dataset_ids(self, value: List[str]) -> None:
        self._raise_if_stopped()
        self._output_dataset_ids = value
        self._write_record({"output_dataset_ids": value}, "output_dataset_ids")

    @property
    def time_completed(self) -> str:
        return self._time_completed

    @time_completed.setter
    def time_completed(self, value: str) -> None:
        self._raise_if_stopped()
        self._time_completed = value
        self._write_record({"time_completed": value}, "time_completed")

    @property
    def session_token(self) -> Optional[str]:
        return self._session_token

    @session_token.setter
    def session_token(self, value: Optional[str]) -> None:
        self._raise_if_stopped()
        self._session_token = value
        self._write_record({"session_token": value}, "session_token")

    @property
    def state(self) -> Dict[str, Any]:
        """Algorithm state; executions keep it in memory only (training persists it)."""
        return self._state if self._state is not None else {}

    @state.setter
    def state(self, value: Dict[str, Any]) -> None:
        self._state = value

    @property
    def stream(self) -> io.StringIO:
        return self._task_log.stream

    @property
    def log(self) -> str:
        return self._task_log.text()

    def update_log(self) -> None:
        """Write the whole accumulated log text into the record."""
        self._raise_if_stopped()
        self._write_record({"log": self.log}, "log")

    def set_as_current_handler(self) -> None:
        set_current_handler(self)

    # The 2.x name of set_as_current_handler.
    set_as_current_task_handler = set_as_current_handler

    def _raise_if_stopped(self) -> None:
        if self.stop_request.acknowledged and not self._stopping:
            raise TaskStoppedException("Task has been stopped.")

    def _write_record(self, fields: Dict[str, Any], field_name: str) -> None:
        if not self.database_update:
            return
        try:
            stop_requested = bool(self.database_connection.update_record(fields, self._task_id))
        except CompoxError:
            raise
        except Exception as error:
            raise CompoxTaskError(
                "Failed to update task record.",
                code="task_record_update_failed",
                details={"field": field_name},
                cause=error,
            ) from error

        # The bridge answers after merging the fields, so unlike the original (check, then
        # write) the write that notices a stop is persisted, e.g. its progress value.
        if stop_requested and not self.stop_request.acknowledged:
            self.stop_request.requested = True
            self.stop_request.acknowledged = True
            self.logger.info("Received stop request. Stopping task.")
            self.mark_as_stopped()

    # -- terminal transitions ----------------------------------------------------------------

    def mark_as_completed(self, output_dataset_ids: Optional[List[str]]) -> None:
        ids = self._checked_output_ids(output_dataset_ids)
        self._task_log.drain()
        self.progress = 1.0
        self.output_dataset_ids = ids
        self.time_completed = record_timestamp()
        self._log_file_stats()
        self.update_log()
        self.status = "COMPLETED"
        self._task_log.close()

    def mark_as_failed(self, e: Any = None) -> None:
        """Write the FAILED record; idempotent, and a no-op for stops and stopped tasks."""
        if isinstance(e, TaskStoppedException) or self._stopped_written:
            return
        if e is not None and e is self._recorded_failure:
            return

        self._task_log.drain()
        kind = self._TASK_KIND
        if isinstance(e, BaseException):
            self.logger.opt(exception=e).error(f"{kind.capitalize()} failed")
        elif e is not None:
            self.logger.error(f"{kind.capitalize()} failed: {e}")
        self._log_file_stats()

        now = record_timestamp()
        try:
            self.database_connection.update_record(self._failed_fields(e, now), self._task_id)
            self._recorded_failure = e if isinstance(e, BaseException) else None
        except Exception as write_error:
            # The Rust side keeps the emergency record when this write fails.
            process_log.error(
                "Could not record the failure of %s %s: %s", kind, self._task_id, write_error
            )
        finally:
            self._status = "FAILED"
            self._time_completed = now
            self._forget_results()
            self._task_log.close()

    def _failed_fields(self, e: Any, now: str) -> Dict[str, Any]:
        """The one record write of :meth:`mark_as_failed`."""
        fields: Dict[str, Any] = {
            "status": "FAILED",
            "progress": 1.0,
            "time_completed": now,
            "output_dataset_ids": [],
            "log": self.log,
        }
        if e is not None:
            fields["error"] = error_failure_payload(e)
        return fields

    def _forget_results(self) -> None:
        """Bring the in-memory fields in line with what :meth:`_failed_fields` wrote."""
        self._progress = 1.0
        self._output_dataset_ids = []

    @contextlib.contextmanager
    def _failure_recorded(
        self, wrap: Optional[Callable[[Exception], CompoxError]] = None
    ) -> Iterator[None]:
        """Record FAILED for an error escaping the block, then let it go on.

        Stops pass untouched; with ``wrap``, foreign (non-compox) errors are replaced by
        ``wrap(error)``, which is recorded and raised instead.
        """
        try:
            yield
        except TaskStoppedException:
            raise
        except CompoxError as error:
            self.mark_as_failed(error)
            raise
        except Exception as error:
            if wrap is None:
                self.mark_as_failed(error)
                raise
            wrapped = wrap(error)
            self.mark_as_failed(wrapped)
            raise wrapped from error

    def mark_as_stopped(self) -> None:
        """Finish the record as STOPPED and raise :class:`TaskStoppedException`."""
        self.stop_request.acknowledged = True
        self._stopping = True
        try:
            try:
                self._task_log.drain()
                self.time_completed = record_timestamp()
                self._log_file_stats()
                self.update_log()
            except Exception as error:
                self.mark_as_failed(error)
            finally:
                self._task_log.close()
                try:
                    self._write_record({"status": "STOPPED"}, "status")
                    self._status = "STOPPED"
                    self._stopped_written = True
                except Exception as error:
                    process_log.error(
                        "Could not record the stop of task %s: %s", self._task_id, error
                    )
        finally:
            self._stopping = False
        raise TaskStoppedException("Task has been stopped.")

    def _checked_output_ids(self, value: Any) -> List[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            kinds = (
                sorted({type(item).__name__ for item in value})
                if isinstance(value, list)
                else type(value).__name__
            )
            raise CompoxExecutionError(
                "The runner's postprocess must return a list of output dataset id strings; "
                f"got {kinds}.",
                code="invalid_output_dataset_ids",
                details={"type": type(value).__name__, "item_types": kinds},
            )
        return value

    def _log_file_stats(self) -> None:
        fetched, posted = self.file_fetching_stats, self.file_posting_stats
        self.logger.info(
            f"File fetching stats: {fetched['count']} files fetched in "
            f"{fetched['time']:.4f} seconds."
        )
        self.logger.info(
            f"File posting stats: {posted['count']} files posted in {posted['time']:.4f} seconds."
        )

    # -- data and assets ---------------------------------------------------------------------

    def fetch_data(
        self,
        file_ids: Sequence[str],
        schema: Type[Any],
        *keys: str,
        parallel: bool = False,
    ) -> List[Dict[str, Any]]:
        """Read ``data-store`` objects, validate them with ``schema`` and dump them."""
        ids = list(file_ids)
        started = time.perf_counter()

        def fetch_one(file_id: str) -> Dict[str, Any]:
            body = self.database_connection.get_object("data-store", file_id)
            return schema.model_validate(_hdf5_io.decode(body, keys)).model_dump()

        try:
            results = _map_in_order(fetch_one, ids, parallel)
        except (ValidationError, KeyError, CompoxError):
            raise
        except Exception as error:
            raise CompoxExecutionError(
                "Failed to fetch data",
                code="data_fetch_failed",
                details={"file_ids": ids},
                cause=error,
            ) from error

        self.file_fetching_stats["count"] += len(ids)
        self.file_fetching_stats["time"] += time.perf_counter() - started
        return results

    def post_data(
        self, result: Sequence[Dict[str, Any]], schema: Type[Any], parallel: bool = False
    ) -> List[str]:
        """Validate each item, store it as HDF5 under a new UUID1 and return the ids."""
        items = list(result)
        self.logger.info(f"Uploading {len(items)} results to the database.")
        started = time.perf_counter()

        def post_one(item: Any) -> str:
            body = _hdf5_io.encode(schema.model_validate(item).model_dump())
            object_id = str(uuid.uuid1())
            self.database_connection.put_object("data-store", object_id, body)
            return object_id

        try:
            ids = _map_in_order(post_one, items, parallel)
        except (ValidationError, CompoxError):
            raise
        except Exception as error:
            raise CompoxExecutionError(
                "Failed to post data", code="data_post_failed", cause=error
            ) from error

        self.file_posting_stats["count"] += len(items)
        self.file_posting_stats["time"] += time.perf_counter() - started
        return ids

    def fetch_asset(self, asset_path: str) -> io.BytesIO:
        """The bytes of one asset of the loaded algorithm, as a new ``BytesIO``."""
        if self.algorithm_assets is None:
            raise CompoxStateError(
                "Algorithm assets are not initialized.", code="algorithm_assets_not_initialized"
            )
        asset_id = _lookup_asset(self.algorithm_assets, asset_path)
        if asset_id is None:
            raise CompoxAssetError(
                f"Asset path '{asset_path}' is not registered for the algorithm.",
                code="asset_path_not_found",
                details={"asset_path": asset_path},
            )

        self.logger.info(f"Fetching asset {asset_id} from the database.")
        started = time.perf_counter()
        try:
            body = self.database_connection.get_object("asset-store", asset_id)
        except Exception as error:
            raise CompoxAssetError(
                f"Failed to fetch asset '{asset_path}'.",
                code="asset_fetch_failed",
                details={"asset_path": asset_path, "asset_id": asset_id},
                cause=error,
            ) from error
        self.logger.info(
            f"Asset {asset_id} fetched in {round(time.perf_counter() - started, 4)} seconds."
        )
        return io.BytesIO(body)

    # -- sessions ----------------------------------------------------------------------------

    def save_item_to_session(self, obj: Any, key: str) -> None:
        self._session_call(lambda s: s.add_item(obj, key), "task_session_save_failed", key,
                           "Failed to save the item to the task session.")
        self.logger.info(f"Saved object with key {key} to the task session.")

    def load_item_from_session(self, key: str) -> Any:
        item = self._session_call(lambda s: s[key], "task_session_load_failed", key,
                                  "Failed to load the item from the task session.")
        self.logger.info(f"Loaded object with key {key} from the task session.")
        return item

    def remove_item_from_session(self, key: str) -> None:
        self._session_call(lambda s: s.remove_item(key), "task_session_remove_failed", key,
                           "Failed to remove the item from the task session.")
        self.logger.info(f"Removed object with key {key} from the task session.")

    def _session_call(self, call: Callable[[Any], Any], code: str, key: str, message: str) -> Any:
        if self.task_session is None:
            raise CompoxStateError(
                "Task session is not initialized.", code="task_session_not_initialized"
            )
        try:
            return call(self.task_session)
        except (KeyError, CompoxError):
            raise
        except Exception as error:
            raise CompoxTaskError(message, code=code, details={"key": key}, cause=error) from error

    # -- algorithm loading -------------------------------------------------------------------

    def fetch_algorithm(
        self,
        algorithm_id: str,
        execution_device_override: Optional[str] = None,
        checkpoint_id: Optional[str] = None,
        algorithm_minor_version: Optional[str] = None,
        *,
        algorithm_record: Optional[Dict[str, Any]] = None,
    ) -> Any:
        """Load the runner of an algorithm (cached per process) and prepare it for this task.

        The worker passes the stored ``algorithm_record``; there is no listing of
        ``algorithm-store`` on this side of the bridge.
        """
        started = time.perf_counter()
        self.logger.info(f"Fetching algorithm {algorithm_id} from the database.")
        self.logger.info("Loading the algorithm.")

        def failure(error: Exception) -> CompoxError:
            return CompoxAlgorithmError(
                "Failed to fetch algorithm",
                code="algorithm_fetch_failed",
                details={"algorithm_id": algorithm_id},
                cause=error,
            )

        with self._failure_recorded(failure):
            runner = self._fetch_algorithm(
                algorithm_id,
                execution_device_override,
                checkpoint_id,
                algorithm_minor_version,
                algorithm_record,
            )

        elapsed = round(time.perf_counter() - started, 8)
        self.logger.info(f"Algorithm runner successfully loaded in {elapsed} seconds.")
        name = algorithm_record.get("algorithm_name") if algorithm_record else None
        major = algorithm_record.get("algorithm_major_version") if algorithm_record else None
        self.logger = self.logger.bind(algorithm=f"{name} {major}.{self._loaded_minor}")
        return runner

    def _fetch_algorithm(
        self,
        algorithm_id: str,
        override: Optional[str],
        checkpoint_id: Optional[str],
        minor: Optional[str],
        record: Optional[Dict[str, Any]],
    ) -> Any:
        if record is None:
            raise CompoxNotFoundError(
                f"Algorithm with id '{algorithm_id}' was not found.",
                code="algorithm_not_found",
                details={"algorithm_id": algorithm_id},
            )
        if minor is None:
            minor = record.get("latest_algorithm_minor_version")
        minor = None if minor is None else str(minor)
        self._loaded_minor = minor

        key = make_cache_key(record, override, checkpoint_id, minor)
        (runner, assets, device), _hit = algorithm_cache.get_or_load(
            key,
            type(self)._ALGORITHM_CACHE_MAXSIZE,
            lambda: self._load_runner(record, override, checkpoint_id, minor),
        )

        self._set_resolved_execution_device(device)
        # Assets first, so that fetch_asset also works in __init__ on a cache hit.
        self.algorithm_assets = assets
        runner.initialize()
        return runner

    def _load_runner(
        self,
        record: Dict[str, Any],
        override: Optional[str],
        checkpoint_id: Optional[str],
        minor: Optional[str],
    ) -> tuple:
        minor_entry = record["algorithm_minor_version"][minor]
        module_id = minor_entry["module_id"]
        assets = dict(minor_entry.get("assets") or {})
        if checkpoint_id is not None:
            assets = self._overlay_checkpoint(assets, checkpoint_id, record.get("algorithm_id"))
        self.algorithm_assets = assets

        environment = _runtime.runtime_environment
        resolution = resolve_device(
            record.get("default_device"),
            record.get("supported_devices") or [],
            override,
            environment.gpu(),
            environment.mps_available,
        )
        self.logger.log(resolution.level, resolution.message)

        try:
            zip_bytes = self.database_connection.get_object("module-store", module_id)
            runner_class = load_runner_class(zip_bytes, module_id, environment.cache_dir())
            runner = runner_class.__new__(runner_class)
            runner.initialize(device=resolution.device)
            runner._load_assets()
        except CompoxError:
            raise
        except Exception as error:
            raise CompoxImportError(
                "Failed to import algorithm module",
                code="algorithm_module_import_failed",
                details={"module_id": module_id},
                cause=error,
            ) from error
        return runner, assets, resolution.device

    def _overlay_checkpoint(
        self, assets: Dict[str, str], checkpoint_id: str, algorithm_id: Optional[str] = None
    ) -> Dict[str, str]:
        manifest, overlay = self._load_checkpoint_manifest(checkpoint_id)

        # A checkpoint of another algorithm is refused (training.md §4.4 quirk fix); manifests
        # without a parent id (hand-written, legacy) are accepted as before.
        parent = manifest.get("parent_algorithm_id")
        if parent is not None and algorithm_id is not None and parent != algorithm_id:
            raise CompoxCheckpointError(
                f"Checkpoint '{checkpoint_id}' belongs to algorithm '{parent}'.",
                code="checkpoint_asset_incompatible",
                details={"checkpoint_id": checkpoint_id, "parent_algorithm_id": parent},
            )
        unknown = sorted(set(overlay) - set(assets))
        if unknown:
            raise CompoxCheckpointError(
                f"Checkpoint '{checkpoint_id}' replaces assets the algorithm does not have.",
                code="checkpoint_asset_incompatible",
                details={"checkpoint_id": checkpoint_id, "unknown_asset_paths": unknown},
            )
        return {**assets, **overlay}

    def _load_checkpoint_manifest(
        self, checkpoint_id: str
    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """The checkpoint's manifest and its asset map; a failure is ``checkpoint_load_failed``."""
        try:
            manifest = json.loads(
                self.database_connection.get_object("algorithm-checkpoint-store", checkpoint_id)
            )
            return manifest, dict(manifest.get("assets") or {})
        except Exception as error:
            raise CompoxCheckpointError(
                f"Failed to load checkpoint '{checkpoint_id}'.",
                code="checkpoint_load_failed",
                details={"checkpoint_id": checkpoint_id},
                cause=error,
            ) from error

    def _set_resolved_execution_device(self, device: str) -> None:
        self._raise_if_stopped()
        self._write_record({"resolved_execution_device": device}, "resolved_execution_device")


def _map_in_order(function: Callable[[Any], Any], items: List[Any], parallel: bool) -> List[Any]:
    if not parallel:
        return [function(item) for item in items]
    with ThreadPoolExecutor() as pool:
        return list(pool.map(function, items))


def _lookup_asset(assets: Dict[str, str], asset_path: str) -> Optional[str]:
    if asset_path in assets:
        return assets[asset_path]
    # Paths built with os.path.join on Windows, or keys recorded there, use backslashes.
    wanted = _normalise_asset_path(asset_path)
    for path, asset_id in assets.items():
        if _normalise_asset_path(path) == wanted:
            return asset_id
    return None


def _normalise_asset_path(path: str) -> str:
    return path.replace("\\", "/").lstrip("/")

__all__ = ["TaskHandler", "TaskStoppedException", "StopRequest"]
