"""The page's routes over HTTP: the page and its assets, the offline API
docs, and the JSON the page draws from (no browser needed)."""

from __future__ import annotations

import re

import httpx
from service_harness import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_page_and_its_assets(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert {"web/app.js", "web/style.css", "web/favicon.svg"} <= set(assets)
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), asset
        assert http.get(f"/{asset}").status_code == 200, asset
    assert http.get("/web/app.js").headers["content-type"].startswith("text/javascript")
    assert http.head("/").status_code == 200


def test_an_unknown_asset_is_a_404_with_the_error_body(http: httpx.Client) -> None:
    for path in ("/web/secret.txt", "/web/vendor/index.html", "/web/..%2Fapp.py"):
        r = http.get(path)
        assert r.status_code == 404, path
        assert list(r.json()) == ["error"]


def test_docs_and_redoc_load_their_assets_from_the_server(http: httpx.Client) -> None:
    for path, wanted in (
        ("/docs", ["/web/vendor/swagger-ui-bundle.js", "/web/vendor/swagger-ui.css"]),
        ("/redoc", ["/web/vendor/redoc.standalone.js"]),
    ):
        page = http.get(path)
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert set(wanted) <= set(urls), urls
        assert all(u.startswith("/") for u in urls), urls
        assert "fonts.googleapis" not in page.text
        for url in wanted:
            assert http.get(url).status_code == 200
    # ReDoc's bundle names Redocly's CDN for a logo: the copy served does not
    assert b"cdn.redoc.ly" not in http.get("/web/vendor/redoc.standalone.js").content
    assert http.get("/docs/oauth2-redirect").status_code == 200
    assert "/openapi.json" in http.get("/docs").text


def test_the_summary_has_states_but_no_reasons(http: httpx.Client) -> None:
    summary = http.get("/web/api/models").json()
    assert summary["token_required"] is True
    entries = {e["name"]: e for e in summary["models"]}
    assert entries["broken"] == {"name": "broken", "version": "1", "state": "UNAVAILABLE"}
    assert entries["digits"]["state"] == "READY"
    index = http.post("/v2/repository/index", headers=AUTH).json()
    assert {e["name"] for e in index} == set(entries)
    assert any("sha256" in e["reason"] for e in index if e["name"] == "broken")


def test_version_details_name_the_layers_the_fold_report_names(http: httpx.Client) -> None:
    details = http.get("/web/api/models/fold-demo/versions/1").json()
    report = http.get("/v2/models/fold-demo/versions/1/parity").json()["folding"]["report"]
    reference = details["graphs"]["reference"]
    assert reference["file"] == "reference.onnx"
    names = [layer["name"] for layer in reference["layers"]]
    for bn in report["bns"]:
        assert bn["name"] in names
        assert set(bn["folded_into"]) <= set(names)
    served = details["graphs"]["served"]
    assert served["file"] == "model.onnx"
    bn_ops = sum(layer["op"] == "BatchNormalization" for layer in served["layers"])
    assert bn_ops == report["bn_after"] == 1
    assert details["preprocessing"]["layout"] == "NCHW"
    assert "curves" not in details

    digits = http.get("/web/api/models/digits/versions/1").json()
    assert [row["epoch"] for row in digits["curves"]] == [1.0, 2.0, 3.0]
    assert digits["manifest"]["metrics"]["test_accuracy"] == 0.94
    # unnamed nodes are named as the fold engine names them
    assert [layer["name"] for layer in digits["graphs"]["reference"]["layers"]] == [
        "Gemm_0",
        "BatchNormalization_1",
        "Relu_2",
        "Gemm_3",
    ]


def test_version_details_errors(http: httpx.Client) -> None:
    assert http.get("/web/api/models/nope/versions/1").status_code == 404
    assert http.get("/web/api/models/digits/versions/7").status_code == 404
    assert http.get("/web/api/models/digits/versions/01").status_code == 400
    assert http.get("/web/api/models/broken/versions/1").status_code == 503


def test_a_model_folded_on_load_is_described_by_its_original(http: httpx.Client) -> None:
    details = http.get("/web/api/models/bare/versions/1").json()
    assert set(details["graphs"]) == {"reference"}  # the folded graph is in memory only
    reference = details["graphs"]["reference"]
    assert reference["file"] == "model.onnx"
    report = http.get("/v2/models/bare/versions/1/parity").json()["fold_on_load"]["report"]
    names = {layer["name"] for layer in reference["layers"]}
    assert {bn["name"] for bn in report["bns"]} <= names
    assert "manifest" not in details or not details["manifest"]


def test_layers_leave_out_shape_arithmetic_and_type_only_inputs() -> None:
    from onnx import TensorProto, helper

    from bnfold.service.routes.web import layers

    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Constant", [], ["zero"], name="zero", value_float=0.0),
        helper.make_node("CastLike", ["zero", "x"], ["b"], name="bias"),  # x gives its type only
        helper.make_node("Expand", ["b", "s"], ["bb"], name="expand"),
        helper.make_node("Add", ["x", "bb"], ["y0"], name=""),
        helper.make_node("Reshape", ["y0", "s"], ["y"], name=""),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert layers(model) == {
        "ops": 6,
        "layers": [{"name": "Add_4", "op": "Add"}, {"name": "Reshape_5", "op": "Reshape"}],
        "truncated": False,
    }


