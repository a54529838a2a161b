"""Triton Inference Server's own QA tests against ``bnfold serve``.

Runs inside a network namespace of its own (``unshare -rn``, see
test_triton_qa.py): Triton's tests call ``localhost:8000`` and
``localhost:8001`` by name, and there those ports are this run's alone.

    python run_qa.py --work DIR --out results.json [--jobs N]

1. builds Triton's QA model repositories with Triton's own generators
   (``gen_qa_models.py``, ``gen_qa_identity_models.py``,
   ``gen_qa_reshape_models.py``, ``--onnx`` only, the four at once) into
   DIR/models;
2. ``SUITES`` is the table of suites: each an L0 test file (or some of its
   methods) with the recipe of the model repository Triton's ``test.sh``
   lays out for it, the environment variables it exports and the server
   settings it starts with. Consecutive suites with the same models and
   settings share a server (a server group). For each group: lays out the
   repository, starts ``python -m bnfold.service`` on ports 8000 (HTTP) and
   8001 (gRPC), runs the vendored test files unchanged with Triton's
   environment variables (qa_unittest.py), stops the server. Where nested
   namespaces work, each group runs in a network namespace and a /dev/shm
   of its own (``unshare --net --mount``), ``--jobs`` groups at once;
   elsewhere one after another;
3. writes every method's outcome to ``--out``: ``{"suite::Class.method":
   {"outcome": ..., "detail": ..., "seconds": ...}}``, and prints how long
   each group's server took to be up and each test file to run.

Each group works in a folder of its own (DIR/groups/N) with a copy of the
vendored files: Triton's tests write ``test_results.txt`` and shared-memory
files into their working directory.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "service"), str(HERE.parent)]  # its helpers import tests/ too

from server_process import Spawned, launch  # noqa: E402 (after the path above)

HTTP_PORT, GRPC_PORT = 8000, 8001
# A guard against a hung server or test file, never a measure: Triton's own
# CI gives a test file many minutes.
SUITE_TIMEOUT_S = 900.0
LOAD_TIMEOUT_S = 300.0

Recipe = Callable[[Path, Path], None]  # (generated models, repository to fill)


# ----------------------------------------------------------------- model repositories


# gen_qa_model_repository pins the onnx package to one whose defaults its
# ONNX Runtime reads (onnx==1.20.1, opset left to it); with the onnx
# installed here the defaults are newer than ONNX Runtime takes (IR version
# 14), so the generators get an opset and the files the IR version of it.
OPSET, IR_VERSION = 17, 8


def generate(work: Path) -> Path:
    """Triton's QA repositories, ONNX only, as gen_qa_model_repository builds
    them (its ``--onnx`` lines); the four generators run at once."""
    import onnx

    common = work / "qa" / "common"
    models = work / "models"
    runs = {
        "qa_model_repository": ["gen_qa_models.py"],
        "qa_variable_model_repository": ["gen_qa_models.py", "--variable"],
        "qa_identity_model_repository": ["gen_qa_identity_models.py"],
        "qa_reshape_model_repository": ["gen_qa_reshape_models.py", "--variable"],
    }
    running: dict[Path, subprocess.Popen[bytes]] = {}
    for name, (script, *flags) in runs.items():
        out = models / name
        if (out / ".done").exists():
            continue
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        command = [sys.executable, script, "--onnx", f"--onnx_opset={OPSET}", *flags]
        running[out] = subprocess.Popen(
            [*command, "--models_dir", str(out)], cwd=common, stdout=subprocess.DEVNULL
        )
    for out, generator in running.items():
        if generator.wait() != 0:
            raise subprocess.CalledProcessError(generator.returncode, generator.args)
        for path in out.glob("*/*/model.onnx"):
            model = onnx.load(path)
            model.ir_version = IR_VERSION
            onnx.save(model, path)
        (out / ".done").touch()
    return models


def copy(source: str, pattern: str, exclude: str = "^$", only_version: str = "") -> Recipe:
    """Every model of ``source`` whose name matches ``pattern`` (of its
    versions only ``only_version``, when given)."""

    def fill(models: Path, repo: Path) -> None:
        for model in sorted((models / source).iterdir()):
            if re.search(pattern, model.name) and not re.search(exclude, model.name):
                skip = shutil.ignore_patterns("[0-9]*") if only_version else None
                shutil.copytree(model, repo / model.name, ignore=skip)
                if only_version:
                    shutil.copytree(model / only_version, repo / model.name / only_version)

    return fill


def renamed(source: str, model: str, name: str, *edits: tuple[str, str]) -> Recipe:
    """``cp -r model name`` and ``sed`` on its config.pbtxt, as test.sh does."""

    def fill(models: Path, repo: Path) -> None:
        src = models / source / model if (models / source / model).exists() else repo / model
        shutil.copytree(src, repo / name)
        config = repo / name / "config.pbtxt"
        text = config.read_text().replace(f'name: "{model}"', f'name: "{name}"')
        for old, new in edits:
            text = re.sub(old, new, text, count=1, flags=re.M)
        config.write_text(text)

    return fill


def triton_example(name: str) -> Recipe:
    """A model of Triton's docs/examples/model_repository, vendored unchanged."""

    def fill(models: Path, repo: Path) -> None:
        shutil.copytree(HERE / "models" / name, repo / name)

    return fill


QUEUE = """dynamic_batching {
    max_queue_delay_microseconds: 1000000
    preferred_batch_size: [ 8 ]
    default_queue_policy {
        max_queue_size: 1
    }
}
"""


def queued(models: Path, repo: Path) -> None:
    """L0_http's ``onnx_zero_1_float32_queue``: the identity model with a
    queue of one request."""
    renamed("qa_identity_model_repository", "onnx_zero_1_float32", "onnx_zero_1_float32_queue")(
        models, repo
    )
    config = repo / "onnx_zero_1_float32_queue" / "config.pbtxt"
    config.write_text(config.read_text() + QUEUE)


IDENTITY = "qa_identity_model_repository"
# Triton's python-backend stand-ins, replaced by the generated ONNX identity
# model of the same inputs and outputs under the name the tests call.
SIMPLE_IDENTITY = renamed(IDENTITY, "onnx_zero_1_object", "simple_identity")


def retyped(folder: Path, old: str, new: str) -> None:
    """A generated identity model with tensors of another type (the
    generators make identities of some types only): ``old`` made ``new``
    (``TYPE_*``) in its config.pbtxt, and every graph input and output of
    its versions of type ``new``."""
    import onnx

    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace(old, new))
    elem_type = getattr(onnx.TensorProto, new.removeprefix("TYPE_"))
    for path in folder.glob("*/model.onnx"):
        model = onnx.load(path)
        for value in [*model.graph.input, *model.graph.output]:
            value.type.tensor_type.elem_type = elem_type
        onnx.save(model, path)


