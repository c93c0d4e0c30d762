"""What a job leaves running cannot reach a later job, and what an algorithm prints reaches
its own log whole (``runtime.md`` §2.2 thread fallback, §8.3 output): run through run_job."""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

from compox._captured_output import LINE_LIMIT, CapturedOutput
from compox._worker import run_job
from compox.tasks._task_log import LOG_HEAD_CHARS, LOG_LIMIT_CHARS, TaskLog, TaskLogger
from helpers import Deployment, log_messages, make_job, put_image, write_algorithm

LEAKY_FILES = {
    "Runner.py": '''
        import _thread
        import threading

        import leak_sync
        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner


        def attempt(name, action):
            try:
                action()
                leak_sync.outcomes[name] = "ok"
            except Exception as error:
                leak_sync.outcomes[name] = getattr(error, "code", type(error).__name__)


        class Runner(Image2ImageRunner):
            def inference(self, data, args=None):
                if args.get("role") == "leaver":
                    handler = self.task_handler

                    def linger():
                        leak_sync.go.wait(10)
                        attempt("set_progress", lambda: self.set_progress(0.77))
                        attempt("log_message", lambda: self.log_message("LEAK via log_message"))
                        attempt("handler_progress", lambda: setattr(handler, "progress", 0.66))
                        attempt("handler_log", lambda: handler.logger.info("LEAK via handler"))
                        print("LEAK via print")
                        leak_sync.done.set()

                    def linger_raw():
                        leak_sync.raw_started.set()
                        leak_sync.go.wait(10)
                        attempt("raw_set_progress", lambda: self.set_progress(0.55))
                        print("LEAK via a raw thread")
                        leak_sync.raw_done.set()

                    def tick():
                        # A timer that keeps re-arming itself: each tick is a new thread.
                        if not leak_sync.go.is_set():
                            threading.Timer(0.005, tick).start()
                            return
                        attempt("timer_set_progress", lambda: self.set_progress(0.44))
                        attempt("timer_log_message", lambda: self.log_message("LEAK via a timer"))
                        leak_sync.timer_done.set()

                    threading.Thread(target=linger, daemon=True).start()
                    _thread.start_new_thread(linger_raw, ())
                    leak_sync.raw_started.wait(10)
                    threading.Timer(0.005, tick).start()
                else:
                    leak_sync.go.set()
                    for event in (leak_sync.done, leak_sync.raw_done, leak_sync.timer_done):
                        assert event.wait(10)
                    worker = threading.Thread(target=lambda: self.set_progress(0.25))
                    worker.start()
                    worker.join()
                return data
    ''',
}


@pytest.fixture
def leak_sync(monkeypatch):
    sync = types.SimpleNamespace(
        go=threading.Event(), done=threading.Event(), raw_started=threading.Event(),
        raw_done=threading.Event(),
        timer_done=threading.Event(), outcomes={},
    )
    monkeypatch.setitem(sys.modules, "leak_sync", sync)
    return sync


def image_job(bridge, deployment, tmp_path, **record):
    inputs = [put_image(bridge, np.arange(4, dtype=np.uint8).reshape(2, 2))]
    job = make_job(bridge, deployment, inputs, tmp_path, record=record)
    run_job(job, bridge)
    return bridge.record(job["record"]["execution_id"])


def test_a_thread_left_by_an_earlier_execution_cannot_write_into_a_later_one(
        bridge, tmp_path, leak_sync):
    deployment = Deployment(bridge, write_algorithm(tmp_path / "leaky", LEAKY_FILES))
    first = image_job(bridge, deployment, tmp_path, additional_parameters={"role": "leaver"})
    assert first["status"] == "COMPLETED"

    later = image_job(bridge, deployment, tmp_path, additional_parameters={"role": "later"})
    assert later["status"] == "COMPLETED"
    assert later["progress"] == 1.0
    later_progress = [w["progress"] for w in bridge.written_fields() if "progress" in w]
    # The later job's own thread still reaches its handler through the fallback.
    assert 0.25 in later_progress
    assert not {0.77, 0.66, 0.55, 0.44} & set(later_progress)
    assert "LEAK" not in later["log"]
    assert "LEAK" not in first["log"]
    # Through the runner the leftover thread has no handler, as in the original; through a
    # handler it kept, the bridge refuses writes for a task that is no longer running.
    assert leak_sync.outcomes == {
        "set_progress": "task_handler_not_set",
        "log_message": "task_handler_not_set",
        "handler_progress": "task_record_update_failed",
        "handler_log": "ok",
        "raw_set_progress": "task_handler_not_set",
        "timer_set_progress": "task_handler_not_set",
        "timer_log_message": "task_handler_not_set",
    }
    assert first["progress"] == 1.0


