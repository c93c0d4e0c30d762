"""Process settings the worker passes with each job: module cache dir and device probes.

Outside the worker (tests, scripts) sensible defaults apply: a private cache directory under
the system temp dir and a one-time ``nvidia-smi`` probe.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional


@dataclass
class RuntimeEnvironment:
    module_cache_dir: Optional[str] = None
    gpu_available: Optional[bool] = None
    mps_available: bool = False

    def cache_dir(self) -> str:
        if self.module_cache_dir is None:
            instance = f"pid_{os.getpid()}_{secrets.token_hex(4)}"
            path = os.path.join(tempfile.gettempdir(), "compox", "module_cache", instance)
            os.makedirs(path, mode=0o700, exist_ok=True)
            self.module_cache_dir = path
        return self.module_cache_dir

    def gpu(self) -> bool:
        if self.gpu_available is None:
            self.gpu_available = _probe_nvidia_smi()
        return self.gpu_available


def _probe_nvidia_smi() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        completed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return completed.returncode == 0


runtime_environment = RuntimeEnvironment()


def configure(module_cache_dir: str, gpu_available: bool, mps_available: bool) -> None:
    runtime_environment.module_cache_dir = module_cache_dir
    runtime_environment.gpu_available = gpu_available
    runtime_environment.mps_available = mps_available
