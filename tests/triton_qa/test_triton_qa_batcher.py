"""Triton's QA tests of its dynamic batcher (``L0_batcher/batcher_test.py``,
``BACKENDS=onnx``), unchanged, against ``bnfold serve``: the "batcher" part
of run_qa.py's suites (a server for each method, as Triton's test.sh
starts one, so that the statistics the method reads start at zero).
qa_checks.py has the fixture and the checks; test_triton_qa.py holds the
counts of the whole."""

from __future__ import annotations

import pytest
from qa_checks import (  # noqa: F401 (pytest collects the fixture and checks from here)
    RUN_TIMEOUT_S,
    results,
    test_every_method_expected_to_pass_passes,
    test_known_failures_still_fail,
    test_no_method_unaccounted_for,
)

PART = "batcher"

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 120)