def simple_identity_int64(models: Path, repo: Path) -> None:
    """L0_http's ``simple_identity_int64`` (Triton's python identity model
    with TYPE_INT64): the generated identity model's graph and configuration
    with INT64 tensors."""
    renamed(IDENTITY, "onnx_zero_1_object", "simple_identity_int64")(models, repo)
    retyped(repo / "simple_identity_int64", "TYPE_STRING", "TYPE_INT64")


# ----------------------------------------------------------------- suites


@dataclass(frozen=True)
class Suite:
    name: str  # "L0_shared_memory[grpc]"
    folder: str  # the L0 folder of the test file
    module: str  # the test file, without .py
    tests: tuple[str, ...]  # Class.method names; () is the whole file
    recipes: tuple[Recipe, ...]
    env: dict[str, str] = field(default_factory=dict)  # the test file's environment
    server_env: dict[str, str] = field(default_factory=dict)  # bnfold's settings
    # Triton's test.sh starts a server for each method of shared_memory_test.py
    # (each method assumes no region is registered): here every region is
    # unregistered before each method instead.
    reset_shm: bool = False
    # L0_lifecycle's test.sh lays the repository out as `pwd`/models, where
    # the test file runs and edits it between steps: with repo_in_cwd the
    # recipes fill ``models/`` in the test file's folder, and ``beside`` are
    # recipes called with (generated models, that folder) for the files
    # test.sh leaves there for the test to copy in later.
    repo_in_cwd: bool = False
    beside: tuple[Recipe, ...] = ()
    # A test file that starts its servers itself (Triton's ``tritonserver``:
    # tritonserver.py on PATH): the recipes lay out this folder beside it, as
    # its test.sh does, and the run starts no server for it.
    own_repo: str = ""
    pytest: bool = False  # a file written for pytest (qa_pytest.py records it)
    # A server of its own, never shared with the suite before it (Triton's
    # test.sh starts one per method where the statistics must start at zero).
    own_server: bool = False


# Triton's test.sh for these runs with BACKENDS naming the backends present;
# here that is ONNX Runtime alone, no ensembles, CPU only.
ONNX_ONLY = {"BACKENDS": "onnx", "ENSEMBLES": "0", "TRITON_SERVER_CPU_ONLY": "1"}

SHM_TESTS = (
    "test_invalid_create_shm",
    "test_valid_create_set_register",
    "test_unregister_before_register",
    "test_unregister_after_register",
    "test_reregister_after_register",
    "test_unregister_after_inference",
    "test_register_after_inference",
    "test_too_big_shm",
    "test_large_shm_register_offset",
    "test_mixed_raw_shm",
    "test_unregisterall",
    "test_infer_offset_out_of_bound",
    "test_infer_byte_size_out_of_bound",
    "test_infer_integer_overflow",
    "test_register_out_of_bound",
    "test_register_reserved_names",
    "test_register_invalid_shm_key",
)
HTTP_TESTS = (
    "test_raw_binary",
    "test_raw_binary_longer",
    "test_byte",
    "test_byte_too_many_elements",
    "test_multi_variable_dimensions",
    "test_multi_inputs",
    "test_content_encoding_chunked_manually",
    "test_content_encoding_unsupported_client",
    "test_descriptive_status_code",
    "test_buffer_size_overflow",
    "test_negative_dimensions",
    "test_loading_large_invalid_model",
    "test_load_oversized_file_parameter",
    "test_json_recursion_depth_limit",
    "test_duplicate_output_names",
    "test_repository_index_deeply_nested_json",
    "test_inference_header_content_length_out_of_range",
)
SIZE_LIMIT_DEFAULT = (
    "test_default_limit_raw_binary",
    "test_default_limit_json",
    "test_large_string_in_json",
    "test_default_limit_compressed",
    "test_json_dtype_size_expansion_exceeds_limit_error",
    "test_no_leak_on_invalid_inference_header_length",
)
SIZE_LIMIT_INCREASED = (
    "test_large_input_raw_binary",
    "test_large_input_json",
    "test_large_input_compressed",
)
L0_HTTP_MODELS = (
    copy(IDENTITY, r"^onnx_zero_1_(float32|object|float16)$|^onnx_zero_3_float32$"),
    renamed(IDENTITY, "onnx_zero_1_object", "onnx_zero_1_object_1_element", (r"-1", "1")),
    queued,
    SIMPLE_IDENTITY,
    simple_identity_int64,
)
# Suites with the same models and settings share one server, one after the other.
INFER_MODELS = (copy("qa_model_repository", r"^onnx_", exclude="bf16"),)
SHM_MODELS = (
    triton_example("simple"),
    # test.sh copies its version 1 alone
    copy("qa_model_repository", r"^onnx_int32_int32_int32$", only_version="1"),
)
CLASS_COUNT_MODELS = (
    renamed(IDENTITY, "onnx_zero_1_float32", "identity_fp32"),
    renamed(IDENTITY, "onnx_zero_1_object", "identity_bytes"),
)
SUITES = (
    Suite(
        "L0_infer",
        "L0_infer",
        "infer_test",
        (),
        INFER_MODELS,
        ONNX_ONLY,
    ),
    Suite(
        "L0_infer[system_shm]",
        "L0_infer",
        "infer_test",
        (),
        INFER_MODELS,
        {**ONNX_ONLY, "TEST_SYSTEM_SHARED_MEMORY": "1"},
    ),
    Suite(
        "L0_infer_reshape",
        "L0_infer_reshape",
        "infer_reshape_test",
        (),
        (copy("qa_reshape_model_repository", r"^onnx_"),),
        ONNX_ONLY,
    ),
    Suite(
        "L0_infer_zero",
        "L0_infer_zero",
        "infer_zero_test",
        (),
        (copy(IDENTITY, r"^onnx_"),),
        ONNX_ONLY,
    ),
    Suite(
        "L0_infer_variable",
        "L0_infer_variable",
        "infer_variable_test",
        (),
        (copy("qa_variable_model_repository", r"^onnx_"),),
        ONNX_ONLY,
    ),
    # test.sh runs this method on a server without --allow-client-shm (off in
    # Triton), the others with --allow-client-shm=true (bnfold's default).
    *(
        Suite(
            f"L0_shared_memory[{client},client_shm_off]",
            "L0_shared_memory",
            "shared_memory_test",
            ("SharedMemoryTest.test_client_shm_disabled_by_default",),
            SHM_MODELS,
            {"CLIENT_TYPE": client, "BACKENDS": "onnx"},
            server_env={"BNFOLD_ALLOW_CLIENT_SHM": "false"},
        )
        for client in ("http", "grpc")
    ),
    *(
        Suite(
            f"L0_shared_memory[{client}]",
            "L0_shared_memory",
            "shared_memory_test",
            tuple(f"SharedMemoryTest.{t}" for t in SHM_TESTS),
            SHM_MODELS,
            {"CLIENT_TYPE": client, "BACKENDS": "onnx"},
            server_env={"BNFOLD_ALLOW_CLIENT_SHM": "true"},
            reset_shm=True,
        )
        for client in ("http", "grpc")
    ),
    Suite(
        "L0_http",
        "L0_http",
        "http_test",
        tuple(f"HttpTest.{t}" for t in HTTP_TESTS),
        L0_HTTP_MODELS,
        # Triton's dynamic batcher waits out max_queue_delay_microseconds, so
        # onnx_zero_1_float32_queue's one place stays taken for a second.
        server_env={"BNFOLD_EAGER_BATCHING": "false"},
    ),
    Suite(
        "L0_http[size_limit]",
        "L0_http",
        "http_input_size_limit_test",
        tuple(f"InferSizeLimitTest.{t}" for t in SIZE_LIMIT_DEFAULT),
        (copy(IDENTITY, r"^onnx_zero_1_float32$"), SIMPLE_IDENTITY),
    ),
    Suite(
        "L0_http[size_limit_2^27]",
        "L0_http",
        "http_input_size_limit_test",
        tuple(f"InferSizeLimitTest.{t}" for t in SIZE_LIMIT_INCREASED),
        (copy(IDENTITY, r"^onnx_zero_1_float32$"), SIMPLE_IDENTITY),
        server_env={"BNFOLD_MAX_BODY_BYTES": str(2**27)},
    ),
    Suite(
        "L0_http[restricted_api]",
        "L0_http",
        "http_restricted_api_test",
        (),
        (triton_example("simple"),),
        server_env={
            "BNFOLD_MODEL_CONTROL_MODE": "none",  # Triton's default
            "BNFOLD_HTTP_RESTRICTED_API": json.dumps(
                [
                    "model-repository:admin-key=admin-value",
                    "inference,metadata:infer-key=infer-value",
                ]
            ),
        },
    ),
    Suite(
        "L0_grpc",
        "L0_grpc",
        "python_unit_test",
        ("GrpcTest",),
        (
            triton_example("simple"),
            # Triton's python string_identity: max_batch_size 0, dims [ -1 ]
            renamed(IDENTITY, "onnx_nobatch_zero_1_object", "string_identity"),
        ),
    ),
    Suite(
        "L0_grpc[restricted_protocol]",
        "L0_grpc",
        "python_unit_test",
        ("RestrictedProtocolTest",),
        (triton_example("simple"),),
        server_env={
            "BNFOLD_MODEL_CONTROL_MODE": "none",  # Triton's default
            "BNFOLD_GRPC_RESTRICTED_PROTOCOL": json.dumps(
                ["model-repository:admin-key=admin-value", "inference,health:infer-key=infer-value"]
            ),
        },
    ),
    Suite(
        "L0_input_validation",
        "L0_input_validation",
        "input_validation_test",
        ("InputShapeTest.test_input_string_shape_validation",),
        (copy("qa_model_repository", r"^onnx_object_int32_int32$"),),
    ),
    Suite(
        "L0_input_validation[model_name]",
        "L0_input_validation",
        "input_validation_test",
        ("ModelNameValidationTest",),
        (),
    ),
    *(
        Suite(
            f"L0_parameters[{client}]",
            "L0_parameters",
            "class_count_test",
            (),
            CLASS_COUNT_MODELS,
            {"CLIENT_TYPE": client},
        )
        for client in ("http", "grpc")
    ),
)


