"""Issue 6 benchmark: build and import an algorithm bundle holding 200 MiB of assets (one
128 MiB file, four of 16 MiB, eight of 1 MiB; random bytes, like model weights), timing each
CLI process and reading its peak RSS, next to `zip -1 -r` of the same files.

Usage: .venv/bin/python benches/bench_bundles.py   (BENCH_DIR picks the disk)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, VENV, free_port, vm

SIZES_MIB = [128] + [16] * 4 + [1] * 8


def newest_binary() -> Path:
    """The most recently built of the release and debug binaries (a stale release build would
    measure old code)."""
    found = [REPO / "target" / p / "compox" for p in ("release", "debug")]
    found = [p for p in found if p.exists()]
    if not found:
        raise SystemExit("build compox first: cargo build --release")
    return max(found, key=lambda p: p.stat().st_mtime)


def run(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Runs `cmd`; returns (seconds, peak RSS in MiB of that process, stdout).

    The peak is VmHWM sampled from /proc every 5 ms: `ru_maxrss` would include this Python
    process's own footprint, which a child inherits across fork and exec."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], vm(proc.pid, "VmHWM"))
            except (OSError, ValueError):
                pass
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:2]} failed ({proc.returncode}):\n{out.decode()}\n{err.decode()}")
    return seconds, peak[0], out.decode()


def config(dir: Path) -> Path:
    cfg = dir / "compox.yaml"
    cfg.write_text(
        f"port: {free_port()}\nlog_path: {dir}/logs/compox.log\n"
        f"storage:\n  backend_settings:\n    provider: filesystem\n    storage_path: {dir}/store\n"
        f"inference:\n  device: cpu\n  python_env: {VENV}\nlogging:\n  console_level: WARNING\n"
    )
    return cfg


def main() -> None:
    exe = str(newest_binary())
    root = Path(tempfile.mkdtemp(prefix="compox-bench-bundles-", dir=os.environ.get("BENCH_DIR")))
    try:
        algo = root / "algorithms" / "big_weights"
        shutil.copytree(REPO / "tests/algorithms/noop", algo)
        text = (algo / "pyproject.toml").read_text().replace('name = "noop"', 'name = "big_weights"')
        (algo / "pyproject.toml").write_text(text)
        files = algo / "files"
        files.mkdir()
        for i, mib in enumerate(SIZES_MIB):
            with open(files / f"weights_{i:02}.bin", "wb") as f:
                for _ in range(mib):
                    f.write(os.urandom(1 << 20))
        total = sum(SIZES_MIB)

        src = root / "src"
        src.mkdir()
        src_cfg = config(src)
        run([exe, "deploy-algorithms", "--config", str(src_cfg), "--path", str(algo.parent), "--no-verbose"], src)

        bundle = root / "bundle.zip"
        build_s, build_rss, out = run([exe, "build-algorithm-bundle", "--config", str(src_cfg), "--output", str(bundle)], src)
        key = next(l.split(": ", 1)[1] for l in out.splitlines() if l.startswith("Generated algorithm bundle key"))

        zip_s, zip_rss, _ = run(["zip", "-1", "-r", "-q", str(root / "plain.zip"), "files"], algo)

        dst = root / "dst"
        dst.mkdir()
        dst_cfg = config(dst)
        import_s, import_rss, out = run([exe, "import-algorithm-bundle", "--config", str(dst_cfg), "--bundle-path", str(bundle), "--key", key], dst)
        assert "import completed" in out, out

        inspect_s, inspect_rss, _ = run([exe, "inspect-algorithm-bundle", "--bundle-path", str(bundle), "--key", key], root)

        print(json.dumps({
            "binary": exe,
            "assets_mib": total,
            "bundle_mib": round(bundle.stat().st_size / 2**20, 1),
            "build_s": round(build_s, 2),
            "build_peak_rss_mib": round(build_rss, 1),
            "zip_1_s": round(zip_s, 2),
            "zip_1_peak_rss_mib": round(zip_rss, 1),
            "build_vs_zip_1": round(build_s / zip_s, 2),
            "import_s": round(import_s, 2),
            "import_peak_rss_mib": round(import_rss, 1),
            "inspect_s": round(inspect_s, 3),
            "inspect_peak_rss_mib": round(inspect_rss, 1),
            "build_mib_s": round(total / build_s, 1),
            "import_mib_s": round(total / import_s, 1),
        }, indent=4))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
