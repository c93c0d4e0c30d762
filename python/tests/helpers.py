"""Helpers shared by the tests: HDF5 inputs, algorithm folders, deployments and jobs."""

from __future__ import annotations

import io
import textwrap
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

import h5py
import numpy as np

from compox._bridge_memory import InMemoryBridge
from compox._deploy_tools import build_module_zip


def h5_bytes(**datasets: Any) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        for key, value in datasets.items():
            file.create_dataset(key, data=value)
    return buffer.getvalue()


def put_image(bridge: InMemoryBridge, image: np.ndarray, key: str = "image") -> str:
    object_id = str(uuid.uuid1())
    bridge.put_object("data-store", object_id, h5_bytes(**{key: image}))
    return object_id


def write_algorithm(root: Path, files: Dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


class Deployment:
    """An algorithm deployed into an InMemoryBridge the way the server would store it."""

    def __init__(self, bridge: InMemoryBridge, folder: Path, pyc_only: bool = False,
                 assets: Optional[Dict[str, bytes]] = None, default_device: str = "cpu",
                 supported_devices: tuple = ("cpu", "gpu")) -> None:
        self.module_id, zip_bytes, self.build_result = build_module_zip(str(folder), pyc_only=pyc_only)
        bridge.put_object("module-store", self.module_id, zip_bytes)
        asset_map = {}
        for path, body in (assets or {}).items():
            asset_id = uuid.uuid4().hex
            bridge.put_object("asset-store", asset_id, body)
            asset_map[path] = asset_id
        self.algorithm_id = str(uuid.uuid1())
        self.record = {
            "algorithm_id": self.algorithm_id,
            "algorithm_name": folder.name,
            "algorithm_major_version": "1",
            "latest_algorithm_minor_version": "0",
            "algorithm_minor_version": {
                "0": {"timestamp": "2025-01-01T00:00:00+00:00", "module_id": self.module_id,
                      "assets": asset_map}
            },
            "algorithm_type": "Image2Image",
            "supported_devices": list(supported_devices),
            "default_device": default_device,
        }


def make_job(bridge: InMemoryBridge, deployment: Optional[Deployment], input_ids: list,
             tmp_path: Path, **overrides: Any) -> Dict[str, Any]:
    execution_id = str(uuid.uuid1())
    record = {
        "execution_id": execution_id,
        "algorithm_id": deployment.algorithm_id if deployment else str(uuid.uuid1()),
        "checkpoint_id": None,
        "algorithm_minor_version": None,
        "input_dataset_ids": input_ids,
        "execution_device_override": None,
        "resolved_execution_device": None,
        "additional_parameters": {},
        "session_token": None,
        "output_dataset_ids": [],
        "status": "PENDING",
        "progress": 0.0,
        "time_started": "2026-01-01 00:00:00.000000",
        "time_completed": "",
        "log": "",
    }
    record.update(overrides.pop("record", {}))
    bridge.begin_task(record)
    cache_dir = tmp_path / "module_cache" / "pid_1_abcdef01"
    cache_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "kind": "execution",
        "record": record,
        "algorithm_record": deployment.record if deployment else None,
        "gpu_available": False,
        "mps_available": False,
        "cache_maxsize": 1,
        "module_cache_dir": str(cache_dir),
    }
    job.update(overrides)
    return job


def log_messages(log: str) -> list:
    """The message part of each log line (drops the date, time and level)."""
    messages = []
    for line in log.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in ("INFO", "WARNING", "ERROR", "SUCCESS", "CRITICAL"):
            messages.append(f"{parts[2]} {parts[3]}")
    return messages
