"""gRPC connections are bounded (issue 19, item 4, for the gRPC port): calls
in flight, streams per connection, the HTTP/2 handshake, idle connections.

Each test holds the server's slots with streams that stay open (a
``ModelStreamInfer`` stream is a call in flight for as long as the client
keeps it open; one request answered on it proves it is running on the
server), then counts the status codes of the calls past the bound. Real
channels against the server on 127.0.0.1; events, not times, decide.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_harness import GrpcRunning, run_grpc_server
from onnx import TensorProto
from service_harness import WAIT_S, base_settings, wait_until
from triton_models import add_sub, pbtxt, write_model
from tritonclient.grpc import service_pb2, service_pb2_grpc

pytestmark = pytest.mark.timeout(600)

ROOMY = 1 << 20  # a bound no test reaches
GRPC_DEFAULT_HANDSHAKE_S = 120.0  # grpc core's server handshake timeout


def simple_repo(path: Path) -> Path:
    both, outs = ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"]
    config = pbtxt("simple", TensorProto.INT32, both, outs, [16])
    write_model(path, "simple", add_sub(TensorProto.INT32), config)
    return path


def request() -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name="simple")
    a = np.arange(16, dtype=np.int32)
    for name in ("INPUT0", "INPUT1"):
        r.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        r.raw_input_contents.append(a.tobytes())
    return r


class OpenStream:
    """A ``ModelStreamInfer`` call kept open: one request answered on it
    (the call runs on the server), then held until ``close``."""

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
        self._requests: queue.Queue[service_pb2.ModelInferRequest | None] = queue.Queue()
        self._responses = stub.ModelStreamInfer(iter(self._requests.get, None), timeout=WAIT_S)
        self._requests.put(request())
        answer = next(self._responses)
        assert not answer.error_message, answer.error_message
        out = np.frombuffer(answer.infer_response.raw_output_contents[0], dtype=np.int32)
        assert out.tolist() == [2 * i for i in range(16)]

    def close(self) -> None:
        self._requests.put(None)  # the client's half closes; the server ends the call
        assert list(self._responses) == []


@contextmanager
def server(tmp_path: Path, **limits: Any) -> Iterator[GrpcRunning]:
    settings = base_settings(simple_repo(tmp_path), **{"grpc_max_concurrent_rpcs": ROOMY} | limits)
    with run_grpc_server(settings) as running:
        yield running


def live(channel: grpc.Channel, timeout: float = WAIT_S) -> grpc.StatusCode:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def own_connection(target: str) -> grpc.Channel:
    """A channel on a connection of its own (not shared with other channels)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def test_calls_past_the_limit_are_resource_exhausted(tmp_path: Path) -> None:
    limit = 3
    with (
        server(tmp_path, grpc_max_concurrent_rpcs=limit) as running,
        own_connection(running.grpc) as channel,
        own_connection(running.grpc) as other,  # another client: no slot either
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        streams = [OpenStream(stub) for _ in range(limit)]
        codes: Counter[grpc.StatusCode] = Counter()
        for target in (channel, other) * 3:
            codes[live(target)] += 1
        assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED: 6}, codes
        refused = stub.ModelInfer.future(request(), timeout=WAIT_S)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        streams.pop().close()  # a slot frees once its call has ended on the server
        wait_until(lambda: live(other) == grpc.StatusCode.OK, "a call after a slot frees")
        response = service_pb2_grpc.GRPCInferenceServiceStub(other).ModelInfer(
            request(), timeout=WAIT_S
        )
        assert response.model_name == "simple"
        for stream in streams:
            stream.close()
        assert live(channel) == grpc.StatusCode.OK


def test_one_connection_cannot_take_more_than_its_streams(tmp_path: Path) -> None:
    """Past the streams of one connection a call waits in the client (here
    until its deadline: DEADLINE_EXCEEDED, never sent); another connection
    is served, and the waiting call goes once a stream closes."""
    with (
        server(tmp_path, grpc_max_streams_per_connection=2) as running,
        own_connection(running.grpc) as full,
        own_connection(running.grpc) as other,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(full)
        streams = [OpenStream(stub) for _ in range(2)]
        assert live(full, timeout=2.0) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert live(other) == grpc.StatusCode.OK
        waiting = stub.ServerLive.future(service_pb2.ServerLiveRequest(), timeout=WAIT_S)
        streams.pop().close()
        assert waiting.result().live
        streams.pop().close()


def test_an_idle_connection_is_closed_with_goaway(tmp_path: Path) -> None:
    ready, idle = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE
    with (
        server(tmp_path, grpc_max_connection_idle_s=0.5) as running,
        own_connection(running.grpc) as channel,
    ):
        states: list[grpc.ChannelConnectivity] = []
        closed = threading.Event()

        def seen(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state == idle and ready in states:
                closed.set()

        assert live(channel) == grpc.StatusCode.OK
        channel.subscribe(seen)
        assert closed.wait(WAIT_S), states  # the server's GOAWAY, not the client's 30 min
        channel.unsubscribe(seen)
        assert live(channel) == grpc.StatusCode.OK  # the client reconnects


def test_a_connection_that_never_handshakes_is_closed(tmp_path: Path) -> None:
    """A TCP connection that sends nothing: closed by the server after the
    1 s handshake timeout, well within the test's wait (half grpc's own
    default, 120 s)."""
    with server(tmp_path, grpc_handshake_timeout_s=1.0) as running:
        host, port = running.grpc.rsplit(":", 1)
        with socket.create_connection(
            (host, int(port)), timeout=GRPC_DEFAULT_HANDSHAKE_S / 2
        ) as silent:
            received = b""
            while chunk := silent.recv(4096):  # the server's SETTINGS, then the close
                received += chunk
        assert len(received) < 4096, received
        with own_connection(running.grpc) as channel:
            assert live(channel) == grpc.StatusCode.OK


def test_a_client_pinging_too_often_is_closed_with_goaway(tmp_path: Path) -> None:
    """Keep-alive enforcement: a client pinging every 100 ms without calls,
    against a 60 s minimum, is sent GOAWAY (too_many_pings) after its
    strikes; no idle limit here, so nothing else closes the connection."""
    ready, idle = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE
    pinging = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with (
        server(tmp_path, grpc_min_ping_interval_s=60.0, grpc_max_connection_idle_s=0) as running,
        grpc.insecure_channel(running.grpc, options=pinging) as channel,
    ):
        states: list[grpc.ChannelConnectivity] = []
        closed = threading.Event()

        def seen(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state != ready and ready in states:
                closed.set()

        assert live(channel) == grpc.StatusCode.OK
        channel.subscribe(seen)
        assert closed.wait(WAIT_S), states
        channel.unsubscribe(seen)
        assert idle in states or grpc.ChannelConnectivity.TRANSIENT_FAILURE in states, states