# L0_logging's and L0_trace's test.sh: ``simple`` is onnx_int32_int32_int32
# renamed, its version 1 alone (L0_trace's other models are ensembles, python
# and identity-backend models; of them only ``global_simple`` is ONNX).
def simple_v1(name: str) -> Recipe:
    def fill(models: Path, repo: Path) -> None:
        renamed("qa_model_repository", "onnx_int32_int32_int32", name)(models, repo)
        for version in ("2", "3"):
            shutil.rmtree(repo / name / version)

    return fill


SUITES += (
    Suite(
        "L0_logging",
        "L0_logging",
        "logging_endpoint_test",
        (),
        (simple_v1("simple"),),
        # Triton's defaults: info, warning and error on, verbose 0.
        server_env={"BNFOLD_LOG_LEVEL": "info"},
    ),
    Suite(
        "L0_trace",
        "L0_trace",
        "trace_endpoint_test",
        (),
        (simple_v1("simple"), simple_v1("global_simple")),
        # test.sh: --trace-config triton,file=global_unittest.log
        # --trace-config level=TIMESTAMPS --trace-config rate=1
        server_env={
            "BNFOLD_TRACE_CONFIG": json.dumps(
                ["triton,file=global_unittest.log", "level=TIMESTAMPS", "rate=1"]
            )
        },
    ),
)


# ---- small files: one server for several short L0 files (issue 18)

from bnfold.service.protocol import SERVER_VERSION  # noqa: E402 (this part's own import)


def generated(name: str, script: str, *flags: str) -> Recipe:
    """Every model of the repository Triton's generator ``script`` writes
    (``gen_qa_model_repository`` names it ``name``), generated once into the
    cache of generated models the first time a run needs it, with the
    opset and IR version of the others (``generate``)."""

    def fill(models: Path, repo: Path) -> None:
        import onnx

        out = models / name
        if not (out / ".done").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            subprocess.run(
                [sys.executable, script, f"--onnx_opset={OPSET}", *flags, "--models_dir", str(out)],
                cwd=HERE / "qa" / "common",
                stdout=subprocess.DEVNULL,
                check=True,
            )
            for path in out.glob("*/*/model.onnx"):
                model = onnx.load(path)
                model.ir_version = IR_VERSION
                onnx.save(model, path)
            (out / ".done").touch()
        copy(name, r"^\w")(models, repo)

    return fill


def vendored(folder: str, name: str) -> Recipe:
    """A model an L0 folder of Triton's holds in its own ``models/``."""

    def fill(models: Path, repo: Path) -> None:
        shutil.copytree(HERE / "qa" / folder / "models" / name, repo / name)

    return fill


