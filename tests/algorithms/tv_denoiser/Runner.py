"""Test algorithm `tv_denoiser`: Chambolle total-variation denoising, slice by slice.

Exercises: a typed child runner with the default pre/postprocess, a float_range parameter, progress
reports, a helper imported from a sub-folder without `__init__.py`, and an asset in a nested folder
loaded once in `load_assets`.
"""

import json

import numpy as np
from skimage.restoration import denoise_tv_chambolle

from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner
from helpers.normalize import from_unit_range, to_unit_range

DEFAULTS_ASSET = "files/config/defaults.json"


class Runner(Image2ImageRunner):
    """Denoises every input image; the output has the input's shape and range, as float32."""

    def __init__(self):
        super().__init__()
        self.processed_slices = 0

    def load_assets(self):
        self.defaults = json.load(self.fetch_asset(DEFAULTS_ASSET))

    def inference(self, data, args=None):
        args = args or {}
        weight = float(args.get("denoising_weight", self.defaults["denoising_weight"]))
        if weight < 0.0:
            raise ValueError(f"denoising_weight must be >= 0, got {weight}.")
        max_num_iter = int(self.defaults["max_num_iter"])
        self.log_message(f"Denoising {data.shape[0]} slice(s) with weight {weight}.")

        output = np.empty(data.shape, dtype=np.float32)
        count = data.shape[0]
        for index in range(count):
            unit, low, high = to_unit_range(data[index])
            channel_axis = 0 if unit.ndim == 3 else None
            smoothed = denoise_tv_chambolle(
                unit, weight=weight, max_num_iter=max_num_iter, channel_axis=channel_axis
            )
            output[index] = from_unit_range(smoothed, low, high)
            self.processed_slices += 1
            self.set_progress((index + 1) / count)

        self.log_message(f"Denoised {self.processed_slices} slice(s).")
        return output
