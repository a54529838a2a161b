"""A pytest plugin for Triton's test files written for pytest
(``log_format_test.py``): one JSON line per test to the file named by
``QA_PYTEST_OUT`` as it finishes, as qa_unittest.py writes for unittest
files: its id (``Class.method[param]``), ``pass``, ``fail``, ``error`` or
``skip``, the end of the reason, and the seconds it took.

    QA_PYTEST_OUT=results.jsonl python -m pytest -p qa_pytest log_format_test.py
"""

from __future__ import annotations

import json
import os

import pytest


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and report.passed:
        return  # a setup or teardown that went well says nothing
    if report.skipped:
        outcome = "skip"
    elif report.passed:
        outcome = "pass"
    else:
        outcome = "fail" if report.when == "call" else "error"
    record = {
        "id": ".".join(report.nodeid.split("::")[1:]),
        "outcome": outcome,
        "detail": str(report.longrepr or "")[-4000:],
        "seconds": round(report.duration, 3),
    }
    with open(os.environ["QA_PYTEST_OUT"], "a") as f:
        f.write(json.dumps(record) + "\n")
