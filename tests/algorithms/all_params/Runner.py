"""Test algorithm `all_params`: echoes its arguments.

The pyproject declares one parameter of every config type. The runner does not read them by name:
it logs every received argument as `arg <name> = <repr>` and posts one GenericSchema item whose
`data` is `json.dumps(args, sort_keys=True)` encoded as UTF-8 bytes in a uint8 array, so a test can
decode the file and compare it with the `additional_parameters` it sent.
"""

import json

import numpy as np

from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.algorithm_utils.io_schemas import GenericSchema


def encode_args(args):
    """The JSON text of `args` (sorted keys; non-JSON values as their repr) as a uint8 array."""
    text = json.dumps(args, sort_keys=True, default=repr)
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


class Runner(BaseRunner):
    """Generic runner; takes any inputs (ignored) and any arguments."""

    def __init__(self):
        super().__init__()

    def preprocess(self, input_data, args=None):
        return dict(args or {})

    def inference(self, data, args=None):
        self.log_message(f"Received {len(data)} argument(s).")
        for name in sorted(data):
            self.log_message(f"arg {name} = {data[name]!r}")
        return data

    def postprocess(self, data, args=None):
        return self.post_data([{"data": encode_args(data)}], GenericSchema)
