"""Issue 5 benchmark: upload and download of a 1 GiB HDF5 file through the server on the S3 store
(`provider: aws`, endpoint at a local moto_server), next to boto3's own upload_file/download_file
of the same file to the same moto in the same run, and the server's peak RSS. Uploads also run
with one and with four boto3 threads, to show how far moto itself scales with concurrency, and
the CPU seconds the server and moto spent on each upload show which side bounds it.

boto3's download_file splits the object into ranged GETs, which moto answers by slicing the whole
object each time (minutes for 1 GiB); the direct download is therefore one streamed GET, as ours.

Usage: .venv/bin/python benches/bench_s3.py [SIZE_MIB] [ROUNDS]   (BENCH_DIR picks the disk)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_files import make_file, mib_s
from common import VENV, Server, free_port, vm

SIZE_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
KEY, SECRET = "bench-key", "bench-secret"


class Moto:
    """moto_server on a free loopback port (its objects live in its memory)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.perf_counter() + 60
        while subprocess.run(["curl", "-sf", "-o", "/dev/null", self.endpoint]).returncode != 0:
            if time.perf_counter() > deadline:
                raise SystemExit("moto_server did not come up")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RssSampler(threading.Thread):
    """Polls a process's VmRSS every 20 ms; `peak` is the highest seen while running."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, vm(self.pid, "VmRSS"))
            time.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self.running = False
        self.join()


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 20}),
    )


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ours(server: Server, moto: Moto, src: Path, back: Path) -> dict:
    """POST the file (curl streams it from disk), GET it back to disk; server RSS sampled."""
    base = f"http://127.0.0.1:{server.port}/api/v0/files"
    with RssSampler(server.proc.pid) as rss:
        cpu = cpu_s(server.proc.pid), cpu_s(moto.proc.pid)
        t = time.perf_counter()
        out = subprocess.run(
            ["curl", "-sf", "-X", "POST", "-T", str(src), "-H", "Expect:", base],
            check=True, capture_output=True,
        ).stdout
        up = time.perf_counter() - t
        up_cpu = cpu_s(server.proc.pid) - cpu[0], cpu_s(moto.proc.pid) - cpu[1]
        file_id = json.loads(out)["file_id"]
        t = time.perf_counter()
        subprocess.run(["curl", "-sf", "-o", str(back), f"{base}/{file_id}"], check=True)
        down = time.perf_counter() - t
    same = subprocess.run(["cmp", "-s", str(src), str(back)]).returncode == 0
    subprocess.run(["curl", "-sf", "-X", "DELETE", "-o", "/dev/null", f"{base}/{file_id}"], check=True)
    return {
        "up_s": up, "down_s": down, "peak_rss_mib": rss.peak, "identical": same,
        "up_cpu_s": up_cpu[0], "moto_up_cpu_s": up_cpu[1],
    }


def direct(client, moto: Moto, src: Path, back: Path, threads: int | None) -> dict:
    """boto3's managed upload (8 MiB parts like ours; `threads` None is its default, 10), then
    one streamed GET back to disk."""
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig() if threads is None else TransferConfig(max_concurrency=threads)
    moto_cpu = cpu_s(moto.proc.pid)
    t = time.perf_counter()
    client.upload_file(str(src), "bench-direct", "obj", Config=cfg)
    up = time.perf_counter() - t
    moto_cpu = cpu_s(moto.proc.pid) - moto_cpu
    single = TransferConfig(multipart_threshold=2**40)
    t = time.perf_counter()
    client.download_file("bench-direct", "obj", str(back), Config=single)
    down = time.perf_counter() - t
    client.delete_object(Bucket="bench-direct", Key="obj")
    return {"up_s": up, "down_s": down, "moto_up_cpu_s": moto_cpu}


def best(runs: list[dict], field: str) -> float:
    return min(r[field] for r in runs)


def main() -> None:
    moto = Moto()
    storage = (
        f"storage:\n  access_key_id: {KEY}\n  secret_access_key: {SECRET}\n"
        f"  backend_settings:\n    provider: aws\n    aws_region: us-east-1\n"
        f"    s3_endpoint_url: {moto.endpoint}\n"
    )
    server = Server(storage_yaml=storage)
    work = Path(server.dir)
    src, back = work / "input.h5", work / "back.h5"
    make_file(src, SIZE_MIB * 2**20)
    size = src.stat().st_size
    client = s3_client(moto.endpoint)
    client.create_bucket(Bucket="bench-direct")
    rss_idle = server.rss_mib()

    runs: dict[str, list[dict]] = {"ours": [], "boto3_default": [], "boto3_4_threads": [], "boto3_1_thread": []}
    for i in range(ROUNDS):
        for name, run in (
            ("ours", lambda: ours(server, moto, src, back)),
            ("boto3_default", lambda: direct(client, moto, src, back, None)),
            ("boto3_4_threads", lambda: direct(client, moto, src, back, 4)),
            ("boto3_1_thread", lambda: direct(client, moto, src, back, 1)),
        ):
            runs[name].append(run())
            os.remove(back)
            print(f"round {i + 1}: {name} {runs[name][-1]}", file=sys.stderr, flush=True)
    peak_hwm = server.peak_rss_mib()
    server.stop()
    moto.stop()

    report: dict = {"file_mib": round(size / 2**20), "rounds": ROUNDS}
    for name, rs in runs.items():
        up, down = best(rs, "up_s"), best(rs, "down_s")
        report[name] = {
            "upload_s": round(up, 2),
            "download_s": round(down, 2),
            "upload_mib_s": round(mib_s(size, up), 1),
            "download_mib_s": round(mib_s(size, down), 1),
            "all_upload_s": [round(r["up_s"], 2) for r in rs],
            "all_download_s": [round(r["down_s"], 2) for r in rs],
            "moto_cpu_s_per_upload": [round(r["moto_up_cpu_s"], 1) for r in rs],
        }
        if name == "ours":
            report[name]["server_cpu_s_per_upload"] = [round(r["up_cpu_s"], 1) for r in rs]
    ref = report["boto3_default"]
    report["ratio_ours_vs_boto3_upload"] = round(report["ours"]["upload_s"] / ref["upload_s"], 2)
    report["ratio_ours_vs_boto3_download"] = round(report["ours"]["download_s"] / ref["download_s"], 2)
    report["identical"] = all(r["identical"] for r in runs["ours"])
    report["server_rss_idle_mib"] = round(rss_idle, 1)
    report["server_peak_rss_sampled_mib"] = round(max(r["peak_rss_mib"] for r in runs["ours"]), 1)
    report["server_vmhwm_mib"] = round(peak_hwm, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
