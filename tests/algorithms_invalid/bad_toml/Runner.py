"""Minimal valid runner; the deploy error of this folder is in its pyproject.toml."""

from compox.algorithm_utils.BaseRunner import BaseRunner


class Runner(BaseRunner):
    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        return None

    def postprocess(self, data, args=None):
        return []
