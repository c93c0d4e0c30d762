"""run_job end to end: module zips built with _deploy_tools, run through an InMemoryBridge."""

from __future__ import annotations

import json
import re
import sys
import uuid

import numpy as np
import pytest

from algorithms import (
    CRASHING_INIT_FILES,
    MAIN_FILES,
    MISSING_DEPENDENCY_FILES,
    UNKNOWN_ASSET_FILES,
)
from compox._worker import run_job
from compox.algorithm_utils import runner_context
from compox.algorithm_utils.io_schemas import ImageSchema
from compox.tasks import context_handler
from compox.tasks.DebuggingTaskHandler import DebuggingTaskHandler
from helpers import Deployment, log_messages, make_job, put_image, write_algorithm

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR|SUCCESS|CRITICAL) ")
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")
NUMBER = re.compile(r"\d+(\.\d+)?")


@pytest.fixture
def deployed(bridge, tmp_path):
    folder = write_algorithm(tmp_path / "dummy", MAIN_FILES)
    return Deployment(bridge, folder, assets={"files/config.txt": b"cfg"})


def run(bridge, deployment, tmp_path, inputs=None, **overrides):
    if inputs is None:
        inputs = [put_image(bridge, np.arange(4, dtype=np.uint8).reshape(2, 2))]
    job = make_job(bridge, deployment, inputs, tmp_path, **overrides)
    assert run_job(job, bridge) is None
    return bridge.record(job["record"]["execution_id"])


def normalised(messages):
    return [NUMBER.sub("N", message) for message in messages]


def runner_module(deployment):
    return sys.modules[f"{deployment.module_id}.Runner"]


def test_successful_execution_record_and_outputs(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path)
    assert record["status"] == "COMPLETED"
    assert record["progress"] == 1.0
    assert record["resolved_execution_device"] == "cpu"
    assert LOCAL_TIME.match(record["time_completed"])
    uuid.UUID(record["session_token"])
    (output_id,) = record["output_dataset_ids"]
    handler = DebuggingTaskHandler("reader")
    handler.database_connection = bridge
    (output,) = handler.fetch_data([output_id], ImageSchema)
    np.testing.assert_array_equal(output["image"], np.array([[3, 2], [1, 0]], np.uint8))


def test_log_lines_match_the_original_sequence(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path)
    log = record["log"]
    assert log.endswith("\n")
    assert all(LINE.match(line) for line in log.splitlines())
    asset_id = deployed.record["algorithm_minor_version"]["0"]["assets"]["files/config.txt"]
    assert normalised(log_messages(log)) == normalised([
        "INFO Fetching algorithm...",
        f"INFO Fetching algorithm {deployed.algorithm_id} from the database.",
        "INFO Loading the algorithm.",
        "INFO No execution device override requested. Default device class 'cpu' resolved to runtime device 'cpu'.",
        f"INFO Fetching asset {asset_id} from the database.",
        f"INFO Asset {asset_id} fetched in 0.0 seconds.",
        "INFO Algorithm runner successfully loaded in 0.0 seconds.",
        "INFO Algorithm fetched in 0.0 seconds.",
        "INFO Starting execution.",
        "INFO Data preprocessing finished in 0.0 seconds",
        "INFO Running inference.",
        "INFO printed from inference",
        "INFO partial line without newline completed",
        "INFO to stderr",
        "INFO config=cfg device=cpu helpers=helpers/helpers",
        "INFO Inference finished in 0.0 seconds",
        "INFO Postprocessing output data.",
        "INFO Uploading 1 results to the database.",
        "INFO Postprocessing finished in 0.0 seconds",
        "INFO Execution completed in 0.0 seconds.",
        "INFO File fetching stats: 1.0 files fetched in 0.0 seconds.",
        "INFO File posting stats: 1.0 files posted in 0.0 seconds.",
    ])


def test_record_write_order(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path)
    writes = bridge.written_fields(record["execution_id"])
    assert [list(fields) for fields in writes] == [
        ["status"], ["session_token"], ["resolved_execution_device"], ["status"], ["log"],
        ["progress"], ["log"], ["log"], ["progress"], ["output_dataset_ids"], ["time_completed"],
        ["log"], ["status"],
    ]
    assert [w["status"] for w in writes if "status" in w] == ["STARTED", "RUNNING", "COMPLETED"]
    assert [w["progress"] for w in writes if "progress" in w] == [0.5, 1.0]
    assert writes[-2]["log"] == record["log"]


