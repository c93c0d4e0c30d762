"""Issue 2 benchmark: upload and download throughput of a 1 GiB HDF5 file on loopback with the
server's peak RSS, next to the disk's own limit measured in the same run (dd with conv=fsync to
the same disk, cat back), and the time from `compox run` to the first 200 on GET /.

Usage: .venv/bin/python benches/bench_files.py [SIZE_MIB]   (BENCH_DIR picks the disk)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import Server

SIZE_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 1024


def make_file(path: Path, size: int) -> None:
    """An HDF5 file with one uint8 dataset, written by h5py in chunks (never whole in memory)."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        ds = f.create_dataset("image", shape=(size // 4096, 4096), dtype="uint8")
        rng = np.random.default_rng(1)
        rows = 16384
        for start in range(0, ds.shape[0], rows):
            n = min(rows, ds.shape[0] - start)
            ds[start : start + n] = rng.integers(0, 255, size=(n, 4096), dtype=np.uint8)


def loopback_ceiling(nbytes: int = 2 << 30) -> float:
    """MiB/s of one plain TCP stream on loopback (Python sender, Python receiver): the ceiling any
    HTTP download can reach here, for comparison with `cat`."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def send() -> None:
        conn, _ = listener.accept()
        block = b"\0" * (1 << 20)
        sent = 0
        while sent < nbytes:
            sent += conn.send(block)
        conn.close()

    threading.Thread(target=send, daemon=True).start()
    sock = socket.create_connection(listener.getsockname())
    buf = bytearray(1 << 20)
    got, t = 0, time.perf_counter()
    while (n := sock.recv_into(buf)) > 0:
        got += n
    return mib_s(got, time.perf_counter() - t)


def mib_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 2**20


def main() -> None:
    starts = []
    for _ in range(5):
        s = Server()
        starts.append(s.first_200_s)
        s.stop()
    server = Server()
    work = Path(server.dir)
    src = work / "input.h5"
    make_file(src, SIZE_MIB * 2**20)
    size = src.stat().st_size
    subprocess.run(["sync"], check=True)

    t = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={work}/dd.out", "bs=4M", "conv=fsync", "status=none"], check=True)
    dd_write = mib_s(size, time.perf_counter() - t)
    t = time.perf_counter()
    subprocess.run(f"cat {work}/dd.out > /dev/null", shell=True, check=True)
    cat_read = mib_s(size, time.perf_counter() - t)
    os.remove(work / "dd.out")

    rss_before = server.rss_mib()
    t = time.perf_counter()
    out = subprocess.run(
        ["curl", "-s", "-X", "POST", "-T", str(src), "-H", "Expect:", f"http://127.0.0.1:{server.port}/api/v0/files"],
        check=True, capture_output=True,
    ).stdout
    upload = mib_s(size, time.perf_counter() - t)
    file_id = json.loads(out)["file_id"]
    url = f"http://127.0.0.1:{server.port}/api/v0/files/{file_id}"
    t = time.perf_counter()
    subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
    download = mib_s(size, time.perf_counter() - t)
    subprocess.run(["curl", "-s", "-o", str(work / "back.h5"), url], check=True)
    same = subprocess.run(["cmp", "-s", str(src), str(work / "back.h5")]).returncode == 0
    peak = server.peak_rss_mib()
    server.stop()
    starts.sort()
    print(json.dumps({
        "file_mib": round(size / 2**20),
        "upload_mib_s": round(upload, 1),
        "download_mib_s": round(download, 1),
        "dd_fsync_write_mib_s": round(dd_write, 1),
        "cat_read_mib_s": round(cat_read, 1),
        "upload_vs_dd": round(upload / dd_write, 2),
        "download_vs_cat": round(download / cat_read, 2),
        "loopback_tcp_ceiling_mib_s": round(loopback_ceiling(), 1),
        "server_rss_before_mib": round(rss_before, 1),
        "server_peak_rss_mib": round(peak, 1),
        "identical": same,
        "start_to_first_200_s_median": round(starts[len(starts) // 2], 4),
        "start_to_first_200_s_all": [round(x, 4) for x in starts],
    }, indent=2))


if __name__ == "__main__":
    main()
