"""``TrainingHandler``: the task handler of a training job (``training.md`` §3).

It writes the training record of ``training-store`` through the same bridge as executions,
so every persisted change (``status``, ``progress``, ``state``, ``log``, ``time_completed``,
``resolved_execution_device``, ``output_checkpoint_ids``) is also a stop check.

Checkpoints (§4.2): :meth:`save_checkpoint` checks the paths against the assets of the minor
version actually loaded (the spec's fix), uploads each blob to ``asset-store`` under a new
UUID1, writes the manifest to ``algorithm-checkpoint-store`` and then appends the id to the
record's ``output_checkpoint_ids``. On the server that record write is where the executor
adds the id to the parent algorithm's ``checkpoints`` (through the deployer, the only writer
of ``algorithm-store``), so the write fails when the algorithm is gone.

Completion writes ``progress=1.0``, ``time_completed`` in UTC, ``log``, then
``status=COMPLETED``; a training that saved no checkpoint fails once with
``training_no_checkpoint`` instead (the original wrote COMPLETED in between, §3.7 quirk).
"""

from __future__ import annotations

import functools
import json
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, TypeVar

from compox.exceptions import (
    CompoxAssetError,
    CompoxCheckpointError,
    CompoxNotFoundError,
    CompoxStateError,
    CompoxTaskError,
    CompoxTrainingError,
    CompoxValidationError,
    TaskStoppedException,
)
from compox.tasks.TaskHandler import TaskHandler, _normalise_asset_path
from compox.training.TrainingDataset import TrainingDataset
from compox.training.TrainingSample import TrainingSample

F = TypeVar("F", bound=Callable[..., Any])


