"""The page tells the truth for every kind of version (issue 20): an imported
model, a ``convert_module`` model, a converted (trained) one, a bare Triton
model folded on load, and a Triton model whose weights are in external data,
each made by the real tool (kind_models.py) and shown in headless Chromium.

What is asserted is the text the page shows: the stored parity rows with
their labels and numbers, the one fold summary's op count (the same as
``bnfold fold``'s, ``bnfold import``'s and ``/parity``'s), which cards are
there, BN names that stay distinct when shortened, and notes broken only
between words.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import assert_only_this_server, css, value, visit, wait
from kind_models import EXTERNAL_BNS, Kinds, kinds_repo
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from service_harness import RunningServer, base_settings, run_server

pytestmark = pytest.mark.timeout(900)

SEPARATORS = "_./:-"  # where a name longer than a line may break


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, converted: Any) -> Kinds:
    pytest.importorskip("torch")
    return kinds_repo(tmp_path_factory.mktemp("kinds"), converted("mlp", epochs=1, limit=256))


@pytest.fixture(scope="module")
def kinds_server(kinds: Kinds) -> Iterator[RunningServer]:
    with run_server(base_settings(kinds.repo)) as running:
        yield running


@pytest.fixture(scope="module")
def kinds_http(kinds_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kinds_server.url, timeout=60) as client:
        yield client


def show(page: Any, server: RunningServer, name: str) -> None:
    visit(page, server.url, f"/#/m/{name}/1")
    wait(page).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#parity-table tbody tr")))


def stored_rows(page: Any) -> dict[str, Any]:
    return {r.find_element(By.TAG_NAME, "th").text: r for r in css(page, "#parity-table tr.stored")}


def assert_row(row: Any, parity: dict[str, Any]) -> None:
    """The numbers shown are the manifest's, never '–'."""
    assert value(row.find_element(By.CSS_SELECTOR, "td.n")) == parity["n_samples"]
    for cls, key in (("abs", "max_abs_error"), ("rel", "max_rel_error")):
        assert value(row.find_element(By.CSS_SELECTOR, f"td.{cls}")) == pytest.approx(
            parity[key], rel=1e-12, abs=1e-300
        )
    assert "–" not in row.text and "pass" in row.text


def card_ids(page: Any) -> set[str]:
    return {c.get_attribute("id") for c in css(page, "section.card")}


def ops_in(cli_output: str) -> int:
    """'N op(s) left by BNs' of a tool's summary lines (one count, however often said)."""
    (count,) = set(re.findall(r"; (\d+) ops? left by BNs", cli_output))
    return int(count)


def assert_names_distinct(page: Any) -> list[str]:
    """Each box's shown name is unique among the BNs, and its title holds the full name."""
    shown = []
    for g in css(page, ".foldsvg .layer[data-op='BatchNormalization']"):
        full = g.get_attribute("data-name")
        title = g.find_element(By.TAG_NAME, "title").get_attribute("textContent")
        assert title.startswith(full)
        shown.append(g.find_element(By.CSS_SELECTOR, "text.name").text)
    assert shown and all(shown) and len(set(shown)) == len(shown), shown
    return shown


def assert_wrapped_by_words(page: Any, report: dict[str, Any]) -> int:
    """Every note under a BN reads back from its lines with breaks only at
    spaces or after a separator inside a name: no word split."""
    checked = 0
    for bn in report["bns"]:
        if bn["status"] == "folded":
            continue
        notes = [f"left: {r}" for r in bn["residual"]] + [f"why: {w}" for w in bn["reasons"]]
        # a BN made of several nodes speaks at its last one; one not in the graph, by its name
        boxes = css(page, f".foldsvg .layer[data-name='{bn['name']}']") or css(
            page, f".foldsvg .layer[data-name='{bn['name'].split('+')[-1]}']"
        )
        box = boxes[-1]
        lines = [t.text for t in box.find_elements(By.CSS_SELECTOR, "text.why")]
        for note in notes:
            text = lines.pop(0)
            while text != note:
                line = lines.pop(0)
                if note.startswith(f"{text} {line}"):
                    text = f"{text} {line}"
                else:
                    assert note.startswith(text + line) and text[-1] in SEPARATORS, (text, line)
                    text += line
                checked += 1
        assert not lines
    return checked


