"""``DebuggingTaskHandler``: runs an algorithm folder locally (``runtime.md`` §13.3).

It keeps data in an :class:`~compox._bridge_memory.InMemoryBridge` (``data-store`` and
``execution-store``), never writes the record (``database_update=False``: no stop checks, no
persisted progress), prints log lines to stderr as well as into the in-memory log, and loads
the algorithm straight from its folder. Assets are read from that folder too.

Deliberate differences from the original: the Runner is imported under a module name unique
to its folder (so two algorithms in one process do not share ``Runner``), it is created with
``Runner.__new__`` only (no throw-away instance), and the device ``gpu`` becomes ``cuda``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import os
import sys
from typing import Any, Callable, Optional, TextIO

from compox._bridge_memory import InMemoryBridge
from compox.exceptions import CompoxAssetError
from compox.tasks.TaskHandler import TaskHandler


class LocalAlgorithmFolder:
    """What both debugging handlers share: log lines on stderr, a Runner loaded from a folder
    and assets read from that folder (``self.path_to_algorithm``, ``None`` until loaded)."""

    path_to_algorithm: Optional[str]

    def _console_stream(self) -> Optional[Callable[[], TextIO]]:
        return lambda: sys.stderr

    def _load_local_runner(self, path: str, device: str) -> Any:
        runner_class = _import_runner(path)
        self.path_to_algorithm = path
        runner = runner_class.__new__(runner_class)
        runner.initialize(device=device)
        runner._load_assets()
        return runner

    def _read_local_asset(self, relative_path: str, asset_path: str) -> io.BytesIO:
        """The bytes of ``relative_path`` in the folder; ``asset_path`` names it in errors."""
        full_path = os.path.join(self.path_to_algorithm or "", relative_path)
        try:
            with open(full_path, "rb") as handle:
                return io.BytesIO(handle.read())
        except FileNotFoundError as error:
            raise CompoxAssetError(
                f"Asset path '{asset_path}' is not registered for the algorithm.",
                code="asset_path_not_found",
                details={"asset_path": asset_path},
                cause=error,
            ) from error


class DebuggingTaskHandler(LocalAlgorithmFolder, TaskHandler):
    def __init__(self, task_id: str) -> None:
        connection = InMemoryBridge(collections=("data-store", "execution-store"))
        connection.begin_task({"execution_id": task_id})
        self.path_to_algorithm = None
        super().__init__(task_id, connection, database_update=False, task_session=None)

    def fetch_algorithm(  # type: ignore[override]
        self, path_to_algorithm: str, device: str = "cpu"
    ) -> Any:
        """Import ``Runner`` from an algorithm folder, initialise it and load its assets."""
        path = os.path.abspath(path_to_algorithm)
        if device == "gpu":
            self.logger.warning("Device 'gpu' is a device class; using the runtime device 'cuda'.")
            device = "cuda"

        return self._load_local_runner(path, device)

    def fetch_asset(self, asset_path: str) -> io.BytesIO:
        if self.path_to_algorithm is None:
            return super().fetch_asset(asset_path)
        return self._read_local_asset(asset_path.replace("\\", "/"), asset_path)


def _import_runner(path: str) -> Any:
    runner_file = os.path.join(path, "Runner.py")
    if not os.path.isfile(runner_file):
        runner_file = os.path.join(path, "Runner.pyc")
    name = "compox_debug_runner_" + hashlib.md5(path.encode()).hexdigest()[:12]

    # The folder is on sys.path while the Runner imports its own modules as top-level ones.
    sys.path.insert(0, path)
    try:
        if runner_file.endswith(".pyc"):
            loader: Any = importlib.machinery.SourcelessFileLoader(name, runner_file)
        else:
            loader = importlib.machinery.SourceFileLoader(name, runner_file)
        spec = importlib.util.spec_from_file_location(name, runner_file, loader=loader)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        loader.exec_module(module)
        return module.Runner
    except Exception as error:
        sys.modules.pop(name, None)
        raise ImportError(f"Could not import the algorithm runner from {path}") from error
    finally:
        if path in sys.path:
            sys.path.remove(path)


__all__ = ["DebuggingTaskHandler"]
