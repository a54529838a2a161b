"""Hostile input over gRPC: bytes that are no protobuf, messages over the
size limit, raw contents whose sizes lie, huge and negative declared
shapes, string lengths that claim gigabytes, typed contents of the wrong
kind, streams that mix all of it, clients that hang up.

Every call is answered with a clear status (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED, NOT_FOUND, UNIMPLEMENTED) well before its deadline,
never with INTERNAL, never by a crash: after each barrage the server still
answers a good request. The decoder is driven in-process by hypothesis
first (hundreds of cases a second), then samples go over the wire.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_harness import GrpcRunning, run_grpc_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_harness import MAX_BODY, base_settings
from triton_models import write_simple_models
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bnfold.service.errors import BadRequest
from bnfold.service.grpc_codec import decode_request
from bnfold.service.protocol import DATATYPES
from bnfold.service.signature import Signature, TensorSpec

pytestmark = pytest.mark.timeout(600)

DEADLINE_S = 30.0  # no call may take this long; a hang fails the test, not the suite
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcRunning]:
    path = tmp_path_factory.mktemp("grpc-hostile")
    write_simple_models(path)
    with run_grpc_server(base_settings(path)) as server:
        yield server


@pytest.fixture(scope="module")
def channel(running: GrpcRunning) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(running.grpc, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def good_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    a = np.arange(16, dtype=np.int32)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(a.tobytes())
    return request


def still_serving(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(good_request(), timeout=DEADLINE_S)
    out = np.frombuffer(response.raw_output_contents[0], dtype=np.int32)
    assert out.tolist() == [2 * i for i in range(16)]


def refused(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=DEADLINE_S)
    error = info.value
    assert error.code() in REFUSED, (error.code(), error.details())
    return error


# ----------------------------------------------------------------- the wire


def test_bytes_that_are_no_protobuf(channel: grpc.Channel, stub: Any) -> None:
    raw = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    for garbage in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256))):
        error = refused(raw, garbage)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelInferRequest" in error.details()
    # bytes protobuf reads as a message of unknown fields: a request for no model
    refused(raw, b"\x08" * 1000)
    still_serving(stub)


def test_unknown_method(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/inference.GRPCInferenceService/Nope")
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=DEADLINE_S)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_message_over_the_limit(stub: Any) -> None:
    request = good_request()
    request.raw_input_contents[0] = b"\0" * (MAX_BODY + 1)
    error = refused(stub.ModelInfer, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(stub)


@pytest.mark.parametrize("size", [0, 63, 65, 64 * 1000])
def test_raw_sizes_that_lie(stub: Any, size: int) -> None:
    request = good_request()
    request.raw_input_contents[1] = b"\1" * size
    error = refused(stub.ModelInfer, request)
    assert f"raw_input_contents holds {size} bytes" in error.details()


@pytest.mark.parametrize(
    "shape",
    [[2**40, 2**40], [1, 2**62], [-1, 16], [-(2**63), 16], [1, 16, 1], [], [9, 16], [0, 16]],
)
def test_declared_shapes(stub: Any, shape: list[int]) -> None:
    request = good_request()
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    refused(stub.ModelInfer, request)
    still_serving(stub)


def test_string_lengths_that_lie(stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="simple_identity")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(b"\xff\xff\xff\xff" + b"a" * 10)  # claims 4 GiB
    assert "claims 4294967295 bytes" in refused(stub.ModelInfer, request).details()
    request.raw_input_contents[0] = b"\x01\x00\x00\x00a" * 10_000  # more elements than shape
    details = refused(stub.ModelInfer, request).details()  # Triton's words (issue 18)
    assert "unexpected number of string elements 3 for inference input 'INPUT0'" in details
    still_serving(stub)


def test_typed_contents_that_lie(stub: Any) -> None:
    request = good_request()
    del request.raw_input_contents[:]
    request.inputs[0].contents.int_contents.extend(range(16))
    request.inputs[1].contents.int64_contents.extend(range(16))  # INT32 goes in int_contents
    refused(stub.ModelInfer, request)
    request.inputs[1].ClearField("contents")
    request.inputs[1].contents.int_contents.extend(range(10_000))  # not 16 values
    assert "10000 values given" in refused(stub.ModelInfer, request).details()
    still_serving(stub)


def test_stream_of_everything(stub: Any) -> None:
    """Good, bad and malformed requests on one stream: each answered in its
    place, the stream lives on."""

    def requests() -> Iterator[service_pb2.ModelInferRequest]:
        for i in range(30):
            request = good_request()
            request.id = str(i)
            if i % 3 == 1:
                request.raw_input_contents[0] = b"short"
            if i % 3 == 2:
                request.model_name = "nope"
            yield request

    answers = list(stub.ModelStreamInfer(requests(), timeout=DEADLINE_S * 2))
    assert len(answers) == 30
    for i, answer in enumerate(answers):
        if i % 3 == 0:
            assert not answer.error_message and answer.infer_response.id == str(i)
        elif i % 3 == 1:
            assert "raw_input_contents holds 5 bytes" in answer.error_message
        else:
            assert "Request for unknown model: 'nope'" in answer.error_message
    still_serving(stub)


def test_malformed_messages_on_a_stream(channel: grpc.Channel, stub: Any) -> None:
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=None,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    good = good_request().SerializeToString()
    answers = list(stream(iter([b"\xff" * 32, good, b"\x0a\xff"]), timeout=DEADLINE_S))
    assert [bool(a.error_message) for a in answers] == [True, False, True]
    assert "not a valid ModelInferRequest" in answers[0].error_message


def test_clients_that_hang_up(running: GrpcRunning, stub: Any) -> None:
    """Streams cancelled mid-way and channels closed with calls in flight."""
    for _ in range(5):
        with grpc.insecure_channel(running.grpc) as ch:
            s = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            gate = threading.Event()

            def requests(gate: threading.Event = gate) -> Iterator[Any]:
                yield good_request()
                gate.wait(5)  # then the client goes away mid-stream

            call = s.ModelStreamInfer(requests(), timeout=DEADLINE_S)
            next(call)
            call.cancel()
            gate.set()
            s.ModelInfer.future(good_request())  # in flight when the channel closes
    still_serving(stub)


def test_many_bad_calls_at_once(stub: Any) -> None:
    request = good_request()
    request.raw_input_contents[0] = b"x"
    futures = [stub.ModelInfer.future(request, timeout=DEADLINE_S) for _ in range(200)]
    codes = {f.exception().code() for f in futures}  # type: ignore[union-attr]
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    still_serving(stub)


# ----------------------------------------------------------------- the decoder

SIG = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)), TensorSpec("s", "BYTES", (-1, 2))),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    max_batch_size=8,
)
dims = st.one_of(
    st.integers(0, 9), st.integers(-(2**63), -1), st.integers(2**31, 2**63 - 1), st.just(1 << 40)
)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "s", "zz", ""]),
        "datatype": st.sampled_from([*DATATYPES, "fp32", ""]),
        "shape": st.lists(dims, max_size=4),
        "raw": st.one_of(st.none(), st.binary(max_size=300)),
        "fp32": st.lists(st.floats(width=32), max_size=40),
        "bytes": st.lists(st.binary(max_size=8), max_size=20),
    }
)


def _build(tensors: list[dict[str, Any]], extra_raw: list[bytes]) -> Any:
    request = service_pb2.ModelInferRequest(model_name="m")
    for t in tensors:
        entry = request.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        if t["raw"] is not None:
            request.raw_input_contents.append(t["raw"])
        elif t["fp32"]:
            entry.contents.fp32_contents.extend(t["fp32"])
        elif t["bytes"]:
            entry.contents.bytes_contents.extend(t["bytes"])
    request.raw_input_contents.extend(extra_raw)
    return request


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tensor, max_size=3), st.lists(st.binary(max_size=40), max_size=2))
def test_decoder_refuses_or_decodes_exactly(
    tensors: list[dict[str, Any]], extra_raw: list[bytes]
) -> None:
    """Any request either decodes into tensors of exactly the declared
    shapes or is a BadRequest: never another exception, never an
    allocation sized by a claim (a declared shape over the limit is refused
    before anything is read)."""
    request = _build(tensors, extra_raw)
    try:
        got = decode_request(request, SIG, max_elements=MAX_BODY, allow_nonfinite=False)
    except BadRequest:
        return
    for entry in request.inputs:
        array = got.feeds[entry.name]
        assert list(array.shape) == list(entry.shape)
        assert array.size == math.prod(entry.shape) <= MAX_BODY


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tensor, max_size=3), st.lists(st.binary(max_size=40), max_size=2))
def test_server_answers_every_shape_of_request(
    stub: Any, tensors: list[dict[str, Any]], extra_raw: list[bytes]
) -> None:
    request = _build(tensors, extra_raw)
    request.model_name = "simple_identity"
    try:
        stub.ModelInfer(request, timeout=DEADLINE_S)
    except grpc.RpcError as e:
        assert e.code() in REFUSED, (e.code(), e.details())


def test_alive_after_the_fuzz(stub: Any, running: GrpcRunning) -> None:
    still_serving(stub)
    assert running.served("simple").inflight == 0  # nothing left holding the model
