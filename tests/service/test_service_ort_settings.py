"""Triton's ONNX Runtime settings from config.pbtxt (issue 20): execution
accelerators, CUDA graphs, the graph optimization level, the ONNX Runtime
backend's ``parameters`` as Triton spells them, and ``model_warmup``.

On this machine (no GPU) the GPU providers fall back to the CPU: the test
checks the fallback and its reason in the metadata, and the options each
provider was given. The CPU settings are checked on the created session
itself (``get_session_options()``, ``get_provider_options()``).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from grpc_harness import run_grpc_server
from onnx import TensorProto
from service_harness import TOKEN, base_settings, capture_server_log
from triton_models import add_sub, add_sub_strings, write_model

from bnfold.contract import ContractError, ModelConfig
from bnfold.service import runtime as runtime_module
from bnfold.service.ort_settings import CUDA, OPENVINO, TENSORRT, read_ort_settings
from bnfold.service.proto import model_config_pb2 as pb
from bnfold.service.runtime import Runtime, RuntimeOptions
from bnfold.service.signature import build_signature
from bnfold.service.triton_config import from_proto
from bnfold.service.warmup import warmup_samples

pytestmark = pytest.mark.timeout(300)

AUTH = {"Authorization": f"Bearer {TOKEN}"}

TUNED = """name: "tuned"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
optimization {
  graph { level: 1 }
  cuda { graphs: true }
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
        parameters { key: "trt_engine_cache_enable" value: "1" }
        parameters { key: "trt_engine_cache_path" value: "trt_cache" }
      },
      {
        name: "cuda"
        parameters { key: "cudnn_conv_use_max_workspace" value: "0" }
      }
    ]
    cpu_execution_accelerator: [ { name: "openvino" } ]
  }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "inter_op_thread_count" value: { string_value: "3" } }
