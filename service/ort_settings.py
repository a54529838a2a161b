"""Triton's ONNX Runtime settings, read as Triton's onnxruntime_backend reads them.

From a model's configuration (config.pbtxt, or config.json in Triton's JSON
form):

- ``optimization.execution_accelerators``: ``gpu_execution_accelerator``
  ``tensorrt`` (its ``parameters`` mapped to the TensorRT provider's
  options: ``precision_mode`` FP16/BF16/INT8 -> ``trt_fp16_enable``...,
  ``max_workspace_size_bytes`` -> ``trt_max_workspace_size``, the ``trt_*``
  keys as they are) and ``cuda`` (its ``parameters`` passed to the CUDA
  provider); ``cpu_execution_accelerator`` ``openvino``;
- ``optimization.cuda.graphs`` -> the CUDA provider's ``enable_cuda_graph``;
- ``optimization.graph.level``: -1 basic, 1 extended, 2 none, else all;
- the backend's ``parameters``: ``intra_op_thread_count``,
  ``inter_op_thread_count``, ``execution_mode`` (0 sequential, 1 parallel),
  ``enable_mem_arena``, ``enable_mem_pattern``,
  ``session.use_device_allocator_for_initializers`` (a session entry),
  ``memory.enable_memory_arena_shrinkage`` (a run entry), and the CUDA
  provider's ``cudnn_conv_algo_search`` (0/1/2), ``gpu_mem_limit``,
  ``arena_extend_strategy`` (0/1), ``do_copy_in_default_stream``.

A value Triton refuses is refused at load with Triton's reason. Paths the
TensorRT provider writes (engine and timing caches) must be relative: they
resolve inside the model folder, never outside the repository. What cannot
run here (no GPU, a provider missing from this ONNX Runtime build) falls
back to the next provider, with the reason in the log and the model's
metadata (service/runtime.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnfold.contract import ContractError, ModelConfig

from .files import inside

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}

MAX_THREADS = 1024  # a repository file must not make the server start a million
GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}
PRECISION = {"FP16": "trt_fp16_enable", "BF16": "trt_bf16_enable", "INT8": "trt_int8_enable"}
CONV_SEARCH = {0: "EXHAUSTIVE", 1: "HEURISTIC", 2: "DEFAULT"}
ARENA = {0: "kNextPowerOfTwo", 1: "kSameAsRequested"}

# The TensorRT keys Triton passes through (README's mapping table), by kind.
TRT_BOOL = {
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
    "trt_dla_enable": "trt_dla_enable",
    "trt_engine_cache_enable": "trt_engine_cache_enable",
    "trt_dump_subgraphs": "trt_dump_subgraphs",
    "trt_force_sequential_engine_build": "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable": "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback": "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable": "trt_timing_cache_enable",
    "trt_force_timing_cache": "trt_force_timing_cache",
    "trt_detailed_build_log": "trt_detailed_build_log",
    "trt_build_heuristics_enable": "trt_build_heuristics_enable",
    "trt_sparsity_enable": "trt_sparsity_enable",
    "trt_cuda_graph_enable": "trt_cuda_graph_enable",
}
TRT_INT = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "trt_max_partition_iterations": "trt_max_partition_iterations",
    "trt_min_subgraph_size": "trt_min_subgraph_size",
    "trt_dla_core": "trt_dla_core",
    "trt_builder_optimization_level": "trt_builder_optimization_level",
    "trt_auxiliary_streams": "trt_auxiliary_streams",
}
TRT_TEXT = {
    "trt_engine_cache_prefix": "trt_engine_cache_prefix",
    "trt_tactic_sources": "trt_tactic_sources",
    "trt_profile_min_shapes": "trt_profile_min_shapes",
    "trt_profile_max_shapes": "trt_profile_max_shapes",
    "trt_profile_opt_shapes": "trt_profile_opt_shapes",
}
# Files the provider reads or writes: relative to the model folder, inside it.
TRT_PATH = {
    "trt_engine_cache_path": "trt_engine_cache_path",
    "trt_timing_cache_path": "trt_timing_cache_path",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
}
TRT_REFUSED = {
    "trt_extra_plugin_lib_paths": "it loads native libraries named by the repository",
    "trt_dump_ep_context_model": "it writes a model file beside the repository's",
    "trt_ep_context_file_path": "it writes a model file beside the repository's",
    "trt_ep_context_embed_mode": "it goes with trt_dump_ep_context_model",
}

# The backend's parameters read here (the rest of ``parameters`` is the
# model's own: fold_on_load, or keys ONNX Runtime's backend does not read).
BACKEND_KEYS = (
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "session.use_device_allocator_for_initializers",
    "memory.enable_memory_arena_shrinkage",
    "cudnn_conv_algo_search",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "do_copy_in_default_stream",
    "share_session_between_instances",
)


@dataclass(frozen=True)
class Provider:
    """One execution provider asked for, its options as ONNX Runtime spells
    them, and the configuration that asked (for the fallback message)."""

    name: str
    options: dict[str, str]
    asked_by: str
    gpu: bool


@dataclass(frozen=True)
class OrtSettings:
    """What a model's configuration asks of ONNX Runtime; empty: the server's."""

    graph_level: str | None = None  # GraphOptimizationLevel member name
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    execution_mode: str | None = None  # ORT_SEQUENTIAL | ORT_PARALLEL
    mem_arena: bool | None = None
    mem_pattern: bool | None = None
    session_entries: dict[str, str] = field(default_factory=dict)
    run_entries: dict[str, str] = field(default_factory=dict)
    # Asked for by the configuration: TensorRT, then CUDA (which Triton always
    # adds on GPU instances); empty: the server's default (CUDA when it loads).
    gpu: tuple[Provider, ...] = ()
    cpu: tuple[Provider, ...] = ()  # OpenVINO

    def session_report(self) -> dict[str, Any]:
        """The session settings asked for, as the metadata shows them."""
        out: dict[str, Any] = {
            "graph_optimization_level": self.graph_level,
            "intra_op_num_threads": self.intra_op_threads,
            "inter_op_num_threads": self.inter_op_threads,
            "execution_mode": self.execution_mode,
            "enable_cpu_mem_arena": self.mem_arena,
            "enable_mem_pattern": self.mem_pattern,
            "session_config": self.session_entries or None,
            "run_config": self.run_entries or None,
        }
        return {k: v for k, v in out.items() if v is not None}


def read_ort_settings(config: ModelConfig, model_dir: Path) -> OrtSettings:
    """The ONNX Runtime settings of ``config``; ``ContractError`` (a
    ``ValueError``) with Triton's reason for a value Triton refuses."""
    params = config.parameters
    opt = config.optimization or {}
    where = "optimization"
    if not isinstance(opt, dict):
        raise ContractError(f"{where} must be an object")
    graph = _object(opt, "graph", where)
    level = as_int(graph.get("level", 0), f"{where}.graph.level")
    cuda_graphs = _object(opt, "cuda", where).get("graphs", False)
    if not isinstance(cuda_graphs, bool):
        raise ContractError(f"{where}.cuda.graphs must be true or false")
    accelerators = _object(opt, "execution_accelerators", where)

    mode = _param_int(params, "execution_mode", 0)
    if mode not in (0, 1):
        raise ContractError(
            "Invalid configuration value provided. Expected values for  execution_mode "
            f"are 0 or 1 but got {mode} ."
        )
    session_entries = {}
    key = "session.use_device_allocator_for_initializers"
    if key in params:
        session_entries[key] = params[key]
    run_entries = {}
    key = "memory.enable_memory_arena_shrinkage"
    if key in params:
        run_entries[key] = params[key]

    cuda_options = _cuda_parameters(params)
    if cuda_graphs:
        cuda_options["enable_cuda_graph"] = "1"
    gpu: list[Provider] = []
    explicit_cuda = False
    for i, ea in enumerate(_list(accelerators, "gpu_execution_accelerator", where)):
        name, ea_params = _accelerator(ea, f"{where}.execution_accelerators.gpu[{i}]")
        if name == "tensorrt":
            options = _tensorrt(ea_params, model_dir)
            gpu.append(Provider(TENSORRT, options, "gpu_execution_accelerator 'tensorrt'", True))
        elif name == "cuda":
            # The accelerator's own keys first; the deprecated parameters win,
            # as in Triton, where they are applied after.
            cuda_options = dict(ea_params) | cuda_options
            explicit_cuda = True
        else:
            raise ContractError(f"unknown Execution Accelerator '{name}' is requested")
    if gpu or cuda_options or explicit_cuda:
        gpu.append(Provider(CUDA, cuda_options, "gpu_execution_accelerator 'cuda'", True))
    cpu: list[Provider] = []
    for i, ea in enumerate(_list(accelerators, "cpu_execution_accelerator", where)):
        name, _ = _accelerator(ea, f"{where}.execution_accelerators.cpu[{i}]")
        if name != "openvino":
            raise ContractError(f"unknown Execution Accelerator '{name}' is requested")
        cpu.append(
            Provider(
                OPENVINO, {"device_type": "CPU"}, "cpu_execution_accelerator 'openvino'", False
            )
        )
    intra = _param_int(params, "intra_op_thread_count", 0)
    inter = _param_int(params, "inter_op_thread_count", 0)
    for key, value in (("intra_op_thread_count", intra), ("inter_op_thread_count", inter)):
        if value > MAX_THREADS:
            raise ContractError(f"parameter {key} {value} is over {MAX_THREADS} threads")
    return OrtSettings(
        graph_level=GRAPH_LEVELS.get(level, "ORT_ENABLE_ALL") if "graph" in opt else None,
        intra_op_threads=intra if intra > 0 else None,
        inter_op_threads=inter if inter > 0 else None,
        execution_mode=(
            ("ORT_SEQUENTIAL", "ORT_PARALLEL")[mode] if "execution_mode" in params else None
        ),
        mem_arena=_param_bool(params, "enable_mem_arena"),
        mem_pattern=_param_bool(params, "enable_mem_pattern"),
        session_entries=session_entries,
        run_entries=run_entries,
        gpu=tuple(gpu),
        cpu=tuple(cpu),
    )


