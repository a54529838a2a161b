"""Parity on live traffic (issue 22, ``--shadow-parity``): sampled requests
run through the version's reference off the request's path, compared at the
version's gate, on the real server; numbers checked against the same
comparison made here from the same inputs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import resnet_block, write_bare
from grpc_harness import run_grpc_server
from onnx import helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from service_harness import TOKEN, base_settings, run_server, wait_until
from trained_models import Converted, ConvertOnce

from bnfold.contract import compare_outputs
from bnfold.converter.repository import write_version
from bnfold.folding import fold
from bnfold.service.metrics import Metrics
from bnfold.service.shadow import MIN_ROWS, Gate, LiveParity, Shadow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MLP = {"epochs": 3}  # the digits MLP of tests/converter/test_quantize.py (one conversion)
REQUESTS = 100


def series(text: str, name: str, **labels: str) -> list[float]:
    """Every sample ``name`` with ``labels`` in a Prometheus exposition."""
    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(text: str, name: str, **labels: str) -> float:
    (found,) = series(text, name, **labels)
    return found


class Live:
    """The shadow series of one model version, read from ``/metrics``."""

    def __init__(self, http: httpx.Client, model: str, version: str) -> None:
        self.http, self.labels = http, {"model": model, "version": version}

    def text(self) -> str:
        return self.http.get("/metrics").text

    def settled(self, text: str) -> int:
        """Sampled requests done with: compared or dropped."""
        compared = series(text, "bnfold_shadow_samples_total", **self.labels)
        return int(sum(compared) + sum(series(text, "bnfold_shadow_dropped_total", **self.labels)))

    def send(
        self, post: Callable[[np.ndarray], np.ndarray], batches: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Each batch through ``post``; the next is sent once the server has
        settled this one's sample (so that the queue never holds two)."""
        served = []
        for i, x in enumerate(batches):
            served.append(post(x))
            wait_until(lambda n=i + 1: self.settled(self.text()) == n, f"sample {i + 1} settled")
        return served