def test_an_imported_model(
    page: Any, kinds: Kinds, kinds_server: RunningServer, kinds_http: httpx.Client
) -> None:
    stored = kinds_http.get("/v2/models/imported/versions/1/parity").json()
    comparisons = stored["parity"]["comparisons"]
    assert set(comparisons) == {"original_vs_reference", "reference_vs_folded"}
    show(page, kinds_server, "imported")
    rows = stored_rows(page)
    assert set(rows) == {"original graph vs reference.onnx", "reference.onnx vs model.onnx"}
    assert_row(rows["reference.onnx vs model.onnx"], comparisons["reference_vs_folded"]["logits"])
    assert_row(
        rows["original graph vs reference.onnx"], comparisons["original_vs_reference"]["logits"]
    )
    assert "on generated inputs" in page.find_element(By.ID, "parity").text

    source = page.find_element(By.ID, "source-kind")
    assert source.get_attribute("data-kind") == "imported"
    assert "Imported by bnfold import from net.onnx" in source.text
    assert "training" not in card_ids(page)

    # one op count: bnfold fold, bnfold import, the manifest, /parity and the page
    summary = stored["folding"]["summary"]
    manifest = (kinds.repo / "imported" / "1" / "manifest.json").read_text()
    assert f'"ops_left": {summary["ops_left"]}' in manifest
    shown = value(page.find_element(By.CSS_SELECTOR, "#ops-left b"))
    assert shown == summary["ops_left"] == ops_in(kinds.import_output) == ops_in(kinds.fold_output)
    assert summary["partial"] + summary["kept"] >= 1 and summary["ops_left"] >= 1
    # the input normalisation put in front leaves ops too, which are not the network's
    assert stored["folding"]["report"]["residual_ops"] > summary["ops_left"]
    assert page.find_element(By.ID, "fold-summary").text in kinds.import_output

    assert_names_distinct(page)
    assert assert_wrapped_by_words(page, stored["folding"]["report"]) > 0
    assert_only_this_server(page, kinds_server.url)


def test_a_convert_module_model(
    page: Any, kinds_server: RunningServer, kinds_http: httpx.Client
) -> None:
    stored = kinds_http.get("/v2/models/module/versions/1/parity").json()
    comparisons = stored["parity"]["comparisons"]
    show(page, kinds_server, "module")
    rows = stored_rows(page)
    assert set(rows) == {"PyTorch module vs reference.onnx", "reference.onnx vs model.onnx"}
    assert_row(
        rows["PyTorch module vs reference.onnx"], comparisons["pytorch_vs_reference"]["logits"]
    )
    assert_row(rows["reference.onnx vs model.onnx"], comparisons["reference_vs_folded"]["logits"])
    source = page.find_element(By.ID, "source-kind")
    assert source.get_attribute("data-kind") == "module"
    assert "bnfold.convert_module" in source.text
    assert "training" not in card_ids(page)
    summary = stored["folding"]["summary"]
    assert value(page.find_element(By.CSS_SELECTOR, "#ops-left b")) == summary["ops_left"]
    # the exporter names every BN alike but for a suffix: the shown names keep it
    names = [
        g.get_attribute("data-name") for g in css(page, ".layer[data-op='BatchNormalization']")
    ]
    assert len(names) == 3 and len({n[:20] for n in names}) == 1
    assert_names_distinct(page)
    assert_wrapped_by_words(page, stored["folding"]["report"])
    assert_only_this_server(page, kinds_server.url)


