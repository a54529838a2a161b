"""Big image uploads (issue 19, item 5): decoding and converting run in a
worker thread, so other routes keep answering while a big image is being
prepared; an image whose decoded size (from its header, before a pixel is
decoded) is over ``max_image_bytes`` is a 413, even under the pixel limit.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from served_models import config, manifest, nhwc_gemm
from service_harness import WAIT_S, RunningServer, base_settings, run_server

from bnfold.converter.repository import write_version
from bnfold.service import images
from bnfold.service.images import MAX_BYTES

pytestmark = pytest.mark.timeout(600)

# Routes asked while a big upload's conversion is held (each three times).
HEALTH = ["/v2/health/live", "/v2/health/ready", "/v2/models/rgb/ready"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("images")
    graph = nhwc_gemm(0, "rgb")
    prep = {"layout": "NHWC", "input_shape": [8, 8, 3], "color": "rgb", "normalized": False}
    write_version(
        repo, "rgb", model_onnx=graph, reference_onnx=graph,
        manifest=manifest(graph, graph, [8, 8, 3], "rgb"),
        config=config("rgb", "pixels", [8, 8, 3], preprocessing=prep),
    )  # fmt: skip
    with run_server(base_settings(repo, max_body_bytes=64 << 20)) as running:
        yield running


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_other_routes_answer_while_a_big_image_is_prepared(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conversion of a big upload is held at a gate once its decode is
    done: health checks are answered while it is held (known to be in
    progress), and only then does it go on and answer. With the decode on
    the event loop the held conversion would hold every route: the health
    check would get no answer at all."""
    side = 3000  # 9 M pixels: 144 MB as float32 RGBA, under the default bound
    assert side * side * 16 <= MAX_BYTES
    # flat colour, half transparent: a small upload, the full cost of
    # compositing and converting
    data = png(Image.new("RGBA", (side, side), (10, 200, 30, 128)))
    decoding, release = threading.Event(), threading.Event()
    convert = images.pixels

    def held(image: Image.Image, color: str) -> np.ndarray:
        decoding.set()  # decoded, about to be converted
        assert release.wait(WAIT_S), "the test never let the conversion go on"
        return convert(image, color)

    monkeypatch.setattr(images, "pixels", held)
    result: dict[str, httpx.Response] = {}

    def upload() -> None:
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as c:
            result["r"] = c.post("/v2/models/rgb/classify", files={"file": ("big.png", data)})

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        assert decoding.wait(WAIT_S), "the upload never reached its conversion"
        with httpx.Client(base_url=server.url, timeout=WAIT_S / 4) as health:
            answers = [health.get(path).status_code for path in HEALTH * 3]
        assert not result, "the upload was answered while its conversion was held"
    finally:
        release.set()
        thread.join(WAIT_S)
    assert answers == [200] * len(HEALTH) * 3
    assert result["r"].status_code == 200, result["r"].text
    assert len(result["r"].json()["predictions"]) == 5


def test_an_image_too_big_once_decoded_is_refused_from_its_header(server: RunningServer) -> None:
    """5600x5600 is under the pixel limit (32 M) but 502 MB as float32 RGBA."""
    data = png(Image.new("L", (5600, 5600)))
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as c:
        r = c.post("/v2/models/rgb/classify", files={"file": ("huge.png", data)})
        assert r.status_code == 413, r.text
        assert r.json()["error"] == (
            f"image is 5600x5600: {5600 * 5600 * 16} bytes once decoded (float32 RGBA), "
            f"over the {MAX_BYTES}-byte limit"
        )
        # the header alone decides: the same header with its pixel data cut off
        r = c.post("/v2/models/rgb/classify", files={"file": ("cut.png", data[:200])})
        assert r.status_code == 413, r.text
        assert c.get("/v2/health/ready").status_code == 200
