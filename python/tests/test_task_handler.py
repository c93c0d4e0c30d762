"""TaskHandler record writes, stops, terminal transitions and helpers (runtime.md §8, §11)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from compox._bridge_memory import InMemoryBridge
from compox.algorithm_utils.io_schemas import SegmentationSchema
from compox.exceptions import (
    CompoxAssetError,
    CompoxExecutionError,
    CompoxStateError,
    CompoxTaskError,
    TaskStoppedException,
)
from compox.tasks.TaskHandler import TaskHandler
from compox.tasks.TaskHandler import TaskStoppedException as ReExported
from helpers import log_messages


@pytest.fixture
def bridge_with_task() -> InMemoryBridge:
    bridge = InMemoryBridge(collections=("data-store", "asset-store"))
    bridge.begin_task({"execution_id": "task-1", "status": "PENDING", "progress": 0.0})
    return bridge


def test_constructor_writes_status_then_session_token(bridge_with_task):
    class Session:
        session_token = "tok"

    TaskHandler("task-1", bridge_with_task, task_session=Session())
    assert bridge_with_task.written_fields() == [{"status": "STARTED"}, {"session_token": "tok"}]


def test_database_update_false_writes_nothing(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task, database_update=False)
    handler.progress = 0.3
    handler.update_log()
    assert bridge_with_task.written_fields() == []
    assert handler.progress == 0.3


def test_log_lines_format_and_level_filter(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    handler.logger.debug("not captured")
    handler.logger.info("hello {}", "world")
    handler.logger.success("yay")
    handler.logger.critical("bad")
    lines = handler.log.splitlines()
    assert len(lines) == 3
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO hello world$", lines[0])
    assert log_messages(handler.log) == ["INFO hello world", "SUCCESS yay", "CRITICAL bad"]
    handler.update_log()
    assert bridge_with_task.record()["log"] == handler.log
    bound = handler.logger.bind(algorithm="x 1.0")
    bound.warning("bound")
    assert handler.log.endswith("WARNING bound\n")


def test_mark_as_completed_order_and_sink_removal(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    handler.mark_as_completed(["a", "b"])
    fields = [list(w) for w in bridge_with_task.written_fields()[1:]]
    assert fields == [["progress"], ["output_dataset_ids"], ["time_completed"], ["log"], ["status"]]
    handler.logger.info("after completion")
    assert "after completion" not in handler.log
    record = bridge_with_task.record()
    assert record["status"] == "COMPLETED" and record["output_dataset_ids"] == ["a", "b"]


@pytest.mark.parametrize("value", ["abc", ("a",), [1, "a"], {"a": 1}])
def test_mark_as_completed_rejects_non_list_of_str(bridge_with_task, value):
    handler = TaskHandler("task-1", bridge_with_task)
    with pytest.raises(CompoxExecutionError) as caught:
        handler.mark_as_completed(value)
    assert caught.value.code == "invalid_output_dataset_ids"
    assert bridge_with_task.record()["status"] == "STARTED"


def test_mark_as_failed_payload_and_idempotence(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    handler.progress = 0.4
    try:
        raise ValueError("inner")
    except ValueError as inner:
        try:
            raise KeyError("outer") from inner
        except KeyError as outer:
            error = outer
    handler.mark_as_failed(error)
    record = bridge_with_task.record()
    assert record["status"] == "FAILED" and record["progress"] == 1.0
    assert record["output_dataset_ids"] == []
    assert record["error"] == {"type": "KeyError", "message": "'outer'", "code": "KeyError",
                               "cause": {"type": "ValueError", "message": "inner"}}
    final = bridge_with_task.written_fields()[-1]
    assert list(final) == ["status", "progress", "time_completed", "output_dataset_ids", "log", "error"]
    writes = len(bridge_with_task.writes)
    handler.mark_as_failed(error)
    assert len(bridge_with_task.writes) == writes
    assert handler.log.count("ERROR Task failed") == 1
    assert "ValueError: inner" in handler.log


def test_mark_as_failed_with_string_and_without_error(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    handler.mark_as_failed("it broke")
    assert bridge_with_task.record()["error"] == {"type": "error", "message": "it broke", "code": "error"}
    assert "ERROR Task failed: it broke" in handler.log and "NoneType" not in handler.log
    other = InMemoryBridge()
    other.begin_task({"execution_id": "t2"})
    handler = TaskHandler("t2", other)
    handler.mark_as_failed()
    assert "error" not in other.record() and other.record()["status"] == "FAILED"


def test_mark_as_failed_ignores_stops(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    handler.mark_as_failed(TaskStoppedException())
    assert bridge_with_task.record()["status"] == "STARTED"


def test_stop_detected_on_progress(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    handler.progress = 0.2
    bridge_with_task.request_stop()
    with pytest.raises(TaskStoppedException, match="Task has been stopped."):
        handler.progress = 0.3
    record = bridge_with_task.record()
    assert record["status"] == "STOPPED"
    assert handler.status == "STOPPED" and handler.stop_request.exists()
    assert log_messages(handler.log)[0] == "INFO Received stop request. Stopping task."
    with pytest.raises(TaskStoppedException):
        handler.progress = 0.4
    with pytest.raises(TaskStoppedException):
        handler.update_log()
    with pytest.raises(TaskStoppedException):
        handler.mark_as_completed(["x"])
    handler.mark_as_failed(RuntimeError("later"))
    assert bridge_with_task.record()["status"] == "STOPPED"
    assert bridge_with_task.written_fields()[-1] == {"status": "STOPPED"}


def test_stop_during_completion_keeps_progress_one(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    bridge_with_task.stop_when(lambda fields: "output_dataset_ids" in fields)
    with pytest.raises(TaskStoppedException):
        handler.mark_as_completed(["out"])
    record = bridge_with_task.record()
    assert record["status"] == "STOPPED" and record["progress"] == 1.0
    assert record["output_dataset_ids"] == ["out"]


def test_stop_write_failures_fall_back_to_failed(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    bridge_with_task.request_stop()
    bridge_with_task.fail_updates_when(lambda fields: "time_completed" in fields and len(fields) == 1)
    with pytest.raises(TaskStoppedException):
        handler.progress = 0.5
    statuses = [w["status"] for w in bridge_with_task.written_fields() if "status" in w]
    assert statuses == ["STARTED", "FAILED", "STOPPED"]


def test_record_write_failure_is_typed(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    bridge_with_task.fail_updates_when(lambda fields: "progress" in fields)
    with pytest.raises(CompoxTaskError) as caught:
        handler.progress = 0.1
    assert caught.value.code == "task_record_update_failed"
    assert caught.value.details == {"field": "progress"}
    assert isinstance(caught.value.cause, OSError)


def test_constructor_write_failure_marks_failed():
    bridge = InMemoryBridge()
    bridge.begin_task({"execution_id": "t"})
    bridge.fail_updates_when(lambda fields: fields == {"status": "STARTED"})
    with pytest.raises(CompoxTaskError):
        TaskHandler("t", bridge)
    assert bridge.record()["status"] == "FAILED"
    assert bridge.record()["error"]["code"] == "task_record_update_failed"


def test_fetch_asset(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    with pytest.raises(CompoxStateError) as caught:
        handler.fetch_asset("a.bin")
    assert caught.value.code == "algorithm_assets_not_initialized"

    bridge_with_task.put_object("asset-store", "id-1", b"weights")
    handler.algorithm_assets = {"files/a.bin": "id-1", "files\\win.bin": "id-1", "gone.bin": "id-x"}
    first = handler.fetch_asset("files/a.bin")
    second = handler.fetch_asset("files/a.bin")
    assert isinstance(first, io.BytesIO) and first is not second and first.tell() == 0
    assert first.read() == b"weights"
    assert handler.fetch_asset("files\\a.bin").read() == b"weights"
    assert handler.fetch_asset("files/win.bin").read() == b"weights"
    assert "Fetching asset id-1 from the database." in handler.log

    with pytest.raises(CompoxAssetError) as caught:
        handler.fetch_asset("nope.bin")
    assert caught.value.code == "asset_path_not_found"
    with pytest.raises(CompoxAssetError) as caught:
        handler.fetch_asset("gone.bin")
    assert caught.value.code == "asset_fetch_failed"
    assert caught.value.details == {"asset_path": "gone.bin", "asset_id": "id-x"}
    assert handler.status == "STARTED"


def test_file_stats_lines(bridge_with_task):
    handler = TaskHandler("task-1", bridge_with_task)
    ids = handler.post_data([{"mask": np.zeros(2)}], SegmentationSchema)
    handler.fetch_data(ids + ids, SegmentationSchema)
    handler.mark_as_completed(ids)
    messages = log_messages(handler.log)
    assert re.fullmatch(r"INFO File fetching stats: 2\.0 files fetched in \d+\.\d{4} seconds\.", messages[-2])
    assert re.fullmatch(r"INFO File posting stats: 1\.0 files posted in \d+\.\d{4} seconds\.", messages[-1])


def test_task_stopped_exception_is_reexported():
    assert ReExported is TaskStoppedException
