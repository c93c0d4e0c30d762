"""Test algorithm `crasher`: the worker process dies in inference without any Python cleanup."""

import os

from compox.algorithm_utils.BaseRunner import BaseRunner

EXIT_CODE = 3


class Runner(BaseRunner):
    """Ends the process with `os._exit(3)`: no exception, no cleanup, no final record write."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        self.log_message(f"crasher: exiting the worker with code {EXIT_CODE}.")
        os._exit(EXIT_CODE)

    def postprocess(self, data, args=None):
        return []