def http_post(
    http: httpx.Client, path: str, name: str = "input"
) -> Callable[[np.ndarray], np.ndarray]:
    def post(x: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        r = http.post(path, json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        return np.array(out["data"], np.float32).reshape(out["shape"])

    return post


def offline(reference: onnx.ModelProto, inputs: list[np.ndarray], served: list[np.ndarray],
            rtol: float, min_top1: float) -> dict[str, float]:  # fmt: skip
    """The live numbers, computed here: the same comparator on the same rows."""
    session = ort.InferenceSession(
        reference.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rows = agreed = 0.0
    abs_err = rel_err = 0.0
    for x, got in zip(inputs, served, strict=True):
        (want,) = session.run(None, {"input": x})
        report = compare_outputs({"logits": want}, {"logits": got}, rtol=rtol, min_top1=min_top1)
        rows += len(x)
        agreed += (report.top1_agreement or 0.0) * len(x)
        abs_err, rel_err = max(abs_err, report.max_abs_error), max(rel_err, report.max_rel_error)
    return {"rows": rows, "agreed": agreed, "agreement": agreed / rows,
            "max_abs_error": abs_err, "max_rel_error": rel_err}  # fmt: skip


@pytest.fixture(scope="module")
def mlp(converted: ConvertOnce) -> Converted:
    return converted("mlp", **MLP)


def heldout_rows(mlp: Converted) -> np.ndarray:
    """The digits test split as the MLP takes it."""
    from bnfold.converter.quantize import converter_data

    heldout, _ = converter_data(mlp.manifest, onnx.load(str(mlp.version_dir / "model.onnx")))
    return heldout.feeds["input"]


@contextmanager
def warnings_of_the_server() -> Iterator[list[str]]:
    """WARNING lines the server logs from now on (its logger does not
    propagate, and ``create_app`` replaces its handlers)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("bnfold.service")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def test_int8_version_live_agreement_and_error_in_metrics(mlp: Converted, tmp_path: Path) -> None:
    from bnfold.converter.quantize import QuantizeOptions, quantize_version

    repo = tmp_path / "models"
    mlp.write(repo, "digits", version=1)
    quantize_version(repo, "digits", QuantizeOptions("int8"))  # version 2, int8
    gate = json.loads((repo / "digits" / "2" / "manifest.json").read_text())["parity"]
    assert (gate["rtol"], gate["min_top1"]) == (0.1, 0.99)
    # the test split, 3 rows a request, noised so that some rows sit near a tie
    x = heldout_rows(mlp)
    rng = np.random.default_rng(0)
    batches = [
        (x[3 * i : 3 * i + 3] + rng.normal(0, 1.5, (3, x.shape[1]))).astype(np.float32)
        for i in range(REQUESTS)
    ]
    with (
        run_server(base_settings(repo, shadow_parity=1.0)) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        live = Live(http, "digits", "2")
        served = live.send(http_post(http, "/v2/models/digits/versions/2/infer"), batches)
        text = live.text()
        stored = http.get("/v2/models/digits/versions/2/parity").json()["live"]
    labels = {"model": "digits", "version": "2"}
    dropped = sum(series(text, "bnfold_shadow_dropped_total", **labels))
    samples = value(text, "bnfold_shadow_samples_total", **labels)
    assert samples == REQUESTS - dropped and dropped == 0
    assert value(text, "bnfold_shadow_rows_total", **labels) == 3 * REQUESTS
    assert value(text, "bnfold_shadow_rel_error_count", **labels) == REQUESTS

    # the same comparison here, against the float32 folded graph the gate measured
    reference, _ = fold(onnx.load(str(repo / "digits" / "2" / "reference.onnx")))
    want = offline(reference, batches, served, rtol=0.1, min_top1=0.99)
    agreement = value(text, "bnfold_shadow_top1_agreement", **labels)
    assert 0.0 <= agreement <= 1.0
    assert agreement == pytest.approx(want["agreement"], abs=1e-9)
    agreed = value(text, "bnfold_shadow_top1_agreed_rows_total", **labels)
    assert agreed == pytest.approx(want["agreed"], abs=1e-6)
    assert value(text, "bnfold_shadow_max_abs_error", **labels) > 0
    assert value(text, "bnfold_shadow_max_abs_error", **labels) == pytest.approx(
        want["max_abs_error"], rel=1e-3
    )
    assert value(text, "bnfold_shadow_max_rel_error", **labels) == pytest.approx(
        want["max_rel_error"], rel=1e-3
    )
    below = want["agreement"] < 0.99
    assert value(text, "bnfold_shadow_below_gate", **labels) == (1.0 if below else 0.0)
    # /parity's live numbers are the same ones, with what they were compared with
    assert stored["requests"] == REQUESTS and stored["n_samples"] == 3 * REQUESTS
    assert stored["top1_agreement"] == pytest.approx(want["agreement"], abs=1e-9)
    assert stored["rtol"] == 0.1 and stored["min_top1"] == 0.99
    assert stored["passed"] is not below and stored["dropped"] == {}
    assert stored["reference"] == (
        "float32 folded graph (reference.onnx folded in memory; "
        "its sha256 is the one the gate measured)"
    )


def test_a_float_folded_version_agrees_on_live_grpc_traffic(mlp: Converted, tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "models"
    mlp.write(repo, "digits", version=1)
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((2, 64)).astype(np.float32) for _ in range(REQUESTS)]
    with (
        run_grpc_server(base_settings(repo, shadow_parity=1.0)) as server,
        httpx.Client(base_url=server.url) as http,
        grpcclient.InferenceServerClient(server.grpc) as client,
    ):

        def post(x: np.ndarray) -> np.ndarray:
            tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer("digits", [tensor])
            return result.as_numpy("logits")

        live = Live(http, "digits", "1")
        live.send(post, batches)
        text = live.text()
        stored = http.get("/v2/models/digits/parity").json()["live"]
    labels = {"model": "digits", "version": "1"}
    assert value(text, "bnfold_shadow_samples_total", **labels) == REQUESTS
    assert value(text, "bnfold_shadow_top1_agreement", **labels) == 1.0
    assert value(text, "bnfold_shadow_max_rel_error", **labels) <= 1e-5  # the fold's rtol
    assert value(text, "bnfold_shadow_below_gate", **labels) == 0.0
    assert stored["reference"] == "reference.onnx" and stored["passed"] is True
    assert stored["rtol"] == 1e-5 and stored["min_top1"] == 1.0


def perturbed(reference: bytes, seed: int = 0) -> bytes:
    """``reference`` with noise on every matrix: a reference that diverges."""
    model = onnx.load_from_string(reference)
    rng = np.random.default_rng(seed)
    for i, tensor in enumerate(model.graph.initializer):
        w = numpy_helper.to_array(tensor)
        if w.ndim == 2 and w.dtype == np.float32:
            noisy = w + rng.normal(0, 2 * float(w.std()) + 1e-3, w.shape).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    return model.SerializeToString()


def test_a_diverging_reference_is_flagged_and_keeps_serving(mlp: Converted, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    config = json.loads((mlp.version_dir.parent / "config.json").read_text())
    write_version(
        repo,
        "drift",
        model_onnx=(mlp.version_dir / "model.onnx").read_bytes(),
        reference_onnx=perturbed((mlp.version_dir / "reference.onnx").read_bytes()),
        manifest=mlp.manifest,
        config={**config, "name": "drift"},
        version=1,
    )
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((4, 64)).astype(np.float32) for _ in range(MIN_ROWS // 4)]
    with (
        run_server(base_settings(repo, shadow_parity=1.0)) as server,
        warnings_of_the_server() as logged,  # after create_app has set its handler
        httpx.Client(base_url=server.url) as http,
    ):
        live = Live(http, "drift", "1")
        live.send(http_post(http, "/v2/models/drift/infer"), batches)
        text = live.text()
        (row,) = http.post("/v2/repository/index", headers=AUTH).json()
        ready = http.get("/v2/models/drift/versions/1/ready")
        still = http_post(http, "/v2/models/drift/infer")(batches[0])
        stored = http.get("/v2/models/drift/parity").json()["live"]
    labels = {"model": "drift", "version": "1"}
    agreement = value(text, "bnfold_shadow_top1_agreement", **labels)
    assert agreement < 1.0 and value(text, "bnfold_shadow_below_gate", **labels) == 1.0
    # flagged in the version's readiness details, still READY and serving
    assert row["state"] == "READY" and ready.status_code == 200 and still.shape == (4, 10)
    flag = (
        f"live parity below its gate: top-1 agreement {agreement:.4f} < 1 over {MIN_ROWS} "
        f"rows of {len(batches)} sampled requests (shadow parity)"
    )
    assert flag in row["reason"]
    assert [line for line in logged if "live parity below its gate" in line] == [
        f"drift/1: {flag}; it keeps serving"
    ]
    assert stored["below_gate"] is True and stored["passed"] is False


def test_a_version_folded_on_load_is_compared_with_its_original_graph(tmp_path: Path) -> None:
    write_bare(tmp_path, "resnet", 1, resnet_block(11))  # BNs kept, no manifest
    write_bare(tmp_path, "plain", 1, tiny_gemm())  # no BN, served as it is: no reference
    settings = base_settings(tmp_path, fold_on_load=True, shadow_parity=1.0)
    with run_server(settings) as server, httpx.Client(base_url=server.url) as http:
        live = Live(http, "resnet", "1")
        post = http_post(http, "/v2/models/resnet/infer", "x")
        rng = np.random.default_rng(3)
        live.send(post, [rng.standard_normal((5, 4, 8, 8)).astype(np.float32) for _ in range(4)])
        text = live.text()
        stored = http.get("/v2/models/resnet/parity").json()["live"]
        http_post(http, "/v2/models/plain/infer", "x")(np.zeros((1, 3), np.float32))
        plain = http.get("/v2/models/plain/parity").json()
        text_after = live.text()
    labels = {"model": "resnet", "version": "1"}
    assert value(text, "bnfold_shadow_samples_total", **labels) == 4
    assert value(text, "bnfold_shadow_top1_agreement", **labels) == 1.0
    assert value(text, "bnfold_shadow_max_rel_error", **labels) <= 1e-5
    assert stored["reference"] == "original graph (fold on load, in memory)"
    assert stored["n_samples"] == 20 and "passed" not in stored  # under MIN_ROWS: no verdict
    # a version with nothing to compare with is not sampled: no live numbers, no series
    assert "live" not in plain
    assert series(text_after, "bnfold_shadow_samples_total", model="plain") == []


# --- the queue and the worker, without a server ---------------------------------------


def tiny_gemm() -> bytes:
    """y = x @ W, x (n, 3), y (n, 4)."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_full_queue_drops_samples_and_counts_them() -> None:
    graph = tiny_gemm()
    metrics = Metrics()
    shadow = Shadow(1.0, metrics, queue_size=2)  # its worker not started yet
    live = LiveParity(shadow, "tiny", "1", Gate(1e-5, 1.0), lambda: (graph, "tiny graph"))
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    for _ in range(5):
        live.offer({"x": x}, {"y": y}, 2)
    text = metrics.render().decode()
    labels = {"model": "tiny", "version": "1"}
    assert value(text, "bnfold_shadow_dropped_total", **labels, reason="queue_full") == 3
    assert value(text, "bnfold_shadow_samples_total", **labels) == 0
    shadow.start()
    try:
        wait_until(shadow.idle, "the queued samples compared")
    finally:
        shadow.close()
    text = metrics.render().decode()
    assert value(text, "bnfold_shadow_samples_total", **labels) == 2
    assert value(text, "bnfold_shadow_rows_total", **labels) == 4
    assert value(text, "bnfold_shadow_top1_agreement", **labels) == 1.0
    assert value(text, "bnfold_shadow_max_abs_error", **labels) == 0.0
    assert live.to_dict()["dropped"] == {"queue_full": 3}
    assert live.reference_what == "tiny graph"


def test_rate_zero_samples_nothing() -> None:
    metrics = Metrics()
    shadow = Shadow(0.0, metrics, queue_size=2)
    live = LiveParity(shadow, "tiny", "1", Gate(1e-5, 1.0), lambda: (tiny_gemm(), "tiny graph"))
    x = np.zeros((1, 3), np.float32)
    for _ in range(10):
        live.offer({"x": x}, {"y": np.zeros((1, 4), np.float32)}, 1)
    assert shadow.idle() and live.to_dict()["dropped"] == {}
