"""A model's memory budget at load (issue 19, items 3 and 6): a graph whose
load costs gigabytes that its bytes do not tell is refused under
``model_memory_limit``, and the others serve.

The bombs are a few hundred KiB on disk and pass every count made from
their bytes (service/model_limits.py sees no sparse tensor, no
``ConstantOfShape``, ``Expand`` or ``Tile``): an ``Add`` of a ``(R, 1)`` and
a ``(1, C)`` initializer. At 16384 x 16384 (1 GiB, ONNX Runtime's constant
folding limit) the session's creation folds it: +2.1 GB peak measured
without a budget. At 16384 x 32768 folding is skipped and the warm-up
computes it: 2 GiB, +4.3 GB peak measured. Under a 256 MiB budget each
trial load runs in a child process whose address space is capped at the
budget, so the test machine never gives a bomb more than that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from served_models import config, write_mlp
from service_harness import TOKEN, WAIT_S, base_settings, run_server

from bnfold.converter.repository import write_version
from bnfold.service import memory_budget, model_limits
from bnfold.service.loading import LoadOptions, open_version
from bnfold.service.runtime import RuntimeOptions

pytestmark = pytest.mark.timeout(600)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL_LIMIT = 16 << 20  # max_model_bytes: the bomb passes it
BUDGET = 256 << 20
BOMBS = {"folded": (16384, 16384), "computed": (16384, 32768)}  # name -> (R, C)
REFUSED = (
    f"loading takes more than the {BUDGET}-byte model memory limit (BNFOLD_MODEL_MEMORY_LIMIT): "
    "its trial load "
)


def outer_sum_bomb(rows: int, cols: int) -> bytes:
    """input (N, 10) + ReduceSum(col + row) -> logits (N, 10); col + row is
    (rows, cols) float32, from constants only."""
    col = numpy_helper.from_array(np.ones((rows, 1), np.float32), "col")
    row = numpy_helper.from_array(np.ones((1, cols), np.float32), "row")
    g = helper.make_graph(
        [
            helper.make_node("Add", ["col", "row"], ["w"]),
            helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
            helper.make_node("Add", ["input", "s"], ["logits"]),
        ],
        "outer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [col, row],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def put_bomb(repo: Path, name: str) -> None:
    bomb = outer_sum_bomb(*BOMBS[name])
    write_version(
        repo,
        name,
        model_onnx=bomb,
        reference_onnx=bomb,
        manifest={"format": 1},
        config=config(name, "input", [10], output_shape=[10]),
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    repo = tmp_path_factory.mktemp("budget")
    write_mlp(repo, "good")
    for name in BOMBS:
        put_bomb(repo, name)
    settings = base_settings(repo, max_model_bytes=MODEL_LIMIT, model_memory_limit=BUDGET)
    with run_server(settings) as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as c:
        yield c


@pytest.mark.parametrize("name", list(BOMBS))
def test_the_bombs_pass_every_count_made_from_their_bytes(name: str) -> None:
    bomb = outer_sum_bomb(*BOMBS[name])
    assert len(bomb) < 200 << 10
    model_limits.check(bomb, MODEL_LIMIT)  # nothing it can see: not refused here


def infer_good(http: httpx.Client) -> httpx.Response:
    x = np.zeros((1, 64), np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]}
    return http.post("/v2/models/good/infer", json=body)


def test_the_bombs_are_refused_under_the_budget_and_the_good_model_serves(
    served: httpx.Client,
) -> None:
    index = {e["name"]: e for e in served.post("/v2/repository/index", headers=AUTH).json()}
    assert index["good"]["state"] == "READY"
    for name, (rows, cols) in BOMBS.items():
        assert index[name]["state"] == "UNAVAILABLE"
        reason = index[name]["reason"]
        assert reason.startswith(REFUSED + "failed: ") and reason.endswith(
            f"Failed to allocate memory for requested buffer of size {rows * cols * 4}; refused"
        ), reason
        r = served.get(f"/v2/models/{name}/ready")  # token-free: the generic reason
        assert r.status_code == 503
        assert r.json() == {
            "error": f"model {name!r} is not ready: failed to load (the repository index "
            "gives the reason)"
        }
    r = infer_good(served)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [1, 10]


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_load_is_a_400_with_the_reason_and_the_server_serves_on(
    served: httpx.Client, name: str
) -> None:
    for _ in range(2):
        r = served.post(f"/v2/repository/models/{name}/load", headers=AUTH)
        assert r.status_code == 400, r.text
        assert REFUSED in r.json()["error"]
        assert infer_good(served).status_code == 200
    assert served.post("/v2/repository/models/good/load", headers=AUTH).status_code == 200
    assert infer_good(served).status_code == 200


def trial_children() -> set[int]:
    """The trial loads running now: the children of the process that forks
    them (this process's child running ``memory_budget.FORKER``)."""

    def children(pid: int | str) -> set[int]:
        found: set[int] = set()
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(child) for child in f.read().split())
        return found

    trials: set[int] = set()
    for pid in children("self"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if memory_budget.FORKER.encode() in f.read():
                trials |= children(pid)
    return trials


def test_a_version_within_the_budget_loads_with_its_peak_measured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The trial of a small model reports a peak under the budget, and the
    version is built and served in this process; no trial is left."""
    write_mlp(tmp_path, "small")
    load = LoadOptions(RuntimeOptions(device="cpu"), memory_limit=BUDGET)
    with caplog.at_level(logging.INFO, logger="bnfold.service"):
        opened = open_version(tmp_path / "small", 1, load)
    peaks = [
        int(m.group(1))
        for r in caplog.records
        if (
            m := re.match(
                r"small/1: its trial load peaked at (\d+) MiB \(limit 256 MiB\)", r.getMessage()
            )
        )
    ]
    assert len(peaks) == 1 and 0 <= peaks[0] < 256, caplog.text
    x = np.zeros((2, 64), np.float32)
    assert opened.runtime.run({"input": x})["logits"].shape == (2, 10)
    assert trial_children() == set()


def test_the_trial_is_stopped_by_its_stop_flag(tmp_path: Path) -> None:
    """The load timeout's flag (set before the trial begins here) kills the
    trial at once: refused, no trial left behind."""
    import onnxruntime as ort

    put_bomb(tmp_path, "computed")
    stop = ort.RunOptions()
    stop.terminate = True
    load = LoadOptions(RuntimeOptions(device="cpu"), memory_limit=BUDGET)
    with pytest.raises(ValueError, match="loading stopped"):
        open_version(tmp_path / "computed", 1, load, run_options=stop)
    assert trial_children() == set()


def test_a_peak_over_the_budget_is_refused_in_words() -> None:
    error = memory_budget.over_budget(BUDGET, "its trial load peaked at 300000000 bytes")
    assert str(error) == REFUSED + "peaked at 300000000 bytes; refused"
