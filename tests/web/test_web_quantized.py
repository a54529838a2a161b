"""An int8 version on the page, in headless Chromium: its precision, its
calibration and its gate (thresholds and the numbers it measured) as the
page shows them, made by the real tool (``bnfold import --precision int8``)
and compared with what that tool wrote in the manifest.

The network is a linear classifier with a BatchNorm whose classes are far
apart on its data, so that int8 keeps every top-1 class and the gate passes
on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from browser import assert_only_this_server, css, value, visit, wait
from onnx import TensorProto, helper, numpy_helper
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from service_harness import RunningServer, base_settings, run_server

pytestmark = pytest.mark.timeout(600)

NAME = "digits-int8"


def linear_bn() -> onnx.ModelProto:
    """input (N, 64) -> Gemm -> BatchNormalization -> logits (N, 10)."""
    rng = np.random.default_rng(0)
    w = (0.01 * rng.standard_normal((64, 10))).astype(np.float32)
    for c in range(10):
        w[c * 6 : (c + 1) * 6, c] = 1.0  # class c reads inputs 6c..6c+5
    tensors = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b"),
    ]
    for name, v in zip("stmv", (1.5, 0.1, 0.2, 2.0), strict=True):
        tensors.append(numpy_helper.from_array(np.full(10, v, np.float32), name))
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "W", "b"], ["h"]),
            helper.make_node("BatchNormalization", ["h", "s", "t", "m", "v"], ["logits"]),
        ],
        "linear_bn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        tensors,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def rows(n: int) -> np.ndarray:
    """``n`` rows, each with its class's six inputs 10 above the rest."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (n, 64)).astype(np.float32)
    for i, c in enumerate(rng.integers(0, 10, n)):
        x[i, c * 6 : (c + 1) * 6] += 10
    return x


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict]]:
    folder = tmp_path_factory.mktemp("int8")
    onnx.save(linear_bn(), folder / "linear.onnx")
    np.savez(folder / "rows.npz", x=rows(256))
    repo = folder / "models"
    r = subprocess.run(
        [
            sys.executable, "-m", "bnfold", "import", "linear.onnx", "--repo", str(repo),
            "--name", NAME, "--precision", "int8", "--data", "npz:rows.npz",
        ],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads((repo / NAME / "1" / "manifest.json").read_text())
    with run_server(base_settings(repo)) as server:
        yield server, manifest


def facts(page: Any) -> dict[str, str]:
    items = css(page, "#source dl.facts-list > div")
    return {
        i.find_element(By.TAG_NAME, "dt").get_attribute("textContent"): i.find_element(
            By.TAG_NAME, "dd"
        ).get_attribute("textContent")
        for i in items
    }


def test_an_int8_version_shows_its_precision_calibration_and_gate(
    page: Any, quantized: tuple[RunningServer, dict]
) -> None:
    server, manifest = quantized
    assert manifest["precision"] == "int8"
    calibration = manifest["quantization"]["calibration"]
    assert (calibration["method"], calibration["rows"], calibration["batch"]) == ("minmax", 128, 32)
    visit(page, server.url, f"/#/m/{NAME}/1")
    wait(page).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#source dl.facts-list")))
    shown = facts(page)
    assert shown["precision"] == "int8, gated against the float32 graph"
    assert shown["calibration"] == "minmax on 128 rows in batches of 32 (rows.npz, 128 rows)"
    assert shown["gate"] == "max rel error ≤ 0.1, top-1 agreement ≥ 99%, accuracy drop ≤ 1 pt"

    # the gate's numbers: one row per comparison the tool made, as it wrote them
    wait(page).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#parity-table tr.stored")))
    stored = {r.get_attribute("data-key"): r for r in css(page, "#parity-table tr.stored")}
    comparisons = manifest["parity"]["comparisons"]
    assert set(stored) == {"float32_vs_as_written", "float32_vs_as_served"}
    for key, row in stored.items():
        measured = comparisons[f"{key}:logits"]
        how = "as written" if key.endswith("written") else "as served"
        assert (
            row.find_element(By.TAG_NAME, "th").text == f"float32 graph vs int8 model.onnx ({how})"
        )
        assert value(row.find_element(By.CSS_SELECTOR, "td.n")) == measured["n_samples"] == 128
        for cls, name in (("abs", "max_abs_error"), ("rel", "max_rel_error")):
            shown_number = value(row.find_element(By.CSS_SELECTOR, f"td.{cls}"))
            assert shown_number == pytest.approx(measured[name], rel=1e-12), (key, cls)
        assert measured["max_rel_error"] <= 0.1
        top1 = row.find_element(By.CSS_SELECTOR, "td.top1")
        assert value(top1) == measured["top1_agreement"] == 1.0 and top1.text == "100%"
        assert "pass" in row.text
    notes = page.find_element(By.CSS_SELECTOR, "#parity > p.muted").get_attribute("textContent")
    assert "threshold 0.1" in notes and "against the float32 folded graph" in notes
    assert_only_this_server(page, server.url)
