"""``TrainingSample``: one sample manifest of ``sample-store`` (``training.md`` §2.4).

A sample groups ``data-store`` file ids into entries (``{"input": [...], "target": [...]}``),
every entry with the same keys. Saving promotes the files' ``training_ref`` counts and
deleting demotes them (§2.2); on the server that is the sample store's job, so these two
methods are for the local harness and read-modify-write the tags through the connection when
it offers ``get_tags``/``put_tags``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

from compox._time import record_timestamp
from compox.exceptions import (
    CompoxNotFoundError,
    CompoxTrainingError,
    CompoxValidationError,
)

SAMPLE_STORE = "sample-store"


def normalize_tags(tags: Optional[Sequence[Any]]) -> List[str]:
    """Strip and lower-case, drop empties and duplicates (first occurrence kept)."""
    if tags is None:
        return []
    out: List[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise ValueError(f"Sample tags must be strings, got {type(tag).__name__}.")
        cleaned = tag.strip().lower()
        if cleaned and cleaned not in out:
            out.append(cleaned)
    return out


class SampleManifest:
    """The validated manifest: ``sample_id``, ``files``, ``tags``, ``time_created``."""

    def __init__(self, sample_id: str, files: List[Dict[str, Any]], tags: List[str],
                 time_created: str) -> None:
        self.sample_id = sample_id
        self.files = files
        self.tags = tags
        self.time_created = time_created

    @classmethod
    def model_validate(cls, data: Any) -> "SampleManifest":
        if not isinstance(data, dict):
            raise ValueError("A sample manifest must be an object.")
        files = data.get("files")
        if not isinstance(files, list) or not files:
            raise ValueError("'files' must be a non-empty list of entries.")
        if not all(isinstance(entry, dict) for entry in files):
            raise ValueError("Every entry of 'files' must be an object.")
        keys = set(files[0])
        for index, entry in enumerate(files):
            if set(entry) != keys:
                raise ValueError(f"Entry {index} does not have the keys of entry 0.")
        sample_id = data.get("sample_id") or str(uuid.uuid1())
        time_created = data.get("time_created") or record_timestamp()
        if not isinstance(sample_id, str) or not isinstance(time_created, str):
            raise ValueError("'sample_id' and 'time_created' must be strings.")
        return cls(sample_id, files, normalize_tags(data.get("tags")), time_created)

    def model_dump(self) -> Dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "files": self.files,
            "tags": self.tags,
            "time_created": self.time_created,
        }


class TrainingSample:
    """Entries of one sample, indexable by entry and key (see §2.4 for the index forms)."""

    def __init__(
        self,
        database_connection: Any,
        sample_id: Optional[str] = None,
        sample_manifest: Optional[Dict[str, Any]] = None,
    ) -> None:
        if (sample_id is None) == (sample_manifest is None):
            raise CompoxValidationError(
                "Give exactly one of sample_id and sample_manifest.", code="sample_source_invalid"
            )
        self.database_connection = database_connection
        if sample_id is not None:
            try:
                raw = json.loads(database_connection.get_object(SAMPLE_STORE, sample_id))
            except Exception as error:
                raise CompoxNotFoundError(
                    f"Failed to load sample manifest for sample {sample_id}.",
                    code="sample_not_found",
                    details={"sample_id": sample_id},
                    cause=error,
                ) from error
        else:
            raw = sample_manifest
        try:
            self.sample_manifest = SampleManifest.model_validate(raw)
        except ValueError as error:
            raise CompoxValidationError(
                f"Invalid sample manifest for sample {sample_id}.",
                code="invalid_sample_manifest",
                details={"sample_id": sample_id},
                cause=error,
            ) from error

    @property
    def sample_id(self) -> str:
        return self.sample_manifest.sample_id

    def __len__(self) -> int:
        return len(self.sample_manifest.files)

    def __getitem__(self, index: Any) -> Any:
        files = self.sample_manifest.files
        if isinstance(index, (int, slice)):
            return files[index]
        if isinstance(index, tuple) and len(index) == 2:
            rows, key = index
            if isinstance(rows, int) and isinstance(key, str):
                return files[rows][key]
            if isinstance(rows, slice) and isinstance(key, str):
                return [i for entry in files[rows] for i in entry.get(key, [])]
            if rows == slice(None) and key == slice(None):
                return [i for entry in files for ids in entry.values() for i in ids]
        raise TypeError(f"Unsupported sample index {index!r}.")

    def get_file_list(self) -> List[Dict[str, Any]]:
        return self.sample_manifest.files

    def get_key_list(self) -> List[str]:
        files = self.sample_manifest.files
        return list(files[0]) if files else []

    def check_tags(
        self,
        query_positive_tags: Optional[Sequence[str]] = None,
        query_negative_tags: Optional[Sequence[str]] = None,
    ) -> bool:
        tags = set(self.sample_manifest.tags)
        return set(query_positive_tags or []) <= tags and not tags & set(query_negative_tags or [])

    def add_tags(self, tags: Sequence[str]) -> None:
        """In memory only; :meth:`save_tags` would be the way to persist without re-counting."""
        self.sample_manifest.tags.extend(tags)

    def _validate_files_exist(self) -> Tuple[bool, List[str]]:
        missing = [
            file_id
            for file_id in dict.fromkeys(self[:, :])
            if not self.database_connection.object_exists("data-store", file_id)
        ]
        return not missing, missing

    def _adjust_refs(self, delta: int) -> None:
        get_tags = getattr(self.database_connection, "get_tags", None)
        put_tags = getattr(self.database_connection, "put_tags", None)
        if get_tags is None or put_tags is None:
            return
        for file_id in dict.fromkeys(self[:, :]):
            if not self.database_connection.object_exists("data-store", file_id):
                continue
            tags = dict(get_tags("data-store", file_id))
            try:
                count = int(tags.get("training_ref", 0))
            except (TypeError, ValueError):
                count = 0
            tags["training_ref"] = str(max(count + delta, 0))
            put_tags("data-store", file_id, tags)

    def save_sample_manifest(self) -> bool:
        ok, missing = self._validate_files_exist()
        if not ok:
            raise CompoxNotFoundError(
                "Cannot promote files to training store. Some files are missing.",
                code="sample_files_not_found",
                details={"missing_files": missing},
            )
        try:
            self._adjust_refs(+1)
            body = json.dumps(self.sample_manifest.model_dump()).encode("utf-8")
            self.database_connection.put_object(SAMPLE_STORE, self.sample_id, body)
        except Exception as error:
            raise CompoxTrainingError(
                "Failed to save sample manifest.", code="sample_save_failed", cause=error
            ) from error
        return True

    def delete_sample_manifest(self) -> bool:
        try:
            self._adjust_refs(-1)
            delete = getattr(self.database_connection, "delete_object", None)
            if delete is not None:
                delete(SAMPLE_STORE, self.sample_id)
        except Exception as error:
            raise CompoxTrainingError(
                "Failed to delete sample manifest.", code="sample_delete_failed", cause=error
            ) from error
        return True

    def __repr__(self) -> str:
        return f"TrainingSample(sample_id={self.sample_id!r}, entries={len(self)})"


__all__ = ["TrainingSample", "SampleManifest", "normalize_tags"]
