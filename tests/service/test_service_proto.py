"""The generated protobuf and gRPC modules match the vendored .proto files."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from bnfold.service.proto import generate, model_config_pb2

PROTO_DIR = Path(generate.__file__).parent


def test_generated_modules_are_current(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    names = sorted(p.name for p in written)
    assert names == [
        "grpc_service_pb2.py",
        "grpc_service_pb2.pyi",
        "grpc_service_pb2_grpc.py",
        "model_config_pb2.py",
        "model_config_pb2.pyi",
    ]
    stale = [n for n in names if (tmp_path / n).read_bytes() != (PROTO_DIR / n).read_bytes()]
    assert stale == [], f"regenerate with: python -m bnfold.service.proto.generate ({stale})"


def test_the_generated_schema_reads_a_triton_config() -> None:
    config = text_format.Parse(
        'name: "simple" max_batch_size: 8 input [{ name: "INPUT0" data_type: TYPE_INT32 '
        "dims: [16] }] version_policy: { all: {} }",
        model_config_pb2.ModelConfig(),
    )
    assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("simple", 8, [16])
    assert config.input[0].data_type == model_config_pb2.TYPE_INT32
    assert config.version_policy.WhichOneof("policy_choice") == "all"
