"""Hypothesis against Triton's binary framing: lying
``Inference-Header-Content-Length``, truncated and oversized bodies, huge
and negative dimensions, datatypes that disagree with the byte count.

Every request either decodes into tensors that are exactly what was sent,
or is refused with ``BadRequest`` (400): never another exception, never a
short read, never an allocation sized by what the client claims. The
parser is driven in-process (hundreds of cases a second), then a sample of
the same requests goes to the real server, which must answer 400 or 200 and
stay alive.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from service_harness import MAX_BODY, RunningServer

from bench.serve.loadgen import Request, load
from bnfold.service.codec import decode_infer
from bnfold.service.errors import BadRequest, PayloadTooLarge
from bnfold.service.protocol import DATATYPES
from bnfold.service.signature import Signature, TensorSpec

HEADER = "Inference-Header-Content-Length"
# Two inputs, as the server checks them: a float matrix and a small int one.
SIG = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)), TensorSpec("k", "INT8", (-1, 2))),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    max_batch_size=8,
)

dims = st.one_of(
    st.integers(0, 9),
    st.integers(-(2**63), -1),
    st.integers(2**31, 2**64),
    st.sampled_from([1 << 40, 2**63 - 1, -1]),
)
shapes = st.one_of(
    st.lists(dims, min_size=0, max_size=4),
    st.just("2x4"),
    st.lists(st.floats(allow_nan=False, width=32), max_size=2),
    st.none(),
)
sizes = st.one_of(
    st.integers(-10, 400),
    st.integers(2**31, 2**65),
    st.sampled_from([-(2**63), "32", 32.0, True, None, [32]]),
)
datatypes = st.sampled_from([*DATATYPES, "BYTES", "fp32", "", 7])
header_lengths = st.one_of(
    st.none(),
    st.integers(-5, 5).map(lambda d: f"+{d}"),  # relative to the true JSON length
    st.sampled_from(["-1", "", " ", "ten", "²", "1e3", "0x10", str(2**70)]),
)


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, str | None, dict[str, Any]]:
    """A request whose claims may all be lies; also the claims themselves."""
    rows = draw(st.integers(1, 3))
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    k = np.arange(rows * 2, dtype=np.int8).reshape(rows, 2)
    truthful = draw(st.booleans())
    inputs = []
    payload = b""
    for name, array, datatype in (("x", x, "FP32"), ("k", k, "INT8")):
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape) if truthful else draw(shapes),
            "datatype": datatype if truthful or draw(st.booleans()) else draw(datatypes),
        }
        if truthful or draw(st.booleans()):
            entry["parameters"] = {"binary_data_size": array.nbytes}
        else:
            entry["parameters"] = {"binary_data_size": draw(sizes)}
        inputs.append(entry)
        payload += array.tobytes()
    head = json.dumps({"inputs": inputs}).encode()
    if not truthful:
        cut = draw(st.sampled_from(["none", "truncate", "extend"]))
        if cut == "truncate":
            payload = payload[: draw(st.integers(0, len(payload)))]
        elif cut == "extend":
            payload += bytes(draw(st.integers(1, 64)))
    length: str | None = str(len(head))
    if not truthful:
        claim = draw(header_lengths)
        length = str(len(head) + int(claim[1:])) if claim and claim[0] == "+" else claim
    return head + payload, length, {"x": x, "k": k, "truthful": truthful}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(binary_requests())
def test_the_parser_decodes_exactly_or_refuses(
    request: tuple[bytes, str | None, dict[str, Any]],
) -> None:
    body, length, sent = request
    try:
        decoded = decode_infer(body, length, SIG, max_elements=1 << 16, allow_nonfinite=False)
    except (BadRequest, PayloadTooLarge) as e:
        assert not sent["truthful"], e.message
        assert e.message
        return
    # Accepted: every tensor is exactly the bytes sent, with the shape sent.
    np.testing.assert_array_equal(decoded.feeds["x"], sent["x"])
    np.testing.assert_array_equal(decoded.feeds["k"], sent["k"])
    assert decoded.rows == len(sent["x"])


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=512),
    length=st.one_of(st.none(), st.integers(-3, 600).map(str), st.text(max_size=4)),
)
def test_arbitrary_bytes_are_400_not_a_crash(body: bytes, length: str | None) -> None:
    try:
        decode_infer(body, length, SIG, max_elements=1 << 16, allow_nonfinite=False)
    except BadRequest as e:
        assert e.status == 400 and e.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(binary_requests())
def test_the_server_answers_400_and_stays_up(
    server: RunningServer, request: tuple[bytes, str | None, dict[str, Any]]
) -> None:
    """The same requests against the mlp model (input ``input``, 64 floats):
    the names and widths differ from SIG, so even truthful framing is a 400.
    Sent over a raw socket: header values that httpx would refuse to send
    (blanks, non-ASCII) reach the server as written."""
    body, length, _ = request
    headers = {} if length is None else {HEADER: length}
    port = int(server.host_port.rsplit(":", 1)[1])
    answers: list[bytes] = []
    result = load(
        "127.0.0.1",
        port,
        Request("/v2/models/mlp/infer", body, headers),
        concurrency=1,
        requests=1,
        on_response=lambda status, headers, body: answers.append(body),
    )
    assert result.statuses == {400: 1}, answers
    assert list(json.loads(answers[0])) == ["error"]


def test_the_server_survived(http: httpx.Client) -> None:
    x = np.zeros((1, 64), np.float32)
    head = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                     "parameters": {"binary_data_size": x.nbytes}}]}
    ).encode()  # fmt: skip
    r = http.post(
        "/v2/models/mlp/infer", content=head + x.tobytes(), headers={HEADER: str(len(head))}
    )
    assert r.status_code == 200
    assert len(head) + x.nbytes < MAX_BODY
