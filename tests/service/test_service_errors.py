"""Every error path answers ``{"error": "..."}`` with the right status:
400 bad input (a body over the size limit too, as Triton), 404 unknown,
405, 503 not ready; never
FastAPI's 422 body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from service_harness import MAX_BODY, TOKEN, Repo, rows

HEADER = "Inference-Header-Content-Length"


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def infer_body(**input_fields: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}
    tensor.update(input_fields)
    return {"inputs": [tensor]}


def binary_request(
    x: np.ndarray, claimed: int, *, shape: list[int] | None = None, extra: bytes = b""
) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape or list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": claimed},
                }
            ]
        }
    ).encode()
    return header + x.tobytes() + extra, {HEADER: str(len(header))}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "inputs must be a non-empty list"),
        (b'{"inputs": []}', "inputs must be a non-empty list"),
        (b'{"inputs": [42]}', "object with a name"),
        (b'{"inputs": [{"name": "input"}], "parameters": 3}', "parameters must be an object"),
    ],
)
def test_malformed_requests(http: httpx.Client, body: bytes, message: str) -> None:
    assert message in error_of(http.post("/v2/models/mlp/infer", content=body), 400)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "pixels"}, "unknown input 'pixels'; the model expects ['input']"),
        ({"datatype": "FP64"}, "datatype FP64 but the model expects FP32"),
        ({"datatype": "BYTES"}, "datatype BYTES but the model expects FP32"),
        ({"shape": [1, 63], "data": [0.5] * 63}, "does not match the model's [-1, 64]"),
        ({"shape": [64]}, "does not match the model's [-1, 64]"),
        ({"shape": [1, -64]}, "negative dimension"),
        ({"shape": [65, 64], "data": [0.5] * 64 * 65}, "batch size 65 is outside 1..64"),
        ({"shape": [0, 64], "data": []}, "batch size 0 is outside 1..64"),
        # Triton's overflow checks and words, before the batch size (issue 18)
        (
            {"shape": [16, 2**60 + 2]},
            "shape [16, 1152921504606846978] causes total element count to exceed maximum "
            "size of 9223372036854775807",
        ),
        ({"shape": [4, 2**60 + 2]}, "byte size overflow for input 'input'"),
        ({"shape": "1x64"}, "shape must be a list of integers"),
        ({"shape": [1.0, 64]}, "shape must be a list of integers"),
        ({"data": [0.5] * 63}, "63 values given, shape [1, 64] needs 64"),
        ({"data": ["a"] * 64}, "data must hold only numbers"),
        ({"data": [None] * 64}, "data must hold only numbers"),
        ({"data": [[0.5] * 32, [0.5] * 33]}, "ragged"),
        ({"data": [True] * 64}, "true/false given for FP32"),
        ({"data": 0.5}, "data must be a list"),
        ({"data": None}, "neither data nor binary_data_size"),
        ({"parameters": []}, "parameters must be an object"),
    ],
)
def test_inputs_are_checked_against_the_model(
    http: httpx.Client, fields: dict[str, Any], message: str
) -> None:
    r = http.post("/v2/models/mlp/infer", json=infer_body(**fields))
    assert message in error_of(r, 400)


def test_missing_and_duplicate_inputs(http: httpx.Client) -> None:
    body = infer_body()
    body["inputs"] = body["inputs"] * 2
    assert "given twice" in error_of(http.post("/v2/models/mlp/infer", json=body), 400)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nonfinite_json_inputs_are_refused(http: httpx.Client, value: str) -> None:
    data = ", ".join(["0.5"] * 63 + [value])
    tensor = f'{{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [{data}]}}'
    body = f'{{"inputs": [{tensor}]}}'
    assert "NaN or Inf" in error_of(http.post("/v2/models/mlp/infer", content=body), 400)


def test_nonfinite_binary_inputs_are_refused(http: httpx.Client) -> None:
    x = np.zeros((1, 64), np.float32)
    x[0, 3] = np.inf
    body, headers = binary_request(x, x.nbytes)
    r = http.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert "NaN or Inf" in error_of(r, 400)


def test_float_overflow_to_inf_is_refused(http: httpx.Client) -> None:
    r = http.post("/v2/models/mlp/infer", json=infer_body(data=[1e300] * 64))
    assert "NaN or Inf" in error_of(r, 400)


@pytest.mark.parametrize(
    ("claimed", "extra", "shape", "message"),
    [
        (4 * 64 + 4, b"", None, "runs past the end of the body"),
        (4 * 64 - 4, b"", None, "needs 256"),
        (4 * 64, b"\0\0\0\0", None, "4 bytes of binary data follow"),
        (-1, b"", None, "non-negative integer"),
        ("256", b"", None, "non-negative integer"),
        (4 * 64, b"", [2, 64], "needs 512"),
        (4 * 64, b"", [1, 1 << 40], "does not match the model's"),
    ],
)
def test_binary_sizes_that_lie(
    http: httpx.Client, claimed: Any, extra: bytes, shape: list[int] | None, message: str
) -> None:
    x = rows_mlp(1)
    body, headers = binary_request(x, claimed, shape=shape, extra=extra)
    r = http.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert message in error_of(r, 400)


def rows_mlp(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)


@pytest.mark.parametrize(
    ("header", "message"),
    [("100000", "the body has only"), ("-5", "non-negative integer"), ("ten", "non-negative")],
)
def test_header_length_that_lies(http: httpx.Client, header: str, message: str) -> None:
    body, _ = binary_request(rows_mlp(1), 256)
    r = http.post("/v2/models/mlp/infer", content=body, headers={HEADER: header})
    assert message in error_of(r, 400)


def test_binary_without_header_length_is_malformed(http: httpx.Client) -> None:
    body, _ = binary_request(rows_mlp(1), 256)
    assert "malformed JSON" in error_of(http.post("/v2/models/mlp/infer", content=body), 400)


def test_outputs_checked(http: httpx.Client) -> None:
    body = infer_body()
    body["outputs"] = [{"name": "probs"}]
    assert "unknown output 'probs'" in error_of(http.post("/v2/models/mlp/infer", json=body), 400)
    body["outputs"] = [{"name": "logits", "parameters": {"classification": -3}}]
    assert "classification must be a non-negative integer" in error_of(
        http.post("/v2/models/mlp/infer", json=body), 400
    )
    body["outputs"] = "logits"
    assert "outputs must be a list" in error_of(http.post("/v2/models/mlp/infer", json=body), 400)


def test_id_and_timeout_types(http: httpx.Client) -> None:
    body = infer_body() | {"id": 7}
    assert "id must be a string" in error_of(http.post("/v2/models/mlp/infer", json=body), 400)
    body = infer_body() | {"parameters": {"timeout": "soon"}}
    assert "timeout" in error_of(http.post("/v2/models/mlp/infer", json=body), 400)


def test_unsupported_content_encoding(http: httpx.Client) -> None:
    r = http.post("/v2/models/mlp/infer", json=infer_body(), headers={"Content-Encoding": "br"})
    assert "unsupported Content-Encoding" in error_of(r, 400)


def test_body_over_the_limit_is_400_in_tritons_words(http: httpx.Client) -> None:
    """Triton answers a body over --http-max-input-size with 400 (issue 18;
    it was 413): a JSON body as JSON, a raw binary request as its input."""
    hint = f"the maximum allowed input size of {MAX_BODY} bytes. Use --http-max-input-size"
    big = b"x" * (MAX_BODY + 1)
    r = http.post("/v2/models/mlp/infer", content=big)
    assert error_of(r, 400).startswith(f"request JSON size of {MAX_BODY + 1} bytes exceeds {hint}")
    r = http.post("/v2/models/mlp/infer", content=big, headers={HEADER: "0"})
    assert error_of(r, 400) == (
        f"Raw input has a byte_size ({MAX_BODY + 1} bytes) that exceeds the maximum allowed "
        f"value of {MAX_BODY} bytes. Use --http-max-input-size to increase the limit."
    )
    r = http.post("/v2/models/mlp/infer", content=big, headers={HEADER: "10"})
    assert error_of(r, 400).startswith(f"request size of {MAX_BODY + 1} bytes exceeds {hint}")
    r = http.post("/v2/repository/index", content=big)  # refused before the token check
    assert error_of(r, 400).startswith(f"request JSON size of {MAX_BODY + 1} bytes exceeds")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    r = http.post("/v2/models/mlp/infer", content=chunks())
    assert "transfer-encoding" in r.request.headers
    assert error_of(r, 400).startswith("request JSON size of at least ")
    assert hint in r.json()["error"]
    assert http.get("/v2/health/live").status_code == 200  # the server is fine


def test_gzip_bomb_is_400(http: httpx.Client) -> None:
    import gzip

    bomb = gzip.compress(b"\0" * (MAX_BODY * 4))
    r = http.post("/v2/models/mlp/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert error_of(r, 400) == (
        f"Decompressed data size exceeds the maximum allowed value of {MAX_BODY} bytes. "
        "Use --http-max-input-size to increase the limit."
    )


def test_repository_index_ready_in_tritons_words(http: httpx.Client) -> None:
    """``ready`` must be a JSON boolean, however deep the value nests
    (Triton's test_repository_index_deeply_nested_json; issue 18)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    words = "Invalid value for 'ready': expected a boolean"
    depth = 250_000
    deep = '{"ready":' + "[" * depth + "true" + "]" * depth + "}"
    for body in (deep, '{"ready": "yes"}', '{"ready": 1}', '{"ready": {"a": [[["]"]]]}}'):
        r = http.post("/v2/repository/index", content=body, headers=auth)
        assert words in error_of(r, 400), body[:40]
    r = http.post("/v2/repository/index", content='{"ready": false, "x": [[[1]]]}', headers=auth)
    assert r.status_code == 200
    assert http.get("/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v2/models/nope/infer", 404, "Request for unknown model: 'nope' is not found"),
        ("GET", "/v2/models/nope", 404, "Request for unknown model: 'nope' is not found"),
        ("GET", "/v2/models/nope/ready", 404, "Request for unknown model: 'nope' is not found"),
        ("GET", "/v2/models/..%2f..%2fetc/config", 404, "Not Found"),
        ("GET", "/v2/models/-bad/config", 404, "Request for unknown model: '-bad' is not found"),
        ("GET", "/v2/models/.hidden", 404, "Request for unknown model: '.hidden' is not found"),
        ("POST", "/v2/models/cnn/versions/1/infer", 404, "model: 'cnn' version 1 is not found"),
        ("GET", "/v2/models/cnn/versions/9", 404, "model: 'cnn' version 9 is not found"),
        ("GET", "/v2/models/cnn/versions/x", 400, "version must be a positive integer"),
        ("GET", "/v2/models/cnn/versions/0/ready", 400, "version must be a positive integer"),
        ("GET", "/v3/anything", 404, "Not Found"),
        ("GET", "/v2/models/mlp/infer", 405, "Method Not Allowed"),
        # reasons read from files stay behind the token (the index has them)
        ("POST", "/v2/models/bad-sha/infer", 503, "'bad-sha' is not ready: failed to load"),
        ("GET", "/v2/models/bad-sha/ready", 503, "'bad-sha' is not ready: failed to load"),
        ("GET", "/v2/models/garbage", 503, "'garbage' is not ready: failed to load"),
        ("GET", "/v2/models/empty/ready", 503, "no version folder"),
        ("GET", "/v2/models/cnn/versions/1/ready", 404, "is not found"),
    ],
)
def test_unknown_and_unavailable(
    http: httpx.Client, method: str, path: str, status: int, message: str
) -> None:
    r = http.request(method, path, json=infer_body() if method == "POST" else None)
    assert message in error_of(r, status)


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v2/models/mlp/classify", {}),  # no file
        ("POST", "/v2/models/mlp/classify?top_k=0", {"files": {"file": b"x"}}),
        ("POST", "/v2/models/mlp/parity", {"json": {"n": "many"}}),
        ("POST", "/v2/models/mlp/parity", {"content": b"{oops"}),
        ("POST", "/v2/repository/index", {"json": {"ready": "maybe"}}),
    ],
)
def test_framework_validation_is_400_not_422(
    http: httpx.Client, auth: dict[str, str], method: str, path: str, kwargs: dict[str, Any]
) -> None:
    r = http.request(method, path, headers=auth, **kwargs)
    assert "invalid" in error_of(r, 400)


def test_no_error_leaks_a_framework_shape(http: httpx.Client, repo: Repo) -> None:
    x = rows(repo["mlp"], 1)
    r = http.post("/v2/models/mlp/infer", json={"inputs": [{"name": "input", "data": x.tolist()}]})
    assert "shape must be a list" in error_of(r, 400) or "datatype" in error_of(r, 400)
