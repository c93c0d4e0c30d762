"""Test algorithm `sleeper`: a long run that reports progress every 0.1 s.

It runs `round(seconds / 0.1)` steps; after step i (1-based) of n it calls `set_progress(i / n)`.
A stop request therefore takes effect within about 0.1 s.
"""

import time

from compox.algorithm_utils.BaseRunner import BaseRunner

STEP_SECONDS = 0.1


class Runner(BaseRunner):
    """Sleeps in 0.1 s steps; no outputs."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        args = args or {}
        seconds = float(args.get("seconds", 30.0))
        if seconds < 0.0:
            raise ValueError(f"seconds must be >= 0, got {seconds}.")
        steps = int(round(seconds / STEP_SECONDS))
        self.log_message(f"sleeper: sleeping {seconds} s in {steps} step(s).")

        for step in range(1, steps + 1):
            time.sleep(STEP_SECONDS)
            self.set_progress(step / steps)

        self.log_message("sleeper: done.")
        return None

    def postprocess(self, data, args=None):
        return []