def test_cache_miss_then_hit(bridge, deployed, tmp_path):
    first = run(bridge, deployed, tmp_path)
    counters = runner_module(deployed).COUNTERS
    assert counters == {"init": 2, "load_assets": 1}
    second = run(bridge, deployed, tmp_path)
    assert counters == {"init": 3, "load_assets": 1}
    assert "Default device class" in first["log"] and "Default device class" not in second["log"]
    assert "Fetching asset" not in second["log"]
    assert second["status"] == "COMPLETED"
    assert second["resolved_execution_device"] == "cpu"


def test_cache_evicts_least_recent_beyond_maxsize(bridge, deployed, tmp_path):
    other = Deployment(bridge, write_algorithm(tmp_path / "other", MAIN_FILES),
                       assets={"files/config.txt": b"other"})
    run(bridge, deployed, tmp_path)
    run(bridge, other, tmp_path)
    # Same code gives the same module id, so both algorithms share one module's counters.
    assert runner_module(deployed).COUNTERS["load_assets"] == 2
    record = run(bridge, deployed, tmp_path)
    assert runner_module(deployed).COUNTERS["load_assets"] == 3
    assert "config=cfg" in record["log"]
    run(bridge, other, tmp_path, cache_maxsize=3)
    run(bridge, deployed, tmp_path, cache_maxsize=3)
    assert runner_module(deployed).COUNTERS["load_assets"] == 4


def test_session_token_is_kept_or_generated(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path, record={"session_token": "client-token"})
    assert record["session_token"] == "client-token"


def test_sessions_carry_objects_between_executions(bridge, deployed, tmp_path):
    args = {"mode": "session"}
    first = run(bridge, deployed, tmp_path, record={"session_token": "s1", "additional_parameters": args})
    second = run(bridge, deployed, tmp_path, record={"session_token": "s1", "additional_parameters": args})
    other = run(bridge, deployed, tmp_path, record={"session_token": "s2", "additional_parameters": args})
    assert first["status"] == second["status"] == other["status"] == "COMPLETED"
    assert "session count=1" in first["log"] and "Saved object with key count" in first["log"]
    assert "session count=2" in second["log"] and "Loaded object with key count" in second["log"]
    assert "session count=1" in other["log"]


def test_crashing_init_fails_with_import_error(bridge, tmp_path):
    deployment = Deployment(bridge, write_algorithm(tmp_path / "crash", CRASHING_INIT_FILES))
    record = run(bridge, deployment, tmp_path)
    assert record["status"] == "FAILED"
    assert record["progress"] == 1.0 and record["output_dataset_ids"] == []
    assert record["resolved_execution_device"] is None
    assert record["error"] == {
        "type": "CompoxImportError",
        "message": "Failed to import algorithm module",
        "code": "algorithm_module_import_failed",
        "details": {"module_id": deployment.module_id},
        "retryable": False,
        "http_status": 500,
        "cause": {"type": "RuntimeError", "message": "init exploded"},
    }
    messages = log_messages(record["log"])
    assert messages[-3:] == [
        "ERROR Task failed",
        "INFO File fetching stats: 0.0 files fetched in 0.0000 seconds.",
        "INFO File posting stats: 0.0 files posted in 0.0000 seconds.",
    ]
    assert "RuntimeError: init exploded" in record["log"]
    assert "compox.exceptions.CompoxImportError: Failed to import algorithm module" in record["log"]


def test_unknown_asset_path_fails(bridge, tmp_path):
    deployment = Deployment(bridge, write_algorithm(tmp_path / "noasset", UNKNOWN_ASSET_FILES))
    record = run(bridge, deployment, tmp_path)
    assert record["status"] == "FAILED"
    assert record["error"]["type"] == "CompoxAssetError"
    assert record["error"]["code"] == "asset_path_not_found"
    assert record["error"]["message"] == "Asset path 'files/missing.bin' is not registered for the algorithm."
    assert record["error"]["details"] == {"asset_path": "files/missing.bin"}


def test_missing_python_dependency(bridge, tmp_path):
    deployment = Deployment(bridge, write_algorithm(tmp_path / "dep", MISSING_DEPENDENCY_FILES))
    record = run(bridge, deployment, tmp_path)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "algorithm_module_import_failed"
    assert record["error"]["cause"]["type"] == "ModuleNotFoundError"
    assert [list(w) for w in bridge.written_fields(record["execution_id"])][:2] == [["status"], ["session_token"]]


def test_unknown_algorithm_and_minor(bridge, deployed, tmp_path):
    record = run(bridge, None, tmp_path)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "algorithm_not_found" and record["error"]["http_status"] == 404
    record = run(bridge, deployed, tmp_path, record={"algorithm_minor_version": "7"})
    assert record["error"]["code"] == "algorithm_fetch_failed"
    assert record["error"]["details"] == {"algorithm_id": deployed.algorithm_id}
    assert record["error"]["cause"]["type"] == "KeyError"