def test_a_converted_model(
    page: Any, kinds_server: RunningServer, kinds_http: httpx.Client
) -> None:
    stored = kinds_http.get("/v2/models/trained/versions/1/parity").json()
    comparisons = stored["parity"]["comparisons"]
    show(page, kinds_server, "trained")
    rows = stored_rows(page)
    assert list(rows) == [
        "PyTorch vs reference.onnx",
        "reference.onnx vs model.onnx",
        "PyTorch vs model.onnx",
    ]
    for label, key in zip(
        rows, ("torch_vs_reference", "reference_vs_folded", "torch_vs_folded"), strict=True
    ):
        assert_row(rows[label], comparisons[key])
    assert "held-out" in page.find_element(By.ID, "parity").text
    assert page.find_element(By.ID, "source-kind").get_attribute("data-kind") == "converted"
    assert "training" in card_ids(page)
    assert page.find_element(By.ID, "no-curves").is_displayed()

    health = stored["folding"]["bn_health"]["layers"]
    shown = [r.find_element(By.TAG_NAME, "th").text for r in css(page, "#health tbody tr")]
    assert shown == [f"BN {i + 1} module {layer['name']}" for i, layer in enumerate(health)]
    assert len(set(shown)) == len(shown) >= 2
    warnings = [li.text for li in css(page, "#health .warnings li")]
    for said, raw in zip(warnings, stored["folding"]["bn_health"]["warnings"], strict=True):
        module = next(
            (layer["name"] for layer in health if raw.startswith(f"{layer['name']}: ")), None
        )
        if module is not None:  # a layer's warning: named as the table names the layer
            k = [layer["name"] for layer in health].index(module) + 1
            assert said == f"BN {k} (module {module}){raw[len(module) :]}"
    assert_only_this_server(page, kinds_server.url)


def test_a_bare_triton_model_folded_on_load(
    page: Any, kinds_server: RunningServer, kinds_http: httpx.Client
) -> None:
    stored = kinds_http.get("/v2/models/triton-bare/versions/1/parity").json()
    assert "parity" not in stored or not stored["parity"]
    show(page, kinds_server, "triton-bare")
    fold = page.find_element(By.ID, "fold").text
    assert "no manifest.json" in fold and "manifest has no fold report" not in fold
    assert "serving the folded graph" in page.find_element(By.ID, "fold-on-load").text
    (row,) = css(page, "#parity-table tr.stored")
    assert row.get_attribute("data-key") == "fold_on_load"
    assert "at load on CPU" in row.text and "pass" in row.text
    on_load = stored["fold_on_load"]["parity"]
    assert value(row.find_element(By.CSS_SELECTOR, "td.rel")) == pytest.approx(
        on_load["max_rel_error"], rel=1e-12, abs=1e-300
    )
    assert page.find_element(By.ID, "source-kind").get_attribute("data-kind") == "bare"
    assert "no manifest.json" in page.find_element(By.ID, "source").text
    assert "no manifest.json" in page.find_element(By.ID, "health").text
    assert "training" not in card_ids(page)
    summary = stored["folding"]["summary"]
    assert value(page.find_element(By.CSS_SELECTOR, "#ops-left b")) == summary["ops_left"]
    assert_wrapped_by_words(page, stored["folding"]["report"])
    assert_only_this_server(page, kinds_server.url)


def test_a_bare_triton_model_served_as_it_is(page: Any, kinds_server: RunningServer) -> None:
    show(page, kinds_server, "triton-plain")
    fold = page.find_element(By.ID, "fold").text
    assert "This version has no manifest.json: a model.onnx served as it is" in fold
    assert "manifest has no fold report" not in fold and not css(page, ".foldsvg")
    assert value(page.find_element(By.CSS_SELECTOR, "#bn-count b")) == 4  # as it serves
    (row,) = css(page, "#parity-table tbody tr")
    assert row.text == "No stored parity report: this version has no manifest.json."
    assert not page.find_element(By.ID, "recompute").is_enabled()
    assert page.find_element(By.ID, "source-kind").get_attribute("data-kind") == "bare"
    assert {"fold", "parity", "try", "source", "health"} == card_ids(page)
    assert_only_this_server(page, kinds_server.url)


