"""Triton's ``qa/L0_metrics`` files that a CPU ONNX server can pass
(``metrics_config_test.py``, ``cpu_metrics_test.py``), unchanged, against
``bnfold serve``'s Triton metrics port, each on a server started with its
``test.sh``'s ``--metrics-config``: a part of the QA run of its own so that
pytest-xdist runs it beside the others (test_triton_qa.py holds the counts of
the whole; qa_checks.py the fixture and the checks)."""

from __future__ import annotations

import pytest
from qa_checks import (  # noqa: F401 (pytest collects the fixture and checks from here)
    RUN_TIMEOUT_S,
    results,
    test_every_method_expected_to_pass_passes,
    test_known_failures_still_fail,
    test_no_method_unaccounted_for,
)

PART = "metrics"

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 120)
