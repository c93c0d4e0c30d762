"""Issue 3 benchmark: deploy 1,000 algorithm versions, then measure GET /api/v0/algorithm/all
and GET /api/v0/algorithm/{name}/{major} latency and throughput with 32 concurrent clients
(wrk), at 10 and at 1,000. Two shapes are measured: 1,000 distinct algorithms, and 10
algorithms with 100 minor versions each.

The records are written straight into a filesystem store (the shape the deployer writes) and
the server indexes them at start-up, so the measurement is of serving, not of 1,000 module
builds. Usage: .venv/bin/python benches/bench_algorithms.py"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import uuid
from pathlib import Path

from common import Server

PARAM = {"name": "weight", "displayed_name": "Weight", "description": "d",
         "config": {"type": "float_range", "default": 0.1, "adjustable": True, "options": [],
                    "min": 0.0, "max": 1.0, "step": 0.05, "decimal_precision": None}}


def record(name: str, minors: int) -> dict:
    ts = "2026-12-04T12:00:00+00:00"
    return {
        "algorithm_id": str(uuid.uuid1()), "algorithm_name": name, "algorithm_major_version": "1",
        "latest_algorithm_minor_version": str(minors - 1),
        "algorithm_minor_version": {str(i): {"timestamp": ts, "module_id": f"{i:032x}", "assets": {"pyproject.toml": f"{i:032x}"}} for i in range(minors)},
        "algorithm_type": "Image2Image", "algorithm_tags": ["bench"], "algorithm_description": "bench",
        "supported_devices": ["cpu"], "default_device": "cpu", "additional_parameters": [PARAM],
        "training_parameters": [], "benchmark_outputs": [], "removable": True, "exportable": True,
        "timestamp": ts,
        "storage_metrics": {"logical_size_bytes": 0, "module_bytes": 0, "asset_bytes": 0, "checkpoint_manifest_bytes": 0,
                            "module_count": 0, "asset_count": 0, "checkpoint_count": 0, "last_recomputed_at": ts},
    }


def store_with(algorithms: int, minors: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="compox-bench-store-"))
    d = root / "algorithm-store"
    d.mkdir(parents=True)
    for i in range(algorithms):
        r = record(f"algo_{i:04d}", minors)
        (d / f"{r['algorithm_id']}~{r['algorithm_name']}~1").write_text(json.dumps(r, indent=4))
    return root


def wrk(url: str) -> dict:
    out = subprocess.run(["wrk", "-t2", "-c32", "-d5s", "--latency", url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return {"rps": round(rps), "p50_ms": round(float(p50.group(1)) * scale, 3)}


def measure(algorithms: int, minors: int) -> dict:
    server = Server(store=store_with(algorithms, minors))
    base = f"http://127.0.0.1:{server.port}"
    status, items = server.json("GET", "/api/v0/algorithm/all")
    assert status == 200 and len(items) == algorithms, (status, len(items))
    result = {"list": wrk(f"{base}/api/v0/algorithm/all"), "lookup": wrk(f"{base}/api/v0/algorithm/algo_{algorithms - 1:04d}/1")}
    server.stop()
    return result


def main() -> None:
    out = {
        "10_algorithms": measure(10, 1),
        "1000_algorithms": measure(1000, 1),
        "10_algorithms_x_100_minors": measure(10, 100),
    }
    out["list_latency_ratio_1000_vs_10_algorithms"] = round(out["1000_algorithms"]["list"]["p50_ms"] / out["10_algorithms"]["list"]["p50_ms"], 2)
    out["list_latency_ratio_1000_versions_vs_10"] = round(out["10_algorithms_x_100_minors"]["list"]["p50_ms"] / out["10_algorithms"]["list"]["p50_ms"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
