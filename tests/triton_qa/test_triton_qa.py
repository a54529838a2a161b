"""Triton Inference Server's own QA tests, unchanged, against ``bnfold serve``
(issue 18): the L0 test files that apply to a stateless ONNX server, on
models built by Triton's own generators (README.md; run_qa.py plays the part
of Triton's ``test.sh``).

Triton's tests call ``localhost:8000`` and ``localhost:8001`` by name and
create shared-memory objects of fixed names, so the run gets a network
namespace and a ``/dev/shm`` of its own (``unshare``). Every method's
outcome is held against qa_expected.py: each method expected to pass passes,
each known failure still fails (its reason is in docs/service.md), the
methods out of scope (they also call ensembles or other backends' models)
are listed, and no method appears or disappears unnoticed.
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
from qa_expected import KNOWN_FAILURES, MIN_PASSING, OUT_OF_SCOPE, PASSING, REASONS

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "docs" / "service.md"
# A guard against a hung run, never a measure (a quiet machine needs about
# a minute, a loaded 2-core one several).
RUN_TIMEOUT_S = 1800

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 120)

# A user and network namespace with its loopback up (run_qa.py brings it up)
# and a mount namespace with a fresh /dev/shm.
NAMESPACE = ["unshare", "--user", "--map-root-user", "--net", "--mount"]
SHM = 'mount -t tmpfs tmpfs /dev/shm && exec "$@"'


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


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("triton-qa")
    out = work / "results.json"
    command = [sys.executable, str(HERE / "run_qa.py"), "--work", str(work), "--out", str(out)]
    if _namespaces_work():
        command = [*NAMESPACE, "sh", "-c", SHM, "sh", *command]
    elif _ports_free():
        command.append("--no-netns")
    else:
        pytest.skip("no user namespaces (unshare) here, and ports 8000/8001 are taken")
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"run_qa.py exited {done.returncode}:\n{done.stderr[-5000:]}"
    return json.loads(out.read_text())


def test_every_method_expected_to_pass_passes(results: dict[str, dict[str, Any]]) -> None:
    failed = {
        name: (results[name]["outcome"], results[name]["detail"][-1500:])
        for name in PASSING
        if name in results and results[name]["outcome"] != "pass"
    }
    missing = [name for name in PASSING if name not in results]
    assert not failed and not missing, (failed, missing)


def test_known_failures_still_fail(results: dict[str, dict[str, Any]]) -> None:
    """A known failure that passes now moves to PASSING (and out of the
    documented list): the count in the docs stays the true one."""
    now_passing = [
        name for name in KNOWN_FAILURES if results.get(name, {}).get("outcome") == "pass"
    ]
    assert not now_passing


def test_no_method_unaccounted_for(results: dict[str, dict[str, Any]]) -> None:
    unknown = sorted(set(results) - set(PASSING) - set(KNOWN_FAILURES) - set(OUT_OF_SCOPE))
    assert not unknown, {name: results[name]["outcome"] for name in unknown}


def test_pass_count(results: dict[str, dict[str, Any]]) -> None:
    passing = sum(r["outcome"] == "pass" for r in results.values())
    assert passing >= MIN_PASSING
    assert len(PASSING) >= MIN_PASSING


def test_docs_list_every_known_failure() -> None:
    """docs/service.md's compatibility table gives the reason of each method
    that does not pass, and the counts per file."""
    docs = DOCS.read_text()
    section = docs[docs.index("## Triton's QA tests") :]
    for name, reason in KNOWN_FAILURES.items():
        method = name.split("::")[1].split(".")[-1]
        assert f"`{method}`" in section, name
        assert REASONS[reason] in section, reason
    for reason in set(OUT_OF_SCOPE.values()):
        assert REASONS[reason] in section, reason
    assert f"**{len(PASSING)} of {len(PASSING) + len(KNOWN_FAILURES)}**" in section