def test_input_without_image_key_fails_validation(bridge, deployed, tmp_path):
    inputs = [put_image(bridge, np.zeros((2, 2), np.uint8), key="data")]
    record = run(bridge, deployed, tmp_path, inputs=inputs)
    assert record["status"] == "FAILED"
    assert record["error"]["type"] == "ValidationError"
    assert record["error"]["code"] == "ValidationError"
    statuses = [w["status"] for w in bridge.written_fields(record["execution_id"]) if "status" in w]
    assert statuses == ["STARTED", "RUNNING", "FAILED"]


def test_pyc_only_module_runs(bridge, tmp_path):
    deployment = Deployment(bridge, write_algorithm(tmp_path / "compiled", MAIN_FILES), pyc_only=True,
                            assets={"files/config.txt": b"pyc"})
    record = run(bridge, deployment, tmp_path)
    assert record["status"] == "COMPLETED"
    assert runner_module(deployment).__file__.endswith("Runner.pyc")


def test_stop_at_first_progress(bridge, deployed, tmp_path):
    bridge.stop_when(lambda fields: "progress" in fields)
    record = run(bridge, deployed, tmp_path)
    assert record["status"] == "STOPPED"
    assert record["output_dataset_ids"] == []
    assert record["progress"] == 0.5
    assert LOCAL_TIME.match(record["time_completed"])
    assert log_messages(record["log"])[-3:] == [
        "INFO Received stop request. Stopping task.",
        "INFO File fetching stats: 1.0 files fetched in " + record["log"].split("files fetched in ")[1].split("\n")[0],
        "INFO File posting stats: 0.0 files posted in 0.0000 seconds.",
    ]
    writes = bridge.written_fields(record["execution_id"])
    assert writes[-1] == {"status": "STOPPED"}
    assert not any(w.get("status") in ("COMPLETED", "FAILED") for w in writes)
    assert not bridge.stop_requested(record["execution_id"])


def test_stop_swallowed_by_except_exception_still_ends_stopped(bridge, deployed, tmp_path):
    bridge.stop_when(lambda fields: fields.get("progress") == 0.1)
    record = run(bridge, deployed, tmp_path, record={"additional_parameters": {"mode": "swallow_stop"}})
    assert record["status"] == "STOPPED"
    writes = bridge.written_fields(record["execution_id"])
    assert writes[-1] == {"status": "STOPPED"}
    assert [w["progress"] for w in writes if "progress" in w] == [0.1]
    assert record["log"].count("Received stop request. Stopping task.") == 1
    assert "Inference finished" not in record["log"]


def test_stop_requested_while_pending(bridge, deployed, tmp_path):
    job = make_job(bridge, deployed, [], tmp_path)
    bridge.request_stop()
    run_job(job, bridge)
    record = bridge.record()
    assert record["status"] == "STOPPED"
    assert log_messages(record["log"])[0] == "INFO Received stop request. Stopping task."
    assert f"{deployed.module_id}.Runner" not in sys.modules
    assert [list(w) for w in bridge.written_fields()] == [["status"], ["time_completed"], ["log"], ["status"]]


def test_record_write_failure_marks_failed(bridge, deployed, tmp_path):
    bridge.fail_updates_when(lambda fields: fields.get("progress") == 0.5)
    record = run(bridge, deployed, tmp_path)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "task_record_update_failed"
    assert record["error"]["details"] == {"field": "progress"}
    assert record["error"]["cause"]["type"] == "OSError"


@pytest.mark.parametrize("returns, status, ids", [
    ("none", "COMPLETED", []),
    ("foo", "COMPLETED", ["This is Foo!"]),
    ("string", "FAILED", []),
])
def test_output_id_validation(bridge, deployed, tmp_path, returns, status, ids):
    record = run(bridge, deployed, tmp_path, record={"additional_parameters": {"returns": returns}})
    assert record["status"] == status
    assert record["output_dataset_ids"] == ids
    if status == "FAILED":
        assert record["error"]["code"] == "invalid_output_dataset_ids"


def test_thread_started_by_algorithm_reaches_the_handler(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path, record={"additional_parameters": {"mode": "thread"}})
    assert record["status"] == "COMPLETED"
    assert [w["progress"] for w in bridge.written_fields() if "progress" in w] == [0.25, 1.0]


def test_prints_of_an_earlier_executions_thread_stay_out_of_later_logs(bridge, deployed, tmp_path):
    first = run(bridge, deployed, tmp_path, record={"additional_parameters": {"mode": "background_printer"}})
    assert first["status"] == "COMPLETED"
    for _ in range(3):
        later = run(bridge, deployed, tmp_path)
        assert later["status"] == "COMPLETED"
        assert "BG-LEAK" not in later["log"]


