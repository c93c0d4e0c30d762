"""Test algorithm `phase_registration`: translation of every input relative to the first one.

Exercises: Image2AlignmentRunner, whose `inference` is abstract (so it is defined here) and whose
default postprocess expects a list of N-1 matrices.
"""

import numpy as np
from skimage.registration import phase_cross_correlation

from compox.algorithm_utils.Image2AlignmentRunner import Image2AlignmentRunner


def to_gray(image):
    """Channel-first RGB (3, H, W) becomes its channel mean; a 2-D image is returned as float64."""
    values = np.asarray(image, dtype=np.float64)
    return values.mean(axis=0) if values.ndim == 3 else values


def translation_matrix(row_shift, col_shift):
    """Homogeneous (x=column, y=row, 1) matrix that translates by the given shift."""
    matrix = np.eye(3, dtype=np.float64)
    matrix[0, 2] = col_shift
    matrix[1, 2] = row_shift
    return matrix


class Runner(Image2AlignmentRunner):
    """One 3x3 translation matrix per input after the first, mapping that input onto the first."""

    def __init__(self):
        super().__init__()

    def inference(self, data, args=None):
        args = args or {}
        upsample_factor = int(args.get("upsample_factor", 10))
        if upsample_factor < 1:
            raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}.")

        reference = to_gray(data[0])
        count = data.shape[0]
        matrices = []
        for index in range(1, count):
            shift, error, _ = phase_cross_correlation(
                reference, to_gray(data[index]), upsample_factor=upsample_factor
            )
            row_shift, col_shift = float(shift[0]), float(shift[1])
            matrices.append(translation_matrix(row_shift, col_shift))
            self.log_message(
                f"Input {index}: shift to reference (row, col) = "
                f"({row_shift:.3f}, {col_shift:.3f}), error {float(error):.4f}."
            )
            self.set_progress(index / (count - 1))
        return matrices
