"""``python -m bnfold.service`` in a process of its own, for what a thread
cannot show: several workers, SIGTERM, a crash. Bounded waits only; the
launcher is tests/service/server_process.py's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server_process import Spawned, free_port, launch

ServerProcess = Spawned

__all__ = ["ServerProcess", "free_port", "server_process"]


@contextmanager
def server_process(
    repo: Path, workdir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """Start the server, wait until ready (``WAIT_S`` at most), kill it at
    the end if the test did not stop it."""
    quiet = {
        "BNFOLD_LOG_LEVEL": "warning",
        "BNFOLD_ACCESS_LOG": "false",
        # Repositories here hold broken models on purpose: "ready" means started.
        "BNFOLD_STRICT_READINESS": "false",
    }
    with launch(repo, workdir, args, quiet | (env or {}), wait_for="/v2/health/ready") as running:
        yield running
