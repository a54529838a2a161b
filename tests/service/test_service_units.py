"""Pieces without a server: codec, binary framing, signature, hostile model
files, config validation, settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from served_models import write_mlp

from bnfold.contract import ONNX_DATATYPES, ModelConfig
from bnfold.service.binary import encode_body, split_body
from bnfold.service.codec import decode_infer, decompress, encode_infer, numbers
from bnfold.service.errors import BadRequest, PayloadTooLarge
from bnfold.service.loading import LoadOptions, open_version
from bnfold.service.model_config import read_config
from bnfold.service.protocol import DATATYPE_OF, DATATYPES
from bnfold.service.runtime import RuntimeOptions, external_data_files, read_model
from bnfold.service.settings import Settings, settings_env
from bnfold.service.signature import Signature, TensorSpec, build_signature

DYNAMIC = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, -1)), TensorSpec("k", "INT8", (-1, 2))),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    max_batch_size=8,
)


def request(*tensors: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def test_datatype_tables_are_inverse() -> None:
    assert all(DATATYPE_OF[dtype] == name for name, dtype in DATATYPES.items())
    assert set(ONNX_DATATYPES.values()) == set(DATATYPES)


def test_huge_dims_are_refused_before_any_allocation() -> None:
    body = request(
        {"name": "x", "shape": [1, 1 << 40], "datatype": "FP32", "data": [1.0]},
        {"name": "k", "shape": [1, 2], "datatype": "INT8", "data": [1, 2]},
    )
    with pytest.raises(BadRequest, match="larger than any body allowed"):
        decode_infer(body, None, DYNAMIC, max_elements=1 << 20, allow_nonfinite=False)


def test_integer_range_and_kinds() -> None:
    with pytest.raises(BadRequest, match="outside INT8 range"):
        numbers("k", [1, 300], np.dtype(np.int8))
    with pytest.raises(BadRequest, match="must be integers"):
        numbers("k", [1.5, 2], np.dtype(np.int8))
    with pytest.raises(BadRequest, match="BOOL data must be true/false"):
        numbers("b", [1, 0], np.dtype(np.bool_))
    assert numbers("x", [[1, 2], [3, 4]], np.dtype(np.float32)).dtype == np.float32
    assert numbers("b", [True, False], np.dtype(np.bool_)).tolist() == [True, False]


def test_inputs_must_agree_on_the_batch_size() -> None:
    body = request(
        {"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]},
        {"name": "k", "shape": [1, 2], "datatype": "INT8", "data": [1, 2]},
    )
    with pytest.raises(BadRequest, match="disagree on the batch size"):
        decode_infer(body, None, DYNAMIC, max_elements=1 << 20, allow_nonfinite=False)


def test_missing_input_is_named() -> None:
    body = request({"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]})
    with pytest.raises(BadRequest, match=r"missing inputs \['k'\]"):
        decode_infer(body, None, DYNAMIC, max_elements=1 << 20, allow_nonfinite=False)


def test_nonfinite_allowed_by_setting() -> None:
    body = (
        b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [NaN, 1]},'
        b'{"name": "k", "shape": [1, 2], "datatype": "INT8", "data": [1, 2]}]}'
    )
    decoded = decode_infer(body, None, DYNAMIC, max_elements=1 << 20, allow_nonfinite=True)
    assert np.isnan(decoded.feeds["x"][0, 0])
    with pytest.raises(BadRequest, match="NaN or Inf"):
        decode_infer(body, None, DYNAMIC, max_elements=1 << 20, allow_nonfinite=False)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 8),
    width=st.integers(0, 5),
    datatype=st.sampled_from(["FP32", "FP16", "FP64", "INT64", "UINT8", "BOOL"]),
    seed=st.integers(0, 2**16),
    binary_out=st.booleans(),
)
def test_binary_round_trip(
    rows: int, width: int, datatype: str, seed: int, binary_out: bool
) -> None:
    dtype = DATATYPES[datatype]
    sig = Signature(
        (TensorSpec("t", datatype, (-1, -1)),), (TensorSpec("t", datatype, (-1, -1)),), 8
    )
    x = (np.random.default_rng(seed).standard_normal((rows, width)) * 10).astype(dtype)
    head = json.dumps(
        {
            "id": "r",
            "inputs": [
                {"name": "t", "shape": [rows, width], "datatype": datatype,
                 "parameters": {"binary_data_size": x.nbytes}}
            ],
            "parameters": {"binary_data_output": binary_out},
        }
    ).encode()  # fmt: skip
    decoded = decode_infer(
        head + x.tobytes(), str(len(head)), sig, max_elements=1 << 20, allow_nonfinite=False
    )
    np.testing.assert_array_equal(decoded.feeds["t"], x)
    body, headers = encode_infer("m", "1", decoded, {"t": x})
    if binary_out:
        n = int(headers["Inference-Header-Content-Length"])
        meta = json.loads(body[:n])
        back = np.frombuffer(body[n:], dtype=dtype).reshape(meta["outputs"][0]["shape"])
    else:
        meta = json.loads(body)
        back = np.array(meta["outputs"][0]["data"], dtype=dtype).reshape(rows, width)
    assert meta["id"] == "r" and meta["outputs"][0]["datatype"] == datatype
    np.testing.assert_array_equal(back, x)


def test_split_and_encode_body() -> None:
    json_part, binary = split_body(b'{"a":1}xyz', "7")
    assert (bytes(json_part), bytes(binary)) == (b'{"a":1}', b"xyz")
    assert encode_body({"a": 1}, []) == (b'{"a":1}', None)
    assert encode_body({"a": 1}, [b"xy"]) == (b'{"a":1}xy', 7)


def test_decompress_limits() -> None:
    import zlib

    data = b"x" * 100
    assert decompress(zlib.compress(data), "deflate", 1000) == data
    with pytest.raises(PayloadTooLarge):
        decompress(zlib.compress(data), "deflate", 50)
    with pytest.raises(BadRequest, match="not valid gzip"):
        decompress(b"not gzip", "gzip", 1000)


# --- model files -------------------------------------------------------------


def external_model(location: str) -> bytes:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [w],
    )
    return helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize(
    "location", ["../../../etc/passwd", "/etc/passwd", "sub/../../outside.bin", ""]
)
def test_external_data_may_not_escape_the_version(tmp_path: Path, location: str) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="escapes the version"):
        external_data_files(external_model(location), version, 1 << 20)


def test_external_data_inside_the_version_is_sized(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    assert external_data_files(external_model("w.bin"), tmp_path, 1 << 20) == [
        (tmp_path / "w.bin").resolve()
    ]
    with pytest.raises(ValueError, match="over 20"):
        external_data_files(external_model("w.bin"), tmp_path, 20)
    with pytest.raises(ValueError, match="is missing"):
        external_data_files(external_model("gone.bin"), tmp_path, 1 << 20)


def test_a_symlink_out_of_the_version_is_refused(tmp_path: Path) -> None:
    version = tmp_path / "1"
    version.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    (version / "w.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ValueError, match="escapes the version"):
        external_data_files(external_model("w.bin"), version, 1 << 20)


def test_oversized_and_tampered_files(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="over the 10-byte limit"):
        read_model(f, sha256=None, max_bytes=10)
    with pytest.raises(ValueError, match="does not match the manifest"):
        read_model(f, sha256="0" * 64, max_bytes=1000)


def test_tampered_reference_refuses_the_version(tmp_path: Path) -> None:
    version = write_mlp(tmp_path, "m")
    (version / "reference.onnx").write_bytes(b"changed")
    with pytest.raises(ValueError, match=r"reference\.onnx sha256"):
        open_version(tmp_path / "m", 1, LoadOptions(RuntimeOptions(device="cpu"), warmup=False))


def test_config_must_agree_with_the_graph(tmp_path: Path) -> None:
    version = write_mlp(tmp_path, "m")
    opened = open_version(tmp_path / "m", 1, LoadOptions(RuntimeOptions(device="cpu"), warmup=True))
    assert opened.runtime.provider == "CPUExecutionProvider"
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    cases = [
        ({"input": [{"name": "x", "datatype": "FP32", "shape": [64]}]}, "do not match the graph"),
        ({"input": [{"name": "input", "datatype": "FP16", "shape": [64]}]}, "graph FP32"),
        ({"input": [{"name": "input", "datatype": "FP32", "shape": [32]}]}, "vs graph"),
        ({"max_batch_size": 0}, "rank"),
    ]
    for change, message in cases:
        broken = ModelConfig.from_dict(config | change)
        with pytest.raises(ValueError, match=message):
            build_signature(broken, opened.runtime.inputs, opened.runtime.outputs)
    assert version.name == "1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"name": "m", "input": [], "output": [], "max_batch_size": -1}', "max_batch_size"),
        ('{"name": "m", "input": [{"name": "a", "datatype": "F32", "shape": [1]}], "output": []}',
         "unsupported datatype"),
        ('{"name": "m", "input": [], "output": [], '
         '"preprocessing": {"layout": "NC", "input_shape": [60]}}', "not a square"),
    ],
)  # fmt: skip
def test_config_validation(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_config(tmp_path / "config.json")
    with pytest.raises(ValueError, match="missing"):
        read_config(tmp_path / "nope.json")


def test_settings_from_env_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNFOLD_PORT", "9001")
    monkeypatch.setenv("BNFOLD_API_TOKEN", "s3cret")
    monkeypatch.setenv("BNFOLD_BATCHING", "false")
    s = Settings()
    assert (s.port, s.batching, s.api_token and s.api_token.get_secret_value()) == (
        9001,
        False,
        "s3cret",
    )
    assert Settings(port=9002).port == 9002  # a flag beats the environment
    env = settings_env(s)
    assert env["BNFOLD_API_TOKEN"] == "s3cret" and env["BNFOLD_BATCHING"] == "false"
    monkeypatch.setenv("BNFOLD_API_TOKEN", "")
    assert Settings().api_token is None
    monkeypatch.setenv("BNFOLD_PORT", "99999")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_cli_rejects_bad_flags(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from bnfold.service.cli import serve

    app = typer.Typer()
    app.command()(serve)
    runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1"})
    result = runner.invoke(app, ["--repo", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    result = runner.invoke(app, ["--repo", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 2 and "device" in result.output
    assert "Model repository folder" in runner.invoke(app, ["--help"]).output


def test_onnx_checker_accepts_the_test_models() -> None:
    from served_models import cnn, mlp

    for folded, reference in (mlp(0), cnn(0)):
        onnx.checker.check_model(onnx.load_from_string(folded))
        assert (
            sum(
                n.op_type == "BatchNormalization"
                for n in onnx.load_from_string(reference).graph.node
            )
            == 1
        )


def test_cuda_required_without_a_gpu_is_a_load_failure(tmp_path: Path) -> None:
    import onnxruntime as ort

    write_mlp(tmp_path, "m")
    options = RuntimeOptions(device="cuda")
    try:
        opened = open_version(tmp_path / "m", 1, LoadOptions(options, warmup=False))
    except ValueError as e:
        assert "CUDA was required" in str(e)
    else:  # a machine with a working GPU
        assert "CUDAExecutionProvider" in ort.get_available_providers()
        assert opened.runtime.provider == "CUDAExecutionProvider"
