"""The web page in a real browser: headless Chromium on the real server.

Every wait is for something to appear in the page (WebDriverWait, 60 s
guards for a loaded machine); nothing is decided by a sleep. Each test ends
by checking, through the browser's own network log, that the page asked
nothing of any other origin.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import browser as web
import httpx
import pytest
from browser import css, requests_made, value, wait
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from service_harness import TOKEN, RunningServer


def visit(driver: Any, server: RunningServer, path: str) -> None:
    web.visit(driver, server.url, path)


def assert_only_this_server(driver: Any, server: RunningServer) -> list[str]:
    return web.assert_only_this_server(driver, server.url)


def test_the_page_lists_the_models(page: Any, server: RunningServer) -> None:
    visit(page, server, "/")
    models = {m.get_attribute("data-model"): m for m in css(page, "#models li.model")}
    assert set(models) == {"bare", "broken", "digits", "fold-demo", "tabular", "twice"}
    broken = models["broken"].find_element(By.CSS_SELECTOR, "li[data-version='1']")
    assert broken.get_attribute("data-state") == "UNAVAILABLE"
    assert "needs the API token" in broken.text  # the token is set: no reason without it
    digits = models["digits"].find_element(By.CSS_SELECTOR, "li[data-version='1']")
    assert "READY" in digits.text and "CPU" in digits.text
    # the root shows the first serving model
    wait(page).until(EC.text_to_be_present_in_element((By.ID, "model-title"), "bare"))
    assert "#/m/bare/1" in page.current_url
    server_line = page.find_element(By.ID, "server").text
    assert "bnfold" in server_line and "6 ready" in server_line
    assert_only_this_server(page, server)


def test_every_served_version_has_its_page(
    page: Any, server: RunningServer, http: httpx.Client
) -> None:
    visit(page, server, "/#/m/twice/1")
    twice = page.find_element(By.CSS_SELECTOR, "li.model[data-model='twice']")
    versions = twice.find_elements(By.CSS_SELECTOR, "li[data-version]")
    assert [(v.get_attribute("data-version"), v.get_attribute("data-state")) for v in versions] == [
        ("1", "READY"),
        ("2", "READY"),
    ]
    wait(page).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#parity-table td.rel")))
    tabs = css(page, ".tabs a")
    assert [t.text for t in tabs] == ["v1", "v2"]
    tabs[1].click()
    wait(page).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".tab.on"), "v2"))
    want = http.get("/v2/models/twice/versions/2/parity").json()["parity"]["max_rel_error"]
    rel = (By.CSS_SELECTOR, "#parity-table tr.stored td.rel")
    wait(page).until(lambda d: value(d.find_element(*rel)) == pytest.approx(want, rel=1e-12))
    assert "#/m/twice/2" in page.current_url
    assert_only_this_server(page, server)


def test_the_token_field_shows_why_a_version_does_not_serve(
    page: Any, server: RunningServer
) -> None:
    visit(page, server, "/")
    page.find_element(By.ID, "token").send_keys(TOKEN)
    page.find_element(By.CSS_SELECTOR, "#token-form button").click()
    reason = (By.CSS_SELECTOR, "li.model[data-model='broken'] p.reason")
    wait(page).until(EC.text_to_be_present_in_element(reason, "sha256"))
    assert "token accepted" in page.find_element(By.ID, "token-note").text.lower()
    assert page.execute_script("return sessionStorage.getItem('bnfold.token')") == TOKEN
    page.execute_script("sessionStorage.clear()")
    assert_only_this_server(page, server)


def test_the_fold_picture_and_the_parity_table(
    page: Any, server: RunningServer, http: httpx.Client
) -> None:
    stored = http.get("/v2/models/fold-demo/versions/1/parity").json()
    report = stored["folding"]["report"]
    visit(page, server, "/#/m/fold-demo/1")
    wait(page).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".foldsvg .layer")))

    layers = css(page, ".foldsvg .layer")
    assert [g.get_attribute("data-op") for g in layers] == [
        "BatchNormalization",
        "Conv",
        "BatchNormalization",
        "Relu",
        "MaxPool",
        "BatchNormalization",
        "Flatten",
        "Gemm",
        "Relu",
        "BatchNormalization",
    ]
    status = {g.get_attribute("data-name"): g.get_attribute("data-status") for g in layers}
    assert {b["name"]: b["status"] for b in report["bns"]} == {
        "input_bn": "partial",
        "conv_bn": "folded",
        "pool_bn": "folded",
        "out_bn": "kept",
    }
    for bn in report["bns"]:
        assert status[bn["name"]] == bn["status"]
    arcs = {(a.get_attribute("data-from"), a.get_attribute("data-to")) for a in css(page, ".arc")}
    assert arcs == {("input_bn", "conv"), ("conv_bn", "conv"), ("pool_bn", "dense")}
    absorbed = {g.get_attribute("data-name") for g in css(page, ".foldsvg .layer.target")}
    assert absorbed == {"conv", "dense"}
    kept = page.find_element(By.CSS_SELECTOR, ".foldsvg .layer[data-name='out_bn']")
    assert "graph output" in kept.text  # why it stayed, in the picture
    partial = page.find_element(By.CSS_SELECTOR, ".foldsvg .layer[data-name='input_bn']")
    assert "input_bn__residual" in partial.text  # what it left

    bn_count = page.find_element(By.ID, "bn-count")
    assert value(bn_count.find_element(By.CSS_SELECTOR, ".before")) == report["bn_before"] == 4
    assert value(bn_count.find_element(By.CSS_SELECTOR, ".after")) == report["bn_after"] == 1
    assert bn_count.find_element(By.CSS_SELECTOR, ".after").text == "1"
    # the fold report's one summary, as bnfold fold, import and /parity give it
    summary = stored["folding"]["summary"]
    ops_left = page.find_element(By.CSS_SELECTOR, "#ops-left b")
    assert value(ops_left) == summary["ops_left"] == report["residual_ops"] == 2
    assert page.find_element(By.ID, "fold-summary").text == (
        "4 BNs: 2 folded, 1 partial, 1 kept; 2 ops left by BNs"
    )

    rows = css(page, "#parity-table tbody tr.stored")
    assert len(rows) == 1
    assert rows[0].find_element(By.TAG_NAME, "th").text == "reference.onnx vs model.onnx"
    parity = stored["parity"]
    rel = rows[0].find_element(By.CSS_SELECTOR, "td.rel")
    assert value(rel) == pytest.approx(parity["max_rel_error"], rel=1e-12)
    assert float(rel.text.replace("−", "-")) == pytest.approx(parity["max_rel_error"], rel=1e-2)
    assert rows[0].find_element(By.CSS_SELECTOR, "td.top1").text == "100%"
    assert "pass" in rows[0].text

    page.find_element(By.ID, "recompute").click()
    now = (By.CSS_SELECTOR, "#parity-table tbody tr.now")
    wait(page).until(EC.presence_of_element_located(now))
    row = page.find_element(*now)
    assert "CPU" in row.text and "pass" in row.text
    assert value(row.find_element(By.CSS_SELECTOR, "td.n")) == 256
    assert value(row.find_element(By.CSS_SELECTOR, "td.rel")) <= 1e-5
    assert_only_this_server(page, server)


def test_a_model_folded_on_load_is_drawn_from_its_original_graph(
    page: Any, server: RunningServer
) -> None:
    visit(page, server, "/#/m/bare/1")
    wait(page).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".foldsvg .layer")))
    assert "Folded when the server loaded it: serving the folded graph" in (
        page.find_element(By.ID, "fold").text
    )
    bn = page.find_element(By.CSS_SELECTOR, ".foldsvg .layer[data-op='BatchNormalization']")
    assert bn.get_attribute("data-status") == "folded"
    assert [a.get_attribute("data-to") for a in css(page, ".arc")] == ["Gemm_0"]
    rows = css(page, "#parity-table tbody tr.stored")
    assert len(rows) == 1 and "at load" in rows[0].text and "pass" in rows[0].text
    assert_only_this_server(page, server)


def test_drawing_a_digit_and_classifying_it(
    page: Any, server: RunningServer, http: httpx.Client
) -> None:
    visit(page, server, "/#/m/digits/1")
    canvas = wait(page).until(EC.visibility_of_element_located((By.ID, "pad")))
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    # a "7": across the top, then down to the left, in synthetic mouse events
    chain = ActionChains(page, duration=20)
    chain.move_to_element_with_offset(canvas, -70, -80).click_and_hold()
    for dx, dy in [(35, 0)] * 4 + [(-12, 30)] * 6:
        chain.move_by_offset(dx, dy)
    chain.release().perform()
    ink = page.execute_script(
        "const c = document.getElementById('pad');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 128) n++; return n;"
    )
    assert ink > 2000, "the strokes did not reach the canvas"

    page.find_element(By.ID, "classify").click()
    shown = wait(page).until(EC.visibility_of_element_located((By.ID, "prediction")))
    bars = css(page, "#prediction-panel .bars li")
    assert len(bars) == 3  # top 3, the default

    # the page shows what the server answers for the very image it drew
    png = page.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    image = base64.b64decode(png.split(",", 1)[1])
    answer = http.post(
        "/v2/models/digits/versions/1/classify?top_k=3", files={"file": ("d.png", image)}
    ).json()
    assert shown.text == answer["predictions"][0]["label"]
    assert [b.get_attribute("data-label") for b in bars] == [
        p["label"] for p in answer["predictions"]
    ]
    assert_only_this_server(page, server)


def test_a_model_without_preprocessing_gets_a_v2_request_form(
    page: Any, server: RunningServer, http: httpx.Client
) -> None:
    visit(page, server, "/#/m/tabular/1")
    editor = wait(page).until(EC.visibility_of_element_located((By.ID, "v2-request")))
    assert not css(page, "#pad")  # no canvas: the model takes no image
    request = json.loads(editor.get_attribute("value"))
    assert request["inputs"][0]["shape"] == [1, 64]
    assert request["inputs"][0]["data"] == [0] * 64
    page.find_element(By.ID, "send-v2").click()
    out = (By.CSS_SELECTOR, "#v2-response pre")
    wait(page).until(EC.text_to_be_present_in_element(out, '"logits"'))
    expected = http.post("/v2/models/tabular/versions/1/infer", json=request).json()
    shown = json.loads(page.find_element(*out).text)
    assert shown["outputs"][0]["data"] == pytest.approx(expected["outputs"][0]["data"])
    assert page.find_element(By.ID, "prediction").text  # a classifier: its top label too
    assert_only_this_server(page, server)


def test_training_curves_and_bn_health(page: Any, server: RunningServer) -> None:
    visit(page, server, "/#/m/digits/1")
    wait(page).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#curves svg")))
    assert len(css(page, "#curves polyline")) == 4  # train and val, loss and accuracy
    health = page.find_element(By.ID, "health")
    assert "healthy" in health.text
    (layer,) = health.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert layer.find_element(By.TAG_NAME, "th").text == "BN 1 module 1"
    assert "94.00%" in page.find_element(By.ID, "training").text

    # issue 20: a version that was not trained here has no Training card
    visit(page, server, "/#/m/fold-demo/1")
    wait(page).until(EC.presence_of_element_located((By.ID, "source")))
    assert not css(page, "#training")
    assert "No BN health check" in page.find_element(By.ID, "health").text
    assert_only_this_server(page, server)


def test_swagger_ui_renders_its_operations_offline(page: Any, server: RunningServer) -> None:
    page.get("about:blank")
    requests_made(page)
    page.get(f"{server.url}/docs")
    wait(page).until(lambda d: len(css(d, ".opblock")) >= 10)
    paths = {e.text for e in css(page, ".opblock-summary-path")}
    assert "/v2/models/{name}/infer" in {p.replace("\u200b", "") for p in paths}
    urls = assert_only_this_server(page, server)
    assert f"{server.url}/openapi.json" in urls


def test_redoc_renders_offline(page: Any, server: RunningServer) -> None:
    page.get("about:blank")
    requests_made(page)
    page.get(f"{server.url}/redoc")
    wait(page).until(lambda d: len(css(d, "[data-section-id^='operation/']")) >= 10)
    assert "bnfold" in page.find_element(By.CSS_SELECTOR, "h1").text
    urls = assert_only_this_server(page, server)
    assert f"{server.url}/web/vendor/redoc.standalone.js" in urls
