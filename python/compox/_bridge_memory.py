"""A pure-Python bridge with the same four methods as the Rust worker's bridge object.

Tests, :class:`~compox.tasks.DebuggingTaskHandler.DebuggingTaskHandler` and local debugging
use it instead of real storage. Objects live in ``objects[collection][key]``; task records
live in ``records[task_id]``, and every ``update_record`` call is appended to ``writes`` so a
test can check the exact write order. The bridge writes into the record of the task made
current with :meth:`InMemoryBridge.begin_task`, which mirrors the Rust side knowing which
execution its worker runs.

Stop requests: :meth:`request_stop` posts one; :meth:`stop_when` posts one as soon as an
update matches a predicate (for example "the first progress write"). A stop request is
cleared when the task's ``STOPPED`` status is written, as the server deletes the
``stop-requests`` object at that point.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

FieldsPredicate = Callable[[Dict[str, Any]], bool]

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "STOPPED"})


class InMemoryBridge:
    """Dict-backed storage plus per-task records, inspectable by tests."""

    def __init__(self, collections: Iterable[str] = ()) -> None:
        self.objects: Dict[str, Dict[str, bytes]] = {name: {} for name in collections}
        self.records: Dict[str, Dict[str, Any]] = {}
        self.writes: List[Tuple[str, Dict[str, Any]]] = []
        self.current_task_id: Optional[str] = None
        self._stop_requests: Set[str] = set()
        self._stop_triggers: List[Tuple[Optional[str], FieldsPredicate]] = []
        self._failure_triggers: List[FieldsPredicate] = []

    # -- the bridge contract -------------------------------------------------------------

    def get_object(self, collection: str, key: str) -> bytes:
        try:
            return self.objects[collection][key]
        except KeyError:
            raise FileNotFoundError(f"Object '{key}' not found in collection '{collection}'.")

    def put_object(self, collection: str, key: str, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise OSError(f"put_object expects bytes, got {type(data).__name__}.")
        self.objects.setdefault(collection, {})[key] = bytes(data)

    def object_exists(self, collection: str, key: str) -> bool:
        return key in self.objects.get(collection, {})

    def update_record(self, fields: Dict[str, Any], task_id: Optional[str] = None) -> bool:
        current = self.current_task_id
        if current is None:
            raise OSError("No current task: call begin_task() before writing records.")
        # As the server's executor: a write for another task than the current one is refused.
        if task_id is not None and str(task_id) != current:
            raise OSError(f"task {task_id} is not running on this worker any more")
        task_id = current

        # A round trip through JSON rejects what the Rust side could not encode either, and
        # keeps the stored record free of references into the caller's objects.
        snapshot = json.loads(json.dumps(fields))
        for predicate in self._failure_triggers:
            if predicate(snapshot):
                raise OSError("Simulated storage failure while updating the record.")

        record = self.records.setdefault(task_id, {})
        record.update(snapshot)
        self.writes.append((task_id, snapshot))
        self._mirror_record(task_id)

        for trigger_task, predicate in list(self._stop_triggers):
            if trigger_task in (None, task_id) and predicate(snapshot):
                self._stop_requests.add(task_id)
                self._stop_triggers.remove((trigger_task, predicate))

        stop_requested = task_id in self._stop_requests
        if snapshot.get("status") == "STOPPED":
            self._stop_requests.discard(task_id)
        return stop_requested

    # -- helpers for tests and local debugging -------------------------------------------

    def begin_task(self, record: Dict[str, Any], id_field: str = "execution_id") -> str:
        """Store ``record`` and make it the target of later ``update_record`` calls."""
        task_id = str(record[id_field])
        self.records[task_id] = copy.deepcopy(record)
        self.current_task_id = task_id
        self._mirror_record(task_id)
        return task_id

    def request_stop(self, task_id: Optional[str] = None) -> None:
        """Post a stop request for ``task_id`` (default: the current task)."""
        target = task_id if task_id is not None else self.current_task_id
        if target is None:
            raise ValueError("No task to stop.")
        self._stop_requests.add(target)

    def stop_when(self, predicate: FieldsPredicate, task_id: Optional[str] = None) -> None:
        """Post a stop request right after the first update whose fields match."""
        self._stop_triggers.append((task_id, predicate))

    def fail_updates_when(self, predicate: FieldsPredicate) -> None:
        """Make ``update_record`` raise ``OSError`` for updates whose fields match."""
        self._failure_triggers.append(predicate)

    def stop_requested(self, task_id: Optional[str] = None) -> bool:
        target = task_id if task_id is not None else self.current_task_id
        return target in self._stop_requests

    def record(self, task_id: Optional[str] = None) -> Dict[str, Any]:
        """The current state of one task record."""
        target = task_id if task_id is not None else self.current_task_id
        return self.records[str(target)]

    def written_fields(self, task_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """The field dicts written for one task, in order."""
        target = task_id if task_id is not None else self.current_task_id
        return [fields for written_task, fields in self.writes if written_task == target]

    def get_objects(self, collection: str, keys: Iterable[str]) -> List[bytes]:
        return [self.get_object(collection, key) for key in keys]

    def list_keys(self, collection: str) -> List[str]:
        return list(self.objects.get(collection, {}))

    def _mirror_record(self, task_id: str) -> None:
        # Keep the record readable the way the server stores it, as JSON in execution-store.
        body = json.dumps(self.records[task_id]).encode()
        self.objects.setdefault("execution-store", {})[task_id] = body
