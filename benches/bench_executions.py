"""Issue 4 benchmark: (a) dispatch overhead of a no-op algorithm, submit → COMPLETED, median of
200 runs; (b) 200 executions submitted at once on 2 CPU workers; (c) server and worker RSS at
idle and under (b).

Usage: .venv/bin/python benches/bench_executions.py"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from common import REPO, Server

NOOP = REPO / "tests" / "algorithms" / "noop"


def submit(server: Server, algorithm_id: str) -> str:
    status, body = server.json("POST", "/api/v0/execute-algorithm", {"algorithm_id": algorithm_id, "input_dataset_ids": []})
    assert status == 200, body
    return body["execution_id"]


def wait(server: Server, eid: str, poll: float = 0.001) -> dict:
    while True:
        status, rec = server.json("GET", f"/api/v0/executions/{eid}")
        if rec["status"] in ("COMPLETED", "FAILED", "STOPPED"):
            return rec
        time.sleep(poll)


def worker_pids(server: Server) -> list[int]:
    return [w["pid"] for w in server.json("GET", "/health")[1]["workers"]]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    server = Server(workers=2)
    server.wait_ready()
    status, dep = server.json("POST", f"/api/v0/deploy/local?path={NOOP}")
    assert status == 200, dep
    aid = dep["algorithm_id"]
    for _ in range(5):
        wait(server, submit(server, aid))
    idle_server = server.rss_mib()
    idle_workers = [server.rss_mib(p) for p in worker_pids(server)]

    latencies = []
    for _ in range(runs):
        t = time.perf_counter()
        rec = wait(server, submit(server, aid), poll=0.0005)
        latencies.append(time.perf_counter() - t)
        assert rec["status"] == "COMPLETED", rec

    t = time.perf_counter()
    # "Submitted at once": 16 client threads post the 200 requests concurrently.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda _: submit(server, aid), range(runs)))
    peak_server, peak_workers = 0.0, 0.0
    done = 0
    records = []
    for eid in ids:
        rec = wait(server, eid, poll=0.002)
        records.append(rec)
        peak_server = max(peak_server, server.rss_mib())
        peak_workers = max(peak_workers, *[server.rss_mib(p) for p in worker_pids(server)])
        done += rec["status"] == "COMPLETED"
    wall = time.perf_counter() - t
    own = statistics.median(
        [float(r["log"].split("Execution completed in ")[1].split(" ")[0]) for r in records if "Execution completed in" in r["log"]]
    )
    server.stop()
    print(json.dumps({
        "a_noop_submit_to_completed_median_ms": round(statistics.median(latencies) * 1000, 2),
        "a_p90_ms": round(sorted(latencies)[int(len(latencies) * 0.9)] * 1000, 2),
        "b_executions": runs,
        "b_completed": done,
        "b_wall_s": round(wall, 3),
        "b_ideal_s_from_a_median": round(statistics.median(latencies) * runs / 2, 3),
        "b_algorithm_own_time_median_s": own,
        "c_server_idle_rss_mib": round(idle_server, 1),
        "c_worker_idle_rss_mib": [round(x, 1) for x in idle_workers],
        "c_server_rss_under_b_mib": round(peak_server, 1),
        "c_worker_rss_under_b_mib": round(peak_workers, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