parameters { key: "execution_mode" value: { string_value: "1" } }
parameters { key: "enable_mem_pattern" value: { string_value: "0" } }
parameters { key: "enable_mem_arena" value: { string_value: "1" } }
parameters { key: "session.use_device_allocator_for_initializers" value: { string_value: "1" } }
parameters { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0" } }
parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }
parameters { key: "gpu_mem_limit" value: { string_value: "4294967200" } }
parameters { key: "arena_extend_strategy" value: { string_value: "1" } }
parameters { key: "do_copy_in_default_stream" value: { string_value: "0" } }
model_warmup [
  {
    name: "zeros"
    batch_size: 8
    count: 2
    inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }
    inputs { key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }
  },
  {
    name: "random"
    batch_size: 1
    inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] random_data: true } }
    inputs { key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] random_data: true } }
  },
  {
    name: "from a file"
    batch_size: 2
    count: 3
    inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 16 ] input_data_file: "in0" } }
    inputs { key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }
  }
]
"""
FILE_DATA = np.arange(32, dtype="<i4")  # batch 2 x 16, row-major, little-endian


def gpu(accelerator: str) -> str:
    accelerators = f"gpu_execution_accelerator: [ {accelerator} ]"
    return f"optimization {{ execution_accelerators {{ {accelerators} }} }}"


def trt(parameters: str) -> str:
    return gpu(f'{{ name: "tensorrt" {parameters} }}')


def from_file(name: str) -> str:
    value = f'data_type: TYPE_INT32 dims: [ 16 ] input_data_file: "{name}"'
    return f'inputs {{ key: "INPUT0" value: {{ {value} }} }}'


def parse(text: str, model_dir: Path) -> Any:
    message = text_format.Parse(text, pb.ModelConfig())
    return from_proto(message, model_dir=model_dir, root=model_dir.parent)


def tuned_repo(repo: Path) -> Path:
    model_dir = write_model(repo, "tuned", add_sub(TensorProto.INT32), TUNED)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "in0").write_bytes(FILE_DATA.tobytes())
    return model_dir


# ----------------------------------------------------------------- parsing


def test_settings_parsed_as_triton_spells_them(tmp_path: Path) -> None:
    model_dir = tuned_repo(tmp_path)
    settings = read_ort_settings(parse(TUNED, model_dir), model_dir)
    assert settings.graph_level == "ORT_ENABLE_EXTENDED"
    assert (settings.intra_op_threads, settings.inter_op_threads) == (2, 3)
    assert settings.execution_mode == "ORT_PARALLEL"
    assert (settings.mem_pattern, settings.mem_arena) == (False, True)
    assert settings.session_entries == {"session.use_device_allocator_for_initializers": "1"}
    assert settings.run_entries == {"memory.enable_memory_arena_shrinkage": "cpu:0"}
    trt, cuda = settings.gpu
    assert trt.name == TENSORRT
    assert trt.options == {
        "trt_fp16_enable": "1",
        "trt_max_workspace_size": "1073741824",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str((model_dir / "trt_cache").resolve()),
    }
    assert cuda.name == CUDA
    assert cuda.options == {
        "cudnn_conv_use_max_workspace": "0",
        "enable_cuda_graph": "1",
        "cudnn_conv_algo_search": "HEURISTIC",
        "gpu_mem_limit": "4294967200",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "0",
    }
    assert [p.name for p in settings.cpu] == [OPENVINO]


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (-1, "ORT_ENABLE_BASIC"),
        (0, "ORT_ENABLE_ALL"),
        (1, "ORT_ENABLE_EXTENDED"),
        (2, "ORT_DISABLE_ALL"),
    ],
)
def test_graph_levels(tmp_path: Path, level: int, expected: str) -> None:
    text = f"optimization {{ graph {{ level: {level} }} }}"
    assert read_ort_settings(parse(text, tmp_path / "m"), tmp_path / "m").graph_level == expected


def test_no_settings_leave_the_servers(tmp_path: Path) -> None:
    settings = read_ort_settings(parse("", tmp_path / "m"), tmp_path / "m")
    assert settings.gpu == settings.cpu == ()
    assert settings.session_report() == {}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            'parameters { key: "execution_mode" value: { string_value: "2" } }',
            "Expected values for  execution_mode are 0 or 1 but got 2",
        ),
        (
            'parameters { key: "cudnn_conv_algo_search" value: { string_value: "7" } }',
            "unsupported cudnn_conv_algo_search value '7' is requested",
        ),
        (
            'parameters { key: "arena_extend_strategy" value: { string_value: "5" } }',
            "unsupported arena_extend_strategy value '5' is requested",
        ),
        (
            'parameters { key: "intra_op_thread_count" value: { string_value: "many" } }',
            "parameter intra_op_thread_count: 'many' is not an integer",
        ),
        (
            'parameters { key: "inter_op_thread_count" value: { string_value: "100000" } }',
            "parameter inter_op_thread_count 100000 is over 1024 threads",
        ),
        (
            'parameters { key: "enable_mem_pattern" value: { string_value: "perhaps" } }',
            "is not a boolean",
        ),
        (
            gpu('{ name: "warp" }'),
            "unknown Execution Accelerator 'warp' is requested",
        ),
        (
            'optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "cuda" } ] } }',  # noqa: E501
            "unknown Execution Accelerator 'cuda' is requested",
        ),
        (
            trt('parameters { key: "precision_mode" value: "FP8" }'),
            "unsupported precision mode 'FP8' is requested",
        ),
        (
            trt('parameters { key: "trt_turbo" value: "1" }'),
            "unknown parameter 'trt_turbo' is provided for TensorRT Execution Accelerator",
        ),
        (
            trt('parameters { key: "trt_engine_cache_path" value: "/tmp/cache" }'),
            "must be a path relative to the model folder",
        ),
        (
            trt('parameters { key: "trt_engine_cache_path" value: "../../elsewhere" }'),
            "must be a path relative to the model folder",
        ),
        (
            trt('parameters { key: "trt_extra_plugin_lib_paths" value: "libx.so" }'),
            "loads native libraries named by the repository",
        ),
    ],
)
def test_values_triton_refuses_are_refused(tmp_path: Path, text: str, reason: str) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ContractError, match=None) as info:
        read_ort_settings(parse(text, tmp_path / "m"), tmp_path / "m")
    assert reason in str(info.value)


# ----------------------------------------------------------------- the session


def test_session_created_with_the_settings(tmp_path: Path) -> None:
    """Straight on ``Runtime``: the session ONNX Runtime created carries them."""
    model_dir = tuned_repo(tmp_path)
    settings = read_ort_settings(parse(TUNED, model_dir), model_dir)
    runtime = Runtime(
        add_sub(TensorProto.INT32), RuntimeOptions(ort=settings, intra_op_threads=1), label="t"
    )
    so = runtime.session.get_session_options()
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 3)
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert so.enable_mem_pattern is False
    assert so.enable_cpu_mem_arena is True
    assert so.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"
    assert runtime.session.get_providers() == ["CPUExecutionProvider"]
    assert set(runtime.session.get_provider_options()) == {"CPUExecutionProvider"}
    x = np.ones((2, 16), np.int32)
    out = runtime.run({"INPUT0": x, "INPUT1": x})  # with the run entry set
    assert out["OUTPUT0"].tolist() == (2 * x).tolist()


def test_arena_off(tmp_path: Path) -> None:
    text = 'parameters { key: "enable_mem_arena" value: { string_value: "0" } }'
    settings = read_ort_settings(parse(text, tmp_path / "m"), tmp_path / "m")
    runtime = Runtime(add_sub(TensorProto.INT32), RuntimeOptions(ort=settings), label="t")
    assert runtime.session.get_session_options().enable_cpu_mem_arena is False


def test_server_settings_apply_without_a_model_setting(tmp_path: Path) -> None:
    runtime = Runtime(
        add_sub(TensorProto.INT32),
        RuntimeOptions(intra_op_threads=1, inter_op_threads=1),
        label="t",
    )
    so = runtime.session.get_session_options()
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (1, 1)
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert runtime.fallbacks == []


def test_gpu_providers_handed_to_onnx_runtime_fall_back_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if a GPU were present: TensorRT and CUDA are asked for with their
    options; where they cannot load (this machine), ONNX Runtime falls back
    to the CPU and the metadata says which did not load."""
    if CUDA not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to ask for")
    monkeypatch.setattr(runtime_module._cuda, "failed", False)
    monkeypatch.setattr(runtime_module._cuda, "wanted", lambda device: True)
    model_dir = tuned_repo(tmp_path)
    settings = read_ort_settings(parse(TUNED, model_dir), model_dir)
    runtime = Runtime(add_sub(TensorProto.INT32), RuntimeOptions(ort=settings), label="t")
    asked = {p.name: p.options for p in runtime.requested}
    assert asked[TENSORRT]["trt_fp16_enable"] == "1"
    assert asked[TENSORRT]["device_id"] == "0"
    assert asked[CUDA]["enable_cuda_graph"] == "1"
    assert runtime.provider == "CPUExecutionProvider"
    reasons = {f["provider"]: f["reason"] for f in runtime.fallbacks}
    assert reasons[TENSORRT].startswith("did not load")
    assert reasons[CUDA].startswith("did not load")
    assert reasons[OPENVINO] == "not in this ONNX Runtime build"


