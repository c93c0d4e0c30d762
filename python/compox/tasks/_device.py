"""Device resolution for an execution (``runtime.md`` §9.5, with the recommended fixes).

Records speak of device *classes* (``cpu``, ``gpu``, ``mps``); runners receive a *runtime*
device (``cpu``, ``cuda``, ``mps``). Comparisons are case-insensitive and an ``mps``
override is honoured like a ``gpu`` one. The returned log line is what the handler prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class DeviceResolution:
    device: str
    level: str
    message: str


_RUNTIME_DEVICE = {"gpu": "cuda", "mps": "mps", "cpu": "cpu"}
_ACCELERATOR_NAME = {"gpu": "CUDA", "mps": "MPS"}


def resolve_device(
    default_device: Optional[str],
    supported_devices: Iterable[str],
    override: Optional[str],
    gpu_available: bool,
    mps_available: bool,
) -> DeviceResolution:
    """Pick the runtime device; raises AssertionError/ValueError on an inconsistent record."""
    default = (default_device or "").lower()
    supported = [str(device).lower() for device in supported_devices or []]
    if default not in supported:
        raise AssertionError(
            f"Default device '{default_device}' is not one of the supported devices "
            f"{list(supported_devices or [])}."
        )

    requested = (override or "").lower()
    available = {"cpu": True, "gpu": gpu_available, "mps": mps_available}
    if requested:
        if requested in available and requested in supported:
            return _resolve_class(
                requested,
                available,
                f"Execution device override '{requested}' requested.",
                "override",
            )
        lead = (
            f"Execution device override '{override}' is not supported by this algorithm "
            f"(supported devices: {', '.join(supported)}); using the default device."
        )
        resolved = _resolve_default(default, supported, available, lead)
        return DeviceResolution(resolved.device, "WARNING", resolved.message)

    return _resolve_default(
        default, supported, available, "No execution device override requested."
    )


def _resolve_default(
    default: str, supported: list, available: dict, lead: str
) -> DeviceResolution:
    if default == "" and "gpu" in supported:
        default = "gpu"
    if default not in available:
        raise ValueError(f"Unsupported default device '{default}'.")
    return _resolve_class(default, available, lead, "default")


def _resolve_class(device_class: str, available: dict, lead: str, origin: str) -> DeviceResolution:
    subject = "Default device class" if origin == "default" else "Device class"
    runtime = _RUNTIME_DEVICE[device_class]
    if available[device_class]:
        return DeviceResolution(
            runtime,
            "INFO",
            f"{lead} {subject} '{device_class}' resolved to runtime device '{runtime}'.",
        )
    return DeviceResolution(
        "cpu",
        "WARNING",
        f"{lead} {subject} '{device_class}' could not be resolved because "
        f"{_ACCELERATOR_NAME[device_class]} is not available. "
        "Falling back to runtime device 'cpu'.",
    )
