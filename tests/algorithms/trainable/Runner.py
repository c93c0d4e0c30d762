"""Test algorithm `trainable`: a model that is one JSON asset, `files/model.json`.

Execution: posts one GenericSchema item whose `data` is the asset's bytes (uint8), so a test can
tell the algorithm's own asset from a checkpoint's. Training and benchmarking use the methods of
`training.md` §3.7 and §5.4.
"""

import json
import time

import numpy as np

from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.algorithm_utils.io_schemas import GenericSchema, ImageSchema


class Runner(BaseRunner):
    def __init__(self):
        super().__init__()

    def load_assets(self):
        self.model_bytes = self.fetch_asset("files/model.json").read()

    def preprocess(self, input_data, args=None):
        return self.model_bytes

    def inference(self, data, args=None):
        return data

    def postprocess(self, data, args=None):
        payload = np.frombuffer(data, dtype=np.uint8).copy()
        return self.post_data([{"data": payload}], GenericSchema)

    def train(self, training_data, args=None):
        args = args or {}
        dataset = self.get_training_dataset(training_data)
        keys = dataset.get_sample_keys()
        self.log_message(f"trainable: training on {len(dataset)} sample(s), keys {keys}.")
        local = self.download_dataset_to_temp_store(dataset, {k: ImageSchema for k in keys})
        loaded = self.load_dataset_from_temp_store(local)
        shapes = [
            [{k: [list(np.shape(f["image"])) for f in files] for k, files in entry.items()}
             for entry in sample]
            for sample in loaded
        ]
        self.log_message(f"trainable: shapes {json.dumps(shapes)}")
        seconds = float(args.get("seconds", 0.0))
        steps = max(1, int(seconds / 0.1))
        for step in range(steps):
            time.sleep(seconds / steps)
            self.set_progress((step + 1) / (steps + 1))
        self.set_state({"epochs": steps})
        if args.get("save", True):
            model = {"scale": float(args.get("scale", 2.0))}
            self.save_checkpoint(
                {"files/model.json": json.dumps(model).encode("utf-8")},
                {"loss": 0.25},
            )

    def benchmark(self, args=None):
        args = args or {}
        started = time.perf_counter()
        for _ in range(int(args.get("repeats", 3))):
            self.inference(self.model_bytes)
        return {"elapsed_s": time.perf_counter() - started, "model_size": len(self.model_bytes)}
