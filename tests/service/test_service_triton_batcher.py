"""Triton's dynamic batching rule, asked for by a model's config.pbtxt
(issue 18, Triton's L0_batcher): preferred batch sizes, the queue delay, a
batch cut where the shape changes, preserve_ordering, and the test hook
``BNFOLD_TEST_DELAY_SCHEDULER`` (Triton's ``TRITONSERVER_DELAY_SCHEDULER``).

Real servers on 127.0.0.1 (HTTP and gRPC, in a thread), Triton's own gRPC
client, and Triton's statistics extension read back: how many batches of
each size ran. Nothing is decided by the clock: requests are lined up by
the test hook or by waiting until the batcher holds them; a batch that
must leave before its delay has a delay of a minute and is answered at all
(the client's guard is shorter); a delay that must fire is short and the
batch it sends is asserted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_harness import GrpcRunning, run_grpc_server
from onnx import TensorProto, helper
from service_harness import WAIT_S, base_settings, wait_until
from triton_models import _graph, pbtxt, write_model

pytestmark = pytest.mark.timeout(300)

BOTH, OUTS = ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"]
MINUTE_US = 60_000_000  # the longest queue delay a configuration may set
# The client's guard for a batch that must not wait out a minute's delay.
ANSWER_S = 30.0


def add_sub_any_width() -> bytes:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 on [N, W]."""
    return _graph(
        [
            helper.make_node("Add", BOTH, ["OUTPUT0"]),
            helper.make_node("Sub", BOTH, ["OUTPUT1"]),
        ],
        BOTH,
        OUTS,
        TensorProto.FLOAT,
        ["N", "W"],
    )


@contextmanager
def serving(tmp_path: Path, dynamic_batching: str, **settings: Any) -> Iterator[GrpcRunning]:
    config = pbtxt("m", TensorProto.FLOAT, BOTH, OUTS, [-1]) + dynamic_batching + "\n"
    write_model(tmp_path, "m", add_sub_any_width(), config)
    options = {"api_token": None, "inline_below_ms": 0, **settings}
    with run_grpc_server(base_settings(tmp_path, **options)) as running:
        yield running


def infer(running: GrpcRunning, rows: int, width: int = 16, timeout: float = WAIT_S) -> None:
    """One request of ``rows`` rows; its answer checked."""
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    given = [grpcclient.InferInput(name, [rows, width], "FP32") for name in BOTH]
    for g in given:
        g.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(running.grpc)
    try:
        result = client.infer("m", given, client_timeout=timeout)
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + x)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x - x)


def send(running: GrpcRunning, rows: int, width: int = 16, timeout: float = WAIT_S) -> Any:
    """``infer`` in a thread of its own; join it with ``done``."""
    errors: list[BaseException] = []

    def go() -> None:
        try:
            infer(running, rows, width, timeout)
        except BaseException as e:  # reported by done()
            errors.append(e)

    thread = threading.Thread(target=go)
    thread.start()
    thread.errors = errors  # type: ignore[attr-defined]
    return thread


def done(*threads: Any) -> None:
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive(), "a request was never answered"
        assert not t.errors, t.errors


def stats(running: GrpcRunning) -> dict[str, Any]:
    """Triton's statistics of ``m``: batches per size, and the counts."""
    client = grpcclient.InferenceServerClient(running.grpc)
    try:
        s = client.get_inference_statistics("m", "1", as_json=True)["model_stats"][0]
    finally:
        client.close()
    return {
        "batches": {
            int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])
        },
        "executions": int(s.get("execution_count", 0)),
        "inferences": int(s.get("inference_count", 0)),
        "requests": int(s["inference_stats"]["success"].get("count", 0)),
    }


def test_the_configuration_reports_the_batching_asked_for(tmp_path: Path) -> None:
    with serving(
        tmp_path,
        "dynamic_batching { preferred_batch_size: [ 6, 2 ] max_queue_delay_microseconds: 5000 "
        "preserve_ordering: true }",
    ) as running:
        client = grpcclient.InferenceServerClient(running.grpc)
        try:
            config = client.get_model_config("m", as_json=True)["config"]["dynamic_batching"]
        finally:
            client.close()
    assert config["preferred_batch_size"] == [2, 6]
    assert config["max_queue_delay_microseconds"] == "5000"
    assert config["preserve_ordering"] is True


def test_a_batch_leaves_at_a_preferred_size_the_rest_after_the_delay(tmp_path: Path) -> None:
    """Three requests of one row lined up (the hook holds the batcher until
    three are queued), preferred sizes 2 and 6: a batch of 2 leaves, and the
    one left over leaves alone once its (short) delay has passed."""
    with serving(
        tmp_path,
        "dynamic_batching { preferred_batch_size: [ 2, 6 ] max_queue_delay_microseconds: 50000 }",
        test_delay_scheduler=3,
    ) as running:
        done(*(send(running, 1) for _ in range(3)))
        wait_until(lambda: stats(running)["executions"] == 2, "two batches ran")
        assert stats(running) == {
            "batches": {2: 1, 1: 1},
            "executions": 2,
            "inferences": 3,
            "requests": 3,
        }


def test_the_largest_preferred_size_reached_is_the_batch(tmp_path: Path) -> None:
    """Seven requests of one row lined up, preferred sizes 4 and 6, no delay
    (Triton's default when only preferred sizes are set): 6, then 1."""
    with serving(
        tmp_path, "dynamic_batching { preferred_batch_size: [ 4, 6 ] }", test_delay_scheduler=7
    ) as running:
        done(*(send(running, 1) for _ in range(7)))
        wait_until(lambda: stats(running)["executions"] == 2, "two batches ran")
        assert stats(running)["batches"] == {6: 1, 1: 1}


