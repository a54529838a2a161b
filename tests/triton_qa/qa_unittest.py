"""Run test methods of one of Triton's QA modules with unittest, as Triton's
``test.sh`` scripts do (``python infer_test.py InferTest.test_x``), and write
one JSON line per method to ``--out`` as it finishes: its id, ``pass``,
``fail``, ``error`` or ``skip``, the first lines of the reason, and the
seconds it took.

    python qa_unittest.py --out results.jsonl [--reset URL] MODULE [Class.method ...]

``--reset URL``: before each method, unregister every system shared-memory
region at the server at URL, which is what the server Triton's test.sh
restarts for each method of shared_memory_test.py starts with.

Run with the module's own folder as the working directory (its
``sys.path.append("../common")`` finds the vendored helpers there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import unittest
import urllib.request
from pathlib import Path
from typing import Any


class Recorder(unittest.TextTestResult):
    """A TextTestResult that also appends each method's outcome to a file."""

    out: Path
    reset: str | None = None
    started = 0.0

    def startTest(self, test: unittest.TestCase) -> None:
        self.started = time.perf_counter()
        if self.reset:
            with urllib.request.urlopen(
                urllib.request.Request(f"{self.reset}/v2/systemsharedmemory/unregister", b""),
                timeout=60,
            ) as answer:
                assert answer.status == 200, answer.status
        super().startTest(test)

    def _write(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        record = {
            "id": test.id().split(".", 1)[1],
            "outcome": outcome,
            "detail": detail[-4000:],
            "seconds": round(time.perf_counter() - self.started, 3),  # for profiling the run
        }
        with self.out.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._write(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._write(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):  # not a setUpClass of the whole class
            self._write(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._write(test, "skip", reason)

    def addSubTest(self, test: unittest.TestCase, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._write(test, "fail", self._exc_info_to_string(err, test))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reset")
    parser.add_argument("module")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    sys.path.insert(0, str(Path.cwd()))
    module = importlib.import_module(args.module)
    loader = unittest.defaultTestLoader
    if args.names:
        suite = loader.loadTestsFromNames(args.names, module)
    else:
        suite = loader.loadTestsFromModule(module)
    Recorder.out = args.out
    Recorder.reset = args.reset
    runner = unittest.TextTestRunner(resultclass=Recorder, verbosity=2, stream=sys.stdout)
    runner.run(suite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