def test_system_exit_fails_the_execution_only(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path, record={"additional_parameters": {"mode": "exit"}})
    assert record["status"] == "FAILED"
    assert record["error"]["type"] == "SystemExit"


def test_backslash_asset_paths_are_normalised(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path, record={"additional_parameters": {"mode": "backslash_asset"}})
    assert record["status"] == "COMPLETED"
    assert "INFO cfg\n" in record["log"]


def test_device_override_and_gpu_resolution(bridge, deployed, tmp_path):
    record = run(bridge, deployed, tmp_path, gpu_available=True,
                 record={"execution_device_override": "GPU"})
    assert record["resolved_execution_device"] == "cuda"
    assert "device=cuda" in record["log"]
    gpu_default = Deployment(bridge, write_algorithm(tmp_path / "gpu", MAIN_FILES),
                             assets={"files/config.txt": b"g"}, default_device="gpu")
    record = run(bridge, gpu_default, tmp_path)
    assert record["resolved_execution_device"] == "cpu"
    assert (
        "WARNING No execution device override requested. Default device class 'gpu' could not be "
        "resolved because CUDA is not available. Falling back to runtime device 'cpu'."
    ) in log_messages(record["log"])


def test_checkpoint_overlay(bridge, deployed, tmp_path):
    bridge.put_object("asset-store", "ckpt-asset", b"from checkpoint")
    bridge.put_object("algorithm-checkpoint-store", "ck1", json.dumps(
        {"checkpoint_id": "ck1", "assets": {"files/config.txt": "ckpt-asset"}}).encode())
    bridge.put_object("algorithm-checkpoint-store", "ck2", json.dumps(
        {"checkpoint_id": "ck2", "assets": {"files/other.bin": "ckpt-asset"}}).encode())
    record = run(bridge, deployed, tmp_path, record={"checkpoint_id": "ck1"})
    assert "config=from checkpoint" in record["log"]
    record = run(bridge, deployed, tmp_path, record={"checkpoint_id": "ck2"})
    assert record["error"]["code"] == "checkpoint_asset_incompatible"
    record = run(bridge, deployed, tmp_path, record={"checkpoint_id": "ck-missing"})
    assert record["error"]["code"] == "checkpoint_load_failed"


def test_process_state_is_restored_after_a_job(bridge, deployed, tmp_path):
    stdout, stderr = sys.stdout, sys.stderr
    run(bridge, deployed, tmp_path)
    assert sys.stdout is stdout and sys.stderr is stderr
    assert context_handler.active_handler() is None
    assert runner_context.active_runner_context() is None


def test_unsupported_job_kind_is_failed(bridge, tmp_path):
    # Executions, trainings and benchmarks are the job kinds (training.md §3.3, §5.3).
    job = make_job(bridge, None, [], tmp_path, kind="distillation")
    run_job(job, bridge)
    assert bridge.record()["status"] == "FAILED"
    assert bridge.record()["error"]["message"] == "Unsupported job kind: 'distillation'."


ASSET_IN_INIT_FILES = {
    "Runner.py": '''
        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner


        class Runner(Image2ImageRunner):
            def __init__(self):
                super().__init__()
                self.label = self.fetch_asset("files/config.txt").read().decode()

            def inference(self, data, args=None):
                self.log_message(f"label={self.label}")
                return data
    ''',
}


def test_assets_are_available_in_init_on_cache_hits(bridge, tmp_path):
    deployment = Deployment(bridge, write_algorithm(tmp_path / "init_asset", ASSET_IN_INIT_FILES),
                            assets={"files/config.txt": b"L"})
    first = run(bridge, deployment, tmp_path)
    second = run(bridge, deployment, tmp_path)
    assert first["status"] == second["status"] == "COMPLETED"
    assert "label=L" in second["log"]


PRINTING_THREAD_ACROSS_JOBS = r'''
import sys, threading
from compox._captured_output import CapturedOutput
from compox.tasks._task_log import TaskLog, TaskLogger

class Handler:
    def __init__(self):
        self._task_log = TaskLog()
        self.logger = TaskLogger(self._task_log)

def chatter():
    while True:
        print("x")

threading.Thread(target=chatter, daemon=True).start()
for _ in range(100_000):
    with CapturedOutput(Handler()):
        pass
sys.stderr.write("survived\n")
'''


def test_a_thread_printing_while_jobs_start_and_end_does_not_crash_the_worker():
    # CPython 3.11's print() holds a borrowed reference to sys.stdout; replacing it with a new
    # writer per job freed the old one under a printing thread (a segfault, seen in CI).
    import subprocess

    done = subprocess.run([sys.executable, "-c", PRINTING_THREAD_ACROSS_JOBS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "survived\n" in done.stderr
