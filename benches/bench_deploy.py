"""Issue 3 benchmark, through the real deployer: deploys 10 algorithms, then redeploys each with
a changed asset until there are 1,000 algorithm versions (10 x 100 minors), measuring deploy
throughput; then measures GET /api/v0/algorithm/all and GET /api/v0/algorithm/{name}/{major}
with 32 concurrent clients (wrk) at 10 versions and at 1,000.

Usage: .venv/bin/python benches/bench_deploy.py [VERSIONS_PER_ALGORITHM]"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_algorithms import wrk
from common import REPO, Server

PER_ALGORITHM = int(sys.argv[1]) if len(sys.argv) > 1 else 100
ALGORITHMS = 10


def main() -> None:
    server = Server()
    work = Path(tempfile.mkdtemp(prefix="compox-bench-deploy-"))
    folders = []
    for i in range(ALGORITHMS):
        dst = work / f"algo_{i}"
        shutil.copytree(REPO / "tests" / "algorithms" / "noop", dst)
        toml = dst / "pyproject.toml"
        toml.write_text(toml.read_text().replace('name = "noop"', f'name = "algo_{i}"', 1))
        (dst / "files").mkdir()
        folders.append(dst)

    def deploy(folder: Path, version: int) -> float:
        (folder / "files" / "weights.txt").write_text(f"version {version}\n")
        t = time.perf_counter()
        status, body = server.json("POST", f"/api/v0/deploy/local?path={folder}")
        assert status == 200, body
        return time.perf_counter() - t

    first = [deploy(f, 0) for f in folders]
    base = f"http://127.0.0.1:{server.port}"
    at_10 = {"list": wrk(f"{base}/api/v0/algorithm/all"), "lookup": wrk(f"{base}/api/v0/algorithm/algo_9/1")}
    t = time.perf_counter()
    times = [deploy(f, v) for v in range(1, PER_ALGORITHM) for f in folders]
    total = time.perf_counter() - t
    status, items = server.json("GET", "/api/v0/algorithm/all")
    versions = sum(len(i["algorithm_minor_versions"]) for i in items)
    at_1000 = {"list": wrk(f"{base}/api/v0/algorithm/all"), "lookup": wrk(f"{base}/api/v0/algorithm/algo_9/1")}
    server.stop()
    times.sort()
    print(json.dumps({
        "versions": versions,
        "first_deploy_s_median": round(sorted(first)[len(first) // 2], 3),
        "redeploy_s_median": round(times[len(times) // 2], 3),
        "redeploys_per_s": round(len(times) / total, 2),
        "at_10_versions": at_10,
        "at_1000_versions": at_1000,
        "list_p50_ratio_1000_vs_10": round(at_1000["list"]["p50_ms"] / at_10["list"]["p50_ms"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
