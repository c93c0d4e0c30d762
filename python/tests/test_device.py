"""Device resolution (runtime.md §9.5 with the recommended fixes)."""

from __future__ import annotations

import pytest

from compox.tasks._device import resolve_device


@pytest.mark.parametrize(
    "default, supported, override, gpu, mps, device, level",
    [
        ("cpu", ["cpu"], None, False, False, "cpu", "INFO"),
        ("gpu", ["cpu", "gpu"], None, True, False, "cuda", "INFO"),
        ("gpu", ["cpu", "gpu"], "", False, False, "cpu", "WARNING"),
        ("", ["", "gpu"], None, True, False, "cuda", "INFO"),
        ("", ["", "gpu"], None, False, False, "cpu", "WARNING"),
        ("mps", ["mps", "cpu"], None, False, True, "mps", "INFO"),
        ("mps", ["mps", "cpu"], None, False, False, "cpu", "WARNING"),
        ("cpu", ["cpu", "gpu"], "cpu", True, False, "cpu", "INFO"),
        ("cpu", ["cpu", "gpu"], "gpu", True, False, "cuda", "INFO"),
        ("cpu", ["cpu", "gpu"], "GPU", False, False, "cpu", "WARNING"),
        ("cpu", ["CPU", "GPU"], "gpu", True, False, "cuda", "INFO"),
        ("cpu", ["cpu", "mps"], "mps", False, True, "mps", "INFO"),
        ("cpu", ["cpu", "mps"], "mps", False, False, "cpu", "WARNING"),
        ("cpu", ["cpu"], "gpu", True, False, "cpu", "WARNING"),
        ("gpu", ["cpu", "gpu"], "tpu", True, False, "cuda", "WARNING"),
    ],
)
def test_resolution_table(default, supported, override, gpu, mps, device, level):
    resolution = resolve_device(default, supported, override, gpu, mps)
    assert (resolution.device, resolution.level) == (device, level)


def test_golden_messages():
    assert resolve_device("cpu", ["cpu"], None, False, False).message == (
        "No execution device override requested. Default device class 'cpu' resolved to runtime "
        "device 'cpu'."
    )
    assert resolve_device("gpu", ["cpu", "gpu"], None, False, False).message == (
        "No execution device override requested. Default device class 'gpu' could not be resolved "
        "because CUDA is not available. Falling back to runtime device 'cpu'."
    )


def test_inconsistent_records_raise():
    with pytest.raises(AssertionError):
        resolve_device("gpu", ["cpu"], None, True, False)
    with pytest.raises(ValueError):
        resolve_device("tpu", ["tpu"], None, True, False)