# ----------------------------------------------------------------- warm-up


def test_warmup_samples_from_the_configuration(tmp_path: Path) -> None:
    model_dir = tuned_repo(tmp_path)
    config = parse(TUNED, model_dir)
    runtime = Runtime(add_sub(TensorProto.INT32), RuntimeOptions(), label="t")
    signature = build_signature(config, runtime.inputs, runtime.outputs, source="config.pbtxt")
    samples = warmup_samples(config, signature, model_dir, max_bytes=1 << 20)
    assert [(s.name, s.count) for s in samples] == [("zeros", 2), ("random", 1), ("from a file", 3)]
    zeros, random, from_file = samples
    assert zeros.feeds["INPUT0"].shape == (8, 16) and not zeros.feeds["INPUT0"].any()
    assert random.feeds["INPUT0"].shape == (1, 16) and random.feeds["INPUT0"].any()
    np.testing.assert_array_equal(from_file.feeds["INPUT0"], FILE_DATA.reshape(2, 16))
    assert runtime.warmup(signature, samples) == 6
    assert runtime.warmup_runs == [
        {"name": "zeros", "runs": 2},
        {"name": "random", "runs": 1},
        {"name": "from a file", "runs": 3},
    ]


def test_warmup_strings_from_a_file(tmp_path: Path) -> None:
    """BYTES: each element a 4-byte little-endian length, then its bytes."""
    text = """max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] },
        { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
         { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] } ]
model_warmup [ { name: "s" batch_size: 1
  inputs { key: "INPUT0" value: { data_type: TYPE_STRING dims: [ 16 ] input_data_file: "s" } }
  inputs { key: "INPUT1" value: { data_type: TYPE_STRING dims: [ 16 ] input_data_file: "s" } }
} ]"""
    model_dir = tmp_path / "m"
    (model_dir / "warmup").mkdir(parents=True)
    words = [str(i).encode() for i in range(16)]
    (model_dir / "warmup" / "s").write_bytes(b"".join(struct.pack("<I", len(w)) + w for w in words))
    config = parse(text, model_dir)
    runtime = Runtime(add_sub_strings(), RuntimeOptions(), label="t")
    signature = build_signature(config, runtime.inputs, runtime.outputs, source="config.pbtxt")
    (sample,) = warmup_samples(config, signature, model_dir, max_bytes=1 << 20)
    assert sample.feeds["INPUT0"].reshape(-1).tolist() == [w.decode() for w in words]
    assert runtime.warmup(signature, [sample]) == 1


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        (
            from_file("in0"),
            "expects 512 bytes, but the data provided from in0 only has 128 bytes",
        ),
        (
            from_file("gone"),
            "gone is missing",
        ),
        (
            from_file("../../x"),
            "not a file inside the model repository",
        ),
        (
            'inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }',
            "data_type FP32 but the model expects INT32",
        ),
        (
            'inputs { key: "INPUT0" value: { data_type: TYPE_INT32 dims: [ 4 ] zero_data: true } }',
            "dims [4] do not match the model's [16]",
        ),
        (
            'inputs { key: "NOPE" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }',
            "unexpected input 'NOPE'",
        ),
        ("", "no data for inputs ['INPUT0']"),
        (
            'count: 5000 inputs { key: "INPUT0" value: '
            "{ data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }",
            "count 5000 is over 1000",
        ),
    ],
)
def test_warmup_samples_that_do_not_fit(tmp_path: Path, sample: str, reason: str) -> None:
    model_dir = tuned_repo(tmp_path)
    (tmp_path / "x").write_bytes(b"\0" * 4096)  # outside the warmup folder
    text = TUNED[: TUNED.index("model_warmup")] + (
        'model_warmup [ { name: "w" batch_size: 8 '
        + sample
        + ' inputs { key: "INPUT1" value: { data_type: TYPE_INT32 dims: [ 16 ] zero_data: true } }'
        + " } ]"
    )
    config = parse(text, model_dir)
    runtime = Runtime(add_sub(TensorProto.INT32), RuntimeOptions(), label="t")
    signature = build_signature(config, runtime.inputs, runtime.outputs, source="config.pbtxt")
    with pytest.raises(ContractError) as info:
        warmup_samples(config, signature, model_dir, max_bytes=1 << 20)
    assert reason in str(info.value)


