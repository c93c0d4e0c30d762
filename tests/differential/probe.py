#!/usr/bin/env python3
"""Differential probe: the same HTTP conversation with the original Compox 3.2.0 and with ours.

The probe starts, each on its own free loopback port:

* a `moto_server` (in-memory S3) and the original server (`compox run` from a venv that has
  compox==3.2.0 installed) with `provider: aws` pointing at it and the in-process executor;
* our server (`target/debug/compox run`) with the filesystem store and `.venv` as the worker
  environment.

Both get the same CORS settings and the same test algorithms (each side's own
`deploy-algorithms`). Then every step below is sent to both servers in turn, and status codes,
the headers a client can act on and the bodies are compared after normalisation: ids become
`<name>` when the probe knows them (`<file_a>`, `<alg:noop>`) or `<uuid1>`/`<uuid4>`, timestamps
become `<LOCAL>`/`<UTC_ISO>` (so a format difference still shows), `log` and `storage_metrics`
are summarised separately, temporary paths become `<dir>`.

Usage (from the repository root):

    .venv/bin/python tests/differential/probe.py [--original-venv /tmp/venv-orig] \
        [--ours target/debug/compox] [--report /tmp/compox-diff.txt] [--only SUBSTRING]

Exit status: 0 when both sides agree everywhere, 1 when there are differences, 2 when a server
did not start. Only the standard library plus requests, h5py and numpy are used.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import requests

REPO = Path(__file__).resolve().parents[2]
ALGORITHMS = REPO / "tests" / "algorithms"
DEPLOYED = ["noop", "threshold_segmenter", "all_params", "raiser", "sleeper", "trainable"]
ORIGIN_OK = "http://allowed.example"
ORIGIN_BAD = "http://evil.example"
TERMINAL = {"COMPLETED", "FAILED", "STOPPED"}

MIDDLEWARE_YAML = f"""middleware:
  allow_origins: ["{ORIGIN_OK}"{{extra_origin}}]
  allow_methods: ["GET", "POST"]
  allow_headers: ["X-Custom"]
  allow_credentials: false
  expose_headers: ["X-Exposed"]
  max_age: 600
