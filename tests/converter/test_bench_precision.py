"""bench/precision's zoo path on one small network of bench/zoo.

The network comes from ``bench.zoo.run.networks`` (random weights, BN
statistics calibrated, dynamo export with every BN kept) and goes through
every flow: no labels, so accuracy is None and agreement with float32 folded
is what is measured; ONNX Runtime's direct flow keeps the BN, bnfold's
leaves none; the table and its reading come out of the numbers.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from bench.precision import bench_precision as bp

NET = "cnn-mean-head"  # bench/zoo/blocks.py: one Conv, one BN, a mean head


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return bp.zoo_row(NET, tmp_path_factory.mktemp("zoo-cache"), seconds=0.05)


def test_zoo_network_goes_through_every_flow(measured):
    assert "error" not in measured, measured.get("error")
    assert measured["kind"] == "zoo"
    assert measured["zoo"]["calibration_rows"] == bp.ZOO_CALIBRATION_ROWS
    assert measured["zoo"]["heldout_rows"] == bp.ZOO_HELDOUT_ROWS
    rows = measured["flows"]
    assert list(rows) == list(bp.FLOWS)
    assert all(r["accuracy"] is None for r in rows.values())
    assert rows["float32 unfolded"]["bn"] == 1
    assert rows["float32 folded"]["bn"] == 0 and rows["float32 folded"]["agreement"] == 1.0
    assert rows["bnfold int8"]["bn"] == 0 and rows["bnfold int8"]["qdq_ops"] > 0
    assert rows["ort direct int8"]["bn"] == 1
    assert all(0.0 <= r["agreement"] <= 1.0 for r in rows.values())
    assert rows["bnfold int8"]["bytes"] < rows["float32 folded"]["bytes"]
    for batch in ("1", "32"):
        assert measured["latency"][batch]["float32 folded"]["vs_folded"] == 1.0
    gate = measured["gates"]["int8"]
    assert gate["accuracy_drop_points"] is None and gate["n_samples"] == bp.ZOO_HELDOUT_ROWS
    assert gate["passed"] == (gate["top1_agreement"] >= 0.99 and gate["max_rel_error"] <= 0.1)


def test_table_and_reading_come_from_the_numbers(measured):
    result = {
        "environment": {
            "date": "2026-12-07",
            "machine": "x86_64",
            "nproc": 2,
            "cpu": "",
            "versions": {},
        },
        "load_average": {"before": [0.5], "after": [0.5]},
        "zoo": {
            "default": list(bp.ZOO_DEFAULT),
            "every": ["resnet18", "vgg11_bn"],
            "chosen": NET,
            "calibration_rows": bp.ZOO_CALIBRATION_ROWS,
            "heldout_rows": bp.ZOO_HELDOUT_ROWS,
            "size": 96,
        },
        "networks": {NET: measured, "vgg11_bn": {"kind": "zoo", "error": "E: x", "seconds": 1}},
        "wall_seconds": 1.0,
        "cpu_seconds": 1.0,
    }
    text = bp.markdown(result)
    assert "Rehearsal" not in text
    # The run's own threads load the machine at its end; the reading after
    # the rest decides, and a shared machine before or after makes a rehearsal.
    own = {"before": [0.5], "after": [1.7], "after_rest": [0.4], "rest_seconds": 90}
    assert "Rehearsal" not in bp.markdown({**result, "load_average": own})
    assert "0.50 before the run, 1.70 at its end (its own threads), 0.40 after a 90 s rest" in (
        bp.markdown({**result, "load_average": own})
    )
    shared = {**own, "after_rest": [1.5]}
    assert "(load average 0.50 before, 1.50 after, on 2 CPUs)" in bp.markdown(
        {**result, "load_average": shared}
    )
    row = next(
        line
        for line in text.splitlines()
        if line.startswith(f"| {NET} (random, 96x96) | bnfold int8 |")
    )
    assert row.split(" | ")[2] == "—"
    assert "adds vgg11_bn." in text
    assert "- vgg11_bn: failed after 1 s: E: x" in text
    reading = text.split("## What it says", 1)[1]
    assert "of 1 in the 1 unfolded exports: bnfold int8 0 (in 0 of 1 networks)" in reading
    assert "ort direct int8 1 (in 1 of 1 networks)" in reading
    assert "Not measured (see the notes): vgg11_bn." in reading
    agreement = measured["flows"]["bnfold int8"]["agreement"]
    assert f"bnfold int8 {agreement:.4f}, {agreement:.4f}" in reading