def utc_timestamp() -> str:
    """``YYYY-MM-DDTHH:MM:SS+00:00``: the training's COMPLETED time and checkpoint times."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _records_failure(code: str, message: str) -> Callable[[F], F]:
    """Handler methods record FAILED before re-raising; foreign errors get ``code``."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: "TrainingHandler", *args: Any, **kwargs: Any) -> Any:
            with self._failure_recorded(
                lambda error: CompoxTrainingError(message, code=code, cause=error)
            ):
                return method(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class TrainingHandler(TaskHandler):
    """Record writes, checkpoints, datasets and the temp store of one training."""

    _RECORD_STORAGE_NAME = "training-store"
    _RECORD_ID_FIELD = "training_id"
    is_training_handler = True

    def __init__(
        self,
        task_id: str,
        database_connection: Any,
        database_update: bool = True,
        temp_store: Any = None,
        emergency_record_store: Any = None,
        *,
        training_record: Optional[Dict[str, Any]] = None,
        algorithm_key: Optional[str] = None,
        algorithm_record: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.temp_store = temp_store
        self.training_record: Dict[str, Any] = dict(training_record or {})
        self.algorithm_key = algorithm_key
        self.algorithm_record = algorithm_record
        self._output_checkpoint_ids: List[str] = []
        self._all_checkpoint_ids: List[str] = list(
            self.training_record.get("output_checkpoint_ids") or []
        )
        super().__init__(
            task_id,
            database_connection,
            database_update=database_update,
            task_session=None,
            emergency_record_store=emergency_record_store,
        )

    # -- record fields ---------------------------------------------------------------------

    @property
    def output_checkpoint_ids(self) -> List[str]:
        """Ids of the checkpoints this run saved."""
        return list(self._output_checkpoint_ids)

    @property
    def state(self) -> Dict[str, Any]:
        # Before any set_state: the record's state ({} at submission), not an AttributeError.
        if self._state is not None:
            return self._state
        return dict(self.training_record.get("state") or {})

    @state.setter
    def state(self, value: Dict[str, Any]) -> None:
        self._raise_if_stopped()
        if not isinstance(value, dict):
            raise CompoxTaskError(
                "The training state must be a dict.",
                code="task_record_update_failed",
                details={"field": "state"},
            )
        self._write_record({"state": value}, "state")
        self._state = value

    # -- terminal transitions --------------------------------------------------------------

    def mark_as_completed(self, output_dataset_ids: Optional[List[str]] = None) -> None:
        self._task_log.drain()
        self.progress = 1.0
        self.time_completed = utc_timestamp()
        self.update_log()
        self.status = "COMPLETED"
        self._task_log.close()

    # -- checkpoints -----------------------------------------------------------------------

    def _check_stop(self) -> None:
        """A record write with no fields: only the stop check (§4.2 step 1)."""
        self._raise_if_stopped()
        self._write_record({}, "stop_check")

    def _allowed_asset_paths(self) -> List[str]:
        record = self.algorithm_record or {}
        minor = self._loaded_minor or record.get("latest_algorithm_minor_version")
        entry = (record.get("algorithm_minor_version") or {}).get(str(minor)) or {}
        return list((entry.get("assets") or {}).keys())

    def save_checkpoint(
        self, assets: Dict[str, bytes], properties: Optional[Dict[str, Any]] = None
    ) -> str:
        """§4.2: returns the new checkpoint id; any error marks the training FAILED."""
        with self._failure_recorded():
            return self._save_checkpoint(assets, dict(properties or {}))

    def _save_checkpoint(self, assets: Dict[str, bytes], properties: Dict[str, Any]) -> str:
        self._check_stop()
        if not isinstance(assets, dict):
            raise CompoxCheckpointError(
                "Checkpoint assets must be a dict of asset path to bytes.",
                code="checkpoint_save_failed",
            )
        existing = self._allowed_asset_paths()
        canonical = {_normalise_asset_path(p): p for p in existing}
        resolved: Dict[str, bytes] = {}
        for path, blob in assets.items():
            known = path if path in existing else canonical.get(_normalise_asset_path(path))
            if known is None:
                raise CompoxCheckpointError(
                    f"Asset path '{path}' is not an asset of the algorithm.",
                    code="checkpoint_asset_path_invalid",
                    details={"asset_path": path, "existing_asset_paths": existing},
                )
            if not isinstance(blob, (bytes, bytearray, memoryview)):
                raise CompoxCheckpointError(
                    f"Checkpoint asset '{path}' must be bytes, got {type(blob).__name__}.",
                    code="checkpoint_save_failed",
                    details={"asset_path": path},
                )
            resolved[known] = bytes(blob)
        try:
            properties_json = json.loads(json.dumps(properties))
        except (TypeError, ValueError) as error:
            raise CompoxCheckpointError(
                "Checkpoint properties must be JSON-serialisable.",
                code="checkpoint_save_failed",
                cause=error,
            ) from error

        asset_ids: Dict[str, str] = {}
        for path, blob in resolved.items():
            asset_id = str(uuid.uuid1())
            try:
                self.database_connection.put_object("asset-store", asset_id, blob)
            except Exception as error:
                raise CompoxAssetError(
                    f"Failed to upload checkpoint asset '{path}'.",
                    code="asset_upload_failed",
                    details={"asset_path": path},
                    cause=error,
                ) from error
            asset_ids[path] = asset_id

        checkpoint_id = str(uuid.uuid1())
        record = self.training_record
        manifest = {
            "checkpoint_id": checkpoint_id,
            "parent_algorithm_id": record.get("algorithm_id"),
            "parent_algorithm_key": self.algorithm_key,
            "training_id": self.task_id,
            "assets": asset_ids,
            "created_at": utc_timestamp(),
            "properties": properties_json,
            "tags": list(record.get("tags") or []),
            "parent_checkpoint_id": record.get("checkpoint_id"),
        }
        try:
            self.database_connection.put_object(
                "algorithm-checkpoint-store",
                checkpoint_id,
                json.dumps(manifest, separators=(",", ":")).encode("utf-8"),
            )
        except Exception as error:
            raise CompoxCheckpointError(
                "Failed to save the checkpoint manifest.",
                code="checkpoint_manifest_save_failed",
                details={"checkpoint_id": checkpoint_id},
                cause=error,
            ) from error

        ids = self._all_checkpoint_ids + [checkpoint_id]
        try:
            self._write_record({"output_checkpoint_ids": ids}, "output_checkpoint_ids")
        except CompoxTaskError as error:
            if isinstance(error, TaskStoppedException):
                raise
            raise CompoxCheckpointError(
                "Failed to register the checkpoint with its algorithm and training.",
                code="checkpoint_algorithm_record_update_failed",
                details={"checkpoint_id": checkpoint_id},
                cause=error,
            ) from error
        self._all_checkpoint_ids = ids
        self._output_checkpoint_ids.append(checkpoint_id)
        self.logger.info(f"Checkpoint {checkpoint_id} saved.")
        return checkpoint_id

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        # FIXME(the worker bridge has no delete call and no path to the deployer for removing
        # a checkpoint from its algorithm; clients delete with DELETE /api/v0/checkpoint/{id}).
        error = CompoxCheckpointError(
            "Deleting checkpoints during training is not supported by this server; "
            "use DELETE /api/v0/checkpoint/{checkpoint_id}.",
            code="checkpoint_delete_failed",
            details={"checkpoint_id": checkpoint_id},
        )
        self.mark_as_failed(error)
        raise error

    # -- datasets and the temp store -------------------------------------------------------

    def _require_temp_store(self) -> Any:
        if self.temp_store is None:
            error = CompoxStateError(
                "Temp store is not initialized.", code="temp_store_not_initialized"
            )
            self.mark_as_failed(error)
            raise error
        return self.temp_store

    def get_training_dataset(self, ids: Sequence[str]) -> TrainingDataset:
        ids = list(ids or [])
        if not ids:
            error = CompoxNotFoundError(
                "No training samples were given.", code="training_samples_not_found"
            )
            self.mark_as_failed(error)
            raise error
        return self._load_dataset(ids)

    @_records_failure("training_dataset_retrieval_failed", "Failed to retrieve the training dataset.")
    def _load_dataset(self, ids: List[str]) -> TrainingDataset:
        samples = [TrainingSample(self.database_connection, sample_id=i) for i in ids]
        dataset = TrainingDataset(samples)
        self.logger.info(f"Loaded training dataset with {len(dataset)} samples.")
        return dataset

    @_records_failure("temp_store_save_failed", "Failed to save files to the temp store.")
    def save_training_files_to_temp_store(
        self, folder_path: str, files: List[Dict[str, Any]], schema: Type[Any], parallel: bool = True
    ) -> List[str]:
        return self._require_temp_store().save(folder_path, files, schema, parallel=parallel)

    @_records_failure("temp_store_download_failed", "Failed to download files to the temp store.")
    def download_files_to_temp_store(
        self,
        folder_path: str,
        file_ids: Sequence[str],
        schema: Type[Any],
        *keys: str,
        batch_size: int = 8,
        parallel: bool = True,
    ) -> List[str]:
        store = self._require_temp_store()
        ids = list(file_ids)
        size = max(1, int(batch_size))
        paths: List[str] = []
        for start in range(0, len(ids), size):
            items = self.fetch_data(ids[start : start + size], schema, *keys, parallel=parallel)
            paths.extend(store.save(folder_path, items, schema, parallel=parallel))
        return paths

    @_records_failure("training_dataset_download_failed", "Failed to download the training dataset.")
    def download_dataset_to_temp_store(
        self, dataset: Any, schemas: Dict[str, Type[Any]]
    ) -> List[List[Dict[str, List[str]]]]:
        out: List[List[Dict[str, List[str]]]] = []
        for sample in dataset:
            entries: List[Dict[str, List[str]]] = []
            for index, entry in enumerate(sample.get_file_list()):
                local: Dict[str, List[str]] = {}
                for key, ids in entry.items():
                    if key not in schemas:
                        raise CompoxValidationError(
                            f"No data schema given for key '{key}'.",
                            code="training_data_schema_missing",
                            details={"key": key, "sample_id": sample.sample_id},
                        )
                    folder = f"{sample.sample_id}/file_{index:06d}/{key}"
                    local[key] = (
                        self.download_files_to_temp_store(folder, ids, schemas[key]) if ids else []
                    )
                entries.append(local)
            out.append(entries)
        return out

    @_records_failure("training_dataset_load_failed", "Failed to load the training dataset.")
    def load_dataset_from_temp_store(self, local_samples: Any) -> List[List[Dict[str, List[dict]]]]:
        return [
            [
                {key: self.load_files_from_temp_store(paths) if paths else [] for key, paths in entry.items()}
                for entry in sample
            ]
            for sample in local_samples
        ]

    @_records_failure("temp_store_load_failed", "Failed to load files from the temp store.")
    def load_files_from_temp_store(
        self, paths: Sequence[str], *keys: str, parallel: bool = True
    ) -> List[Dict[str, Any]]:
        return self._require_temp_store().load(list(paths), parallel, *keys)


__all__ = ["TrainingHandler", "utc_timestamp"]
