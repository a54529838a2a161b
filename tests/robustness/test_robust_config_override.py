"""A load request's configuration override built to break the parser
(issue 19, item 10): JSON nested 100,000 deep, in the override's text or
as the object Triton's text stands for, is a 400 naming the limit, never
a RecursionError answered 500; the model keeps serving as before.
"""

from __future__ import annotations

import httpx
import pytest
from service_harness import TOKEN

from bnfold.service.config_override import MAX_DEPTH, nesting

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEEP = 100_000


@pytest.mark.parametrize(
    "text",
    [
        "[" * DEEP + "]" * DEEP,
        '{"max_batch_size": 4, "parameters": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
        "[" * DEEP,  # not even closed
    ],
    ids=["arrays", "objects", "unclosed"],
)
def test_a_deep_override_is_a_400(http: httpx.Client, text: str) -> None:
    r = http.post(
        "/v2/repository/models/mlp/load", json={"parameters": {"config": text}}, headers=AUTH
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == (
        f"failed to load 'mlp', parameters.config is nested deeper than {MAX_DEPTH} levels"
    )
    assert http.get("/v2/models/mlp/ready").status_code == 200


def test_a_shallow_override_still_loads(http: httpx.Client) -> None:
    config = '{"max_batch_size": 8}'
    r = http.post(
        "/v2/repository/models/mlp/load", json={"parameters": {"config": config}}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert http.get("/v2/models/mlp/config").json()["max_batch_size"] == 8


def test_depth_is_counted_without_strings() -> None:
    assert nesting('{"a": [1, {"b": "[[[\\"["}]}') == 3
    assert nesting('"[[[["') == 0
    assert nesting("[" * DEEP) == DEEP
