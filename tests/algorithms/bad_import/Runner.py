"""Test algorithm `bad_import`: importing this module fails with ModuleNotFoundError."""

import definitely_not_installed_pkg  # noqa: F401  (the missing module is the point of the test)

from compox.algorithm_utils.BaseRunner import BaseRunner


class Runner(BaseRunner):
    """Never instantiated: the import above fails first."""

    def preprocess(self, input_data, args=None):
        return None

    def inference(self, data, args=None):
        return None

    def postprocess(self, data, args=None):
        return []
