"""Take docs/images/web-model.png: the page of a model, in headless Chromium.

    .venv/bin/python tests/web/screenshot.py [OUT.png]

Builds the tests' ``fold-demo`` model (its four BNs end folded, partly
folded and kept) with a BN health report and training curves, serves it,
recomputes the parity on the server, draws a digit and classifies it, then
captures the whole page at 1400 px wide. The model is the tests' hand-built
graph with random weights (its prediction means nothing) and the BN health
and training numbers are the tests' fixtures: the picture shows the page,
not a trained network.
"""

from __future__ import annotations

import base64
import io
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "service"), str(HERE.parent)]

from browser import chrome  # noqa: E402
from PIL import Image  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from served_models import CNN_PREP  # noqa: E402
from service_harness import base_settings, run_server  # noqa: E402
from web_models import BN_HEALTH, HISTORY, fold_demo, write_folded  # noqa: E402

OUT = HERE.parents[1] / "docs" / "images" / "web-model.png"


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        health = BN_HEALTH | {"n_bn": 4}
        health["layers"] = [
            dict(BN_HEALTH["layers"][0], name=n, mean_shift=s)
            for n, s in [("input_bn", 0.04), ("conv_bn", 0.17), ("pool_bn", 0.31), ("out_bn", 0.12)]
        ]
        extra = {
            "folding": {"bn_health": health},
            "metrics": {"test_accuracy": 0.94, "val_accuracy": 0.9, "history": HISTORY},
            "training": {"epochs": 3, "batch_size": 32, "lr": 0.003, "seed": 0},
        }
        write_folded(repo, "fold-demo", fold_demo(), [1, 8, 8], preprocessing=CNN_PREP, extra=extra)
        with run_server(base_settings(repo, api_token=None)) as server:
            driver = chrome(1400, 1000)
            try:
                wait = WebDriverWait(driver, 60)
                driver.get(f"{server.url}/#/m/fold-demo/1")
                wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".foldsvg .layer")))
                driver.find_element(By.ID, "recompute").click()
                wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr.now")))
                canvas = driver.find_element(By.ID, "pad")
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
                chain = ActionChains(driver, duration=10)
                chain.move_to_element_with_offset(canvas, -60, -70).click_and_hold()
                for dx, dy in [(30, 0)] * 4 + [(-10, 26)] * 6:
                    chain.move_by_offset(dx, dy)
                chain.release().perform()
                driver.find_element(By.ID, "classify").click()
                wait.until(EC.visibility_of_element_located((By.ID, "prediction")))
                driver.execute_script("window.scrollTo(0, 0)")
                shot = driver.execute_cdp_cmd(
                    "Page.captureScreenshot", {"captureBeyondViewport": True, "format": "png"}
                )
            finally:
                driver.quit()
    # 256 colours, no dithering: the same picture in a third of the bytes
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, optimize=True
    )
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
