"""BaseRunner.run and its stages, helpers and validation (runtime.md §2.4, §7)."""

from __future__ import annotations

from typing import Any, List
from unittest import mock

import numpy as np
import pytest

from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.tasks.DebuggingTaskHandler import DebuggingTaskHandler
from helpers import log_messages


class ChainRunner(BaseRunner):
    def __init__(self):
        self.calls: List[Any] = []

    def preprocess(self, input_data, args=None):
        self.calls.append(("pre", input_data, args))
        return "pre-out"

    def inference(self, data, args=None):
        self.calls.append(("inf", data, args))
        return "inf-out"

    def postprocess(self, data, args=None):
        self.calls.append(("post", data, args))
        return ["id-1"]


@pytest.fixture
def handler() -> DebuggingTaskHandler:
    handler = DebuggingTaskHandler("base-runner")
    handler.set_as_current_handler()
    return handler


def ready(runner_class=ChainRunner):
    runner = runner_class.__new__(runner_class)
    runner.initialize(device="cpu")
    runner._load_assets()
    return runner


def test_run_returns_none_and_completes_once_with_postprocess_output(handler):
    runner = ready()
    with mock.patch.object(handler, "mark_as_completed") as completed:
        assert runner.run({"input_dataset_ids": ["a"]}, args={"k": 1}) is None
    completed.assert_called_once_with(["id-1"])


def test_stages_chain_and_share_non_empty_args(handler):
    runner = ready()
    args = {"k": 1}
    runner.run({"input_dataset_ids": ["a"]}, args=args)
    (pre, pre_in, pre_args), (inf, inf_in, inf_args), (post, post_in, post_args) = runner.calls
    assert (pre, inf, post) == ("pre", "inf", "post")
    assert pre_in == {"input_dataset_ids": ["a"]}
    assert inf_in == "pre-out" and post_in == "inf-out"
    assert pre_args is args and inf_args is args and post_args is args
    assert handler.status == "COMPLETED"
    assert handler.output_dataset_ids == ["id-1"]
    assert handler.progress == 1.0


def test_empty_args_are_replaced_by_new_dicts_per_stage(handler):
    class Mutating(ChainRunner):
        def preprocess(self, input_data, args=None):
            args["added"] = True
            return super().preprocess(input_data, args)

    runner = ready(Mutating)
    runner.run({"input_dataset_ids": []}, args={})
    assert runner.calls[1][2] == {}  # keys added in preprocess are not seen by inference


def test_stage_log_lines_in_order(handler):
    runner = ready()
    runner.run({"input_dataset_ids": []})
    messages = [m.split(" in ")[0] for m in log_messages(handler.log)]
    assert messages == [
        "INFO Starting execution.",
        "INFO Data preprocessing finished",
        "INFO Running inference.",
        "INFO Inference finished",
        "INFO Postprocessing output data.",
        "INFO Postprocessing finished",
        "INFO Execution completed",
        "INFO File fetching stats: 0.0 files fetched",
        "INFO File posting stats: 0.0 files posted",
    ]


def test_run_marks_failure_and_reraises(handler):
    class Failing(ChainRunner):
        def inference(self, data, args=None):
            raise RuntimeError("broken model")

    runner = ready(Failing)
    with pytest.raises(RuntimeError, match="broken model"):
        runner.run({"input_dataset_ids": []})
    assert handler.status == "FAILED"
    record = handler.database_connection.record()
    assert record["status"] == "FAILED"
    assert record["error"] == {"type": "RuntimeError", "message": "broken model", "code": "RuntimeError"}
    assert "ERROR Task failed" in handler.log
    assert "RuntimeError: broken model" in handler.log


@pytest.mark.parametrize("value", [1, True, np.float32(0.5)])
def test_set_progress_rejects_non_floats(handler, value):
    runner = ready()
    with pytest.raises(ValueError, match="Progress must be a float."):
        runner.set_progress(value)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_set_progress_rejects_out_of_range(handler, value):
    runner = ready()
    with pytest.raises(ValueError, match="Progress must be between 0 and 1."):
        runner.set_progress(value)


def test_set_progress_accepts_float64(handler):
    runner = ready()
    runner.set_progress(np.float64(0.25))
    assert handler.progress == 0.25


def test_handler_progress_setter_validates_range(handler):
    with pytest.raises(ValueError, match=r"Progress must be between 0 and 1. Got: 2"):
        handler.progress = 2
    handler.progress = 1  # ints are accepted at handler level
    with pytest.raises(ValueError, match="Invalid status. Got: DONE"):
        handler.status = "DONE"


def test_log_message_levels(handler):
    runner = ready()
    runner.log_message("hello")
    runner.log_message("careful", "WARNING")
    runner.log_message("hidden", "DEBUG")
    with pytest.raises(ValueError, match="Invalid logging level provided."):
        runner.log_message("x", "info")
    assert log_messages(handler.log) == ["INFO hello", "WARNING careful"]


def test_state_defaults_to_empty_dict_and_is_kept_in_memory(handler):
    runner = ready()
    assert runner.get_state() == {}
    runner.set_state({"epoch": 3})
    assert runner.get_state() == {"epoch": 3}
    assert "state" not in handler.database_connection.record()


def test_training_only_calls_are_refused(handler):
    runner = ready()
    with pytest.raises(Exception) as caught:
        runner.run_training(["s"])
    assert getattr(caught.value, "code", None) == "training_handler_required"
    with pytest.raises(NotImplementedError):
        runner.train(["s"])
