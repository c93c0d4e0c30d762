"""Test algorithm `noop`: the cheapest possible execution, for dispatch benchmarks."""

from compox.algorithm_utils.BaseRunner import BaseRunner


class Runner(BaseRunner):
    """Every stage does nothing; there are no outputs."""

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        return None

    def postprocess(self, data, args=None):
        return []
