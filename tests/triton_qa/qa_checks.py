"""What every part of Triton's QA run checks (test_triton_qa*.py).

run_qa.py's suites are split into parts (``run_qa.PARTS``), one test file
each, so that pytest-xdist runs them on separate workers. A part's file sets
``PART`` and takes the fixture and the checks from here: the ``results`` of
its run, and that every method of the part is accounted for in
qa_expected.py (each expected to pass passes, each known failure still
fails, no method appears or disappears unnoticed).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qa_expected import KNOWN_FAILURES, OUT_OF_SCOPE, PASSING
from run_qa import part_of

HERE = Path(__file__).resolve().parent
# A guard against a hung run, never a measure (a quiet machine needs about
# a minute a part, a loaded 2-core one several).
RUN_TIMEOUT_S = 1800

# A user and network namespace with its loopback up (run_qa.py brings it up)
# and a mount namespace with a fresh /dev/shm.
NAMESPACE = ["unshare", "--user", "--map-root-user", "--net", "--mount"]
SHM = 'mount -t tmpfs tmpfs /dev/shm && exec "$@"'

Results = dict[str, dict[str, Any]]


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(
        [*NAMESPACE, "sh", "-c", SHM, "sh", "true"], capture_output=True, timeout=60
    )
    return done.returncode == 0


def _ports_free() -> bool:
    for port in (8000, 8001):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def mine(names: Any, part: str) -> list[str]:
    """The method ids of ``names`` that belong to ``part``."""
    return [name for name in names if part_of(name) == part]


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every method's outcome in the run of the module's ``PART``."""
    part: str = request.module.PART
    work = tmp_path_factory.mktemp(f"triton-qa-{part}")
    out = work / "results.json"
    command = [sys.executable, str(HERE / "run_qa.py"), "--work", str(work), "--out", str(out)]
    command.append(f"--part={part}")
    if _namespaces_work():
        command = [*NAMESPACE, "sh", "-c", SHM, "sh", *command]
    elif _ports_free():
        command.append("--no-netns")
    else:
        pytest.skip("no user namespaces (unshare) here, and ports 8000/8001 are taken")
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"run_qa.py exited {done.returncode}:\n{done.stderr[-5000:]}"
    ran: Results = json.loads(out.read_text())
    assert ran, "the part ran no method"
    return ran


def test_every_method_expected_to_pass_passes(
    request: pytest.FixtureRequest, results: Results
) -> None:
    expected = mine(PASSING, request.module.PART)
    failed = {
        name: (results[name]["outcome"], results[name]["detail"][-1500:])
        for name in expected
        if name in results and results[name]["outcome"] != "pass"
    }
    missing = [name for name in expected if name not in results]
    assert not failed and not missing, (failed, missing)


def test_known_failures_still_fail(request: pytest.FixtureRequest, results: Results) -> None:
    """A known failure that passes now moves to PASSING (and out of the
    documented list): the count in the docs stays the true one."""
    known = mine(KNOWN_FAILURES, request.module.PART)
    now_passing = [name for name in known if results.get(name, {}).get("outcome") == "pass"]
    missing = [name for name in known if name not in results]
    assert not now_passing and not missing, (now_passing, missing)


def test_no_method_unaccounted_for(results: Results) -> None:
    unknown = sorted(set(results) - set(PASSING) - set(KNOWN_FAILURES) - set(OUT_OF_SCOPE))
    assert not unknown, {name: results[name]["outcome"] for name in unknown}
    assert all(part_of(name) == part_of(next(iter(results))) for name in results)
