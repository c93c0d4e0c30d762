"""Test algorithm `printer`: writes plain `print()` lines, which the server must put in the log.

Stdout lines are `printer: stdout line <i> of <n>` for i = 1..n (n = `lines`, default 3); one
more line, `printer: stderr line`, goes to stderr.
"""

import sys

from compox.algorithm_utils.BaseRunner import BaseRunner


class Runner(BaseRunner):
    """Prints in inference and returns no outputs."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        args = args or {}
        count = int(args.get("lines", 3))
        for number in range(1, count + 1):
            print(f"printer: stdout line {number} of {count}")
        print("printer: stderr line", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        return None

    def postprocess(self, data, args=None):
        return []
