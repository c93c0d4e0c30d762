"""HDF5 encoding of schema dicts, the body of every ``data-store`` object (``runtime.md`` §5).

One top-level dataset per non-``None`` field; no groups, chunking, compression or
attributes. Strings (and lists of strings, including empty ones) are variable-length UTF-8;
everything else goes through h5py's default conversion. Reading decodes string datasets to
``str`` / nested lists of ``str`` and returns other datasets raw.
"""

from __future__ import annotations

import io
from typing import Any, Dict, Iterable, Optional

import h5py
import numpy as np

_UTF8 = h5py.string_dtype("utf-8")


def write_dataset(file: h5py.File, key: str, value: Any) -> None:
    """Write one field as a top-level dataset named ``key``."""
    if isinstance(value, str):
        file.create_dataset(key, data=value, dtype=_UTF8)
        return

    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        strings = np.empty((len(value),), dtype=object)
        strings[:] = list(value)
        file.create_dataset(key, data=strings, dtype=_UTF8)
        return

    if isinstance(value, np.ndarray) and value.dtype.kind in ("U", "S"):
        decoded = np.char.decode(value, "utf-8") if value.dtype.kind == "S" else value
        file.create_dataset(key, data=decoded.astype(object), dtype=_UTF8)
        return

    if isinstance(value, (list, tuple)):
        # Ragged lists make numpy raise ValueError, which post_data reports as data_post_failed.
        value = np.asarray(value)
        if value.dtype == object:
            raise ValueError(f"Field '{key}' holds a ragged or mixed list that cannot be stored.")

    file.create_dataset(key, data=value)


def encode(fields: Dict[str, Any]) -> bytes:
    """Serialise a dumped schema dict into the bytes of a complete HDF5 file."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        for key, value in fields.items():
            if value is not None:
                write_dataset(file, key, value)
    return buffer.getvalue()


def read_dataset(dataset: h5py.Dataset) -> Any:
    """Read one dataset, decoding HDF5 strings to Python ``str``."""
    if h5py.check_string_dtype(dataset.dtype) is not None:
        try:
            decoded = dataset.asstr()[()]
            return decoded.tolist() if isinstance(decoded, np.ndarray) else decoded
        except UnicodeDecodeError:
            return dataset[()]

    raw = dataset[()]
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return raw


def decode(body: bytes, keys: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Read the top-level datasets of an HDF5 file; ``keys`` selects and may name missing ones."""
    out: Dict[str, Any] = {}
    with h5py.File(io.BytesIO(body), "r") as file:
        if not keys:
            for name, item in file.items():
                # Groups are not part of the format; skip them instead of failing the read.
                if isinstance(item, h5py.Dataset):
                    out[name] = read_dataset(item)
            return out

        for key in keys:
            if key not in file:
                out[key] = None
                continue
            item = file[key]
            if not isinstance(item, h5py.Dataset):
                raise TypeError(f"HDF5 entry '{key}' is a group, not a dataset.")
            out[key] = read_dataset(item)
    return out