def parity(rel: float, n: int = 64, passed: bool = True) -> dict[str, object]:
    return {
        "max_abs_error": rel / 2,
        "max_rel_error": rel,
        "top1_agreement": 1.0,
        "n_samples": n,
        "rtol": 1e-5,
        "min_top1": 1.0,
        "passed": passed,
    }


def test_parity_rows_read_every_writer_s_layout() -> None:
    from bnfold.service.page_data import parity_rows

    numbers = ("n_samples", "max_abs_error", "max_rel_error", "top1_agreement", "passed")

    def shown(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(r["label"], r.get("output"), r["max_rel_error"]) for r in rows]

    convert = {
        **parity(3e-7, 424),
        "n_heldout": 360,
        "n_random": 64,
        "comparisons": {
            "torch_vs_reference": parity(1e-7, 424),
            "reference_vs_folded": parity(2e-7, 424),
            "torch_vs_folded": parity(3e-7, 424),
        },
    }
    assert shown(parity_rows(convert)) == [
        ("PyTorch vs reference.onnx", None, 1e-7),
        ("reference.onnx vs model.onnx", None, 2e-7),
        ("PyTorch vs model.onnx", None, 3e-7),
    ]
    assert all(set(numbers) <= set(r) for r in parity_rows(convert))

    module = {
        **parity(4e-7),
        "data": "generated",
        "comparisons": {
            "pytorch_vs_reference": {"logits": parity(4e-7)},
            "reference_vs_folded": {"logits": parity(1e-7)},
        },
    }
    assert shown(parity_rows(module)) == [
        ("PyTorch module vs reference.onnx", None, 4e-7),
        ("reference.onnx vs model.onnx", None, 1e-7),
    ]
    two_outputs = {
        **parity(5e-7),
        "comparisons": {
            "original_vs_reference": {"boxes": parity(5e-7), "scores": parity(1e-7)},
            "reference_vs_folded": {"boxes": parity(2e-7), "scores": parity(3e-7)},
        },
    }
    assert shown(parity_rows(two_outputs)) == [
        ("original graph vs reference.onnx", "boxes", 5e-7),
        ("original graph vs reference.onnx", "scores", 1e-7),
        ("reference.onnx vs model.onnx", "boxes", 2e-7),
        ("reference.onnx vs model.onnx", "scores", 3e-7),
    ]
    quantized = {
        **parity(0.01),
        "against": "the float32 folded graph",
        "comparisons": {
            "float32_vs_as_written:logits": parity(0.01),
            "torch_vs_as_served:logits": parity(0.02),
        },
    }
    assert shown(parity_rows(quantized, "int8")) == [
        ("float32 graph vs int8 model.onnx (as written)", None, 0.01),
        ("PyTorch vs int8 model.onnx (as served)", None, 0.02),
    ]
    assert shown(parity_rows(parity(6e-7))) == [("reference.onnx vs model.onnx", None, 6e-7)]


def test_parity_rows_of_a_hostile_manifest_leave_out_what_is_not_a_number() -> None:
    from bnfold.service.page_data import parity_notes, parity_rows

    hostile = {
        "max_rel_error": "lots",
        "rtol": [1],
        "n_heldout": True,
        "data": {"x": 1},
        "comparisons": {
            "a_vs_b": {"max_rel_error": float("inf"), "passed": False, "n_samples": "9"},
            "c_vs_d": {"out": [1, 2], "other": {"max_rel_error": 1e-7, "top1_agreement": None}},
            "junk": 7,
        },
    }
    assert parity_rows(hostile) == [
        {"key": "a_vs_b", "label": "a vs b", "passed": False},
        {"key": "c_vs_d", "label": "c vs d", "output": "other", "max_rel_error": 1e-7},
    ]
    assert parity_notes(hostile) == []
    assert parity_rows(None) == parity_rows([]) == []  # type: ignore[arg-type]


def test_version_details_give_the_kind_and_the_stored_parity_rows(http: httpx.Client) -> None:
    demo = http.get("/web/api/models/fold-demo/versions/1").json()
    stored = http.get("/v2/models/fold-demo/versions/1/parity").json()["parity"]
    assert demo["kind"] == "bnfold"  # the tests' manifest says neither source nor training
    (row,) = demo["parity"]["rows"]
    assert row["label"] == "reference.onnx vs model.onnx"
    assert row["max_rel_error"] == stored["max_rel_error"] and row["passed"] is True
    assert demo["parity"]["notes"] == [
        "threshold 1e-05 (max error relative to the output's scale)",
        "0 held-out + 64 random inputs",
    ]
    bare = http.get("/web/api/models/bare/versions/1").json()
    on_load = http.get("/v2/models/bare/versions/1/parity").json()["fold_on_load"]["parity"]
    assert bare["kind"] == "bare"
    assert bare["parity"]["rows"] == [
        {
            "key": "fold_on_load",
            "label": "original vs folded graph, at load on CPU",
            **{k: on_load[k] for k in ("n_samples", "max_abs_error", "max_rel_error", "passed")},
            **(
                {"top1_agreement": on_load["top1_agreement"]} if "top1_agreement" in on_load else {}
            ),
        }
    ]
    assert bare["parity"]["notes"] == []
