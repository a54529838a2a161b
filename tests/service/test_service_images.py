"""/classify takes images as people have them.

Digits drawn black on white, white on black and on a transparent background
(rendered with PIL from three DejaVu fonts, or PIL's default font where
DejaVu is not installed; two sizes, two positions on a 96x96 canvas: 360
renderings) are classified by the digits MLP the converter writes (raw ink
counts 0..16 in) at least as well as the same digits prepared the way
scikit-learn's were, knowing how each was drawn (NIST: the ink's box scaled
to fill a 32x32 bitmap, centred, counted in 4x4 blocks). Measured with the
3-epoch MLP of this test (full digits, test accuracy 0.95): /classify 240 of
360 correct; the same digits sklearn-style 240 of 360 (the same input for
every rendering); a plain resize of the upload, as /classify did before,
36 of 360. Font digits are not handwriting: the data set's own test split
scores 0.95 on the same model.

Also: alpha, inversion, crop-center and NHWC layouts in units, and a
preprocessing that does not fit the graph refused at load.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw, ImageFont
from served_models import config, manifest, mlp, nhwc_gemm
from service_harness import TOKEN, base_settings, run_server

from bnfold.contract import Preprocessing
from bnfold.converter.repository import write_version
from bnfold.service import images
from bnfold.service.signature import Signature, TensorSpec

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = [FONT_DIR / f for f in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf")]
SIZES = (40, 64)  # pixels per em, on a 96 x 96 canvas
POSITIONS = ((10, 5), (30, 20))
STYLES = ("black-on-white", "white-on-black", "black-on-transparent")
DIGITS_PREP = Preprocessing(
    layout="NC",
    input_shape=[64],
    pixel_scale=16.0,
    mean=[0.3],
    std=[0.38],
    normalized=False,
    input_range=[0.0, 16.0],
    background="dark",
    fit="crop-center",
)


def fonts() -> list[Any]:
    present = [ImageFont.truetype(str(f), 10) for f in FONTS if f.is_file()]
    return present or [ImageFont.load_default(size=10)]


def render(digit: int, font: Any, size: int, pos: tuple[int, int], style: str) -> Image.Image:
    face = font.font_variant(size=size)
    if style == "black-on-transparent":
        image = Image.new("LA", (96, 96), (255, 0))
        ImageDraw.Draw(image).text(pos, str(digit), font=face, fill=(0, 255))
        return image
    ink, paper = (0, 255) if style == "black-on-white" else (255, 0)
    image = Image.new("L", (96, 96), paper)
    ImageDraw.Draw(image).text(pos, str(digit), font=face, fill=ink)
    return image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sklearn_style(image: Image.Image, style: str) -> np.ndarray:
    """How the digits data set was made, knowing how the digit was drawn:
    ink as 0/1, its box scaled to 32 pixels on the longer side, centred in a
    32x32 bitmap, counted in 4x4 blocks (0..16)."""
    if style == "black-on-transparent":
        ink = np.asarray(image, dtype=np.float32)[..., 1] / 255
    else:
        lum = np.asarray(image.convert("L"), dtype=np.float32) / 255
        ink = 1 - lum if style == "black-on-white" else lum
    rows, cols = np.flatnonzero((ink > 0.5).any(1)), np.flatnonzero((ink > 0.5).any(0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = 32 / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    bits = np.asarray(Image.fromarray(crop, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    frame = np.zeros((32, 32), dtype=np.float32)
    top, left = (32 - h) // 2, (32 - w) // 2
    frame[top : top + h, left : left + w] = bits > 0.5
    return frame.reshape(8, 4, 8, 4).sum(axis=(1, 3)).reshape(1, 64)


Classify = Callable[[bytes, dict[str, str]], int]


def figures(classify: Classify, infer: Callable[[np.ndarray], int]) -> dict[str, int]:
    """Correct answers out of every rendering: /classify as it is, the same
    digits prepared sklearn-style, and a plain resize (no inversion, no crop)."""
    counts = {"total": 0, "classify": 0, "sklearn_style": 0, "resize": 0}
    for font in fonts():
        for digit in range(10):
            for size in SIZES:
                for pos in POSITIONS:
                    for style in STYLES:
                        image = render(digit, font, size, pos, style)
                        data = png(image)
                        counts["total"] += 1
                        counts["classify"] += classify(data, {}) == digit
                        counts["resize"] += (
                            classify(data, {"fit": "resize", "invert": "false"}) == digit
                        )
                        counts["sklearn_style"] += infer(sklearn_style(image, style)) == digit
    return counts


# --------------------------------------------------------------------------- units


def pixels_of(image: Image.Image, prep: Preprocessing = DIGITS_PREP, **kw: Any) -> np.ndarray:
    return images.image_input(png(image), prep, max_pixels=10**7, **kw)


def test_classify_prepares_every_drawing_as_the_data_set_was_prepared() -> None:
    same = 0
    renderings = [(d, s) for d in range(10) for s in STYLES]
    for digit, style in renderings:
        image = render(digit, fonts()[0], 64, (30, 20), style)
        same += bool(np.abs(pixels_of(image) - sklearn_style(image, style)).max() < 1e-4)
    assert same == len(renderings)


def test_every_drawing_of_a_digit_becomes_the_same_input() -> None:
    font = fonts()[0]
    drawn = {s: pixels_of(render(3, font, 64, (10, 5), s)) for s in STYLES}
    assert drawn["black-on-white"].shape == (1, 64)
    for style in STYLES[1:]:
        np.testing.assert_allclose(drawn[style], drawn["black-on-white"], atol=0.2)
    counts = drawn["white-on-black"].reshape(8, 8)
    assert counts.min() == 0.0 and 12 <= counts.max() <= 16.0  # the model's 0..16, not 0..1
    assert (counts[0] > 0).any() and (counts[7] > 0).any()  # fills the height, as digits do
    # the same digit smaller and elsewhere on a larger canvas: the crop finds it
    small = Image.new("L", (200, 150), 255)
    ImageDraw.Draw(small).text((140, 90), "3", font=font.font_variant(size=30), fill=0)
    found = pixels_of(small).reshape(8, 8)
    assert (found[0] > 0).any() and (found[7] > 0).any()
    assert np.corrcoef(found.ravel(), counts.ravel())[0, 1] > 0.9
    # fit=resize and invert=false: the upload as it is, stretched
    plain = pixels_of(render(3, font, 64, (10, 5), "black-on-white"), fit="resize", invert="false")
    assert plain.reshape(8, 8)[0, 0] == pytest.approx(16.0)  # white paper = full ink


def test_decoded_size_is_bounded_from_the_header() -> None:
    """width x height x 16 bytes (float32 RGBA) against ``max_bytes``, before decoding:
    a header whose pixel data is cut off is refused for its size, not its damage."""
    data = png(Image.new("L", (300, 300)))
    assert images.decoded_bytes(300, 300) == 300 * 300 * 16
    assert images.decode(data, max_pixels=10**6, max_bytes=300 * 300 * 16).size == (300, 300)
    for upload in (data, data[:60]):
        with pytest.raises(images.PayloadTooLarge, match="1440000 bytes once decoded"):
            images.decode(upload, max_pixels=10**6, max_bytes=300 * 300 * 16 - 1)
    with pytest.raises(images.BadRequest, match="not a readable PNG"):
        images.decode(data[:60], max_pixels=10**6, max_bytes=1 << 30)


def test_invert_follows_the_border_and_the_models_background() -> None:
    light = Image.new("L", (16, 16), 230)
    dark = Image.new("L", (16, 16), 20)
    x = np.asarray(light, dtype=np.float32)[..., None] / 255
    assert images.should_invert(x, DIGITS_PREP, "auto")
    assert not images.should_invert(
        np.asarray(dark, np.float32)[..., None] / 255, DIGITS_PREP, "auto"
    )
    assert not images.should_invert(x, DIGITS_PREP, "false")
    unknown = Preprocessing(layout="NC", input_shape=[64])  # no background: auto never inverts
    assert not images.should_invert(x, unknown, "auto") and images.should_invert(x, unknown, "true")
    paper = Preprocessing(layout="NC", input_shape=[64], background="light")
    assert not images.should_invert(x, paper, "auto")


def test_layouts_and_value_ranges() -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # red
    image = Image.fromarray(rgb, mode="RGB")
    nhwc = Preprocessing(
        layout="NHWC", input_shape=[4, 6, 3], color="rgb", normalized=False,
        input_range=[0.0, 255.0],
    )  # fmt: skip
    x = pixels_of(image, nhwc)
    assert x.shape == (1, 4, 6, 3) and x[..., 0].min() == 255.0 and x[..., 1:].max() == 0.0
    nchw = Preprocessing(layout="NCHW", input_shape=[3, 4, 6], color="rgb", mean=[0.5], std=[0.5])
    x = pixels_of(image, nchw)  # normalised (the default): (v / 255 - 0.5) / 0.5
    assert x.shape == (1, 3, 4, 6) and x[0, 0].min() == 1.0 and x[0, 1].max() == -1.0


def signature(shape: tuple[int, ...], datatype: str = "FP32", batch: int = 64) -> Signature:
    return Signature(
        (TensorSpec("x", datatype, shape),), (TensorSpec("y", "FP32", (-1, 10)),), batch
    )


@pytest.mark.parametrize(
    ("prep", "sig", "problem"),
    [
        (DIGITS_PREP, signature((-1, 64)), None),
        (DIGITS_PREP, signature((1, 64), batch=0), None),
        (DIGITS_PREP, signature((-1, 1, 8, 8)), "makes [1, 64] but input 'x' takes [-1, 1, 8, 8]"),
        (DIGITS_PREP, signature((-1, 64), "INT64"), "makes floats but input 'x' is INT64"),
        (
            Preprocessing(layout="NHWC", input_shape=[32, 32, 3], color="rgb"),
            signature((-1, 3, 32, 32)),
            "makes [1, 32, 32, 3] but input 'x' takes [-1, 3, 32, 32]",
        ),
    ],
)
def test_preprocessing_that_does_not_fit_the_graph(
    prep: Preprocessing, sig: Signature, problem: str | None
) -> None:
    found = images.preprocessing_problem(prep, sig)
    assert found == problem if problem is None else problem in (found or "")


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, converted: Any
) -> Iterator[tuple[httpx.Client, Path]]:
    repo = tmp_path_factory.mktemp("images")
    converted("mlp", epochs=3).write(repo, "digits")
    folded, reference = mlp(0)
    bad = {"layout": "NCHW", "input_shape": [1, 8, 8], "color": "grayscale"}
    write_version(
        repo, "misfit", model_onnx=folded, reference_onnx=reference,
        manifest=manifest(folded, reference, [64], "mlp"),
        config=config("misfit", "input", [64], preprocessing=bad),
    )  # fmt: skip
    keras = nhwc_gemm(5, "nhwc")
    prep = {"layout": "NHWC", "input_shape": [8, 8, 3], "color": "rgb", "normalized": False}
    write_version(
        repo, "keras", model_onnx=keras, reference_onnx=keras,
        manifest=manifest(keras, keras, [8, 8, 3], "keras"),
        config=config("keras", "pixels", [8, 8, 3], preprocessing=prep),
    )  # fmt: skip
    with run_server(base_settings(repo)) as server, httpx.Client(base_url=server.url) as http:
        yield http, repo


def test_a_misfit_preprocessing_is_refused_at_load(served: tuple[httpx.Client, Path]) -> None:
    http, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    index = {m["name"]: m for m in http.post("/v2/repository/index", headers=auth).json()}
    assert index["misfit"]["state"] == "UNAVAILABLE"
    reason = index["misfit"]["reason"]
    assert (
        "config.json preprocessing (layout NCHW, input_shape [1, 8, 8]) makes [1, 1, 8, 8] "
        "but input 'input' takes [-1, 64]" in reason
    )
    assert http.get("/v2/models/misfit/ready").status_code != 200
    assert index["digits"]["state"] == index["keras"]["state"] == "READY"


def test_nhwc_model_gets_channels_last_pixels(served: tuple[httpx.Client, Path]) -> None:
    http, repo = served
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    r = http.post(
        "/v2/models/keras/classify?top_k=10", files={"file": ("k.png", png(Image.fromarray(rgb)))}
    )
    assert r.status_code == 200, r.text
    session = ort.InferenceSession(
        str(repo / "keras/1/model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(None, {"pixels": rgb[None].astype(np.float32)})[0][0]
    assert [p["index"] for p in r.json()["predictions"]] == np.argsort(-logits).tolist()


def test_classify_form_and_query_parameters(served: tuple[httpx.Client, Path]) -> None:
    http, _ = served
    image = png(render(7, fonts()[0], 64, (10, 5), "black-on-white"))
    files = {"file": ("d.png", image)}
    auto = http.post("/v2/models/digits/classify?top_k=10", files=files).json()
    as_form = http.post(
        "/v2/models/digits/classify?top_k=10",
        files=files,
        data={"invert": "auto", "fit": "crop-center"},
    ).json()
    assert auto["predictions"] == as_form["predictions"]
    raw = http.post("/v2/models/digits/classify?top_k=10&invert=false", files=files).json()
    assert raw["predictions"] != auto["predictions"]
    r = http.post("/v2/models/digits/classify?invert=maybe", files=files)
    assert r.status_code == 400 and "invert" in r.json()["error"]


def test_rendered_digits_do_as_well_as_the_data_sets_preprocessing(
    served: tuple[httpx.Client, Path],
) -> None:
    http, repo = served
    session = ort.InferenceSession(
        str(repo / "digits/1/model.onnx"), providers=["CPUExecutionProvider"]
    )

    def classify(data: bytes, params: dict[str, str]) -> int:
        r = http.post(
            "/v2/models/digits/classify",
            params={"top_k": 1, **params},
            files={"file": ("d.png", data)},
        )
        assert r.status_code == 200, r.text
        return int(r.json()["predictions"][0]["index"])

    def infer(counts: np.ndarray) -> int:
        return int(session.run(None, {"input": counts.astype(np.float32)})[0].argmax())

    got = figures(classify, infer)
    print(got)
    total = got["total"]
    assert total == len(fonts()) * 10 * len(SIZES) * len(POSITIONS) * len(STYLES)
    assert got["classify"] >= got["sklearn_style"]
    assert got["classify"] >= 2 * got["resize"]
    assert got["classify"] >= math.ceil(0.5 * total)
