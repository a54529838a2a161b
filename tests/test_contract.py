"""The repository contract: names, versions, schemas, and what crosses the wings."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from bnfold.contract import (
    FORMAT,
    ContractError,
    Manifest,
    ModelConfig,
    ParityReport,
    check_name,
    compare_outputs,
    parse_version,
    scan_versions,
    version_problem,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from served_models import write_mlp  # noqa: E402
from service_harness import TOKEN, base_settings, run_server  # noqa: E402

TENSOR = {"name": "x", "datatype": "FP32", "shape": [4]}
CONFIG = {"name": "m", "max_batch_size": 8, "input": [TENSOR], "output": [TENSOR]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHA = "0" * 64
MANIFEST = {
    "name": "m",
    "version": 1,
    "files": {"model.onnx": {"sha256": SHA, "bytes": 1}},
}


@pytest.mark.parametrize("text", ["1", "7", "12", "100", "9" * 18])
def test_versions_that_are_versions(text: str) -> None:
    assert version_problem(text) is None
    assert parse_version(text) == int(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("01", "without leading zeros"),
        ("007", "without leading zeros"),
        ("0", "(1, 2, ...)"),
        ("00", "(1, 2, ...)"),
        ("+1", "(1, 2, ...)"),
        ("-1", "(1, 2, ...)"),
        ("1.0", "(1, 2, ...)"),
        ("1e3", "(1, 2, ...)"),
        ("²", "(1, 2, ...)"),
        ("١", "(1, 2, ...)"),  # an Arabic-Indic one: isdigit() but not ASCII
        (" 1", "(1, 2, ...)"),
        ("", "(1, 2, ...)"),
        ("1" * 19, "at most 18 digits"),
    ],
)
def test_versions_that_are_not(text: str, why: str) -> None:
    problem = version_problem(text)
    assert problem is not None and why in problem and repr(text) in problem
    with pytest.raises(ContractError, match="version must be a positive integer"):
        parse_version(text)


def test_scan_lists_refused_folders_and_skips_hidden_ones(tmp_path: Path) -> None:
    for folder in ("1", "01", "3", "+1", "1.0", "²", ".tmp-4-ab", ".git"):
        (tmp_path / folder).mkdir()
    (tmp_path / "2").write_text("a file, not a folder")
    found = scan_versions(tmp_path)
    assert found.valid == [1, 3]
    assert sorted(found.refused) == sorted(["01", "+1", "1.0", "²"])
    assert "without leading zeros" in found.refused["01"]
    assert scan_versions(tmp_path / "missing").valid == []


@pytest.mark.parametrize("name", ["m", "digits-mlp", "a.b_c-1", "9", "x" * 64])
def test_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "a..b", "x" * 65, "ü"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ContractError, match="invalid model name"):
        check_name(name)


def test_config_round_trip_fills_defaults() -> None:
    config = ModelConfig.from_dict(CONFIG)
    assert config.format == FORMAT and config.platform == "onnxruntime_onnx"
    assert config.input[0].shape == [4]
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert "dynamic_batching" not in config.to_dict()  # unset optionals stay out
    everything = ModelConfig.from_dict(
        CONFIG | {"version_policy": {"all": {}}, "instance_group": [{"kind": "KIND_CPU"}]}
    )
    assert everything.to_dict()["version_policy"] == {"all": {}}
    assert ModelConfig.from_dict(everything.to_dict()) == everything


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"max_batch_sise": 4},
            "config.json: unknown key 'max_batch_sise'; did you mean 'max_batch_size'?",
        ),
        ({"zzz": 1}, "config.json: unknown key 'zzz'; known keys: name, input, output"),
        (
            {"dynamic_batching": {"max_queue_delay": 1}},
            "config.json.dynamic_batching: unknown key 'max_queue_delay'; "
            "did you mean 'max_queue_delay_ms'?",
        ),
        ({"input": [TENSOR | {"dims": [4]}]}, "config.json.input[0]: unknown key 'dims'"),
        ({"max_batch_size": "8"}, "config.json.max_batch_size: expected an integer, got a string"),
        ({"max_batch_size": True}, "config.json.max_batch_size: expected an integer"),
        ({"max_batch_size": -1}, "config.json: max_batch_size must be 0"),
        ({"labels": "0123"}, "config.json.labels: expected a list, got a string"),
        ({"input": [TENSOR | {"datatype": "FLOAT"}]}, "unsupported datatype 'FLOAT'"),
        ({"input": [TENSOR | {"shape": [-2]}]}, "has a dimension below -1"),
        ({"format": 2}, "format 2 is not supported"),
        (
            {"preprocessing": {"layout": "CHWN", "input_shape": [1, 8, 8]}},
            "config.json.preprocessing.layout: must be one of 'NCHW', 'NHWC', 'NC', got 'CHWN'",
        ),
        ({"preprocessing": {"layout": "NC", "input_shape": [63]}}, "is not a square image"),
        ({"dynamic_batching": {"max_queue_delay_ms": 1e9}}, "within 0 and 60000"),
    ],
)
def test_config_errors_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(ContractError) as caught:
        ModelConfig.from_dict(CONFIG | change)
    assert message in str(caught.value)


def test_config_missing_key_and_not_an_object() -> None:
    with pytest.raises(ContractError, match=r"config\.json\.input\[0\]: missing key 'datatype'"):
        ModelConfig.from_dict({"input": [{"name": "x", "shape": [4]}]})
    assert ModelConfig.from_dict({}).name == ""  # the service names it after its folder
    with pytest.raises(ContractError, match=r"manifest\.json: missing key 'version'"):
        Manifest.from_dict({"name": "m", "files": {}})
    with pytest.raises(ContractError, match=r"config\.json: expected an object, got a list"):
        ModelConfig.from_dict([])


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        (None, [3]),
        ({"latest": {}}, [3]),
        ({"latest": {"num_versions": 2}}, [2, 3]),
        ({"latest": {"num_versions": 9}}, [1, 2, 3]),
        ({"all": {}}, [1, 2, 3]),
        ({"specific": {"versions": [1, 3, 7]}}, [1, 3]),
    ],
)
def test_version_policy_selects_as_triton_does(policy: dict | None, served: list[int]) -> None:
    config = ModelConfig.from_dict(CONFIG | ({"version_policy": policy} if policy else {}))
    assert config.policy.select([3, 1, 2]) == served


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version_policy": {"latest": {}, "all": {}}}, "set one of latest, all, specific"),
        ({"version_policy": {"latest": {"num_versions": 0}}}, "num_versions must be at least 1"),
        ({"version_policy": {"specific": {"versions": [0]}}}, "positive integer"),
        ({"version_policy": {"newest": {}}}, "unknown key 'newest'"),
        ({"platform": "tensorrt_plan"}, "bnfold serves ONNX models"),
        ({"instance_group": [{"kind": "KIND_TPU"}]}, "must be one of 'KIND_AUTO'"),
        (
            {"instance_group": [{"kind": "KIND_GPU"}, {"kind": "KIND_CPU"}]},
            "instance_group mixes kinds",
        ),
        ({"parameters": {"a": 1}}, "config.json.parameters.a: expected a string"),
    ],
)
def test_triton_fields_are_checked(change: dict, message: str) -> None:
    with pytest.raises(ContractError) as caught:
        ModelConfig.from_dict(CONFIG | change)
    assert message in str(caught.value)


def test_manifest_schema() -> None:
    manifest = Manifest.from_dict(MANIFEST | {"parity": {"passed": True}})
    assert manifest.sha256("model.onnx") == SHA
    with pytest.raises(ContractError, match=r"has no sha256 for reference\.onnx"):
        manifest.sha256("reference.onnx")
    with pytest.raises(ContractError, match="unknown key 'parity_report'; did you mean 'parity'"):
        Manifest.from_dict(MANIFEST | {"parity_report": {}})
    bad_sha = {"model.onnx": {"sha256": "abc", "bytes": 1}}
    with pytest.raises(ContractError, match=r"manifest\.json\.files\.model\.onnx: sha256 is not"):
        Manifest.from_dict(MANIFEST | {"files": bad_sha})
    with pytest.raises(ContractError, match="positive integer"):
        Manifest.from_dict(MANIFEST | {"version": 0})


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    ("wing", "other"),
    [
        ("service", "converter"),
        ("converter", "service"),
        ("folding", "converter"),  # the fold engine is a library both wings use
        ("folding", "service"),
    ],
)
def test_only_the_contract_crosses_between_the_wings(wing: str, other: str) -> None:
    crossing = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / wing).rglob("*.py")
        for module in _imports(path)
        if module.split(".")[:2] == ["bnfold", other] or module.split(".")[0] == other
    }
    # ... nor names it for a lazy import (importlib, "module:function" strings)
    crossing |= {
        f"{path.relative_to(ROOT)}: names bnfold.{other}"
        for path in (ROOT / wing).rglob("*.py")
        if f"bnfold.{other}" in path.read_text()
    }
    assert crossing == set()
    contract = _imports(ROOT / "bnfold" / "contract.py")
    assert {m.split(".")[0] for m in contract} <= set(sys.stdlib_module_names) | {"numpy"}


def test_the_service_serves_1_beside_01_and_says_why_01_is_not(tmp_path: Path) -> None:
    write_mlp(tmp_path, "m")
    shutil.copytree(tmp_path / "m" / "1", tmp_path / "m" / "01")
    with run_server(base_settings(tmp_path)) as server, httpx.Client(base_url=server.url) as http:
        index = http.post("/v2/repository/index", headers=AUTH).json()
        assert {(e.get("version"), e["state"]) for e in index} == {
            ("1", "READY"),
            ("01", "UNAVAILABLE"),
        }
        (refused,) = [e for e in index if e.get("version") == "01"]
        assert "without leading zeros" in refused["reason"]
        x = np.zeros((2, 64), np.float32).ravel().tolist()
        body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x}]}
        r = http.post("/v2/models/m/infer", json=body)
        assert r.status_code == 200 and r.json()["model_version"] == "1"


def test_a_misspelt_config_key_fails_that_model_only(tmp_path: Path) -> None:
    write_mlp(tmp_path, "good")
    write_mlp(tmp_path, "typo")
    config_path = tmp_path / "typo" / "config.json"
    config = json.loads(config_path.read_text())
    config["max_batch_sise"] = config.pop("max_batch_size")
    config_path.write_text(json.dumps(config))
    with run_server(base_settings(tmp_path)) as server, httpx.Client(base_url=server.url) as http:
        r = http.get("/v2/models/typo/ready")
        assert r.status_code == 503
        # a public route: the reason is the index's, behind the token (issue 19)
        assert r.json()["error"].startswith("model 'typo' is not ready: failed to load")
        assert http.get("/v2/models/good/ready").status_code == 200
        index = {e["name"]: e for e in http.post("/v2/repository/index", headers=AUTH).json()}
        assert index["typo"]["state"] == "UNAVAILABLE"
        reason = index["typo"]["reason"]
        assert "unknown key 'max_batch_sise'; did you mean 'max_batch_size'?" in reason


def test_fold_imports_neither_torch_nor_the_server(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import bnfold.contract, bnfold.folding, bnfold.converter.verify\n"
        "bad = [m for m in ('torch', 'uvicorn', 'fastapi') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --- one parity verdict ------------------------------------------------------------


def test_parity_report_is_the_worst_of_its_comparisons() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 5))
    scores = rng.standard_normal((8, 1))
    expected = {"logits": logits, "scores": scores}
    close = {"logits": logits + 1e-7, "scores": scores * (1 + 1e-3)}  # scores: 1e-3 off
    report = compare_outputs(expected, close, rtol=1e-5)
    assert report.n_samples == 8 and report.rtol == 1e-5
    assert not report.passed  # one output failed, the verdict fails
    assert report.worst()[0] == "scores"
    assert report.max_rel_error == report.outputs["scores"].max_rel_error > 1e-4
    assert report.max_abs_error == max(p.max_abs_error for p in report.outputs.values())
    assert report.top1_agreement == 1.0  # only logits have a top-1
    assert set(report.summary()) == {
        "passed", "max_abs_error", "max_rel_error", "top1_agreement", "n_samples", "rtol",
        "min_top1",
    }  # fmt: skip
    assert report.to_dict()["outputs"]["logits"]["passed"] is True
    exact = compare_outputs(expected, expected)
    assert exact.passed and exact.max_rel_error == 0.0


def test_parity_reports_merge_over_input_sets() -> None:
    x = np.ones((4, 3))
    heldout = compare_outputs({"y": x}, {"y": x})
    random = compare_outputs({"y": x}, {"y": x * 1.5}, n_samples=16)
    merged = ParityReport.merge({"heldout": heldout, "random": random})
    assert merged.n_samples == 20 and set(merged.outputs) == {"heldout/y", "random/y"}
    assert not merged.passed and merged.worst()[0] == "random/y"
    with pytest.raises(ValueError, match=r"outputs \['z'\] are missing"):
        compare_outputs({"z": x}, {"y": x})
    with pytest.raises(ValueError, match="at least one comparison"):
        ParityReport.of({})
