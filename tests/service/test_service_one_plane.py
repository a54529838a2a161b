"""The V1 predict and classify routes run through the data plane's one
``run`` (service/dataplane.py), as V2 infer does: a client that goes away
while its request is queued cancels it, and shadow parity samples them.

Cancellation is counted, never timed (as in test_service_observability.py):
requests wait in a model whose batch window (60 s, 4 rows) holds them until
a fourth row arrives; the test waits for the queue-depth gauge, drops the
clients' connections, waits for the gauge to fall, then fills one batch and
reads how many rows and batches ran.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_text import QueueGauges, metric
from served_models import ModelInfo, write_mlp
from service_harness import WAIT_S, base_settings, rows, run_server, wait_until

WINDOW = "window"
INFO = ModelInfo(WINDOW, "input", (64,))
LABELS = {"model": WINDOW, "version": "1"}


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def v1(x: np.ndarray) -> dict[str, Any]:
    return {"instances": x.tolist()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("one-plane")
    write_mlp(path, WINDOW, max_batch_size=4, delay_ms=60_000.0, queue=16, eager=False)
    write_mlp(path, "mlp", seed=1)
    return path


def test_clients_that_go_away_cancel_their_queued_v1_and_classify_requests(repo: Path) -> None:
    settings = base_settings(repo, request_timeout_s=WAIT_S * 2, shadow_parity=0.0)
    with run_server(settings) as server:

        async def main() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
                gauges = QueueGauges(http, LABELS, WAIT_S)

                clients = [httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) for _ in range(3)]
                sent = [
                    asyncio.ensure_future(
                        clients[i].post(f"/v1/models/{WINDOW}:predict", json=v1(rows(INFO, 1, i)))
                    )
                    for i in range(2)
                ]
                sent.append(
                    asyncio.ensure_future(
                        clients[2].post(
                            f"/v2/models/{WINDOW}/classify?fit=resize&invert=false",
                            files={"file": ("d.png", png(0))},
                        )
                    )
                )
                await gauges.wait((3, 3))
                for task in sent:
                    task.cancel()  # httpx drops the connection: the server sees it close
                for c in clients:
                    await c.aclose()
                await gauges.wait((0, 0))

                text = (await http.get("/metrics")).text
                got = metric(
                    text,
                    "bnfold_requests_cancelled_total",
                    **LABELS,
                    protocol="http",
                    stage="queued",
                )
                assert got == 3
                for route, n in (
                    ("/v1/models/{name}:predict", 2),
                    ("/v2/models/{name}/classify", 1),
                ):
                    closed = {"method": "POST", "route": route, "status": "499"}
                    assert metric(text, "bnfold_http_requests_total", **closed) == n, route

                # nothing has run; four rows fill one batch, which runs alone
                stats = (await http.get(f"/v2/models/{WINDOW}/stats")).json()
                assert stats["model_stats"][0]["execution_count"] == 0
                r = await http.post(f"/v1/models/{WINDOW}:predict", json=v1(rows(INFO, 4, 7)))
                assert r.status_code == 200, r.text
                assert np.array(r.json()["predictions"]).shape == (4, 10)
                model = (await http.get(f"/v2/models/{WINDOW}/stats")).json()["model_stats"][0]
                assert (model["inference_count"], model["execution_count"]) == (4, 1)
                assert await gauges.read() == (0, 0)

        asyncio.run(main())


def test_shadow_parity_samples_v1_predict_and_classify(repo: Path) -> None:
    """At rate 1 every answered V1 and classify request is compared with
    the version's reference.onnx: 3 predicts of 2 rows and 2 images."""
    settings = base_settings(repo, shadow_parity=1.0)
    info = ModelInfo("mlp", "input", (64,))
    with run_server(settings) as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        for i in range(3):
            r = http.post("/v1/models/mlp:predict", json=v1(rows(info, 2, i)))
            assert r.status_code == 200, r.text
        for i in range(2):
            r = http.post(
                "/v2/models/mlp/classify?fit=resize&invert=false",
                files={"file": ("d.png", png(i))},
            )
            assert r.status_code == 200, r.text

        def live() -> dict[str, Any]:
            return http.get("/v2/models/mlp/parity").json()["live"]

        wait_until(lambda: live()["requests"] == 5, "5 requests compared")
        numbers = live()
        assert numbers["n_samples"] == 3 * 2 + 2
        assert numbers["dropped"] == {}
        assert numbers["reference"] == "reference.onnx"
        assert numbers["max_rel_error"] <= numbers["rtol"]