def test_a_triton_model_with_external_data(
    page: Any, kinds_server: RunningServer, kinds_http: httpx.Client
) -> None:
    stored = kinds_http.get("/v2/models/triton-external/versions/1/parity").json()
    assert stored["fold_on_load"]["served"] == "folded", stored["fold_on_load"]
    show(page, kinds_server, "triton-external")
    assert "serving the folded graph" in page.find_element(By.ID, "fold-on-load").text
    bn_count = page.find_element(By.ID, "bn-count")
    assert value(bn_count.find_element(By.CSS_SELECTOR, ".before")) == EXTERNAL_BNS
    summary = stored["folding"]["summary"]
    assert value(bn_count.find_element(By.CSS_SELECTOR, ".after")) == stored["folding"]["bn_after"]
    assert value(page.find_element(By.CSS_SELECTOR, "#ops-left b")) == summary["ops_left"]
    assert len(css(page, ".foldsvg .layer[data-op='BatchNormalization']")) == EXTERNAL_BNS
    assert_names_distinct(page)
    (row,) = css(page, "#parity-table tr.stored")
    assert "at load" in row.text and "pass" in row.text
    assert page.find_element(By.ID, "source-kind").get_attribute("data-kind") == "bare"
    assert_only_this_server(page, kinds_server.url)


def test_notes_break_between_words(page: Any, kinds_server: RunningServer) -> None:
    """The page's notes never break inside a word by style either."""
    show(page, kinds_server, "imported")
    for note in css(page, ".card p, .note"):
        style = page.execute_script(
            "const s = getComputedStyle(arguments[0]); return [s.wordBreak, s.overflowWrap];", note
        )
        assert style[0] != "break-all" and style[1] in ("break-word", "normal"), style
    assert_only_this_server(page, kinds_server.url)


def test_config_names_a_labels_file_only_when_there_is_one(kinds_http: httpx.Client) -> None:
    """issue 20: Triton's label_filename names a file in the model folder, or nothing."""
    bare = kinds_http.get("/v2/models/triton-bare/config").json()
    assert [o["label_filename"] for o in bare["output"]] == ["labels.txt"]
    trained = kinds_http.get("/v2/models/trained/config").json()  # labels in config.json only
    assert [o["label_filename"] for o in trained["output"]] == [""]


def test_version_details_say_the_kind(kinds_http: httpx.Client) -> None:
    kinds = {
        name: kinds_http.get(f"/web/api/models/{name}/versions/1").json()["kind"]
        for name in (
            "imported",
            "module",
            "trained",
            "triton-bare",
            "triton-external",
            "triton-plain",
        )
    }
    assert kinds == {
        "imported": "imported",
        "module": "module",
        "trained": "converted",
        "triton-bare": "bare",
        "triton-external": "bare",
        "triton-plain": "bare",
    }


def test_the_labels_file_named_is_a_regular_file_in_the_model_folder(tmp_path: Path) -> None:
    from bnfold.service.model_config import label_file

    pbtxt = 'name: "m"\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] %s } ]\n'
    model = tmp_path / "m"
    model.mkdir()
    assert label_file(model) is None
    (tmp_path / "outside.txt").write_text("a\nb\n")
    (model / "labels.txt").symlink_to(tmp_path / "outside.txt")
    assert label_file(model) is None  # a link is not a file of the folder
    (model / "labels.txt").unlink()
    (model / "labels.txt").write_text("a\nb\n")
    assert label_file(model) == "labels.txt"
    (model / "config.pbtxt").write_text(pbtxt % 'label_filename: "sub/names.txt"')
    assert label_file(model) == "labels.txt"  # the one named is not there
    (model / "sub").mkdir()
    (model / "sub" / "names.txt").write_text("a\nb\n")
    assert label_file(model) == "sub/names.txt"
    (model / "config.pbtxt").write_text("not { a pbtxt")
    assert label_file(model) == "labels.txt"
