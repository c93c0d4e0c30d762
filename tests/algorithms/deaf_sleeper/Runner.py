"""Test algorithm `deaf_sleeper`: a long run that never calls set_progress.

Nothing in it writes to the record, so it cannot notice a stop request; only killing the worker
after the grace period ends it early.
"""

import time

from compox.algorithm_utils.BaseRunner import BaseRunner


class Runner(BaseRunner):
    """Sleeps for `seconds` in one call; no outputs."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        args = args or {}
        seconds = max(float(args.get("seconds", 30.0)), 0.0)
        self.log_message(f"deaf_sleeper: sleeping {seconds} s without progress reports.")
        time.sleep(seconds)
        self.log_message("deaf_sleeper: done.")
        return None

    def postprocess(self, data, args=None):
        return []