"""

CORS_ANY_ORIGIN = False


def middleware_yaml() -> str:
    """The CORS settings both servers get; `--cors-any-origin` adds `*` to the origins."""
    return MIDDLEWARE_YAML.replace("{extra_origin}", ', "*"' if CORS_ANY_ORIGIN else "")


# Headers a client can act on. Others (date, server, content-length, ...) are not compared.
COMPARED_HEADERS = [
    "content-type",
    "allow",
    "location",
    "content-disposition",
    "vary",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-max-age",
]

# Lines whose presence in an execution log is compared (each side's log is otherwise free text).
LOG_MARKERS = [
    "raiser: about to raise.",
    "RuntimeError",
    "deliberate failure in inference",
    "sleeper: sleeping",
    "sleeper: done.",
    "Traceback",
    "Received",
    "arg label = ",
    "Slice 0:",
]

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-([0-9a-f])[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")
LOCAL_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{6})?$")
UTC_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?\+00:00$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


# ------------------------------------------------------------------------------------------------
# The two servers


@dataclass
class Side:
    """One server under test: its process(es), base URL and the ids the probe learnt from it."""

    name: str
    base: str
    workdir: Path
    procs: list = field(default_factory=list)
    ctx: dict = field(default_factory=dict)
    config: Path | None = None

    def url(self, path: str) -> str:
        return self.base + path

    def sub(self, text: str) -> str:
        """Replaces `{name}` placeholders by this side's ids (unknown names stay as they are)."""

        def repl(m):
            return str(self.ctx.get(m.group(1), m.group(0)))

        return re.sub(r"\{([A-Za-z0-9_:]+)\}", repl, text)

    def stop(self):
        # Each process leads its own group; the original's `compox run` leaves its server child
        # behind unless the whole group is signalled.
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            time.sleep(0.5)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def spawn(cmd, cwd, log_path, env=None):
    log = open(log_path, "wb")
    return subprocess.Popen(
        cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def start_original(venv: Path, work: Path) -> Side:
    work.mkdir(parents=True, exist_ok=True)
    moto_port, port = free_port(), free_port()
    moto = spawn(
        [str(venv / "bin/moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
        work,
        work / "moto.log",
    )
    side = Side("original", f"http://127.0.0.1:{port}", work, [moto])
    if not wait_http(f"http://127.0.0.1:{moto_port}/", 60):
        raise RuntimeError("moto_server did not start")
    # us-east-1 makes the original send a LocationConstraint moto refuses; any other region works.
    config = work / "compox.yaml"
    config.write_text(
        f"""port: {port}
deploy_algorithms_from: {ALGORITHMS}
storage:
  collection_prefix: "probe-"
  access_key_id: probe-key
  secret_access_key: probe-secret
  backend_settings:
    provider: aws
    s3_endpoint_url: http://127.0.0.1:{moto_port}
    aws_region: eu-west-1
inference:
  device: cpu
  backend_settings:
    executor: fastapi_background_tasks
    worker_number: 1
log_path: {work}/logs/compox.log
{middleware_yaml()}"""
    )
    side.config = config
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    side.procs.append(
        spawn([str(venv / "bin/compox"), "run", "--config", str(config)], work, work / "server.log", env)
    )
    if not wait_http(side.url("/"), 120):
        raise RuntimeError(f"original did not start; see {work / 'server.log'}")
    return side


def start_ours(exe: Path, work: Path) -> Side:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = work / "compox.yaml"
    config.write_text(
        f"""port: {port}
log_path: {work}/logs/compox.log
deploy_algorithms_from: {ALGORITHMS}
storage:
  backend_settings:
    provider: filesystem
    storage_path: {work}/store
inference:
  device: cpu
  python_env: {REPO / '.venv'}
  stop_grace_period_s: 3.0
  backend_settings:
    executor: fastapi_background_tasks
    worker_number: 1
{middleware_yaml()}"""
    )
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    side = Side("ours", f"http://127.0.0.1:{port}", work, config=config)
    side.procs.append(spawn([str(exe), "run", "--config", str(config)], work, work / "server.log", env))
    if not wait_http(side.url("/health"), 120):
        raise RuntimeError(f"ours did not start; see {work / 'server.log'}")
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(side.url("/health"), timeout=2).json().get("ready") is True:
                break
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    return side


def deploy_cli(side: Side, exe: str) -> tuple[int, str]:
    cmd = [exe, "deploy-algorithms", "--config", str(side.config), "--path", str(ALGORITHMS)]
    for name in DEPLOYED:
        cmd += ["-n", name]
    cmd.append("--no-verbose")
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    r = subprocess.run(cmd, cwd=side.workdir, capture_output=True, text=True, env=env, timeout=600)
    return r.returncode, (r.stdout + r.stderr)[-2000:]


# ------------------------------------------------------------------------------------------------
# Normalisation


def classify_string(s: str, side: Side, reverse: dict) -> str:
    if s in reverse:
        return reverse[s]
    m = UUID_RE.match(s)
    if m:
        return f"<uuid{m.group(1)}>"
    if LOCAL_RE.match(s):
        return "<LOCAL>"
    if UTC_ISO_RE.match(s):
        return "<UTC_ISO>"
    if s.startswith(("http://", "https://")) and ("Signature" in s or "signature" in s):
        return "<presigned-url>"
    s = s.replace(str(side.workdir), "<dir>").replace(str(REPO), "<repo>")
    for value, name in reverse.items():
        if len(value) >= 8 and value in s:
            s = s.replace(value, name)
    return UUID_ANY_RE.sub(lambda m: f"<uuid{m.group(1)}>", s)


UUID_ANY_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-([0-9a-f])[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalize(v, side: Side, reverse: dict, sort_key: str | None = None):
    if isinstance(v, str):
        return classify_string(v, side, reverse)
    if isinstance(v, list):
        items = [normalize(x, side, reverse) for x in v]
        if sort_key and all(isinstance(x, dict) and sort_key in x for x in items):
            items.sort(key=lambda x: str(x[sort_key]))
        return items
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k == "log" and isinstance(x, str):
                out[k] = "<log>"
            elif k == "storage_metrics" and isinstance(x, dict):
                out[k] = "<storage_metrics:" + ",".join(x.keys()) + ">"
            elif k == "ctx" and isinstance(x, dict) and "error" in x:
                # pydantic's JSON decoder message; kept, but shown apart from the shape.
                out[k] = {**x, "error": classify_string(str(x["error"]), side, reverse)}
            else:
                out[k] = normalize(x, side, reverse)
        return out
    if isinstance(v, float):
        return ("float", v)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return ("int", v)
    return v


def plain(v):
    """Turns the ("int", 1)/("float", 1.0) markers back into readable JSON-ish text."""
    if isinstance(v, tuple) and len(v) == 2 and v[0] in ("int", "float"):
        return v[1] if v[0] == "int" else (f"{v[1]!r}f" if float(v[1]).is_integer() else v[1])
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def log_signature(text: str) -> list[str]:
    found = [m for m in LOG_MARKERS if m in text]
    if "stop" in text.lower():
        found.append("<mentions stop>")
    return found


LIFECYCLE = ["PENDING", "STARTED", "RUNNING"]


def in_lifecycle_order(seen: list) -> bool:
    ranks = [LIFECYCLE.index(s) if s in LIFECYCLE else 3 for s in seen]
    return ranks == sorted(ranks) and all(s in LIFECYCLE or s in TERMINAL for s in seen)


# ------------------------------------------------------------------------------------------------
# The conversation


@dataclass
class Observed:
    status: int
    headers: dict
    body: object
    raw: bytes
    extra: dict = field(default_factory=dict)


class Probe:
    def __init__(self, a: Side, b: Side, only: str | None):
        self.sides = [a, b]
        self.only = only
        self.steps = 0
        self.diffs: list[tuple[str, list[str]]] = []
        self.lines: list[str] = []
        self.http = requests.Session()
        self.show_bodies = False
        self.dump_logs: str | None = None
        self.last_bodies = None

    # Output ------------------------------------------------------------------------------------

    def say(self, text: str = ""):
        print(text, flush=True)
        self.lines.append(text)

    def record(self, name: str, differences: list[str], summary: str):
        self.steps += 1
        if differences:
            self.diffs.append((name, differences))
            self.say(f"DIFF  {name}")
            for d in differences:
                for line in d.splitlines():
                    self.say(f"      {line}")
        else:
            self.say(f"same  {name}  [{summary}]")
            if self.show_bodies and self.last_bodies:
                self.say(f"      {short(self.last_bodies, 400)}")

    # Requests ----------------------------------------------------------------------------------

    def send(self, side: Side, method, path, *, data=None, json_body=None, headers=None, params=None,
             raw_path=False):
        url = side.url(path if raw_path else side.sub(path))
        if params:
            params = [(k, side.sub(v) if isinstance(v, str) else v) for k, v in params]
        if json_body is not None:
            data = json.dumps(substitute(json_body, side)).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        elif isinstance(data, str):
            data = side.sub(data).encode()
        elif isinstance(data, bytes) and b"{alg:" in data:
            data = side.sub(data.decode()).encode()
        elif callable(data):
            data = data()
        try:
            r = self.http.request(method, url, data=data, headers=headers, params=params,
                                  allow_redirects=False, timeout=120)
        except requests.RequestException as e:
            return Observed(-1, {}, f"<transport error {type(e).__name__}: {e}>", b"")
        hdrs = {h: r.headers.get(h) for h in COMPARED_HEADERS if h in r.headers}
        if "location" in hdrs:
            hdrs["location"] = hdrs["location"].replace(side.base, "<base>")
        ctype = r.headers.get("content-type", "")
        body: object
        if "json" in ctype:
            try:
                body = r.json()
            except ValueError:
                body = {"<unparsable json>": r.text[:200]}
        elif ctype.startswith("text/"):
            body = r.text
        else:
            body = f"<{len(r.content)} bytes sha256:{hashlib.sha256(r.content).hexdigest()[:12]}>"
        obs = Observed(r.status_code, hdrs, body, r.content)
        obs.extra["content-length present"] = "content-length" in r.headers
        return obs

    def req(self, name, method, path, *, save=None, sort_key=None, compare_body=True,
            extra=None, racy=None, **kw) -> list[Observed]:
        """Sends one request to both sides and compares what came back. `racy` maps an answer
        whose exact form depends on timing to a class (compared instead of status and body)."""
        if self.only and self.only not in name:
            return []
        obs = [self.send(s, method, path, **kw) for s in self.sides]
        if racy:
            for o in obs:
                o.status, o.body, o.headers = racy(o), None, {}
        for side, o in zip(self.sides, obs):
            if save:
                save(side, o)
            if extra:
                o.extra.update(extra(side, o))
        self.compare(name, obs, sort_key=sort_key, compare_body=compare_body)
        return obs

    def compare(self, name, obs: list[Observed], *, sort_key=None, compare_body=True):
        a, b = obs
        differences = []
        if a.status != b.status:
            differences.append(f"status: original {a.status}, ours {b.status}")
        for h in COMPARED_HEADERS:
            va, vb = a.headers.get(h), b.headers.get(h)
            if h == "content-type":
                va = va.replace("; charset=utf-8", "") if va else va
                vb = vb.replace("; charset=utf-8", "") if vb else vb
            if (va or "").lower().replace(" ", "") != (vb or "").lower().replace(" ", ""):
                differences.append(f"header {h}: original {va!r}, ours {vb!r}")
        if compare_body:
            na = normalize(a.body, self.sides[0], reverse_map(self.sides[0]), sort_key)
            nb = normalize(b.body, self.sides[1], reverse_map(self.sides[1]), sort_key)
            if na != nb:
                differences.extend(body_diff(plain(na), plain(nb)))
        for k in sorted(set(a.extra) | set(b.extra)):
            if k == "content-length present":
                continue
            if a.extra.get(k) != b.extra.get(k):
                differences.append(f"{k}: original {a.extra.get(k)!r}, ours {b.extra.get(k)!r}")
        self.last_bodies = plain(normalize(a.body, self.sides[0], reverse_map(self.sides[0])))
        self.record(name, differences, f"{a.status}")

    # Executions --------------------------------------------------------------------------------

    def poll(self, name, key, *, until=TERMINAL, min_progress=None, timeout=180,
             route="executions"):
        """Polls `/{route}/{key}` (executions, training, benchmarks) on both sides until a status
        in `until`; compares the record, the statuses seen on the way and the log markers."""
        if self.only and self.only not in name:
            return
        results = []
        for side in self.sides:
            seen, rec, status = [], None, None
            deadline = time.time() + timeout
            while time.time() < deadline:
                o = self.send(side, "GET", f"/api/v0/{route}/{{{key}}}")
                status, rec = o.status, o.body
                if o.status != 200 or not isinstance(rec, dict):
                    break
                s = rec.get("status")
                if not seen or seen[-1] != s:
                    seen.append(s)
                if s in until and (min_progress is None or rec.get("progress", 0) >= min_progress
                                   or s in TERMINAL):
                    break
                time.sleep(0.05)
            if route == "benchmarks" and isinstance(rec, dict) and isinstance(rec.get("data"), dict):
                # Measured values differ run to run; keys and types are what a client relies on.
                rec["data"] = {k: type(v).__name__ for k, v in rec["data"].items()}
            o = Observed(status, {}, rec, b"")
            if self.dump_logs and isinstance(rec, dict) and isinstance(rec.get("log"), str):
                safe = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
                Path(self.dump_logs, f"{safe}.{side.name}.log").write_text(rec["log"])
            if isinstance(rec, dict):
                o.extra["log markers"] = log_signature(rec.get("log") or "")
                o.extra["log is str"] = isinstance(rec.get("log"), str)
                if until == TERMINAL:
                    o.extra["final status"] = rec.get("status")
                    # Short runs may skip any intermediate state between two polls; only the order
                    # of what was seen is compared.
                    o.extra["statuses seen in lifecycle order"] = in_lifecycle_order(seen)
                    if rec.get("status") == "STOPPED" and isinstance(rec.get("progress"), float):
                        # Where a stop lands is timing; only "before the end" is compared.
                        rec["progress"] = "<in [0,1)>" if 0 <= rec["progress"] < 1 else rec["progress"]
            results.append(o)
        if until != TERMINAL:
            # Intermediate state: progress and times race, so compare only status and shape.
            for o in results:
                if isinstance(o.body, dict):
                    o.body = {k: (v if k in ("status", "execution_id") else type(v).__name__)
                              for k, v in o.body.items()}
        self.compare(name, results)

    def output_summary(self, side: Side, file_id: str) -> dict:
        o = self.send(side, "GET", f"/api/v0/files/{file_id}")
        if o.status != 200:
            return {"status": o.status}
        return hdf5_summary(o.raw)


def substitute(v, side: Side):
    if isinstance(v, str):
        return side.sub(v)
    if isinstance(v, list):
        return [substitute(x, side) for x in v]
    if isinstance(v, dict):
        return {k: substitute(x, side) for k, x in v.items()}
    return v


def reverse_map(side: Side) -> dict:
    return {str(v): f"<{k}>" for k, v in side.ctx.items() if isinstance(v, str) and v}


def body_diff(a, b, path="body") -> list[str]:
    if type(a) is not type(b):
        return [f"{path}: original {short(a)}, ours {short(b)}"]
    if isinstance(a, dict):
        out = []
        if list(a.keys()) != list(b.keys()) and set(a) == set(b):
            out.append(f"{path}: key order original {list(a)}, ours {list(b)}")
        for k in a:
            if k not in b:
                out.append(f"{path}.{k}: only original has it ({short(a[k])})")
            else:
                out.extend(body_diff(a[k], b[k], f"{path}.{k}"))
        for k in b:
            if k not in a:
                out.append(f"{path}.{k}: only ours has it ({short(b[k])})")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: length original {len(a)}, ours {len(b)}\n  original {short(a, 600)}\n"
                    f"  ours     {short(b, 600)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(body_diff(x, y, f"{path}[{i}]"))
        return out
    if a != b:
        return [f"{path}: original {short(a)}, ours {short(b)}"]
    return []


def short(v, n=300) -> str:
    text = json.dumps(v, default=str, ensure_ascii=False)
    return text if len(text) <= n else text[:n] + "…"


def hdf5_summary(raw: bytes) -> dict:
    try:
        f = h5py.File(io.BytesIO(raw), "r")
    except Exception as e:  # noqa: BLE001 - any failure to open is the answer
        return {"hdf5": f"unreadable: {type(e).__name__}"}
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:12] \
                if isinstance(data, np.ndarray) else repr(data)
            out[name] = f"{obj.dtype} {obj.shape} {digest}"
        else:
            out[name] = "group"

    with f:
        f.visititems(visit)
        out["<attrs>"] = sorted(f.attrs.keys())
    return out


# ------------------------------------------------------------------------------------------------
# Inputs


def make_inputs(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    disk = (((yy - 32) ** 2 + (xx - 28) ** 2) < 300).astype(np.uint8) * 180 + 30
    image = (disk + (xx % 7)).astype(np.uint8)

    def h5(name, **datasets):
        path = folder / name
        with h5py.File(path, "w") as f:
            for k, v in datasets.items():
                f.create_dataset(k, data=v)
        return path.read_bytes()

    good = h5("image.h5", image=image)
    return {
        "good": good,
        "no_image_key": h5("noimage.h5", other=np.arange(10, dtype=np.float32)),
        "truncated": good[: len(good) // 2],
        "signature_only": good[:8],
        "garbage_after_signature": good[:8] + b"\0" * 2000,
        "not_hdf5": b"this is not an hdf5 file\n",
    }


# ------------------------------------------------------------------------------------------------
# The steps


def run_steps(p: Probe, inputs: dict[str, bytes]):
    def save_json(key, field_name):
        def save(side, o):
            if isinstance(o.body, dict) and field_name in o.body:
                side.ctx[key] = o.body[field_name]
        return save

    p.say("== root, docs, unknown routes, methods")
    p.req("GET /", "GET", "/")
    p.req("GET /nope", "GET", "/nope")
    p.req("GET /api/v0/nope", "GET", "/api/v0/nope")
    p.req("GET /API/V0/algorithm/all (path case)", "GET", "/API/V0/algorithm/all")
    p.req("DELETE / (wrong method)", "DELETE", "/")
    p.req("PUT /api/v0/files (wrong method)", "PUT", "/api/v0/files", data=b"x")
    p.req("GET /api/v0/files (wrong method)", "GET", "/api/v0/files")
    p.req("DELETE /api/v0/algorithm/all (wrong method)", "DELETE", "/api/v0/algorithm/all")
    p.req("GET /api/v0/execute-algorithm (wrong method)", "GET", "/api/v0/execute-algorithm")
    p.req("PATCH /api/v0/executions/x (wrong method)", "PATCH", "/api/v0/executions/x")
    p.req("GET /api/v0/executions/x/stop (wrong method)", "GET", "/api/v0/executions/x/stop")
    p.req("HEAD / (no HEAD on GET routes)", "HEAD", "/", compare_body=False)
    p.req("HEAD /api/v0/algorithm/all", "HEAD", "/api/v0/algorithm/all", compare_body=False)
    p.req("OPTIONS / without Origin", "OPTIONS", "/")
    p.req("POST /api/v0/files/ (trailing slash)", "POST", "/api/v0/files/", data=inputs["good"])
    p.req("GET /api/v0/algorithm/all/ (trailing slash)", "GET", "/api/v0/algorithm/all/")
    p.req("GET // (double slash)", "GET", "//")
    p.req("POST /api/v0/files// (two trailing slashes)", "POST", "/api/v0/files//",
          data=inputs["good"])
    p.req("GET /api/v0/executions/ (no id)", "GET", "/api/v0/executions/")
    p.req("GET /api/v0/files?x=1 trailing slash keeps query", "GET", "/api/v0/algorithm/all/?x=1")
    p.req("GET /openapi.json status", "GET", "/openapi.json", compare_body=False)
    p.req("GET /docs status", "GET", "/docs", compare_body=False)

    p.say("== empty stores")
    p.req("M1 GET execute-algorithm/all (empty)", "GET", "/api/v0/execute-algorithm/all")
    p.req("S2 GET sample/all (empty)", "GET", "/api/v0/sample/all")
    p.req("C1 GET checkpoint/all (empty)", "GET", "/api/v0/checkpoint/all")
    p.req("T2 GET training unknown", "GET", "/api/v0/training/nope")
    p.req("T3 POST training stop unknown", "POST", "/api/v0/training/nope/stop")
    p.req("B2 GET benchmark unknown", "GET", "/api/v0/benchmarks/nope")
    p.req("D3 GET deploy unknown", "GET", "/api/v0/deploy/nope")
    p.req("C2 GET checkpoint unknown", "GET", "/api/v0/checkpoint/nope")
    p.req("S3 GET sample unknown", "GET", "/api/v0/sample/nope")
    p.req("S4 DELETE sample unknown", "DELETE", "/api/v0/sample/nope")
    p.req("C3 DELETE checkpoint unknown", "DELETE", "/api/v0/checkpoint/nope")
    p.req("M3 DELETE execute-algorithm/unknown", "DELETE", "/api/v0/execute-algorithm/nope")

    p.say("== files: upload")
    p.req("F1 upload good (no content-type)", "POST", "/api/v0/files", data=inputs["good"],
          save=save_json("file_a", "file_id"))
    p.req("F1 upload good (octet-stream)", "POST", "/api/v0/files", data=inputs["good"],
          headers={"Content-Type": "application/octet-stream"}, save=save_json("file_b", "file_id"))
    p.req("F1 upload good (content-type json)", "POST", "/api/v0/files", data=inputs["good"],
          headers={"Content-Type": "application/json"}, save=save_json("file_c", "file_id"))
    p.req("F1 upload no image key", "POST", "/api/v0/files", data=inputs["no_image_key"],
          save=save_json("file_noimage", "file_id"))
    p.req("F1 upload empty", "POST", "/api/v0/files", data=b"")
    p.req("F1 upload not hdf5", "POST", "/api/v0/files", data=inputs["not_hdf5"])
    p.req("F1 upload truncated hdf5", "POST", "/api/v0/files", data=inputs["truncated"])
    p.req("F1 upload signature only", "POST", "/api/v0/files", data=inputs["signature_only"])
    p.req("F1 upload signature + zeros", "POST", "/api/v0/files",
          data=inputs["garbage_after_signature"])
    boundary = "probeboundary"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"a.h5\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() \
        + inputs["good"] + f"\r\n--{boundary}--\r\n".encode()
    p.req("F1 upload chunked", "POST", "/api/v0/files",
          data=lambda: iter([inputs["good"][:1000], inputs["good"][1000:]]),
          save=save_json("file_chunked", "file_id"))
    p.req("F2 download chunked upload", "GET", "/api/v0/files/{file_chunked}",
          extra=lambda s, o: {"bytes equal upload": o.raw == inputs["good"]})
    p.req("F1 upload multipart form", "POST", "/api/v0/files", data=multipart,
          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    p.say("== files: download / delete")
    p.req("F2 download uploaded", "GET", "/api/v0/files/{file_a}",
          extra=lambda s, o: {"bytes equal upload": o.raw == inputs["good"]})
    p.req("F2 download unknown", "GET", "/api/v0/files/does-not-exist")
    p.req("F2 download unknown uuid", "GET", "/api/v0/files/6ab76e32-f004-11f1-9a04-02fc00000001")
    p.req("F2 download encoded traversal", "GET", "/api/v0/files/..%2F..%2Fcompox.yaml",
          raw_path=True)
    p.req("F2 download encoded traversal 2", "GET", "/api/v0/files/%2E%2E", raw_path=True)
    p.req("F2 download id with space", "GET", "/api/v0/files/a%20b", raw_path=True)
    p.req("F2 download empty id", "GET", "/api/v0/files/")
    p.req("F3 delete unknown", "DELETE", "/api/v0/files/does-not-exist")
    p.req("F3 delete file_c", "DELETE", "/api/v0/files/{file_c}")
    p.req("F3 delete file_c again", "DELETE", "/api/v0/files/{file_c}")
    p.req("F2 download deleted", "GET", "/api/v0/files/{file_c}")

    p.say("== files: v1 presigned urls")
    p.req("V2 download-url unknown", "GET", "/api/v1/files/nope.h5/download-url")
    p.req("V2 download-url uploaded", "GET", "/api/v1/files/{file_a}/download-url",
          extra=lambda s, o: {"url fetch": fetch_url(o, "GET", None, inputs["good"])})
    p.req("V1 upload-url", "GET", "/api/v1/files/probe-object.h5/upload-url",
          extra=lambda s, o: {"url put": fetch_url(o, "PUT", inputs["no_image_key"], None)})
    p.req("V2 download-url after put", "GET", "/api/v1/files/probe-object.h5/download-url",
          extra=lambda s, o: {"url fetch": fetch_url(o, "GET", None, inputs["no_image_key"])})
    p.req("F2 download v1-put object", "GET", "/api/v0/files/probe-object.h5",
          extra=lambda s, o: {"bytes equal put": o.raw == inputs["no_image_key"]})
    p.req("V3 delete v1 object", "DELETE", "/api/v1/files/probe-object.h5")
    p.req("V3 delete v1 object again", "DELETE", "/api/v1/files/probe-object.h5")

    p.say("== algorithms (before deploy done elsewhere: see deploy step)")


def fetch_url(o: Observed, method, data, expect):
    if o.status != 200 or not isinstance(o.body, dict) or "url" not in o.body:
        return "no url"
    try:
        r = requests.request(method, o.body["url"], data=data, timeout=30)
    except requests.RequestException as e:
        return f"transport error {type(e).__name__}"
    if expect is not None:
        return f"{r.status_code} equal={r.content == expect}"
    return f"{r.status_code}"


def run_algorithm_steps(p: Probe):
    def save_json(key, field_name):
        def save(side, o):
            if isinstance(o.body, dict) and field_name in o.body:
                side.ctx[key] = o.body[field_name]
        return save

    p.say("== algorithms: listing, filters, lookup")
    p.req("A2 all", "GET", "/api/v0/algorithm/all", sort_key="algorithm_name")
    p.req("A2 positive_tag=test", "GET", "/api/v0/algorithm/all",
          params=[("positive_tag", "test")], sort_key="algorithm_name")
    p.req("A2 positive_tag=test&positive_tag=long", "GET", "/api/v0/algorithm/all",
          params=[("positive_tag", "test"), ("positive_tag", "long")], sort_key="algorithm_name")
    p.req("A2 positive_tag=Test (case)", "GET", "/api/v0/algorithm/all",
          params=[("positive_tag", "Test")], sort_key="algorithm_name")
    p.req("A2 positive_tag=test,long (comma not split)", "GET", "/api/v0/algorithm/all",
          params=[("positive_tag", "test,long")], sort_key="algorithm_name")
    p.req("A2 negative_tag=failure", "GET", "/api/v0/algorithm/all",
          params=[("negative_tag", "failure")], sort_key="algorithm_name")
    p.req("A2 algorithm_type=generic (case)", "GET", "/api/v0/algorithm/all",
          params=[("algorithm_type", "generic")], sort_key="algorithm_name")
    p.req("A2 algorithm_type=Image2Segmentation", "GET", "/api/v0/algorithm/all",
          params=[("algorithm_type", "Image2Segmentation")], sort_key="algorithm_name")
    p.req("A2 algorithm_type=Nope", "GET", "/api/v0/algorithm/all",
          params=[("algorithm_type", "Nope")])
    p.req("A2 supported_devices=CPU", "GET", "/api/v0/algorithm/all",
          params=[("supported_devices", "CPU")], sort_key="algorithm_name")
    p.req("A2 supported_devices=gpu", "GET", "/api/v0/algorithm/all",
          params=[("supported_devices", "gpu")])
    p.req("A2 supported_devices=gpu&supported_devices=cpu", "GET", "/api/v0/algorithm/all",
          params=[("supported_devices", "gpu"), ("supported_devices", "cpu")],
          sort_key="algorithm_name")
    p.req("A2 unknown query param", "GET", "/api/v0/algorithm/all", params=[("bogus", "1")],
          sort_key="algorithm_name")
    p.req("A1 noop/1", "GET", "/api/v0/algorithm/noop/1")
    p.req("A1 NOOP/1 (case)", "GET", "/api/v0/algorithm/NOOP/1")
    p.req("A1 noop/01", "GET", "/api/v0/algorithm/noop/01")
    p.req("A1 noop/2", "GET", "/api/v0/algorithm/noop/2")
    p.req("A1 unknown/1", "GET", "/api/v0/algorithm/unknown/1")
    p.req("A1 all_params/1", "GET", "/api/v0/algorithm/all_params/1")
    p.req("A1 threshold_segmenter/1", "GET", "/api/v0/algorithm/threshold_segmenter/1")
    p.req("A1 noop (missing major)", "GET", "/api/v0/algorithm/noop")
    p.req("A1 noop/%201 (space)", "GET", "/api/v0/algorithm/noop/%201", raw_path=True)
    p.req("A1 noop/1/ (trailing slash)", "GET", "/api/v0/algorithm/noop/1/")
    p.req("A2 algorithm_type empty", "GET", "/api/v0/algorithm/all",
          params=[("algorithm_type", "")], sort_key="algorithm_name")
    p.req("A3 export noop/1", "GET", "/api/v0/algorithm/noop/1/export", compare_body=False,
          extra=lambda s, o: {"zip entries": zip_names(o.raw)})
    p.req("A3 export NOOP/1 (case)", "GET", "/api/v0/algorithm/NOOP/1/export", compare_body=False)
    p.req("A3 export noop/x (major not int)", "GET", "/api/v0/algorithm/noop/x/export")
    p.req("A3 export noop/1 minor 9", "GET", "/api/v0/algorithm/noop/1/export",
          params=[("algorithm_minor_version", "9")])
    p.req("A3 export noop/1 minor x", "GET", "/api/v0/algorithm/noop/1/export",
          params=[("algorithm_minor_version", "x")])
    p.req("A3 export noop/1 checkpoint unknown", "GET", "/api/v0/algorithm/noop/1/export",
          params=[("checkpoint_id", "nope")])
    p.req("A3 export unknown/1", "GET", "/api/v0/algorithm/unknown/1/export")

    p.say("== deploy endpoints")
    p.req("D1 deploy no path", "POST", "/api/v0/deploy/local")
    p.req("D1 deploy missing path", "POST", "/api/v0/deploy/local",
          params=[("path", "/nonexistent/probe")])
    p.req("D1 deploy file not zip", "POST", "/api/v0/deploy/local",
          params=[("path", str(ALGORITHMS / "README.md"))])
    p.req("D1 deploy removable=maybe", "POST", "/api/v0/deploy/local",
          params=[("path", str(ALGORITHMS / "noop")), ("removable", "maybe")])
    p.req("D1 deploy folder without pyproject", "POST", "/api/v0/deploy/local",
          params=[("path", str(ALGORITHMS.parent / "fixtures"))])
    p.req("D1 deploy removable=YES", "POST", "/api/v0/deploy/local",
          params=[("path", str(ALGORITHMS / "noop")), ("removable", "YES"),
                  ("algorithm_name", "noop_renamed"), ("algorithm_major_version", "3")],
          save=save_json("alg:noop_renamed", "algorithm_id"))
    p.req("A1 noop_renamed/3", "GET", "/api/v0/algorithm/noop_renamed/3")
    p.req("D4 delete noop_renamed minor 0", "DELETE",
          "/api/v0/deploy/algorithm/{alg:noop_renamed}", params=[("algorithm_minor_version", "0")])
    p.req("A1 noop_renamed/3 after minor delete", "GET", "/api/v0/algorithm/noop_renamed/3")
    p.req("D1 redeploy noop (unchanged)", "POST", "/api/v0/deploy/local",
          params=[("path", str(ALGORITHMS / "noop"))])
    p.req("D1 deploy printer removable=True", "POST", "/api/v0/deploy/local",
          params=[("path", str(ALGORITHMS / "printer")), ("removable", "True")],
          save=save_json("alg:printer", "algorithm_id"))
    p.req("D2 async deploy missing path", "POST", "/api/v0/deploy/local-async",
          params=[("path", "/nonexistent/probe")])
    p.req("D2 async deploy file not zip", "POST", "/api/v0/deploy/local-async",
          params=[("path", str(ALGORITHMS / "README.md"))], save=save_json("deploy_bad", "deploy_id"))
    p.req("D2 async deploy crasher", "POST", "/api/v0/deploy/local-async",
          params=[("path", str(ALGORITHMS / "crasher"))], save=save_json("deploy_ok", "deploy_id"))
    wait_deploys(p, ["deploy_bad", "deploy_ok"])
    p.req("D3 async deploy (bad) final", "GET", "/api/v0/deploy/{deploy_bad}")
    p.req("D3 async deploy (ok) final", "GET", "/api/v0/deploy/{deploy_ok}",
          save=lambda s, o: s.ctx.__setitem__("alg:crasher", (o.body or {}).get("algorithm_id")))
    p.req("D4 delete not removable", "DELETE", "/api/v0/deploy/algorithm/{alg:noop}")
    p.req("D4 delete unknown", "DELETE", "/api/v0/deploy/algorithm/nope")
    p.req("D4 delete printer minor 7 (absent)", "DELETE", "/api/v0/deploy/algorithm/{alg:printer}",
          params=[("algorithm_minor_version", "7")])
    p.req("D4 delete printer", "DELETE", "/api/v0/deploy/algorithm/{alg:printer}")
    p.req("D4 delete printer again", "DELETE", "/api/v0/deploy/algorithm/{alg:printer}")
    p.req("B1 benchmark unknown algorithm", "POST", "/api/v0/benchmark-algorithm",
          json_body={"algorithm_id": "nope"})
    p.req("B1 benchmark missing field", "POST", "/api/v0/benchmark-algorithm", json_body={})
    p.req("S1 sample unknown file", "POST", "/api/v0/sample",
          json_body={"files": [{"input": ["nope"]}]})
    p.req("T1 train unknown sample", "POST", "/api/v0/train-algorithm",
          json_body={"algorithm_id": "{alg:noop}", "training_data": ["nope"]})


def wait_deploys(p: Probe, keys):
    for side in p.sides:
        for key in keys:
            deadline = time.time() + 120
            while time.time() < deadline:
                o = p.send(side, "GET", f"/api/v0/deploy/{{{key}}}")
                if o.status != 200 or (o.body or {}).get("status") in ("COMPLETED", "FAILED"):
                    break
                time.sleep(0.2)


def zip_names(raw: bytes):
    try:
        return sorted(n for n in zipfile.ZipFile(io.BytesIO(raw)).namelist()
                      if "__pycache__" not in n)
    except zipfile.BadZipFile:
        return "not a zip"


def run_execution_steps(p: Probe):
    def save_exec(key):
        def save(side, o):
            if isinstance(o.body, dict) and "execution_id" in o.body:
                side.ctx[key] = o.body["execution_id"]
        return save

    X = "/api/v0/execute-algorithm"
    good = {"algorithm_id": "{alg:noop}", "input_dataset_ids": ["{file_a}"]}

    p.say("== execute: bad bodies")
    p.req("X1 missing algorithm_id", "POST", X, json_body={"input_dataset_ids": []})
    p.req("X1 missing input_dataset_ids", "POST", X, json_body={"algorithm_id": "{alg:noop}"})
    p.req("X1 empty object", "POST", X, json_body={})
    p.req("X1 algorithm_id number", "POST", X, json_body={**good, "algorithm_id": 5})
    p.req("X1 input_dataset_ids string", "POST", X, json_body={**good, "input_dataset_ids": "x"})
    p.req("X1 input_dataset_ids [1]", "POST", X, json_body={**good, "input_dataset_ids": [1]})
    p.req("X1 input_dataset_ids null", "POST", X, json_body={**good, "input_dataset_ids": None})
    p.req("X1 additional_parameters list", "POST", X,
          json_body={**good, "additional_parameters": [1]})
    p.req("X1 additional_parameters null", "POST", X,
          json_body={**good, "additional_parameters": None})
    p.req("X1 algorithm_minor_version int", "POST", X,
          json_body={**good, "algorithm_minor_version": 1})
    p.req("X1 session_token int", "POST", X, json_body={**good, "session_token": 5})
    p.req("X1 checkpoint_id bool", "POST", X, json_body={**good, "checkpoint_id": True})
    p.req("X1 execution_device_override int", "POST", X,
          json_body={**good, "execution_device_override": 1})
    p.req("X1 several errors", "POST", X,
          json_body={"algorithm_id": 1, "input_dataset_ids": "x", "session_token": []})
    p.req("X1 body is array", "POST", X, json_body=[good])
    p.req("X1 body is string", "POST", X, json_body="hello")
    p.req("X1 body is null", "POST", X, data=b"null", headers={"Content-Type": "application/json"})
    p.req("X1 malformed json", "POST", X, data=b'{"algorithm_id": ',
          headers={"Content-Type": "application/json"})
    p.req("X1 malformed json 2", "POST", X, data=b'{"a": 1,}',
          headers={"Content-Type": "application/json"})
    p.req("X1 empty body json ct", "POST", X, data=b"",
          headers={"Content-Type": "application/json"})
    p.req("X1 empty body no ct", "POST", X, data=b"")
    p.req("X1 text/plain content-type", "POST", X, data=json.dumps(good),
          headers={"Content-Type": "text/plain"})
    p.req("X1 form content-type", "POST", X, data="algorithm_id=x",
          headers={"Content-Type": "application/x-www-form-urlencoded"})
    malformed = [b'{"a" 1}', b'{"a": 1 "b": 2}', b'{"a": 1,}', b"[1,]", b'{"a": "x', b'"abc',
                 b'{"a": "\x01"}', b'{"a": "\\q"}', b'{"a": "\\u12"}', b"{} x", b"nul", b"{'a': 1}",
                 b"{", b'{"a":', b'{"a"', b'{"a": 1', b"[1", b"-", b"1.", b"01", b'{"a": tru}',
                 b"\xef\xbb\xbf{}", b'{"a": "\xff"}', b" \n {\n  \"a\": ,\n}"]
    for i, text in enumerate(malformed):
        p.req(f"X1 malformed json #{i} {text[:24]!r}", "POST", X, data=text,
              headers={"Content-Type": "application/json"})
    for label, literal in [("NaN", b"NaN"), ("Infinity", b"-Infinity"), ("1e400", b"1e400"),
                           ("big int", b"123456789012345678901234567890"),
                           ("float 1E2", b"1E2"), ("-0.0", b"-0.0")]:
        key = "x_num_" + re.sub(r"\W", "", label)
        p.req(f"X1 {label} as a parameter", "POST", X,
              data=b'{"algorithm_id": "{alg:all_params}", "input_dataset_ids": [], '
                   b'"additional_parameters": {"v": ' + literal + b"}}",
              headers={"Content-Type": "application/json"}, save=save_exec(key))
        p.poll(f"X3 {label} as a parameter final", key)
        outputs(p, key, f"{label} as a parameter outputs", decode_json=True)
    p.req("X1 NaN in additional_parameters", "POST", X,
          data=b'{"algorithm_id": "{alg:noop}", "input_dataset_ids": [], '
               b'"additional_parameters": {"x": NaN, "y": -Infinity}}',
          headers={"Content-Type": "application/json"}, save=save_exec("x_nan"))
    p.poll("X3 NaN execution final", "x_nan")
    p.req("X1 big int in additional_parameters", "POST", X,
          data=b'{"algorithm_id": "{alg:all_params}", "input_dataset_ids": [], '
               b'"additional_parameters": {"big": 123456789012345678901234567890, "f": 1e400, '
               b'"e": 1E2, "neg0": -0.0, "i": -0}}',
          headers={"Content-Type": "application/json"}, save=save_exec("x_big"))
    p.poll("X3 big int execution final", "x_big")
    outputs(p, "x_big", "big int outputs", decode_json=True)
    p.req("X1 duplicate keys (last wins?)", "POST", X,
          data=b'{"algorithm_id": "nope", "algorithm_id": "{alg:noop}", "input_dataset_ids": []}',
          headers={"Content-Type": "application/json"}, save=save_exec("x_dupkey"))
    p.poll("X3 duplicate keys final", "x_dupkey")
    p.req("X1 content-type with charset", "POST", X, data=json.dumps({**good, "algorithm_id": 1}),
          headers={"Content-Type": "application/json; charset=utf-8"})
    p.req("X1 content-type upper case", "POST", X, data=json.dumps({**good, "algorithm_id": 1}),
          headers={"Content-Type": "Application/JSON"})
    p.req("X1 unknown algorithm", "POST", X, json_body={**good, "algorithm_id": "nope"})
    p.req("X1 unknown dataset", "POST", X, json_body={**good, "input_dataset_ids": ["nope", "no2"]})
    p.req("X1 unknown algorithm and dataset", "POST", X,
          json_body={"algorithm_id": "nope", "input_dataset_ids": ["nope"]})
    p.req("X1 deleted dataset", "POST", X, json_body={**good, "input_dataset_ids": ["{file_c}"]})
    p.req("X1 algorithm key instead of id", "POST", X,
          json_body={**good, "algorithm_id": "{alg:noop}~noop~1"})
    p.req("X1 algorithm name instead of id", "POST", X, json_body={**good, "algorithm_id": "noop"})

    p.say("== execute: good bodies")
    p.req("X1 noop good (no content-type)", "POST", X, data=json.dumps(good),
          save=save_exec("x_noop_noct"))
    p.poll("X3 noop (no content-type) final", "x_noop_noct")
    p.req("X1 noop +json content-type", "POST", X, data=json.dumps(good),
          headers={"Content-Type": "application/vnd.probe+json"}, save=save_exec("x_noop_vnd"))
    p.poll("X3 noop (+json) final", "x_noop_vnd")
    p.req("X1 noop extra fields", "POST", X, json_body={**good, "extra": 1, "log": "x"},
          save=save_exec("x_noop"))
    p.poll("X3 noop final", "x_noop")
    p.req("X1 noop empty inputs + all optional", "POST", X,
          json_body={"algorithm_id": "{alg:noop}", "input_dataset_ids": [],
                     "checkpoint_id": None, "algorithm_minor_version": None,
                     "execution_device_override": "cpu", "additional_parameters": {"k": [1, 2.0]},
                     "session_token": "probe-session"},
          save=save_exec("x_noop_full"))
    p.poll("X3 noop full final", "x_noop_full")
    p.req("X1 noop execution_device_override null", "POST", X,
          json_body={**good, "execution_device_override": None}, save=save_exec("x_noop_devnull"))
    p.poll("X3 noop device null final", "x_noop_devnull")
    p.req("X1 noop device gpu", "POST", X, json_body={**good, "execution_device_override": "gpu"},
          save=save_exec("x_noop_gpu"))
    p.poll("X3 noop device gpu final", "x_noop_gpu")
    p.req("X1 noop device bogus", "POST", X,
          json_body={**good, "execution_device_override": "BOGUS"}, save=save_exec("x_noop_bogus"))
    p.poll("X3 noop device bogus final", "x_noop_bogus")
    p.req("X1 noop minor 9 (absent)", "POST", X, json_body={**good, "algorithm_minor_version": "9"},
          save=save_exec("x_noop_minor"))
    p.poll("X3 noop minor 9 final", "x_noop_minor")
    p.req("X1 noop minor '0'", "POST", X, json_body={**good, "algorithm_minor_version": "0"},
          save=save_exec("x_noop_minor0"))
    p.poll("X3 noop minor 0 final", "x_noop_minor0")
    p.req("X1 noop checkpoint unknown", "POST", X, json_body={**good, "checkpoint_id": "nope"},
          save=save_exec("x_noop_ckpt"))
    p.poll("X3 noop checkpoint unknown final", "x_noop_ckpt")
    p.req("X1 noop duplicate inputs", "POST", X,
          json_body={**good, "input_dataset_ids": ["{file_a}", "{file_a}"]},
          save=save_exec("x_noop_dup"))
    p.poll("X3 noop duplicate inputs final", "x_noop_dup")

    p.req("X1 threshold_segmenter", "POST", X,
          json_body={"algorithm_id": "{alg:threshold_segmenter}",
                     "input_dataset_ids": ["{file_a}", "{file_b}"],
                     "additional_parameters": {"method": "mean"}},
          save=save_exec("x_seg"))
    p.poll("X3 threshold_segmenter final", "x_seg")
    outputs(p, "x_seg", "threshold_segmenter outputs")
    p.req("X1 threshold_segmenter no image key", "POST", X,
          json_body={"algorithm_id": "{alg:threshold_segmenter}",
                     "input_dataset_ids": ["{file_noimage}"]},
          save=save_exec("x_seg_noimg"))
    p.poll("X3 threshold_segmenter no image key final", "x_seg_noimg")
    p.req("X1 threshold_segmenter bad method", "POST", X,
          json_body={"algorithm_id": "{alg:threshold_segmenter}",
                     "input_dataset_ids": ["{file_a}"],
                     "additional_parameters": {"method": "nope"}},
          save=save_exec("x_seg_bad"))
    p.poll("X3 threshold_segmenter bad method final", "x_seg_bad")

    params = {"label": "héllo", "iterations": 7, "scale": 2.0, "verbose": False,
              "tile-size": 32, "alpha": 0.3, "__noise__model": "poisson", "levels": 4,
              "gamma": 2.2, "channel_names": ["blue"], "kernel_sizes": [9], "weights": [0.5, 0.5],
              "flags": [False], "unknown": {"nested": [1, None, "x"]}}
    p.req("X1 all_params", "POST", X,
          json_body={"algorithm_id": "{alg:all_params}", "input_dataset_ids": [],
                     "additional_parameters": params},
          save=save_exec("x_params"))
    p.poll("X3 all_params final", "x_params")
    outputs(p, "x_params", "all_params outputs", decode_json=True)

    p.req("X1 raiser", "POST", X, json_body={"algorithm_id": "{alg:raiser}",
                                              "input_dataset_ids": []}, save=save_exec("x_raise"))
    p.poll("X3 raiser final", "x_raise")
    p.req("X2 stop after FAILED", "POST", "/api/v0/executions/{x_raise}/stop")
    p.req("X2 stop after COMPLETED", "POST", "/api/v0/executions/{x_noop}/stop")

    p.say("== stop")
    p.req("X2 stop unknown", "POST", "/api/v0/executions/nope/stop")
    p.req("X3 get unknown", "GET", "/api/v0/executions/nope")
    p.req("X1 sleeper 20s", "POST", X,
          json_body={"algorithm_id": "{alg:sleeper}", "input_dataset_ids": [],
                     "additional_parameters": {"seconds": 20.0}}, save=save_exec("x_sleep"))
    p.req("X1 sleeper queued (PENDING behind the first)", "POST", X,
          json_body={"algorithm_id": "{alg:sleeper}", "input_dataset_ids": [],
                     "additional_parameters": {"seconds": 20.0}}, save=save_exec("x_sleep_q"))
    p.poll("X3 sleeper running", "x_sleep", until={"RUNNING"}, min_progress=0.02)
    p.req("X3 queued one still PENDING", "GET", "/api/v0/executions/{x_sleep_q}",
          extra=lambda s, o: {"status": (o.body or {}).get("status")}, compare_body=False)
    p.req("X2 stop queued (PENDING)", "POST", "/api/v0/executions/{x_sleep_q}/stop")
    p.req("X2 stop queued again", "POST", "/api/v0/executions/{x_sleep_q}/stop")
    p.req("X2 stop running", "POST", "/api/v0/executions/{x_sleep}/stop")
    # The first stop may already have landed (the sleeper writes every 0.1 s).
    p.req("X2 stop running again", "POST", "/api/v0/executions/{x_sleep}/stop",
          racy=lambda o: "200, or 400 once STOPPED"
          if o.status == 200 or (o.status == 400 and "STOPPED" in str(o.body)) else o.status)
    p.poll("X3 sleeper after stop", "x_sleep")
    p.poll("X3 queued sleeper after stop", "x_sleep_q")
    p.req("X2 stop after STOPPED", "POST", "/api/v0/executions/{x_sleep}/stop")
    p.req("X3 stopped record progress < 1", "GET", "/api/v0/executions/{x_sleep}",
          compare_body=False,
          extra=lambda s, o: {"progress in (0,1)": 0 < (o.body or {}).get("progress", 0) < 1})
    p.req("X2 stop with trailing slash", "POST", "/api/v0/executions/{x_sleep}/stop/")

    p.say("== execution manager (hidden)")
    p.req("M1 GET execute-algorithm/all (non-empty)", "GET", "/api/v0/execute-algorithm/all",
          compare_body=False, extra=lambda s, o: {"is list": isinstance(o.body, list)})
    p.req("M3 DELETE one execution", "DELETE", "/api/v0/execute-algorithm/{x_noop_noct}")
    p.req("X3 get deleted execution", "GET", "/api/v0/executions/{x_noop_noct}")


def run_training_steps(p: Probe):
    """Samples, a training of `trainable`, its checkpoint, an execution from it, a benchmark
    (`training.md` §2–§5)."""

    def save_field(key, field_name, index=None):
        def save(side, o):
            if isinstance(o.body, dict) and field_name in o.body:
                value = o.body[field_name]
                side.ctx[key] = value[index] if index is not None and value else value
        return save

    S, T, C, B = "/api/v0/sample", "/api/v0/training", "/api/v0/checkpoint", "/api/v0/benchmarks"
    p.say("== samples")
    p.req("S1 save sample", "POST", S, json_body={
        "files": [{"input": ["{file_a}"], "target": ["{file_b}"]}, {"input": ["{file_a}"], "target": []}],
        "tags": [" Train ", "train", "Probe"]}, save=save_field("sample_1", "sample_id"))
    p.req("S1 save second sample", "POST", S,
          json_body={"files": [{"input": ["{file_b}"], "target": ["{file_a}"]}]},
          save=save_field("sample_2", "sample_id"))
    p.req("S1 tags null", "POST", S, json_body={"files": [{"input": ["{file_a}"]}], "tags": None})
    p.req("S1 files not a list", "POST", S, json_body={"files": {"input": ["{file_a}"]}})
    p.req("S1 empty files (deviation: 400 for 500)", "POST", S, json_body={"files": []})
    p.req("S1 mixed keys (deviation: 400 for 500)", "POST", S,
          json_body={"files": [{"a": ["{file_a}"]}, {"b": ["{file_a}"]}]})
    p.req("S3 get sample", "GET", S + "/{sample_1}")
    p.req("S2 list samples", "GET", S + "/all", sort_key="sample_id")
    p.req("S2 positive_tags=train", "GET", S + "/all", params=[("positive_tags", "train")])
    p.req("S2 positive_tags=Train (deviation: query tags normalised)", "GET", S + "/all",
          params=[("positive_tags", "Train")])
    p.req("S2 negative_tags=probe", "GET", S + "/all", params=[("negative_tags", "probe")])
    p.req("S2 no match", "GET", S + "/all", params=[("positive_tags", "nothing")])
    p.req("S4 DELETE sample/all", "DELETE", S + "/all")

    p.say("== training")
    tr = "/api/v0/train-algorithm"
    p.req("T1 unknown algorithm", "POST", tr,
          json_body={"algorithm_id": "nope", "training_data": ["{sample_1}"]})
    p.req("T1 missing training_data", "POST", tr, json_body={"algorithm_id": "{alg:trainable}"})
    p.req("T1 tags null", "POST", tr, json_body={"algorithm_id": "{alg:trainable}",
                                                   "training_data": ["{sample_1}"], "tags": None})
    p.req("T1 trainable", "POST", tr, json_body={
        "algorithm_id": "{alg:trainable}", "training_data": ["{sample_1}", "{sample_2}"],
        "tags": ["Exp-1"], "additional_parameters": {"scale": 3.0}},
        save=save_field("training_1", "training_id"))
    p.poll("T2 trainable final", "training_1", route="training")
    p.req("T2 trainable again", "GET", T + "/{training_1}",
          save=save_field("checkpoint_1", "output_checkpoint_ids", 0))
    p.req("T3 stop completed training", "POST", T + "/{training_1}/stop")
    p.req("T1 trainable without checkpoint", "POST", tr, json_body={
        "algorithm_id": "{alg:trainable}", "training_data": ["{sample_1}"],
        "additional_parameters": {"save": False}}, save=save_field("training_2", "training_id"))
    p.poll("T2 training without checkpoint final (deviation: single FAILED)", "training_2",
           route="training")

    p.say("== checkpoints")
    p.req("C2 get checkpoint", "GET", C + "/{checkpoint_1}")
    p.req("C1 list checkpoints", "GET", C + "/all")
    p.req("C1 positive_tags=Exp-1", "GET", C + "/all", params=[("positive_tags", "Exp-1")])
    p.req("C1 positive_tags=exp-1", "GET", C + "/all", params=[("positive_tags", "exp-1")])
    p.req("X1 trainable from checkpoint", "POST", "/api/v0/execute-algorithm", json_body={
        "algorithm_id": "{alg:trainable}", "input_dataset_ids": [], "checkpoint_id": "{checkpoint_1}"},
        save=save_field("exec_cp", "execution_id"))
    p.poll("X3 trainable from checkpoint final", "exec_cp")
    outputs(p, "exec_cp", "trainable from checkpoint outputs", decode_json=True)
    p.req("T1 training from checkpoint", "POST", tr, json_body={
        "algorithm_id": "{alg:trainable}", "training_data": ["{sample_2}"],
        "checkpoint_id": "{checkpoint_1}"}, save=save_field("training_3", "training_id"))
    p.poll("T2 training from checkpoint final", "training_3", route="training")

    p.say("== benchmarks")
    p.req("B1 benchmark trainable", "POST", "/api/v0/benchmark-algorithm",
          json_body={"algorithm_id": "{alg:trainable}", "additional_parameters": {"repeats": 2}},
          save=save_field("bench_1", "benchmark_id"))
    p.poll("B2 benchmark trainable final", "bench_1", route="benchmarks")
    p.req("B1 benchmark noop (no benchmark method)", "POST", "/api/v0/benchmark-algorithm",
          json_body={"algorithm_id": "{alg:noop}"}, save=save_field("bench_2", "benchmark_id"))
    p.poll("B2 benchmark noop final", "bench_2", route="benchmarks")

    p.say("== deletions")
    p.req("C3 delete checkpoint", "DELETE", C + "/{checkpoint_1}")
    p.req("C2 deleted checkpoint", "GET", C + "/{checkpoint_1}")
    p.req("T2 training after its checkpoint went", "GET", T + "/{training_1}")
    p.req("S4 delete sample", "DELETE", S + "/{sample_2}")
    p.req("S3 deleted sample", "GET", S + "/{sample_2}")


def outputs(p: Probe, key, name, decode_json=False):
    if p.only and p.only not in name:
        return
    obs = []
    for side in p.sides:
        o = p.send(side, "GET", f"/api/v0/executions/{{{key}}}")
        ids = (o.body or {}).get("output_dataset_ids") or [] if isinstance(o.body, dict) else []
        summary = []
        for fid in ids:
            d = p.send(side, "GET", f"/api/v0/files/{fid}")
            s = hdf5_summary(d.raw) if d.status == 200 else {"status": d.status}
            if decode_json and d.status == 200:
                try:
                    with h5py.File(io.BytesIO(d.raw), "r") as f:
                        datasets = []
                        f.visititems(lambda n, x: datasets.append(n)
                                     if isinstance(x, h5py.Dataset) else None)
                        arr = f[datasets[0]][()]
                        s["decoded"] = json.loads(bytes(np.asarray(arr, dtype=np.uint8)).decode())
                except Exception as e:  # noqa: BLE001
                    s["decoded"] = f"undecodable: {type(e).__name__}"
            summary.append(s)
        obs.append(Observed(200, {}, summary, b""))
    p.compare(name, obs)


def run_cors_steps(p: Probe):
    p.say("== CORS")
    pre = {"Origin": ORIGIN_OK, "Access-Control-Request-Method": "POST"}
    p.req("CORS preflight ok", "OPTIONS", "/api/v0/execute-algorithm", headers=pre)
    p.req("CORS preflight ok + allowed header", "OPTIONS", "/api/v0/files",
          headers={**pre, "Access-Control-Request-Headers": "x-custom, content-type"})
    p.req("CORS preflight disallowed header", "OPTIONS", "/api/v0/files",
          headers={**pre, "Access-Control-Request-Headers": "X-Other"})
    p.req("CORS preflight bad origin", "OPTIONS", "/api/v0/files",
          headers={**pre, "Origin": ORIGIN_BAD})
    p.req("CORS preflight bad method", "OPTIONS", "/api/v0/files",
          headers={**pre, "Access-Control-Request-Method": "DELETE"})
    p.req("CORS preflight bad everything", "OPTIONS", "/api/v0/files",
          headers={"Origin": ORIGIN_BAD, "Access-Control-Request-Method": "PUT",
                   "Access-Control-Request-Headers": "X-Other"})
    p.req("CORS preflight unknown route", "OPTIONS", "/nope", headers=pre)
    p.req("CORS OPTIONS with Origin but no request-method", "OPTIONS", "/api/v0/files",
          headers={"Origin": ORIGIN_OK})
    p.req("CORS actual GET allowed origin", "GET", "/", headers={"Origin": ORIGIN_OK})
    p.req("CORS actual GET bad origin", "GET", "/", headers={"Origin": ORIGIN_BAD})
    p.req("CORS actual 404 allowed origin", "GET", "/api/v0/files/nope",
          headers={"Origin": ORIGIN_OK})
    p.req("CORS actual unknown route allowed origin", "GET", "/nope", headers={"Origin": ORIGIN_OK})
    p.req("CORS actual 405 allowed origin", "DELETE", "/", headers={"Origin": ORIGIN_OK})
    p.req("CORS actual 422 allowed origin", "POST", "/api/v0/execute-algorithm", data=b"{",
          headers={"Origin": ORIGIN_OK, "Content-Type": "application/json"})
    p.req("CORS actual DELETE (method not checked)", "DELETE", "/api/v0/files/nope",
          headers={"Origin": ORIGIN_OK})
    p.req("CORS actual GET bad origin with cookie", "GET", "/",
          headers={"Origin": ORIGIN_BAD, "Cookie": "a=b"})
    p.req("CORS actual GET allowed origin with cookie", "GET", "/",
          headers={"Origin": ORIGIN_OK, "Cookie": "a=b"})
    p.req("CORS preflight allowed origin, lower-case method", "OPTIONS", "/api/v0/files",
          headers={**pre, "Access-Control-Request-Method": "post"})
    p.req("CORS preflight private network", "OPTIONS", "/api/v0/files",
          headers={**pre, "Access-Control-Request-Private-Network": "true"})
    p.req("CORS download allowed origin", "GET", "/api/v0/files/{file_a}",
          headers={"Origin": ORIGIN_OK}, compare_body=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--original-venv", default="/tmp/venv-orig")
    ap.add_argument("--ours", default=str(REPO / "target/debug/compox"))
    ap.add_argument("--report", default="/tmp/compox-differential-report.txt")
    ap.add_argument("--only", help="run only steps whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--show-bodies", action="store_true", help="print bodies of agreeing steps")
    ap.add_argument("--dump-logs", metavar="DIR",
                    help="write each polled execution's final log to DIR/<step>.<side>.log")
    ap.add_argument("--cors-any-origin", action="store_true",
                    help="also allow every origin (`*`) in both servers' CORS settings")
    args = ap.parse_args()
    global CORS_ANY_ORIGIN
    CORS_ANY_ORIGIN = args.cors_any_origin

    work = Path(tempfile.mkdtemp(prefix="compox-diff-"))
    sides: list[Side] = []
    try:
        try:
            orig = start_original(Path(args.original_venv), work / "original")
            sides.append(orig)
            ours = start_ours(Path(args.ours), work / "ours")
            sides.append(ours)
        except Exception as e:  # noqa: BLE001 - reported, then everything started is stopped
            print(f"could not start the servers: {e}", file=sys.stderr)
            return 2

        p = Probe(orig, ours, args.only)
        p.show_bodies = args.show_bodies
        if args.dump_logs:
            Path(args.dump_logs).mkdir(parents=True, exist_ok=True)
            p.dump_logs = args.dump_logs
        p.say(f"original: {orig.base}   ours: {ours.base}   work: {work}")
        inputs = make_inputs(work / "inputs")
        run_steps(p, inputs)

        p.say("== deploy-algorithms (each side's CLI)")
        results = [deploy_cli(orig, str(Path(args.original_venv) / "bin/compox")),
                   deploy_cli(ours, args.ours)]
        for side in sides:
            listing = requests.get(side.url("/api/v0/algorithm/all"), timeout=30).json()
            for item in listing if isinstance(listing, list) else []:
                side.ctx[f"alg:{item['algorithm_name']}"] = item["algorithm_id"]
        p.compare("deploy-algorithms exit status",
                  [Observed(rc, {}, None, b"", {"deployed": sorted(k for k in s.ctx if k.startswith("alg:"))})
                   for (rc, _), s in zip(results, sides)])
        for (rc, out), side in zip(results, sides):
            if rc != 0:
                p.say(f"      {side.name} deploy-algorithms output:\n{out}")

        run_algorithm_steps(p)
        run_execution_steps(p)
        run_training_steps(p)
        run_cors_steps(p)

        p.say("")
        p.say(f"== summary: {p.steps} steps, {len(p.diffs)} with differences")
        for name, ds in p.diffs:
            p.say(f"- {name}: {ds[0].splitlines()[0]}" + (f" (+{len(ds) - 1} more)" if len(ds) > 1 else ""))
        Path(args.report).write_text("\n".join(p.lines) + "\n")
        print(f"report written to {args.report}")
        return 1 if p.diffs else 0
    finally:
        for side in sides:
            side.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