# Each file's test.sh lays out a repository of its own; here one server
# serves the union (no file looks at models it does not call).
SMALL_MODELS = (
    # L0_client_nobatch (test.sh copies every onnx_* of qa_model_repository;
    # the file calls these two) and L0_server_status
    copy("qa_model_repository", r"^onnx_(nobatch_)?int32_int8_int8$"),
    vendored("L0_initializer_as_input", "add_with_initializer"),
    generated("qa_scalar_models", "gen_qa_ort_scalar_models.py"),
    # L0_string_io: onnx_zero_1_object and Triton's python string_identity
    # (max_batch_size 0, dims [ 8 ] after test.sh's sed), the generated
    # ONNX identity model of the same tensors in its stead
    copy(IDENTITY, r"^onnx_zero_1_object$"),
    renamed(IDENTITY, "onnx_nobatch_zero_1_object", "string_identity", *[(r"-1", "8")] * 2),
    triton_example("simple"),  # L0_http's many-chunks and aio tests, L0_grpc's aio test
)
# Triton's default model control (none): load and unload are refused.
SMALL_SERVER = {"BNFOLD_MODEL_CONTROL_MODE": "none"}
# The aio files' methods, less test_get_model_repository_index: it counts
# the models of the repository Triton's Dockerfile.QA and test.sh lay out
# (sequence, python and custom-backend models among them).
AIO_TESTS = (
    "test_is_server_live",
    "test_is_server_ready",
    "test_is_model_ready",
    "test_get_server_metadata",
    "test_get_model_metadata",
    "test_get_model_config",
    "test_load_model",
    "test_unload_model",
    "test_get_inference_statistics",
    "test_update_trace_settings",
    "test_get_trace_settings",
    "test_get_system_shared_memory_status",
    "test_register_system_shared_memory",
    "test_unregister_system_shared_memory",
    "test_get_cuda_shared_memory_status",
    "test_register_cuda_shared_memory",
    "test_unregister_cuda_shared_memory",
)


def aio(test_class: str) -> tuple[str, ...]:
    return tuple(f"{test_class}.{name}" for name in AIO_TESTS)


SUITES += tuple(
    Suite(name, folder, module, tests, SMALL_MODELS, env, server_env=SMALL_SERVER)
    for name, folder, module, tests, env in (
        (
            "L0_server_status",
            "L0_server_status",
            "server_status_test",
            (
                "ServerMetadataTest.test_unknown_model",
                "ServerMetadataTest.test_unknown_model_version",
            ),
            # Triton's container exports the server's version
            {"TRITON_SERVER_VERSION": SERVER_VERSION},
        ),
        ("L0_client_nobatch", "L0_client_nobatch", "client_test", (), {}),
        ("L0_initializer_as_input", "L0_initializer_as_input", "test", (), {}),
        ("L0_scalar_io", "L0_scalar_io", "scalar_test", (), {"BACKENDS": "onnx"}),
        ("L0_string_io", "L0_string_io", "string_client_test", (), {}),
        ("L0_http[many_chunks]", "L0_http", "http_request_many_chunks", (), {}),
        ("L0_http[aio]", "L0_http", "python_http_aio_test", aio("TestHttpAioClient"), {}),
        ("L0_grpc[aio]", "L0_grpc", "python_grpc_aio_test", aio("TestGrpcAioClient"), {}),
    )
)


# ----------------------------------------------------------------- parts

# The suites are split among test files (test_triton_qa*.py), so that
# pytest-xdist can run them on separate workers: a part is the suites whose
# name starts with one of its prefixes, "core" the rest.
PARTS: dict[str, tuple[str, ...]] = {
    "lifecycle": ("L0_lifecycle",),
    "metrics": ("L0_metrics",),
    "log_format": ("L0_logging[log_format",),
}
# Server groups at once for a part whose groups mostly wait (a queue delay
# of seconds, not CPU), when --jobs is not given; the others take JOBS.
PART_JOBS: dict[str, int] = {}
# Parts run by hand (``run_qa.py --part NAME``), not by the test suite: the
# verdict of each of their methods hangs on the clock (qa_expected.py,
# reason "clock"), so none is counted and a test file would assert nothing.
BY_HAND = {"log_format", "batcher"}


def part_of(name: str) -> str:
    suite = name.split("::")[0]
    return next((p for p, prefixes in PARTS.items() if suite.startswith(prefixes)), "core")


# ---- Triton's metrics (L0_metrics): its families on the metrics port, 8002
# test.sh: identity_cache_off (identity backend: the generated ONNX identity
# model of the same tensors stands in), model control explicit; a server per
# --metrics-config.
METRICS_MODELS = (renamed(IDENTITY, "onnx_nobatch_zero_1_float32", "identity_cache_off"),)
METRICS_SERVER = {
    "BNFOLD_METRICS_PORT": "8002",
    "BNFOLD_MODEL_CONTROL_MODE": "explicit",
    "BNFOLD_LOAD_MODEL": "identity_cache_off",
}
CACHE_MISSING = ("test_cache_counters_missing", "test_cache_summaries_missing")
METRICS_CONFIG_RUNS = (
    # (suite, --metrics-config settings, methods)
    (
        "defaults",
        [],
        ("test_inf_counters_exist", "test_inf_histograms_missing", "test_inf_summaries_missing"),
    ),
    (
        "histogram_latencies",
        ["histogram_latencies=true"],
        ("test_inf_counters_exist", "test_inf_histograms_exist", "test_inf_summaries_missing"),
    ),
    (
        "summary_latencies",
        ["summary_latencies=true"],
        ("test_inf_counters_exist", "test_inf_summaries_exist"),
    ),
    (
        "summary_no_counters",
        ["summary_latencies=true", "counter_latencies=false"],
        ("test_inf_counters_missing", "test_inf_summaries_exist"),
    ),
)
SUMMARY_QUANTILES = "0.1:0.0.1,0.7:0.01,0.75:0.01"  # test.sh's, as it exports it


def libtorch_v1(models: Path, repo: Path) -> None:
    """test.sh's libtorch_float32_float32_float32 (its version 1 alone): the
    generated ONNX model of the same tensors stands in."""
    name = "libtorch_float32_float32_float32"
    renamed("qa_model_repository", "onnx_float32_float32_float32", name)(models, repo)
    for version in ("2", "3"):
        shutil.rmtree(repo / name / version, ignore_errors=True)


SUITES += (
    *(
        Suite(
            f"L0_metrics[{name}]",
            "L0_metrics",
            "metrics_config_test",
            tuple(f"MetricsConfigTest.{t}" for t in (*methods, *CACHE_MISSING)),
            METRICS_MODELS,
            server_env={**METRICS_SERVER, "BNFOLD_METRICS_CONFIG": json.dumps(config)},
        )
        for name, config, methods in METRICS_CONFIG_RUNS
    ),
    Suite(
        "L0_metrics[summary_quantiles]",
        "L0_metrics",
        "metrics_config_test",
        ("MetricsConfigTest.test_summaries_custom_quantiles",),
        METRICS_MODELS,
        {"SUMMARY_QUANTILES": SUMMARY_QUANTILES},
        server_env={
            **METRICS_SERVER,
            "BNFOLD_METRICS_CONFIG": json.dumps(
                ["summary_latencies=true", f"summary_quantiles={SUMMARY_QUANTILES}"]
            ),
        },
    ),
    Suite(
        "L0_metrics[cpu]",
        "L0_metrics",
        "cpu_metrics_test",
        (),
        (libtorch_v1,),
        # test.sh: --metrics-interval-ms=1000 (utilization is over the interval)
        server_env={"BNFOLD_METRICS_PORT": "8002", "BNFOLD_METRICS_INTERVAL_MS": "1000"},
    ),
)


