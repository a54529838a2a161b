"""Triton's example models, rebuilt as ONNX graphs with onnx.helper, in a
repository laid out as Triton's (``config.pbtxt``, ``1/model.onnx``, no
manifest), so that Triton's own example clients find what they expect:

- ``simple``: INPUT0, INPUT1 (INT32, [-1, 16], max_batch_size 8) ->
  OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1;
- ``simple_int8``: the same in INT8;
- ``simple_string``: the same on strings holding integers (Cast in, Cast out);
- ``simple_identity``: INPUT0 -> OUTPUT0, strings, [-1, -1];
- ``simple_fp32``: ``simple`` in FP32, for NaN and typed-contents tests.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 10  # what the installed onnxruntime reads (as served_models.py)
SIMPLE_MODELS = ("simple", "simple_int8", "simple_string", "simple_identity", "simple_fp32")
TRITON_TYPE = {
    TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT8: "TYPE_INT8",
    TensorProto.FLOAT: "TYPE_FP32",
    TensorProto.STRING: "TYPE_STRING",
}


def _graph(
    nodes: list[onnx.NodeProto],
    inputs: list[str],
    outputs: list[str],
    elem: int,
    dims: list[int | str],
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "simple",
        [helper.make_tensor_value_info(n, elem, dims) for n in inputs],
        [helper.make_tensor_value_info(n, elem, dims) for n in outputs],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_sub(elem: int) -> bytes:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (numbers)."""
    return _graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        ["INPUT0", "INPUT1"],
        ["OUTPUT0", "OUTPUT1"],
        elem,
        ["N", 16],
    )


def add_sub_strings() -> bytes:
    """The same on strings that hold integers, as Triton's simple_string."""
    to_int = TensorProto.INT32
    return _graph(
        [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=to_int),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=to_int),
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["diff"]),
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=TensorProto.STRING),
        ],
        ["INPUT0", "INPUT1"],
        ["OUTPUT0", "OUTPUT1"],
        TensorProto.STRING,
        ["N", 16],
    )


def identity_strings() -> bytes:
    return _graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        ["INPUT0"],
        ["OUTPUT0"],
        TensorProto.STRING,
        ["N", "M"],
    )


def pbtxt(
    name: str,
    elem: int,
    inputs: list[str],
    outputs: list[str],
    dims: list[int],
    max_batch_size: int = 8,
) -> str:
    def tensors(names: list[str]) -> str:
        return ",\n".join(
            f'  {{ name: "{n}" data_type: {TRITON_TYPE[elem]} dims: {dims} }}' for n in names
        )

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
    )


def write_model(repo: Path, name: str, model: bytes, config: str, version: int = 1) -> Path:
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model)
    (repo / name / "config.pbtxt").write_text(config)
    return repo / name


def write_simple_models(repo: Path) -> None:
    both, outs = ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"]
    for name, elem in (
        ("simple", TensorProto.INT32),
        ("simple_int8", TensorProto.INT8),
        ("simple_fp32", TensorProto.FLOAT),
    ):
        write_model(repo, name, add_sub(elem), pbtxt(name, elem, both, outs, [16]))
    string = TensorProto.STRING
    write_model(
        repo, "simple_string", add_sub_strings(), pbtxt("simple_string", string, both, outs, [16])
    )
    write_model(
        repo,
        "simple_identity",
        identity_strings(),
        pbtxt("simple_identity", string, ["INPUT0"], ["OUTPUT0"], [-1]),
    )
