"""Test algorithm `raiser`: inference raises an ordinary exception after logging one line."""

from compox.algorithm_utils.BaseRunner import BaseRunner

FAILURE_MESSAGE = "deliberate failure in inference"


class Runner(BaseRunner):
    """Raises `RuntimeError("deliberate failure in inference")` from inference."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        self.log_message("raiser: about to raise.")
        raise RuntimeError(FAILURE_MESSAGE)

    def postprocess(self, data, args=None):
        return []
