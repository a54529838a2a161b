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
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
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
