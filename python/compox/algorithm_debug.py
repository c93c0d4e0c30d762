"""Local debugging entry points: ``debug``, ``build_params_dict`` and the ``app`` CLI.

Example algorithms import ``debug`` at module top level, so importing this module must stay
cheap inside the server worker: the session, Pillow and argparse are imported only when
``debug`` or ``app`` actually run. ``python -m compox.algorithm_debug run --data PATH`` runs
the CLI.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Sequence


class BadParameter(ValueError):
    """A ``--param`` value that is not of the form ``key=value``."""


def build_params_dict(items: Optional[Sequence[str]]) -> Optional[Dict[str, Any]]:
    """Parse ``key=value`` items; values are JSON when they parse, else raw strings."""
    if not items:
        return None
    params: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise BadParameter(f"Parameter '{item}' must be in the form key=value.")
        key, raw = item.split("=", 1)
        key, raw = key.strip(), raw.strip()
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def debug(
    algo_dir: str = ".",
    data: str = ".",
    params: Optional[Dict[str, Any]] = None,
    device: str = "cpu",
) -> Any:
    """Run the algorithm in ``algo_dir`` on the images in ``data``; print and return the result."""
    from compox.algorithm_utils.LocalDebugSession import LocalDebugSession

    session = LocalDebugSession(device=device)
    ids = session.load_data(data)
    out = session.run(algo_dir, {"input_dataset_ids": ids}, args=params or {})
    print(out)
    # run() returns None; the ids of what the algorithm stored are the useful part.
    print(f"Output dataset ids: {session.task.output_dataset_ids}")
    return out


def app(argv: Optional[List[str]] = None) -> int:
    """The ``run`` command: ``run [--algo PATH] --data PATH [--device STR] [-p key=value]...``."""
    import argparse

    parser = argparse.ArgumentParser(prog="compox debug", description="Debug an algorithm locally.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Run an algorithm folder on local data.")
    run.add_argument("--algo", default=".", help="algorithm folder (default: .)")
    run.add_argument("--data", required=True, help="image file, folder, .npy or .h5 file")
    run.add_argument("--device", default="cpu", help="device passed to the runner (default: cpu)")
    run.add_argument(
        "--param", "-p", action="append", default=[], metavar="KEY=VALUE",
        help="algorithm parameter; repeatable, values parsed as JSON when possible",
    )
    options = parser.parse_args(argv)

    try:
        params = build_params_dict(options.param)
    except BadParameter as error:
        parser.error(str(error))
    debug(algo_dir=options.algo, data=options.data, params=params, device=options.device)
    return 0


if __name__ == "__main__":
    sys.exit(app())