# ----------------------------------------------------------------- served


def test_served_model_reports_its_settings_fallbacks_and_warmup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = capture_server_log(monkeypatch).lines
    tuned_repo(tmp_path)
    with (
        run_grpc_server(base_settings(tmp_path)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        meta = http.get("/v2/models/tuned").json()
        rt = meta["parameters"]["onnxruntime"]
        assert rt["providers"] == ["CPUExecutionProvider"]
        reasons = {f["provider"]: f["reason"] for f in rt["fallbacks"]}
        assert reasons == {
            TENSORRT: "no GPU found",
            CUDA: "no GPU found",
            OPENVINO: "not in this ONNX Runtime build",
        }
        options = {f["provider"]: f["options"] for f in rt["fallbacks"]}
        assert options[TENSORRT]["trt_fp16_enable"] == "1"
        assert options[CUDA]["enable_cuda_graph"] == "1"
        assert rt["session"] == {
            "graph_optimization_level": "ORT_ENABLE_EXTENDED",
            "intra_op_num_threads": 2,
            "inter_op_num_threads": 3,
            "execution_mode": "ORT_PARALLEL",
            "enable_cpu_mem_arena": True,
            "enable_mem_pattern": False,
            "session_config": {"session.use_device_allocator_for_initializers": "1"},
            "run_config": {"memory.enable_memory_arena_shrinkage": "cpu:0"},
        }
        assert rt["warmup"] == [
            {"name": "zeros", "runs": 2},
            {"name": "random", "runs": 1},
            {"name": "from a file", "runs": 3},
        ]
        logged = [m for m in said if "falling back to the next provider" in m]
        assert any(TENSORRT in m and m.endswith("no GPU found") for m in logged), said
        assert any(OPENVINO in m and m.endswith("not in this ONNX Runtime build") for m in logged)
        so = server.served("tuned").runtime.session.get_session_options()
        assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 3)
        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED

        config = http.get("/v2/models/tuned/config").json()
        assert config["optimization"]["graph"] == {"level": 1}
        assert len(config["model_warmup"]) == 3

        body = {
            "inputs": [
                {"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                for n in ("INPUT0", "INPUT1")
            ]
        }
        r = http.post("/v2/models/tuned/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2 * i for i in range(16)]


def test_a_warmup_that_does_not_fit_fails_the_load(tmp_path: Path) -> None:
    model_dir = tuned_repo(tmp_path)
    (model_dir / "warmup" / "in0").write_bytes(b"\0" * 8)  # too short
    with (
        run_grpc_server(base_settings(tmp_path)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        entries = http.post("/v2/repository/index", headers=AUTH).json()
        entry = next(e for e in entries if e["name"] == "tuned")
        assert entry["state"] == "UNAVAILABLE"
        assert "only has 8 bytes" in entry["reason"]
        assert server.settings.repo == tmp_path


def test_load_override_sets_the_onnx_runtime_settings(tmp_path: Path) -> None:
    """Triton's load with a configuration override: its ``optimization`` and
    ``parameters`` replace the folder's, as its other fields do."""
    tuned_repo(tmp_path)
    override = {
        "optimization": {"graph": {"level": 2}},
        "parameters": {"intra_op_thread_count": {"string_value": "1"}},
    }
    with (
        run_grpc_server(base_settings(tmp_path)) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http,
    ):
        body = {"parameters": {"config": json.dumps(override)}}
        r = http.post("/v2/repository/models/tuned/load", json=body)
        assert r.status_code == 200, r.text
        session = http.get("/v2/models/tuned").json()["parameters"]["onnxruntime"]["session"]
        assert session == {"graph_optimization_level": "ORT_DISABLE_ALL", "intra_op_num_threads": 1}
        so = server.served("tuned").runtime.session.get_session_options()
        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_warmup_tensors_are_bounded(tmp_path: Path) -> None:
    model_dir = tuned_repo(tmp_path)
    config = parse(TUNED, model_dir)
    runtime = Runtime(add_sub(TensorProto.INT32), RuntimeOptions(), label="t")
    signature = build_signature(config, runtime.inputs, runtime.outputs, source="config.pbtxt")
    with pytest.raises(ContractError) as info:
        warmup_samples(config, signature, model_dir, max_bytes=256)  # zeros: 8 x 16 x 4 bytes
    assert "warmup setting 'zeros', input 'INPUT" in str(info.value)
    assert "dims [16] are over the 256-byte limit" in str(info.value)


@pytest.mark.parametrize(
    ("warmup", "reason"),
    [
        (
            [
                {
                    "name": "w",
                    "batch_size": 1,
                    "inputs": {"INPUT0": {"data_type": "TYPE_INT32", "dims": 16}},
                }
            ],
            "dims must be a list",
        ),
        ([{"name": "w", "batch_size": True}], "batch_size must be an integer"),
        (["w"], "config.json.model_warmup[0]: expected an object, got a string"),
        ([{"name": "w", "batch_size": 1, "inputs": []}], "inputs must be an object"),
    ],
)
def test_warmup_in_config_json_checked(tmp_path: Path, warmup: Any, reason: str) -> None:
    """config.json carries model_warmup in Triton's JSON form; whatever it
    holds is checked, never trusted."""
    tensors = {
        "input": [{"name": n, "datatype": "INT32", "shape": [16]} for n in ("INPUT0", "INPUT1")],
        "output": [{"name": n, "datatype": "INT32", "shape": [16]} for n in ("OUTPUT0", "OUTPUT1")],
    }
    runtime = Runtime(add_sub(TensorProto.INT32), RuntimeOptions(), label="t")
    with pytest.raises(ContractError) as info:
        config = ModelConfig.from_dict({"max_batch_size": 8, **tensors, "model_warmup": warmup})
        signature = build_signature(config, runtime.inputs, runtime.outputs)
        warmup_samples(config, signature, tmp_path, max_bytes=1 << 20)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("optimization", "reason"),
    [
        ({"graph": 3}, "optimization.graph must be an object"),
        ({"graph": {"level": "high"}}, "optimization.graph.level: 'high' is not an integer"),
        ({"cuda": {"graphs": "yes"}}, "optimization.cuda.graphs must be true or false"),
        (
            {"execution_accelerators": {"gpu_execution_accelerator": "tensorrt"}},
            "gpu_execution_accelerator must be a list",
        ),
        (
            {"execution_accelerators": {"gpu_execution_accelerator": [{"name": 1}]}},
            "must be an object with a name",
        ),
        (
            {
                "execution_accelerators": {
                    "gpu_execution_accelerator": [{"name": "cuda", "parameters": {"a": 1}}]
                }
            },
            "parameters must map names to strings",
        ),
    ],
)
def test_optimization_in_config_json_checked(
    tmp_path: Path, optimization: dict[str, Any], reason: str
) -> None:
    config = ModelConfig.from_dict({"optimization": optimization})
    with pytest.raises(ContractError) as info:
        read_ort_settings(config, tmp_path)
    assert reason in str(info.value)
