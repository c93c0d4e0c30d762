"""``LocalDebugSession``: run an algorithm folder on local images (``runtime.md`` §13.2).

Images are sliced into 2-D arrays, each stored as an HDF5 file with one ``image`` dataset in
the handler's in-memory ``data-store``; then the algorithm runs through the real runner
lifecycle with a :class:`~compox.tasks.DebuggingTaskHandler.DebuggingTaskHandler`. Pillow
is imported only when an image file is actually read.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Dict, Iterable, List, Optional

import h5py
import numpy as np

from compox.algorithm_utils._hdf5_io import encode
from compox.tasks.DebuggingTaskHandler import DebuggingTaskHandler

_IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class LocalDebugSession:
    def __init__(
        self, task_id: str = "local-debug", device: str = "cpu", tmp_bucket: str = "data-store"
    ) -> None:
        self.task = DebuggingTaskHandler(task_id)
        self.task.set_as_current_handler()
        self.bucket = tmp_bucket
        self.device = device

    # -- loading inputs ----------------------------------------------------------------------

    def load_data(self, source: str) -> List[str]:
        if os.path.isdir(source):
            return self.load_from_folder(source)
        extension = os.path.splitext(source)[1].lower()
        if extension in (".tif", ".tiff"):
            return self.load_from_tiff(source)
        if extension in (".png", ".jpg", ".jpeg"):
            return self.load_from_pil_image(source)
        if extension == ".npy":
            return self.load_from_npy(source)
        if extension in (".h5", ".hdf5"):
            return self.load_from_h5(source)
        raise ValueError(f"Unsupported file type: {source}")

    def load_from_folder(self, folder: str, exts: Iterable[str] = _IMAGE_EXTENSIONS) -> List[str]:
        from PIL import Image

        wanted = tuple(ext.lower() for ext in exts)
        names = [name for name in sorted(os.listdir(folder)) if name.lower().endswith(wanted)]
        if not names:
            raise ValueError(f"No image files with extensions {wanted} found in {folder}.")
        ids = []
        for name in names:
            with Image.open(os.path.join(folder, name)) as image:
                ids.append(self._store_slice(np.asarray(image)))
        return ids

    def load_from_tiff(self, path: str) -> List[str]:
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            return [self._store_slice(np.asarray(frame)) for frame in ImageSequence.Iterator(image)]

    def load_from_pil_image(self, path: str) -> List[str]:
        from PIL import Image

        with Image.open(path) as image:
            return [self._store_slice(np.asarray(image))]

    def load_from_npy(self, path: str) -> List[str]:
        return self._store_volume(np.load(path), path)

    def load_from_h5(self, path: str) -> List[str]:
        found: List[np.ndarray] = []

        def visit(_name: str, item: Any) -> Optional[bool]:
            if isinstance(item, h5py.Dataset) and item.ndim in (2, 3):
                found.append(item[()])
                return True
            return None

        with h5py.File(path, "r") as file:
            file.visititems(visit)
        if not found:
            raise KeyError(f"No 2-D or 3-D dataset found in {path}.")
        return self._store_volume(found[0], path)

    def _store_volume(self, array: np.ndarray, source: str) -> List[str]:
        if array.ndim == 2:
            return [self._store_slice(array)]
        if array.ndim == 3:
            return [self._store_slice(array[index]) for index in range(array.shape[0])]
        raise ValueError(f"Expected a 2-D or 3-D array in {source}, got {array.ndim} dimensions.")

    def _store_slice(self, array: np.ndarray) -> str:
        if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] not in (3,):
            self.task.logger.warning(
                f"Loaded an image of shape {array.shape} (channels last); ImageSchema expects "
                "RGB images as (3, H, W)."
            )
        object_id = str(uuid.uuid4())
        self.task.database_connection.put_object(self.bucket, object_id, encode({"image": array}))
        return object_id

    # -- running -----------------------------------------------------------------------------

    def run(
        self, algo_dir: str, inputs: Dict[str, Any], args: Optional[Dict[str, Any]] = None
    ) -> Any:
        runner = self.task.fetch_algorithm(algo_dir, device=self.device)
        return runner.run(inputs, args=args or {})


__all__ = ["LocalDebugSession"]
