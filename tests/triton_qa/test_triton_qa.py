"""Triton Inference Server's own QA tests, unchanged, against ``bnfold serve``
(issue 18): the L0 test files that apply to a stateless ONNX server, on
models built by Triton's own generators (README.md; run_qa.py plays the part
of Triton's ``test.sh``).

Triton's tests call ``localhost:8000`` and ``localhost:8001`` by name and
create shared-memory objects of fixed names, so each run gets a network
namespace and a ``/dev/shm`` of its own (``unshare``). The suites are split
into parts, a test file each (``test_triton_qa_*.py``; qa_checks.py has
their fixture and checks); this file runs the "core" part and holds the
counts of the whole: every method's outcome is held against qa_expected.py,
and docs/service.md gives the same counts and reasons.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qa_checks import (  # noqa: F401 (pytest collects the fixture and checks from here)
    RUN_TIMEOUT_S,
    results,
    test_every_method_expected_to_pass_passes,
    test_known_failures_still_fail,
    test_no_method_unaccounted_for,
)
from qa_expected import KNOWN_FAILURES, MIN_PASSING, OUT_OF_SCOPE, PASSING, REASONS
from run_qa import BY_HAND, SUITES, part_of

PART = "core"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 120)


def test_pass_count() -> None:
    assert len(PASSING) >= MIN_PASSING
    assert not set(PASSING) & set(KNOWN_FAILURES) and not set(PASSING) & set(OUT_OF_SCOPE)


def test_every_part_has_its_test_file() -> None:
    """A part without a test file would run nowhere, but for those run by
    hand, which count no method."""
    parts = {part_of(suite.name) for suite in SUITES} - BY_HAND
    files = {
        p.stem.removeprefix("test_triton_qa").lstrip("_") or "core"
        for p in DOCS.parents[1].glob("tests/triton_qa/test_triton_qa*.py")
    }
    assert parts <= files, parts - files


def test_parts_run_by_hand_count_no_method() -> None:
    counted = {part_of(name) for name in (*PASSING, *KNOWN_FAILURES)}
    assert not counted & BY_HAND


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
    readme = " ".join((DOCS.parents[1] / "README.md").read_text().split())
    assert f"{len(PASSING)} of the {len(PASSING) + len(KNOWN_FAILURES)} counted" in readme
