"""Shared helpers of the benchmark scripts: start a compox server on a free port with its own
store, poll it, read its peak RSS. Standard library only."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"


def binary() -> Path:
    """The release binary when built (`cargo build --release`), else the debug one."""
    for profile in ("release", "debug"):
        exe = REPO / "target" / profile / "compox"
        if exe.exists():
            return exe
    raise SystemExit("build compox first: cargo build --release")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        extra_yaml: str = "",
        workers: int = 1,
        store: Path | None = None,
        storage_yaml: str | None = None,
    ):
        """`storage_yaml` replaces the filesystem `storage:` block (e.g. an S3 one)."""
        self.dir = tempfile.mkdtemp(prefix="compox-bench-", dir=os.environ.get("BENCH_DIR"))
        self.port = free_port()
        store = store or Path(self.dir) / "store"
        storage_yaml = storage_yaml or (
            f"storage:\n  backend_settings:\n    provider: filesystem\n    storage_path: {store}\n"
        )
        cfg = Path(self.dir) / "compox.yaml"
        cfg.write_text(
            f"port: {self.port}\nlog_path: {self.dir}/logs/compox.log\n"
            f"{storage_yaml}"
            f"inference:\n  device: cpu\n  python_env: {VENV}\n"
            f"  backend_settings:\n    executor: fastapi_background_tasks\n    worker_number: {workers}\n"
            f"logging:\n  console_level: WARNING\n{extra_yaml}"
        )
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(binary()), "run", "--config", str(cfg)],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        )
        self.first_200_s = self._wait("/")

    def _wait(self, path: str, timeout: float = 60.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                status, _ = self.request("GET", path)
                if status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.002)
        raise SystemExit(f"server did not answer {path}")

    def wait_ready(self) -> None:
        self._wait("/health")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None):
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        status, data = self.request(method, path, body, headers)
        return status, json.loads(data or b"null")

    def peak_rss_mib(self, pid: int | None = None) -> float:
        return vm(pid or self.proc.pid, "VmHWM")

    def rss_mib(self, pid: int | None = None) -> float:
        return vm(pid or self.proc.pid, "VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")