# ----------------------------------------------------------------- running


def loopback_up() -> None:
    """``ip link set lo up`` in the fresh network namespace, without iproute2."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def repository_headers(server_env: dict[str, str]) -> dict[str, str]:
    """The header ``--http-restricted-api`` asks of the model-repository
    category, if it restricts it (``CATEGORY[,CATEGORY...]:KEY=VALUE``)."""
    for group in json.loads(server_env.get("BNFOLD_HTTP_RESTRICTED_API", "[]")):
        categories, _, header = group.partition(":")
        if "model-repository" in categories.split(","):
            key, _, value = header.partition("=")
            return {key: value}
    return {}


def loaded(url: str, headers: dict[str, str]) -> list[str]:
    """Wait until no model is loading; the names of those that failed."""
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while True:
        index = httpx.post(
            f"{url}/v2/repository/index", json={}, headers=headers, timeout=30
        ).json()
        states = {entry["name"]: entry.get("state", "") for entry in index}
        if all(state in ("READY", "UNAVAILABLE") for state in states.values()):
            return sorted(name for name, state in states.items() if state != "READY")
        if time.monotonic() > deadline:
            raise RuntimeError(f"models still loading after {LOAD_TIMEOUT_S:g} s: {states}")
        time.sleep(0.2)


# bnfold's own per-model work that Triton does not do, off in these runs
# (README.md): the trial load in a forked child that --model-memory-limit
# asks of each version, and the warm-up run (Triton warms a model up only
# when its configuration asks for it).
QA_SERVER_ENV = {"BNFOLD_MODEL_MEMORY_LIMIT": "0", "BNFOLD_WARMUP": "false"}


@contextmanager
def serve(suite: Suite, work: Path, models: Path) -> Iterator[tuple[Spawned, list[str]]]:
    """The repository ``suite`` needs and a server on it; the server and the
    names of the models that did not load."""
    name = re.sub(r"\W", "_", suite.name)
    cwd = work / "qa" / suite.folder
    repo = cwd / "models" if suite.repo_in_cwd else work / "repos" / name
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for recipe in suite.recipes:
        recipe(models, repo)
    for recipe in suite.beside:
        recipe(models, cwd)
    server_env = {
        "BNFOLD_HOST": "127.0.0.1",
        "BNFOLD_GRPC_PORT": str(GRPC_PORT),
        "BNFOLD_API_TOKEN": "",  # Triton's tests send no token
        "BNFOLD_LOG_LEVEL": "warning",
        **QA_SERVER_ENV,
        **suite.server_env,
    }
    with launch(repo, work, (), server_env, port=HTTP_PORT) as server:
        yield server, loaded(server.url, repository_headers(suite.server_env))
        log = server.output()
        if log.strip():
            (work / "results" / f"{name}.server.log").write_text(log)


def tritonserver(work: Path, suite: Suite) -> dict[str, str]:
    """The environment of a test file that starts ``tritonserver`` itself:
    tritonserver.py first on PATH, and the settings of the run's servers."""
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "tritonserver"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "tritonserver.py"}" "$@"\n')
    shim.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "BNFOLD_HOST": "127.0.0.1",
        "BNFOLD_API_TOKEN": "",
        **QA_SERVER_ENV,
        **suite.server_env,
    }


def run_suite(
    suite: Suite, work: Path, server: Spawned | None, failed: list[str]
) -> dict[str, dict[str, Any]]:
    name = re.sub(r"\W", "_", suite.name)
    out = work / "results" / f"{name}.jsonl"
    out.unlink(missing_ok=True)
    env = {**os.environ, "TRITONSERVER_IPADDR": "localhost", **suite.env}
    if server is not None:
        env["SERVER_PID"] = str(server.proc.pid)
    else:
        env |= tritonserver(work, suite)
    reset = ["--reset", server.url] if suite.reset_shm and server is not None else []
    if suite.pytest:
        env["QA_PYTEST_OUT"] = str(out)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        tests = [f"{suite.module}.py::{t.replace('.', '::', 1)}" for t in suite.tests]
        runner = ["-m", "pytest", "-p", "qa_pytest", "-p", "no:cacheprovider", "-p", "no:xdist"]
        command = [*runner, *(tests or [f"{suite.module}.py"])]
    else:
        command = [str(HERE / "qa_unittest.py"), "--out", str(out), *reset, suite.module]
        command += suite.tests
    with (work / "results" / f"{name}.log").open("w") as f:
        subprocess.run(
            [sys.executable, *command],
            cwd=work / "qa" / suite.folder,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=SUITE_TIMEOUT_S,
            check=False,
        )
    results: dict[str, dict[str, Any]] = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        record = json.loads(line)
        key = f"{suite.name}::{record['id']}"
        if results.get(key, {}).get("outcome") in ("fail", "error"):
            continue  # a failed subtest stays failed
        results[key] = {
            "outcome": record["outcome"],
            "detail": record["detail"],
            "seconds": record.get("seconds", 0.0),
        }
    for key in results:
        if failed and results[key]["outcome"] != "pass":
            results[key]["detail"] += f"\nmodels that did not load: {failed}"
    return results


def setup(suite: Suite) -> tuple[Any, ...]:
    """What a server group shares: the repository, the files beside it and
    the server's settings."""
    return (
        suite.recipes,
        suite.repo_in_cwd,
        suite.beside,
        sorted(suite.server_env.items()),
        suite.own_repo,
    )


def server_groups(names: list[str] | None, part: str | None = None) -> list[list[Suite]]:
    """The suites to run (``names``, or those of ``part``, or all) as groups
    of consecutive suites with the same models and settings: one server each."""
    groups: list[list[Suite]] = []
    for suite in SUITES:
        if names and suite.name not in names:
            continue
        if part and part_of(suite.name) != part:
            continue
        if groups and not suite.own_server and setup(groups[-1][0]) == setup(suite):
            groups[-1].append(suite)
        else:
            groups.append([suite])
    return groups


