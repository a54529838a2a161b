"""Parity endpoints, KServe V1 predict and the image upload route."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from service_harness import Repo, rows


def test_stored_parity_report(http: httpx.Client, repo: Repo) -> None:
    r = http.get("/v2/models/mlp/parity")
    assert r.status_code == 200
    report = r.json()
    assert report["model_name"] == "mlp" and report["model_version"] == "1"
    assert report["parity"]["passed"] is True
    assert report["parity"]["top1_agreement"] == 1.0
    assert report["folding"]["bn_before"] >= 1 and report["folding"]["bn_after"] == 0
    assert http.get("/v2/models/cnn/versions/2/parity").json()["model_version"] == "2"


def test_parity_on_generated_inputs(http: httpx.Client) -> None:
    r = http.post("/v2/models/cnn/parity", json={"n": 64, "seed": 3})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["passed"] is True
    assert p["n_samples"] == 64
    assert (
        p["provider"]
        == p["reference_provider"]
        == http.get("/v2/models/cnn").json()["parameters"]["provider"]
    )
    assert 0 < p["max_abs_error"] < 1e-4
    assert p["max_rel_error"] < 1e-5
    assert p["top1_agreement"] == 1.0
    assert p["outputs"]["logits"]["n_samples"] == 64
    # curl's default form Content-Type is still read as JSON; empty body: defaults
    r = http.post(
        "/v2/models/cnn/parity",
        content=b'{"n": 8}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.json()["n_samples"] == 8
    assert http.post("/v2/models/mlp/parity").json()["n_samples"] == 64


def test_parity_on_given_inputs_matches_a_direct_comparison(http: httpx.Client, repo: Repo) -> None:
    x = rows(repo["mlp"], 5, seed=11)
    inputs = [{"name": "input", "shape": [5, 64], "datatype": "FP32", "data": x.tolist()}]
    r = http.post("/v2/models/mlp/parity", json={"inputs": inputs})
    assert r.status_code == 200
    p = r.json()
    assert p["n_samples"] == 5 and p["passed"] is True
    import onnxruntime as ort

    from bnfold.contract import compare

    folder = repo.path / "mlp" / "1"
    run = {
        f: ort.InferenceSession(str(folder / f), providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )[0]
        for f in ("reference.onnx", "model.onnx")
    }
    direct = compare(run["reference.onnx"], run["model.onnx"])
    assert p["max_abs_error"] == pytest.approx(direct.max_abs_error, abs=1e-7)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/mlp/parity", {"n": 100_000}, 400, "at most 4096"),
        ("/v2/models/mlp/parity", {"n": 0}, 400, "invalid"),
        (
            "/v2/models/mlp/parity",
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]},
            400,
            "unknown input",
        ),
        ("/v2/models/nobatch/parity", {"n": 4}, 400, "no batch dimension"),
        ("/v2/models/nope/parity", {}, 404, "unknown model"),
        (
            "/v2/models/bad-sha/parity",
            {},
            503,
            "failed to load (the repository index gives the reason)",
        ),
    ],
)
def test_parity_errors(
    http: httpx.Client, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    r = http.post(path, json=body)
    assert r.status_code == status
    assert message in r.json()["error"]
    assert "sha256" not in r.json()["error"]  # hashes only behind the token


def test_parity_refusal_reason_is_behind_the_token(
    http: httpx.Client, auth: dict[str, str]
) -> None:
    index = http.post("/v2/repository/index", headers=auth).json()
    (entry,) = [e for e in index if e["name"] == "bad-sha"]
    assert entry["state"] == "UNAVAILABLE" and "sha256" in entry["reason"]


def test_parity_without_batch_axis(http: httpx.Client) -> None:
    r = http.post("/v2/models/nobatch/parity", json={"n": 1})
    assert r.status_code == 200 and r.json()["passed"] is True


# --- KServe V1 ---------------------------------------------------------------


def test_v1_predict(http: httpx.Client, repo: Repo) -> None:
    model = repo["cnn"]
    x = rows(model, 2, seed=8)
    r = http.post("/v1/models/cnn:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    predictions = np.array(r.json()["predictions"], dtype=np.float32)
    assert predictions.shape == (2, 10)
    np.testing.assert_allclose(predictions, repo.expected(model, x), rtol=1e-5)


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        ("mlp", {"inputs": [[1.0] * 64]}, '{"instances": [...]}'),
        ("mlp", {"instances": []}, "instances is empty"),
        ("mlp", {"instances": [[1.0] * 63]}, "does not match the model's [-1, 64]"),
        ("mlp", {"instances": [[1.0] * 64, [1.0] * 63]}, "ragged"),
        ("mlp", {"instances": [["x"] * 64]}, "only numbers"),
        ("nobatch", {"instances": [[1.0] * 64]}, "needs a model with a batch dimension"),
    ],
)
def test_v1_errors(http: httpx.Client, model: str, body: dict[str, Any], message: str) -> None:
    r = http.post(f"/v1/models/{model}:predict", json=body)
    assert r.status_code == 400
    assert message in r.json()["error"]


# --- image upload --------------------------------------------------------------


def png(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def test_classify_png_on_a_flat_model(http: httpx.Client, repo: Repo) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    r = http.post(
        "/v2/models/mlp/classify?top_k=3&fit=resize&invert=false",
        files={"file": ("d.png", png(pixels))},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "mlp" and len(body["predictions"]) == 3
    # the same preprocessing by hand, from config.json (flat NC, 8 x 8)
    prep = json.loads((repo.path / "mlp" / "config.json").read_text())["preprocessing"]
    assert prep["layout"] == "NC" and prep["input_shape"] == [64]
    lo, hi = prep.get("input_range", [0.0, 255.0])
    raw = lo + pixels.astype(np.float32) / 255 * (hi - lo)  # the model's input range
    if prep.get("normalized", True):  # else the graph normalises the raw values itself
        raw = (raw / prep["pixel_scale"] - prep["mean"][0]) / prep["std"][0]
    x = raw.reshape(1, 64).astype(np.float32)
    logits = repo.expected(repo["mlp"], x)[0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    top = np.argsort(-probs)[:3]
    assert [p["index"] for p in body["predictions"]] == top.tolist()
    assert [p["label"] for p in body["predictions"]] == [str(i) for i in top]
    np.testing.assert_allclose(
        [p["probability"] for p in body["predictions"]], probs[top], rtol=1e-4
    )


def test_classify_rgb_jpeg_on_an_image_model(http: httpx.Client) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    image = png(pixels, mode="RGB", fmt="JPEG")
    r = http.post(
        "/v2/models/cnn/versions/2/classify", files={"file": ("cat.jpg", image, "image/jpeg")}
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 5
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 1e-9


@pytest.mark.parametrize(
    ("model", "data", "status", "message"),
    [
        ("mlp", b"GIF89a not a png", 400, "not a readable PNG or JPEG"),
        ("mlp", b"", 400, "not a readable PNG or JPEG"),
        ("nobatch", None, 400, "no image preprocessing"),
        ("mlp", "huge", 413, "over 32000000 pixels"),
    ],
)
def test_classify_errors(
    http: httpx.Client, model: str, data: bytes | str | None, status: int, message: str
) -> None:
    if data is None:
        data = png(np.zeros((8, 8), np.uint8))
    elif data == "huge":  # 6000 x 6000 zeros: a tiny PNG that would decode to 36 MP
        data = png(np.zeros((6000, 6000), np.uint8))
    r = http.post(f"/v2/models/{model}/classify", files={"file": ("x.png", data)})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
