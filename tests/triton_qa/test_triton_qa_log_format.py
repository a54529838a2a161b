"""Triton's ``qa/L0_logging/log_format_test.py`` (a pytest file that starts
``tritonserver`` itself for each test: tritonserver.py on its PATH),
unchanged, against ``bnfold serve``'s Triton log layouts, escaped and
unescaped: a part of the QA run of its own so that pytest-xdist runs it
beside the others (test_triton_qa.py holds the counts of the whole;
qa_checks.py the fixture and the checks)."""

from __future__ import annotations

import pytest
from qa_checks import (  # noqa: F401 (pytest collects the fixture and checks from here)
    RUN_TIMEOUT_S,
    results,
    test_every_method_expected_to_pass_passes,
    test_known_failures_still_fail,
    test_no_method_unaccounted_for,
)

PART = "log_format"

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 120)