def test_a_lone_request_below_every_preferred_size_waits_out_the_delay(tmp_path: Path) -> None:
    """One row, preferred sizes 2 and 6, a delay of 50 ms: it is answered
    (the delay fired), alone, and it waited in the queue at least that long
    (a lower bound, which load cannot break)."""
    with serving(
        tmp_path,
        "dynamic_batching { preferred_batch_size: [ 2, 6 ] max_queue_delay_microseconds: 50000 }",
    ) as running:
        infer(running, 1)
        wait_until(lambda: stats(running)["executions"] == 1, "the batch ran")
        assert stats(running)["batches"] == {1: 1}
        client = grpcclient.InferenceServerClient(running.grpc)
        try:
            s = client.get_inference_statistics("m", "1", as_json=True)["model_stats"][0]
        finally:
            client.close()
        assert int(s["inference_stats"]["queue"]["ns"]) >= 50_000_000


@pytest.mark.parametrize(("rows", "batches"), [(2, {2: 1}), (6, {6: 1}), (7, {7: 1})])
def test_a_preferred_size_or_more_leaves_without_waiting(
    tmp_path: Path, rows: int, batches: dict[int, int]
) -> None:
    """A request of a preferred size, or of more rows than the largest one,
    leaves at once: answered at all under a minute's delay."""
    with serving(
        tmp_path,
        "dynamic_batching { preferred_batch_size: [ 2, 6 ] "
        f"max_queue_delay_microseconds: {MINUTE_US} }}",
    ) as running:
        infer(running, rows, timeout=ANSWER_S)
        assert stats(running)["batches"] == batches


def test_requests_join_until_a_preferred_size(tmp_path: Path) -> None:
    """1, then 3 (the batcher holding the first under a minute's delay),
    then 2: the batch of 6 leaves at once, the three of them together."""
    with serving(
        tmp_path,
        "dynamic_batching { preferred_batch_size: [ 2, 6 ] "
        f"max_queue_delay_microseconds: {MINUTE_US} }}",
    ) as running:
        batcher = running.served("m").batcher
        first = send(running, 1, timeout=ANSWER_S)
        wait_until(lambda: batcher.pending == 1, "the first request held")
        second = send(running, 3, timeout=ANSWER_S)
        wait_until(lambda: batcher.pending == 2, "the second request held")
        third = send(running, 2, timeout=ANSWER_S)
        done(first, second, third)
        assert stats(running) == {
            "batches": {6: 1},
            "executions": 1,
            "inferences": 6,
            "requests": 3,
        }


def test_a_request_of_another_shape_sends_the_batch_before_it(tmp_path: Path) -> None:
    """Two rows of width 16 held (a minute's delay, preferred size 6), then
    six of width 8: they cannot be batched together, so the two leave at
    once as a batch of 2, and the six as a batch of their own (a preferred
    size)."""
    with serving(
        tmp_path,
        "dynamic_batching { preferred_batch_size: [ 6 ] "
        f"max_queue_delay_microseconds: {MINUTE_US} }}",
    ) as running:
        batcher = running.served("m").batcher
        wide = [send(running, 1, 16, ANSWER_S) for _ in range(2)]
        wait_until(lambda: batcher.pending == 2, "the two wide requests held")
        narrow = send(running, 6, 8, ANSWER_S)
        done(*wide, narrow)
        assert stats(running)["batches"] == {2: 1, 6: 1}


def test_without_the_hook_and_preferred_sizes_eager_batching_is_kept(tmp_path: Path) -> None:
    """``dynamic_batching {}`` alone stays eager: a lone request under a
    minute's server default delay is answered at once."""
    with serving(tmp_path, "dynamic_batching { }", max_queue_delay_ms=60_000) as running:
        assert running.served("m").eager
        infer(running, 1, timeout=ANSWER_S)
        assert stats(running)["batches"] == {1: 1}


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_ordering_holds_a_later_batch_behind_an_earlier_one(
    tmp_path: Path, preserve: bool
) -> None:
    """Two batches in flight: the first held computing (a gate around the
    real run), the second computed. With preserve_ordering the second is not
    answered until the first is; without it, it is answered at once."""
    setting = "preserve_ordering: true" if preserve else ""
    with serving(tmp_path, f"dynamic_batching {{ {setting} }}", batches_in_flight=2) as running:
        batcher = running.served("m").batcher
        gate, entered = threading.Event(), threading.Event()
        run = batcher._run
        calls: list[int] = []

        def gated(feeds: Any) -> Any:
            calls.append(len(feeds["INPUT0"]))
            if len(calls) == 1:
                entered.set()
                assert gate.wait(WAIT_S), "the test never opened the gate"
            return run(feeds)

        batcher._run = gated
        try:
            first = send(running, 1)
            assert entered.wait(WAIT_S), "the first batch never computed"
            second = send(running, 2)
            wait_until(lambda: stats(running)["executions"] == 1, "the second batch computed")
            if preserve:  # computed, and held behind the first batch
                order = batcher._order
                assert order is not None and len(order) == 2
                assert order[1].answers is not None
                assert not any(item.future.done() for item in order[1].batch)
            else:
                done(second)
        finally:
            gate.set()
        done(first, second)
        assert stats(running)["batches"] == {1: 1, 2: 1}
