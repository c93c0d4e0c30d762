"""Test algorithm `stubborn_sleeper`: like `sleeper`, but catches `Exception` around set_progress.

This is the common algorithm bug that swallows a stop request (TaskStoppedException derives from
Exception). The server must still end the execution as STOPPED. The first swallowed exception is
printed as `stubborn_sleeper: swallowed <Type>: <message>`.
"""

import time

from compox.algorithm_utils.BaseRunner import BaseRunner

STEP_SECONDS = 0.1


class Runner(BaseRunner):
    """Sleeps in 0.1 s steps and ignores every error raised by set_progress."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        args = args or {}
        seconds = float(args.get("seconds", 30.0))
        steps = max(int(round(seconds / STEP_SECONDS)), 0)
        self.log_message(f"stubborn_sleeper: sleeping {seconds} s in {steps} step(s).")

        swallowed = 0
        for step in range(1, steps + 1):
            time.sleep(STEP_SECONDS)
            try:
                self.set_progress(step / steps)
            except Exception as error:
                if swallowed == 0:
                    print(f"stubborn_sleeper: swallowed {type(error).__name__}: {error}")
                swallowed += 1

        try:
            self.log_message(f"stubborn_sleeper: done, {swallowed} exception(s) swallowed.")
        except Exception:
            pass
        return None

    def postprocess(self, data, args=None):
        return []
