"""``DebuggingTrainingHandler``: runs an algorithm folder's training locally (``training.md``
§3.10), on an :class:`~compox._bridge_memory.InMemoryBridge`.

Fixes of the original's quirks: the training record is seeded when the connection has none,
no algorithm record is needed to save checkpoints (allowed paths are the folder's asset files),
and with a checkpoint ``fetch_asset`` returns a byte stream and falls back to the local file for
paths the checkpoint does not replace.

    from compox._bridge_memory import InMemoryBridge
    handler = DebuggingTrainingHandler(InMemoryBridge(), "my-training")
    handler.set_as_current_handler()
    runner = handler.fetch_algorithm("path/to/algorithm")
    runner.run_training([sample_id], args={})
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Any, Dict, List, Optional

from compox._bridge_memory import InMemoryBridge
from compox._time import record_timestamp
from compox.tasks.DebuggingTaskHandler import LocalAlgorithmFolder
from compox.training.TempStore import TempStore
from compox.training.TrainingHandler import TrainingHandler

COLLECTIONS = (
    "data-store",
    "training-store",
    "sample-store",
    "algorithm-checkpoint-store",
    "asset-store",
)
_CODE_SUFFIXES = (".py", ".pyc")


class DebuggingTrainingHandler(LocalAlgorithmFolder, TrainingHandler):
    def __init__(
        self,
        database_connection: Optional[InMemoryBridge] = None,
        training_id: Optional[str] = None,
        temp_store: Optional[TempStore] = None,
    ) -> None:
        connection = database_connection or InMemoryBridge(collections=COLLECTIONS)
        for name in COLLECTIONS:
            connection.objects.setdefault(name, {})
        training_id = training_id or str(uuid.uuid1())
        record = connection.records.get(training_id) or {
            "training_id": training_id,
            "algorithm_id": "local",
            "status": "PENDING",
            "progress": 0.0,
            "time_started": record_timestamp(),
            "time_completed": None,
            "log": "",
            "training_data": [],
            "additional_parameters": None,
            "state": {},
            "tags": [],
            "checkpoint_id": None,
            "algorithm_minor_version": None,
            "output_checkpoint_ids": [],
        }
        connection.begin_task(record, id_field="training_id")
        self.path_to_algorithm = None
        self._checkpoint_assets: Dict[str, str] = {}
        super().__init__(
            training_id,
            connection,
            database_update=True,
            temp_store=temp_store or TempStore(),
            training_record=record,
        )

    def fetch_algorithm(  # type: ignore[override]
        self, path_to_algorithm: str, device: str = "cpu", checkpoint_id: Optional[str] = None
    ) -> Any:
        """Import ``Runner`` from the folder, apply the checkpoint, initialise, load assets."""
        path = os.path.abspath(path_to_algorithm)
        if device == "gpu":
            device = "cuda"
        self._checkpoint_assets = {}
        if checkpoint_id is not None:
            _manifest, self._checkpoint_assets = self._load_checkpoint_manifest(checkpoint_id)
        return self._load_local_runner(path, device)

    def _allowed_asset_paths(self) -> List[str]:
        if self.path_to_algorithm is None:
            return []
        paths = []
        for folder, dirs, files in os.walk(self.path_to_algorithm):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), self.path_to_algorithm)
                if not name.endswith(_CODE_SUFFIXES) and rel != "pyproject.toml":
                    paths.append(rel.replace(os.sep, "/"))
        return sorted(paths)

    def fetch_asset(self, asset_path: str) -> io.BytesIO:
        wanted = asset_path.replace("\\", "/").lstrip("/")
        if wanted in self._checkpoint_assets:
            body = self.database_connection.get_object("asset-store", self._checkpoint_assets[wanted])
            return io.BytesIO(body)
        if self.path_to_algorithm is None:
            return super().fetch_asset(asset_path)
        return self._read_local_asset(wanted, asset_path)


__all__ = ["DebuggingTrainingHandler"]
