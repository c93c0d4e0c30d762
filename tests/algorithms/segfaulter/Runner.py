"""Test algorithm `segfaulter`: the worker process is killed by SIGSEGV in inference."""

import ctypes

from compox.algorithm_utils.BaseRunner import BaseRunner


class Runner(BaseRunner):
    """Reads memory at address 0 through ctypes, a real segmentation fault."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        self.log_message("segfaulter: reading address 0.")
        ctypes.string_at(0)
        return None

    def postprocess(self, data, args=None):
        return []
