"""The Python side of one no-op execution: `compox._worker.run_job` on an in-memory bridge, in
this process (no server, no worker protocol), median and p90 of 500 runs after 100 warm-up
runs. It isolates what the worker's Python adds per job (handler, output capture, job-thread
bookkeeping, the interpreter check), which `bench_executions.py` measures only inside the whole
round trip.

Usage: .venv/bin/python benches/bench_run_job.py [PYTHON_PACKAGE_ROOT]
(PYTHON_PACKAGE_ROOT: a checkout's `python/` folder, to compare versions; default this one's)"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "python"
sys.path[:0] = [str(PACKAGE), str(REPO / "python" / "tests")]

from compox._bridge_memory import InMemoryBridge  # noqa: E402
from compox._worker import run_job  # noqa: E402
from helpers import Deployment, make_job, write_algorithm  # noqa: E402

NOOP = {"Runner.py": '''
    from compox.algorithm_utils.BaseRunner import BaseRunner


    class Runner(BaseRunner):
        def preprocess(self, input_data, args=None):
            return None

        def inference(self, data, args=None):
            return None

        def postprocess(self, data, args=None):
            return []
'''}


def main() -> None:
    bridge = InMemoryBridge(collections=["data-store", "module-store", "asset-store"])
    work = Path(tempfile.mkdtemp())
    deployment = Deployment(bridge, write_algorithm(work / "noop", NOOP))
    times = []
    for _ in range(600):
        job = make_job(bridge, deployment, [], work)
        started = time.perf_counter()
        run_job(job, bridge)
        times.append(time.perf_counter() - started)
        assert bridge.record()["status"] == "COMPLETED", bridge.record()
    measured = sorted(times[100:])
    print(f"package {PACKAGE}: run_job median {statistics.median(measured) * 1e3:.3f} ms, "
          f"p90 {measured[int(len(measured) * 0.9)] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
