"""``tritonserver`` for Triton's test files that start servers themselves
(``log_format_test.py`` runs ``tritonserver --log-format=... --log-file=...``):
Triton's command line line turned into bnfold's settings, then ``python -m
bnfold.service`` in this same process (``exec``: the test's ``kill`` stops
the server itself).

    tritonserver --model-repository=DIR [--log-file=PATH] [--log-format=default|ISO8601]
                 [--log-verbose=N] [--log-info=B] [--log-warning=B] [--log-error=B]
                 [--http-port=N] [--grpc-port=N]

Triton's ``TRITON_SERVER_ESCAPE_LOG_MESSAGES`` is read by bnfold itself.
A flag not listed, or levels bnfold's ``--log-level`` cannot express (info
on with warning off), exit 2 with why.
"""

from __future__ import annotations

import os
import sys

FLAGS = {
    "model-repository": "BNFOLD_REPO",
    "log-file": "BNFOLD_LOG_FILE",
    "log-format": "BNFOLD_LOG_FORMAT",
    "http-port": "BNFOLD_PORT",
    "grpc-port": "BNFOLD_GRPC_PORT",
}
LEVELS = ("log-verbose", "log-info", "log-warning", "log-error")
TRUE = {"1", "true", "on", "yes"}


def settings(argv: list[str]) -> dict[str, str]:
    """bnfold's settings for Triton's flags ``argv``."""
    env: dict[str, str] = {}
    on = {"log-verbose": False, "log-info": True, "log-warning": True, "log-error": True}
    for arg in argv:
        key, equals, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not equals:
            raise SystemExit(f"tritonserver: expected --flag=value, got {arg!r}")
        if key in FLAGS:
            env[FLAGS[key]] = value
        elif key == "log-verbose":
            on[key] = int(value) > 0
        elif key in LEVELS:
            on[key] = value.lower() in TRUE
        else:
            raise SystemExit(f"tritonserver: {arg!r} has no bnfold setting here")
    # --log-level: the lowest level on, and every one above it on too.
    order = [("debug", "log-verbose"), ("info", "log-info"), ("warning", "log-warning")]
    order.append(("error", "log-error"))
    first = next((i for i, (_, flag) in enumerate(order) if on[flag]), len(order))
    if not all(on[flag] for _, flag in order[first:]):
        raise SystemExit(f"tritonserver: levels {on} are not one --log-level")
    level = order[first][0] if first < len(order) else "critical"
    env["BNFOLD_LOG_LEVEL"] = level
    return env


def main() -> None:
    env = {**os.environ, **settings(sys.argv[1:])}
    os.execve(sys.executable, [sys.executable, "-m", "bnfold.service"], env)


if __name__ == "__main__":
    main()
