"""Misbehaves in the ways a worker process must survive (see pyproject.toml)."""

import os
import sys
import threading
import time

from compox.algorithm_utils.BaseRunner import BaseRunner


class Runner(BaseRunner):
    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        mode = (args or {}).get("mode", "fd1")
        if mode == "stderr_bytes":
            os.write(2, b"caf\xe9\n")
            os.write(2, b"e" * 8192 + b"\n")
        elif mode == "fd1":
            os.write(1, b"\xff\xff\xff\xf0 not a frame\n")
        elif mode == "surrogate":
            print("bad \udcff name")
            self.log_message("logged \udcff too")
        elif mode == "fork_sys_exit":
            if os.fork() == 0:
                sys.exit(0)
            os.wait()
        elif mode == "fork_hang":
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            time.sleep(60)
        elif mode == "leave_thread":
            threading.Thread(target=self._linger, args=(self.task_handler,), daemon=True).start()
        elif mode == "sleep_briefly":
            time.sleep(1.5)
        elif mode == "rename_record":
            # Tries to move the record to another id and algorithm.
            handler = self.task_handler
            handler.database_connection.update_record(
                {"execution_id": "renamed-by-the-algorithm", "algorithm_id": "other"}
            )
        elif mode == "break_json":
            # Every later record write of this interpreter fails.
            sys.modules["json"] = None
        elif mode == "break_json_loads":
            # This execution completes; every later one would fail to read its job.
            import json

            json.loads = None
        elif mode == "patch_handler":
            from compox.tasks.TaskHandler import TaskHandler

            def refuse(*args, **kwargs):
                raise RuntimeError("patched by the algorithm")

            TaskHandler._write_record = refuse
        self.log_message(f"misbehaver {mode} done")
        return None

    def _linger(self, handler):
        """Keeps writing through this execution's handler and through the runner, into
        whatever execution runs next on this worker."""
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            for write in (
                lambda: self.set_progress(0.77),
                lambda: setattr(handler, "progress", 0.66),
                lambda: self.log_message("LEAK from an earlier execution"),
                lambda: handler.database_connection.update_record(
                    {"progress": 0.33, "log": "LEAK through the bridge"}
                ),
            ):
                try:
                    write()
                except Exception:
                    pass
            print("LEAK printed by an earlier execution")
            time.sleep(0.01)

    def postprocess(self, data, args=None):
        return []
