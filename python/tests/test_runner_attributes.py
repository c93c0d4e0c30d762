"""The attribute model of BaseRunner (runtime.md §2.2 and the seven outcomes of §7)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner
from compox.algorithm_utils.runner_context import current_runner_context
from compox.exceptions import CompoxStateError
from compox.tasks.DebuggingTaskHandler import DebuggingTaskHandler


class AttributeSafetyRunner(Image2ImageRunner):
    def __init__(self):
        super().__init__()
        self.my_attribute = [0]
        self.foo = "foo"
        self.bar = 1
        self.baz = None

    def load_assets(self):
        self.my_asset = [0]

    def preprocess(self, input_data, args=None):
        return np.zeros((1, 2, 2))

    def inference(self, data, args=None):
        return data

    def postprocess(self, data, args=None):
        return []


def new_runner() -> AttributeSafetyRunner:
    return AttributeSafetyRunner.__new__(AttributeSafetyRunner)


def test_threads_get_isolated_contexts():
    runner = new_runner()
    runner.initialize(device="cpu")
    runner.load_assets()  # called directly, so nothing gets locked
    seen = []
    errors = []

    def increment(self_, data, args=None):
        self_.my_attribute = [self_.my_attribute[0] + 1]
        seen.append(self_.my_attribute[0])
        return data

    def work():
        try:
            runner.initialize()
            runner.inference = increment.__get__(runner)
            DebuggingTaskHandler("thread-task").set_as_current_handler()
            runner.run({"input_dataset_ids": []}, args={"x": 1})
        except Exception as error:  # surfaced below; a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert seen == [1] * 8
    assert runner.my_attribute[0] == 0


def test_locked_asset_cannot_be_reassigned():
    runner = new_runner()
    runner.initialize(device="cpu")
    runner._load_assets()
    with pytest.raises(AttributeError, match="Attribute 'my_asset' is locked and cannot be modified."):
        runner.my_asset = [1]


def test_locked_asset_is_readable():
    runner = new_runner()
    runner.initialize(device="cpu")
    runner._load_assets()
    assert runner.my_asset == [0]
    assert "my_asset" in runner.__dict__
    assert "my_asset" not in runner.runner_context


def test_device_is_read_only():
    runner = new_runner()
    runner.initialize(device="cpu")
    assert runner.device == "cpu"
    with pytest.raises(AttributeError):
        runner.device = "cuda:0"
    assert runner.device == "cpu"


def test_device_missing_without_initialize_device():
    runner = new_runner()
    runner.initialize()
    with pytest.raises(AttributeError):
        runner.device


def test_context_holds_exactly_the_init_attributes():
    runner = new_runner()
    runner.initialize(device="cpu")
    assert isinstance(runner.runner_context, dict)
    assert set(runner.runner_context) == {"my_attribute", "foo", "bar", "baz"}
    assert runner.runner_context is current_runner_context.get()


def test_locked_attributes_exist_only_after_load_assets():
    runner = new_runner()
    runner.initialize(device="cpu")
    assert not hasattr(runner, "_locked_attributes")
    runner._load_assets()
    assert isinstance(runner._locked_attributes, set)
    assert runner._locked_attributes == {"my_asset"}


def test_in_place_mutation_works():
    runner = new_runner()
    runner.initialize(device="cpu")
    runner.load_assets()
    runner.my_attribute.append(1)
    assert runner.my_attribute == [0, 1]


def test_init_attributes_reset_on_every_initialize_but_assets_stay():
    runner = new_runner()
    runner.initialize(device="cpu")
    runner._load_assets()
    runner.my_attribute = [5]
    runner.my_asset.append(7)
    runner.initialize()
    assert runner.my_attribute == [0]
    assert runner.my_asset == [0, 7]
    assert runner.device == "cpu"


def test_init_reassigning_a_locked_name_is_ignored():
    class Shadowing(AttributeSafetyRunner):
        def __init__(self):
            super().__init__()
            self.my_asset = "from init"

    runner = Shadowing.__new__(Shadowing)
    runner.initialize(device="cpu")
    runner._load_assets()
    # load_assets stored the asset on the instance, but the context copy from __init__ shadows it.
    assert runner.my_asset == "from init"
    runner.initialize()
    assert runner.my_asset == [0]


def test_context_entry_shadows_methods():
    runner = new_runner()
    runner.initialize(device="cpu")
    runner.inference = lambda data, args=None: "override"
    assert runner.inference(None) == "override"
    runner.initialize()
    assert runner.inference(np.ones(1)).tolist() == [1.0]


def test_delete_removes_context_entry_and_refuses_locked_names():
    runner = new_runner()
    runner.initialize(device="cpu")
    runner._load_assets()
    del runner.foo
    assert not hasattr(runner, "foo")
    with pytest.raises(AttributeError, match="locked"):
        del runner.my_asset
    assert runner.my_asset == [0]


def test_task_handler_unset_raises_state_error():
    runner = new_runner()
    runner.initialize(device="cpu")
    with pytest.raises(CompoxStateError) as caught:
        runner.task_handler
    assert caught.value.code == "task_handler_not_set"
    assert str(caught.value) == "Task handler is not set."


def test_task_handler_and_runner_context_are_read_only():
    runner = new_runner()
    runner.initialize(device="cpu")
    with pytest.raises(AttributeError):
        runner.task_handler = object()
    with pytest.raises(AttributeError):
        runner.runner_context = {}


def test_internal_names_stay_off_the_context():
    runner = new_runner()
    runner.initialize(device="cpu")
    assert "_device" not in runner.runner_context
    assert "_initializing" not in runner.runner_context
    assert runner.__dict__["_initializing"] is False


def test_failing_init_resets_initializing_flag():
    class Broken(AttributeSafetyRunner):
        def __init__(self):
            raise RuntimeError("boom")

    runner = Broken.__new__(Broken)
    with pytest.raises(RuntimeError):
        runner.initialize(device="cpu")
    assert runner.__dict__["_initializing"] is False


def test_thread_started_by_algorithm_falls_back_to_process_context():
    runner = new_runner()
    handler = DebuggingTaskHandler("fallback")
    handler.set_as_current_handler()
    runner.initialize(device="cpu")
    results = {}

    def worker():
        results["foo"] = runner.foo
        results["handler"] = runner.task_handler
        runner.set_progress(0.5)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results == {"foo": "foo", "handler": handler}
    assert handler.progress == 0.5


def test_missing_abstract_method_fails_at_new():
    from compox.algorithm_utils.Image2AlignmentRunner import Image2AlignmentRunner

    class NoInference(Image2AlignmentRunner):
        pass

    with pytest.raises(TypeError):
        NoInference.__new__(NoInference)
