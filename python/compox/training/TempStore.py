"""``TempStore``: a private scratch folder for one training job (``training.md`` §3.9).

Files are written as HDF5 with the same dataset encoding as ``data-store`` objects, each under
a new UUID1 name (no extension), atomically (``<name>.tmp``, then a rename) unless disabled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from compox._process_log import process_log
from compox.algorithm_utils import _hdf5_io


def _map(function: Callable[[Any], Any], items: Sequence[Any], parallel: bool) -> List[Any]:
    if not parallel:
        return [function(item) for item in items]
    with ThreadPoolExecutor() as pool:
        return list(pool.map(function, items))


class TempStore:
    """A unique directory that :meth:`cleanup` (or leaving the ``with`` block) removes."""

    def __init__(
        self,
        *,
        base_dir: Optional[str] = None,
        prefix: str = "tmpstore-",
        atomic_writes: bool = True,
    ) -> None:
        if base_dir is not None:
            os.makedirs(base_dir, exist_ok=True)
        self.root = os.path.realpath(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
        self.atomic_writes = atomic_writes

    def __enter__(self) -> "TempStore":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the whole tree; idempotent, errors ignored."""
        shutil.rmtree(self.root, ignore_errors=True)

    def mkdir(self, rel: str) -> str:
        path = os.path.join(self.root, rel)
        os.makedirs(path, exist_ok=True)
        return path

    def _inside(self, rel_dir: str) -> str:
        folder = os.path.realpath(os.path.join(self.root, rel_dir))
        if folder != self.root and not folder.startswith(self.root + os.sep):
            raise ValueError(f"Path {rel_dir!r} escapes temp root {self.root!r}.")
        return folder

    def save(
        self,
        rel_dir: str,
        files: Sequence[Dict[str, Any]],
        schema: Type[Any],
        parallel: bool = False,
    ) -> List[str]:
        """Validate each dict with ``schema``, write it as HDF5; absolute paths in input order."""
        items = [schema.model_validate(item).model_dump() for item in files]
        if not items:
            raise ValueError("No files to save to the temp store.")
        folder = self._inside(rel_dir)
        os.makedirs(folder, exist_ok=True)

        def write_one(item: Dict[str, Any]) -> str:
            skipped = sorted(k for k, v in item.items() if v is None)
            if skipped:
                process_log.warning("Temp store: skipping None fields %s", skipped)
            path = os.path.join(folder, str(uuid.uuid1()))
            body = _hdf5_io.encode(item)
            target = path + ".tmp" if self.atomic_writes else path
            with open(target, "wb") as handle:
                handle.write(body)
            if self.atomic_writes:
                os.replace(target, path)
            return path

        return _map(write_one, items, parallel)

    def load(self, paths: Sequence[str], parallel: bool = False, *keys: str) -> List[Dict[str, Any]]:
        """Read HDF5 files: every dataset, or only ``keys`` (a missing key reads as ``None``)."""
        selected = list(keys) or None

        def read_one(path: str) -> Dict[str, Any]:
            with open(path, "rb") as handle:
                return _hdf5_io.decode(handle.read(), selected)

        return _map(read_one, list(paths), parallel)


__all__ = ["TempStore"]