STDIO_FILES = {
    "Runner.py": '''
        import faulthandler
        import subprocess
        import sys

        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner


        class Runner(Image2ImageRunner):
            def inference(self, data, args=None):
                faulthandler.enable()
                faulthandler.disable()
                assert sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
                assert sys.stdout.line_buffering
                sys.stdout.reconfigure(encoding="utf-8")
                subprocess.run([sys.executable, "-c", "pass"], stdout=sys.stdout, check=True)
                encoded = "bytes \\u00e9t\\u00e9 ok\\n".encode("utf-8")
                for index in range(len(encoded)):  # split inside the two-byte characters
                    sys.stdout.buffer.write(encoded[index:index + 1])
                sys.stdout.buffer.flush()
                sys.stdout.write("x" * (LIMIT + 10))
                sys.stdout.write("\\n")
                print("trailing text without a newline", end="")
                return data
    '''.replace("LIMIT", str(LINE_LIMIT)),
}


def test_standard_stream_features_work_and_every_printed_line_reaches_the_log(bridge, tmp_path):
    deployment = Deployment(bridge, write_algorithm(tmp_path / "stdio", STDIO_FILES))
    record = image_job(bridge, deployment, tmp_path)
    assert record["status"] == "COMPLETED", record["log"]
    messages = log_messages(record["log"])
    assert "INFO bytes \u00e9t\u00e9 ok" in messages
    # Text past the line limit is emitted at once instead of being held.
    assert f"INFO {'x' * (LINE_LIMIT + 10)}" in messages
    # Output still pending when the task ends is part of its final log.
    assert "INFO trailing text without a newline" in messages


def test_output_without_newlines_is_emitted_in_bounded_pieces():
    log = TaskLog()
    handler = types.SimpleNamespace(_task_log=log, logger=TaskLogger(log))
    chunk = "0123456789abcdef" * 64
    with CapturedOutput(handler):
        for _ in range(3 * LINE_LIMIT // len(chunk)):
            sys.stdout.write(chunk)
    messages = log_messages(log.text())
    assert messages == [f"INFO {(chunk * (LINE_LIMIT // len(chunk)))}"] * 3


def test_the_record_log_keeps_its_head_and_its_most_recent_lines():
    log = TaskLog()
    logger = TaskLogger(log)
    line_count = 2 * LOG_LIMIT_CHARS // 100
    for number in range(line_count):
        logger.info(f"line {number:08d} " + "." * 70)
    text = log.text()
    assert len(text) <= LOG_LIMIT_CHARS + 200
    lines = text.splitlines()
    assert lines[0].endswith("line 00000000 " + "." * 70)
    assert lines[-1].endswith(f"line {line_count - 1:08d} " + "." * 70)
    (gap,) = [line for line in lines if line.startswith("... ")]
    dropped = int(gap.split()[1])
    kept = [line for line in lines if " line " in line]
    assert len(kept) + dropped == line_count
    head_end = lines.index(gap)
    assert sum(len(line) + 1 for line in lines[:head_end]) <= LOG_HEAD_CHARS
    # The kept lines are the first ones and the most recent ones, each whole and in order.
    numbers = [int(line.split(" line ")[1].split()[0]) for line in kept]
    assert numbers == list(range(head_end)) + list(range(line_count - len(kept) + head_end, line_count))


PATCHING_FILES = {
    "Runner.py": '''
        import compox.algorithm_debug
        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner


        class Runner(Image2ImageRunner):
            def inference(self, data, args=None):
                if args.get("patch"):
                    compox.algorithm_debug.debug = None
                return data
    ''',
}


def test_run_job_says_when_a_job_changed_code_the_worker_relies_on(bridge, tmp_path, monkeypatch):
    import compox.algorithm_debug

    # Restored after the test, whatever the algorithm did.
    monkeypatch.setattr(compox.algorithm_debug, "debug", compox.algorithm_debug.debug)
    deployment = Deployment(bridge, write_algorithm(tmp_path / "patching", PATCHING_FILES))
    inputs = [put_image(bridge, np.arange(4, dtype=np.uint8).reshape(2, 2))]

    clean = make_job(bridge, deployment, inputs, tmp_path, record={"additional_parameters": {}})
    assert run_job(clean, bridge) is None

    patching = make_job(bridge, deployment, inputs, tmp_path,
                        record={"additional_parameters": {"patch": True}})
    assert run_job(patching, bridge) == "the task changed compox.algorithm_debug.debug"
    assert bridge.record()["status"] == "COMPLETED"