def run_group(group: list[Suite], work: Path, models: Path) -> dict[str, dict[str, Any]]:
    """One server for ``group`` and its test files one after another, in a
    folder of its own (``work``: Triton's tests write files where they run)."""
    shutil.copytree(HERE / "qa", work / "qa", dirs_exist_ok=True)
    (work / "results").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    if group[0].own_repo:  # its test file starts its servers
        repo = work / "qa" / group[0].folder / group[0].own_repo
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        for recipe in group[0].recipes:
            recipe(models, repo)
        for suite in group:
            began = time.monotonic()
            results |= (mine := run_suite(suite, work, None, []))
            passed = sum(r["outcome"] == "pass" for r in mine.values())
            print(
                f"{suite.name}: {passed} of {len(mine)} passed "
                f"(no server of the run's, test file {time.monotonic() - began:.1f} s)",
                flush=True,
            )
        return results
    with serve(group[0], work, models) as (server, failed):
        up = time.monotonic() - began
        for suite in group:
            began = time.monotonic()
            mine = run_suite(suite, work, server, failed)
            results |= mine
            passed = sum(r["outcome"] == "pass" for r in mine.values())
            print(
                f"{suite.name}: {passed} of {len(mine)} passed "
                f"(server up in {up:.1f} s, test file {time.monotonic() - began:.1f} s)",
                flush=True,
            )
            up = 0.0
    for suite in group:
        for left in LEFT_IN_TMP.get(suite.folder, ()):
            if os.path.islink(left):
                os.unlink(left)
            else:
                shutil.rmtree(left, ignore_errors=True)
    return results


# What a test file leaves at fixed paths outside its folder, removed after
# its group: test_file_override_security makes a link /tmp/escape_symlink to
# /root and a folder /tmp/folderXXXXXX.
LEFT_IN_TMP = {"L0_lifecycle": ("/tmp/escape_symlink", "/tmp/folderXXXXXX")}