def _cuda_parameters(params: dict[str, str]) -> dict[str, str]:
    """The CUDA provider's options from the backend's (deprecated) parameters."""
    out: dict[str, str] = {}
    if "cudnn_conv_algo_search" in params:
        value = _param_int(params, "cudnn_conv_algo_search", 0)
        if value not in CONV_SEARCH:
            raise ContractError(f"unsupported cudnn_conv_algo_search value '{value}' is requested")
        out["cudnn_conv_algo_search"] = CONV_SEARCH[value]
    if "gpu_mem_limit" in params:
        out["gpu_mem_limit"] = str(_param_int(params, "gpu_mem_limit", 0))
    if "arena_extend_strategy" in params:
        value = _param_int(params, "arena_extend_strategy", 0)
        if value not in ARENA:
            raise ContractError(f"unsupported arena_extend_strategy value '{value}' is requested")
        out["arena_extend_strategy"] = ARENA[value]
    if "do_copy_in_default_stream" in params:
        flag = _param_bool(params, "do_copy_in_default_stream")
        out["do_copy_in_default_stream"] = "1" if flag else "0"
    return out


def _tensorrt(params: dict[str, str], model_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if key == "precision_mode":
            if value in PRECISION:
                out[PRECISION[value]] = "1"
            elif value != "FP32":
                raise ContractError(f"unsupported precision mode '{value}' is requested")
        elif key in TRT_BOOL:
            out[TRT_BOOL[key]] = "1" if _bool(value, key) else "0"
        elif key in TRT_INT:
            out[TRT_INT[key]] = str(as_int(value, key))
        elif key in TRT_TEXT:
            out[TRT_TEXT[key]] = value
        elif key in TRT_PATH:
            out[TRT_PATH[key]] = str(_inside_model(value, key, model_dir))
        elif key in TRT_REFUSED:
            raise ContractError(f"TensorRT parameter '{key}' is not honoured: {TRT_REFUSED[key]}")
        else:
            raise ContractError(
                f"unknown parameter '{key}' is provided for TensorRT Execution Accelerator"
            )
    return out


def _inside_model(value: str, key: str, model_dir: Path) -> Path:
    if not value or Path(value).is_absolute() or not inside(model_dir / value, model_dir):
        raise ContractError(
            f"TensorRT parameter '{key}' {value!r} must be a path relative to the model "
            "folder and stay inside it (the server writes nothing outside the repository)"
        )
    return (model_dir / value).resolve()


def _accelerator(ea: Any, where: str) -> tuple[str, dict[str, str]]:
    if not isinstance(ea, dict) or not isinstance(ea.get("name"), str):
        raise ContractError(f"{where} must be an object with a name")
    params = ea.get("parameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ContractError(f"{where}.parameters must map names to strings")
    return ea["name"], {str(k): v for k, v in params.items()}


def _object(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ContractError(f"{where}.{key} must be an object")
    return value


def _list(parent: dict[str, Any], key: str, where: str) -> list[Any]:
    value = parent.get(key, [])
    if not isinstance(value, list):
        raise ContractError(f"{where}.execution_accelerators.{key} must be a list")
    return value


def as_int(value: Any, where: str) -> int:
    """An integer, or its decimal text (protobuf's JSON writes int64 as text)."""
    if isinstance(value, bool):
        raise ContractError(f"{where} must be an integer")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.lstrip("-").isdigit() and text.isascii():
        return int(text)
    raise ContractError(f"{where}: {value!r} is not an integer")


def _bool(value: str, where: str) -> bool:
    low = value.strip().lower()
    if low in TRUE | FALSE:
        return low in TRUE
    raise ContractError(f"{where}: {value!r} is not a boolean (true/false, 1/0)")


def _param_int(params: dict[str, str], key: str, default: int) -> int:
    return as_int(params[key], f"parameter {key}") if key in params else default


def _param_bool(params: dict[str, str], key: str) -> bool | None:
    return _bool(params[key], f"parameter {key}") if key in params else None
