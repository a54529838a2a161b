"""Fixtures of the whole suite.

- ``converted``: networks trained and converted once per session, shared by
  every module that needs them (trained_models.py).
- Hypothesis: no per-example deadline and no "too slow" health check by
  default, so that a busy machine cannot fail a property test by the clock
  (a test's own ``@settings`` still wins).
- ``bench`` (the benchmarks' load generators, which some tests drive) is
  importable without the repository root on ``sys.path``: the root would also
  make converter/, service/ and folding/ importable by their folder names, a
  second copy of the modules the tests import as ``bnfold.*``.
- Under pytest-xdist (``make test`` runs ``-n 2 --dist loadfile``): each test
  file runs whole on one worker (module fixtures are built once, and a file's
  tests never run beside each other), and the files that take longest are
  handed out first, so that neither worker is left with a long file at the
  end while the other idles.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from trained_models import ConvertOnce, convert_once_in

ROOT = Path(__file__).resolve().parents[1]
if "bench" not in sys.modules:
    _spec = importlib.machinery.ModuleSpec("bench", None, is_package=True)
    _spec.submodule_search_locations = [str(ROOT / "bench")]
    sys.modules["bench"] = importlib.util.module_from_spec(_spec)

settings.register_profile("bnfold", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("bnfold")

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> ConvertOnce:
    """``converted(arch, epochs=..., limit=...)``: that conversion, run once
    per session (read-only; ``.write(repo, name)`` copies it into a repo)."""
    if not HAS_TORCH:
        pytest.skip("training needs torch (the train extra)")
    return convert_once_in(tmp_path_factory.mktemp("converted"))


# The test files that take longest (minutes of a CI run between them), first
# to a worker; the other files follow, those with more tests first (what
# xdist's own --loadscope-reorder does; the Makefile turns that off so this
# order holds). A file missing here only runs later; the order is a matter
# of time, never of correctness.
LONGEST_FIRST = (
    "tests/triton_qa/test_triton_qa.py",
    "tests/converter/test_timm.py",
    "tests/triton_qa/test_triton_qa_metrics.py",
    "tests/converter/test_distributed.py",
    "tests/triton_qa/test_triton_qa_lifecycle.py",
    "tests/converter/test_cli.py",
    "tests/converter/test_pipeline.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return  # a plain run keeps pytest's order
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    per_file = Counter(_file(item) for item in items)

    def order(item: pytest.Item) -> tuple[int, int, str]:
        f = _file(item)
        return rank.get(f, len(rank)), -per_file[f], f

    items.sort(key=order)  # stable: a file's own order is kept


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]