# In a namespace of the run's own (test_triton_qa.py), each server group gets
# a network namespace (ports 8000/8001 of its own) and a /dev/shm of its own
# (Triton's tests name their shared-memory objects): the groups run at once.
ISOLATE = ["unshare", "--net", "--mount", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"']
# At most this many groups at once by default: L0_http's test files build
# bodies of gigabytes (2^31 bytes, base64 and JSON, at once), and the others
# hundreds of megabytes.
JOBS = min(4, os.cpu_count() or 1)
# The longest test files start first (measured, README.md); they are also
# the ones that take gigabytes. L0_http's test_loading_large_invalid_model
# holds about 13 GB at once (2^31 bytes, base64 and JSON), so its group runs
# beside light groups only, as the whole run did when groups ran one by one.
SLOW_FIRST = ("L0_http", "L0_grpc", "L0_http[size_limit_2^27]", "L0_http[size_limit]")
HEAVY, ALONE = set(SLOW_FIRST), {"L0_http"}


def isolation_works() -> bool:
    try:
        done = subprocess.run([*ISOLATE, "sh", "true"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def run_isolated(
    groups: list[list[Suite]], args: argparse.Namespace, models: Path, jobs: int
) -> dict[str, dict[str, Any]]:
    """Each group by a ``run_qa.py --group`` of its own in its namespaces,
    ``jobs`` at a time, the slow ones first."""

    def one(index: int) -> dict[str, dict[str, Any]]:
        work = args.work / "groups" / str(index)
        out = work / "results.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--work", str(work)]
        command += ["--out", str(out), "--models", str(models), "--group", str(index)]
        command += [f"--suite={name}" for name in args.suite or ()]
        command += [f"--part={args.part}"] if args.part else []
        done = subprocess.run(
            [*ISOLATE, "sh", *command],
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT_S * len(groups[index]) + LOAD_TIMEOUT_S,
            check=False,
        )
        print(done.stdout, end="", flush=True)
        if done.returncode != 0:
            raise RuntimeError(f"group {index} exited {done.returncode}:\n{done.stderr[-5000:]}")
        results: dict[str, dict[str, Any]] = json.loads(out.read_text())
        return results

    def rank(index: int) -> int:
        name = groups[index][0].name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    pending = sorted(range(len(groups)), key=rank)
    running: set[str] = set()
    done: dict[int, dict[str, dict[str, Any]]] = {}
    changed = threading.Condition()

    def may_start(index: int) -> bool:
        name = groups[index][0].name
        if name not in HEAVY:
            return True
        if name in ALONE:
            return not running & HEAVY
        return not running & ALONE

    def worker() -> None:
        while True:
            with changed:
                while True:
                    if not pending:
                        return
                    index = next((i for i in pending if may_start(i)), None)
                    if index is not None:
                        break
                    changed.wait()
                pending.remove(index)
                running.add(groups[index][0].name)
            try:
                done[index] = one(index)
            finally:
                with changed:
                    running.discard(groups[index][0].name)
                    changed.notify_all()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for started in [pool.submit(worker) for _ in range(jobs)]:
            started.result()  # a group's failure is the run's
    results: dict[str, dict[str, Any]] = {}
    for index in sorted(done):
        results |= done[index]
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--suite", action="append", help="run only these suites")
    parser.add_argument("--part", help="run only the suites of this part (PARTS)")
    parser.add_argument("--no-netns", action="store_true", help="ports 8000/8001 are free here")
    parser.add_argument("--jobs", type=int, help=f"server groups at once (default {JOBS})")
    parser.add_argument("--models", type=Path, help="the generated models (with --group)")
    parser.add_argument("--group", type=int, help="run this server group alone (internal)")
    args = parser.parse_args()
    if not args.no_netns:
        loopback_up()
    groups = server_groups(args.suite, args.part)
    if args.group is not None:  # one group, in its own namespaces
        results = run_group(groups[args.group], args.work, args.models)
        args.out.write_text(json.dumps(results))
        return 0
    work: Path = args.work
    began = time.monotonic()
    shutil.copytree(HERE / "qa", work / "qa", dirs_exist_ok=True)
    models = generate(work)
    print(f"models generated in {time.monotonic() - began:.1f} s", flush=True)
    jobs = args.jobs or PART_JOBS.get(args.part or "", JOBS)
    if not args.no_netns and jobs > 1 and len(groups) > 1 and isolation_works():
        results = run_isolated(groups, args, models, jobs)
    else:  # one server at a time on this namespace's ports
        results = {}
        for index, group in enumerate(groups):
            results |= run_group(group, work / "groups" / str(index), models)
    print(f"all done in {time.monotonic() - began:.1f} s", flush=True)
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


# ---- L0_lifecycle
# Each method of lifecycle_test.py runs on a server started as its test.sh
# starts it (one a method, but where said), on the repository it lays out
# in `pwd`/models (repo_in_cwd: the test edits it), with the files it
# leaves beside. What is not run, and why: docs/service.md.
LIFECYCLE_ONNX = "onnx_float32_float32_float32"


def lifecycle_onnx(edit: Callable[[Path], None]) -> Recipe:
    """``cp -r qa_model_repository/onnx_float32_float32_float32 models/.``
    and test.sh's edits of the copy (``edit`` gets its folder)."""

    def fill(models: Path, repo: Path) -> None:
        copy("qa_model_repository", f"^{LIFECYCLE_ONNX}$")(models, repo)
        edit(repo / LIFECYCLE_ONNX)

    return fill


def no_model_files(model: Path) -> None:
    """test_model_control_fail: ``rm models/X/*/*`` (every version folder
    emptied) and ``max_batch_size: 1``."""
    for file in model.glob("*/*"):
        file.unlink()
    batch_1(model)


def batch_1(model: Path) -> None:
    """test_model_control: ``max_batch_size: 1`` (its ensemble
    ``simple_onnx_float32_float32_float32`` is left out: not served)."""
    config = model / "config.pbtxt"
    config.write_text(re.sub(r"max_batch_size:.*", "max_batch_size: 1", config.read_text()))


def as_is(model: Path) -> None:
    """test_dynamic_file_delete: the model unchanged (its TensorRT twin is
    left out: not served)."""


def only_version_2_files(model: Path) -> None:
    """test_config_override: ``rm models/X/1/* models/X/3/*``."""
    for file in [*model.glob("1/*"), *model.glob("3/*")]:
        file.unlink()


def no_version_1(model: Path) -> None:
    """test_file_override: ``rm -rf models/X/1``."""
    shutil.rmtree(model / "1")


IDENTITY_INSTANCES = """instance_group [
  {
    count: 1
    kind : KIND_CPU
  }
]
"""


def identity_zero_1_int32(policy: str) -> Recipe:
    """Triton's identity-backend ``identity_zero_1_int32`` (INT32 INPUT0 to
    OUTPUT0, dims [ -1 ], max_batch_size 0, one CPU instance), versions 1
    and 2, with ``policy`` appended as test.sh appends it. The stand-in: the
    generators make no INT32 identity model, so this is the generated
    ``onnx_nobatch_zero_1_float32``'s graph and configuration with INT32
    tensors (its version_policy line dropped: Triton's configuration has
    none)."""
    name = "identity_zero_1_int32"

    def fill(models: Path, repo: Path) -> None:
        renamed(IDENTITY, "onnx_nobatch_zero_1_float32", name)(models, repo)
        folder = repo / name
        shutil.copytree(folder / "1", folder / "2")
        retyped(folder, "TYPE_FP32", "TYPE_INT32")
        config = folder / "config.pbtxt"
        text = re.sub(r"^version_policy:.*\n", "", config.read_text(), flags=re.M)
        config.write_text(text + IDENTITY_INSTANCES + policy + "\n")

    return fill


def config_copy(name: str, *edits: tuple[str, str]) -> Recipe:
    """``cp models/identity_zero_1_int32/config.pbtxt NAME`` beside the
    repository, and ``sed`` on the copy."""

    def fill(models: Path, cwd: Path) -> None:
        text = (cwd / "models" / "identity_zero_1_int32" / "config.pbtxt").read_text()
        for old, new in edits:
            text = re.sub(old, new, text, flags=re.M)
        (cwd / name).write_text(text)

    return fill


def private_root_home(models: Path, cwd: Path) -> None:
    """test_file_override_security tries to write into /root through the
    load API and needs /root/.bashrc to exist (as in Triton's container).
    Inside this run's user and mount namespaces: a visible /root/.bashrc
    gets a copy of its own bound over it (the host's file is never the
    target); a /root this user cannot read (nothing of the run lives
    there) gets a tmpfs with a .bashrc. Outside such namespaces (uid_map
    the whole range) /root is left as it is."""
    uid_map = Path("/proc/self/uid_map").read_text().split()
    if uid_map[:3] == ["0", "0", "4294967295"]:
        return
    bashrc = Path("/root/.bashrc")
    if bashrc.exists():
        copy = cwd / "bashrc"
        copy.write_bytes(bashrc.read_bytes())
        subprocess.run(["mount", "--bind", str(copy), str(bashrc)], check=True)
    else:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/root"], check=True)
        bashrc.write_text("# the run's own /root (run_qa.py)\n")


POLICY_1 = "version_policy: { specific { versions: [1] }}"
POLICY_2 = "version_policy: { specific { versions: [2] }}"
# test.sh: --model-control-mode=explicit (--strict-model-config=false and
# --strict-readiness=false are bnfold's behaviour without a setting: a
# configuration is completed from the graph; its readiness is strict).
EXPLICIT = {"BNFOLD_MODEL_CONTROL_MODE": "explicit"}
# test_model_availability_on_reload_3 leaves the repository as it found it
# (config.pbtxt.new is the model's configuration), so its [grpc] and [http]
# runs share one server, one after the other (test.sh starts one for each).
LIFECYCLE_RELOAD_3 = (identity_zero_1_int32(POLICY_1),)
LIFECYCLE_RELOAD_3_BESIDE = (config_copy("config.pbtxt.new"),)


def lifecycle(
    name: str,
    tests: tuple[str, ...],
    recipes: tuple[Recipe, ...],
    server_env: dict[str, str],
    env: dict[str, str] | None = None,
    beside: tuple[Recipe, ...] = (),
) -> Suite:
    return Suite(
        f"L0_lifecycle[{name}]",
        "L0_lifecycle",
        "lifecycle_test",
        tuple(f"LifeCycleTest.{t}" for t in tests),
        recipes,
        env or {},
        server_env,
        repo_in_cwd=True,
        beside=beside,
    )


SUITES += (
    lifecycle("model_control", ("test_model_control",), (lifecycle_onnx(batch_1),), EXPLICIT),
    lifecycle(
        "dynamic_file_delete",
        ("test_dynamic_file_delete",),
        (lifecycle_onnx(as_is),),
        # --model-control-mode=poll --repository-poll-secs=1
        {"BNFOLD_MODEL_CONTROL_MODE": "poll", "BNFOLD_POLL_S": "1"},
    ),
    lifecycle(
        "model_control_fail",
        ("test_model_control_fail",),
        (lifecycle_onnx(no_model_files),),
        EXPLICIT,
    ),
    lifecycle(
        "config_override",
        ("test_config_override",),
        (lifecycle_onnx(only_version_2_files),),
        EXPLICIT,
    ),
    # test.sh runs both on one server, one after the other
    lifecycle(
        "file_override",
        ("test_file_override", "test_file_override_security"),
        (lifecycle_onnx(no_version_1),),
        {**EXPLICIT, "BNFOLD_LOAD_MODEL": json.dumps([LIFECYCLE_ONNX])},
        beside=(private_root_home,),
    ),
    *(
        lifecycle(
            f"availability_on_reload_3,{protocol}",
            ("test_model_availability_on_reload_3",),
            LIFECYCLE_RELOAD_3,
            {**EXPLICIT, "BNFOLD_LOAD_MODEL": json.dumps(["identity_zero_1_int32"])},
            {"TRITONSERVER_USE_GRPC": "1"} if protocol == "grpc" else {},
            beside=LIFECYCLE_RELOAD_3_BESIDE,
        )
        for protocol in ("grpc", "http")
    ),
    lifecycle(
        "model_reload_fail",
        ("test_model_reload_fail",),
        (identity_zero_1_int32(POLICY_1),),
        {**EXPLICIT, "BNFOLD_LOAD_MODEL": json.dumps(["identity_zero_1_int32"])},
        beside=(
            config_copy(
                "config.pbtxt.v2.gpu",
                (r"^version_policy:.*$", POLICY_2),
                ("KIND_CPU", "KIND_GPU"),
            ),
        ),
    ),
)


# ---- logging and tracing (L0_logging's log_format_test.py)
# test.sh: ``python3 -m pytest log_format_test.py``; the file starts
# ``tritonserver`` itself for each test (tritonserver.py) on log_models/simple
# and waits 10 s for it each time: its tests in two halves, two groups that
# run at once where namespaces allow (each on its own ports).
def log_format_tests(escaped: bool) -> tuple[str, ...]:
    tail = "" if escaped else "_unescaped"
    formats = [f"test_format[{f}{tail}]" for f in ("default", "ISO8601")]
    injections = [
        f"test_injection[{f}{tail}{c}]" for f in ("default", "ISO8601") for c in ("", "_control")
    ]
    return tuple(f"TestLogFormat.{t}" for t in formats + injections)


SUITES += tuple(
    Suite(
        f"L0_logging[log_format,{half}]",
        "L0_logging",
        "log_format_test",
        log_format_tests(half == "escaped"),
        (simple_v1("simple"),),
        own_repo="log_models",
        pytest=True,
    )
    for half in ("escaped", "unescaped")
)

# ---- L0_batcher: Triton's dynamic batcher (batcher_test.py), BACKENDS=onnx


def batcher_model(source: str, dynamic_batching: str, variable: bool = False) -> Recipe:
    """test.sh's ``onnx_float32_float32_float32`` of ``source`` (its version 1,
    the one its version_policy keeps): max_batch_size 8, ``dynamic_batching``
    appended; in var_models every 16 of the configuration made -1."""

    def fill(models: Path, repo: Path) -> None:
        name = "onnx_float32_float32_float32"
        copy(source, f"^{name}$", only_version="1")(models, repo)
        config = repo / name / "config.pbtxt"
        text = re.sub(r"^max_batch_size:.*", "max_batch_size: 8", config.read_text(), flags=re.M)
        policy = "version_policy: { specific { versions: [1] }}"
        text = re.sub(r"^version_policy:.*", policy, text, flags=re.M)
        if variable:
            text = text.replace("16", "-1")
        config.write_text(f"{text}\n{dynamic_batching}\n")

    return fill


BATCHER_DYNAMIC = (
    "dynamic_batching { preferred_batch_size: [ 2, 6 ], max_queue_delay_microseconds: 10000000 }"
)
BATCHER_MODELS = (batcher_model("qa_model_repository", BATCHER_DYNAMIC),)
BATCHER_VAR_MODELS = (batcher_model("qa_variable_model_repository", BATCHER_DYNAMIC, True),)
BATCHER_PREFERRED_ONLY = (
    batcher_model("qa_model_repository", "dynamic_batching { preferred_batch_size: [ 4, 6 ] }"),
)
# (method, models, TRITONSERVER_DELAY_SCHEDULER) as test.sh runs them, each on
# a server of its own (the statistics start at zero); those that wait out the
# 10 s queue delay first. FIXED models for NO_DELAY_TESTS and DELAY_TESTS
# (test.sh runs them on var_models too, the same model under the same name).
BATCHER_TESTS: tuple[tuple[str, tuple[Recipe, ...], int], ...] = (
    ("test_static_batch_lt_any_preferred", BATCHER_MODELS, 0),
    ("test_static_batch_not_preferred", BATCHER_MODELS, 0),
    ("test_multi_batch_not_preferred", BATCHER_MODELS, 0),
    ("test_multi_batch_sum_gt_max_preferred", BATCHER_MODELS, 0),
    ("test_multi_batch_delayed_sum_gt_max_preferred", BATCHER_MODELS, 2),
    ("test_multi_batch_use_best_preferred", BATCHER_MODELS, 3),
    ("test_multi_batch_delayed_use_max_batch", BATCHER_MODELS, 3),
    ("test_multi_batch_not_preferred_different_shape", BATCHER_VAR_MODELS, 0),
    ("test_multi_batch_different_shape", BATCHER_VAR_MODELS, 0),
    ("test_static_batch_preferred", BATCHER_MODELS, 0),
    ("test_static_batch_gt_max_preferred", BATCHER_MODELS, 0),
    ("test_multi_batch_gt_max_preferred", BATCHER_MODELS, 0),
    ("test_multi_same_output0", BATCHER_MODELS, 0),
    ("test_multi_same_output1", BATCHER_MODELS, 0),
    ("test_multi_different_outputs", BATCHER_MODELS, 0),
    ("test_multi_different_output_order", BATCHER_MODELS, 0),
    ("test_multi_batch_use_biggest_preferred", BATCHER_MODELS, 6),
    ("test_multi_batch_preferred_different_shape", BATCHER_VAR_MODELS, 0),
    ("test_multi_batch_delayed_preferred_different_shape", BATCHER_VAR_MODELS, 4),
    ("test_preferred_batch_only_aligned", BATCHER_PREFERRED_ONLY, 4),
    ("test_preferred_batch_only_unaligned", BATCHER_PREFERRED_ONLY, 5),
    ("test_preferred_batch_only_use_biggest_preferred", BATCHER_PREFERRED_ONLY, 7),
    ("test_preferred_batch_only_use_no_preferred_size", BATCHER_PREFERRED_ONLY, 3),
)


def batcher_suite(method: str, models: tuple[Recipe, ...], delay: int) -> Suite:
    variable = models is BATCHER_VAR_MODELS
    env = {"BACKENDS": "onnx", "BATCHER_TYPE": "VARIABLE" if variable else "FIXED"}
    server_env = {}
    if delay:  # the test checks the variable; bnfold's server reads its own name
        env["TRITONSERVER_DELAY_SCHEDULER"] = str(delay)
        server_env["BNFOLD_TEST_DELAY_SCHEDULER"] = str(delay)
    return Suite(
        "L0_batcher",
        "L0_batcher",
        "batcher_test",
        (f"BatcherTest.{method}",),
        models,
        env,
        server_env,
        own_server=True,
    )


SUITES += tuple(batcher_suite(*row) for row in BATCHER_TESTS)
PARTS["batcher"] = ("L0_batcher",)
# 23 servers, most of whose time is the 10 s queue delay (or the sleeps) of
# the method they serve: more at once than the CPUs (measured, README.md).
PART_JOBS["batcher"] = 6


if __name__ == "__main__":
    sys.exit(main())
