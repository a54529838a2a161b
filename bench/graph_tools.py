"""The graph tools the folding benchmarks (bench/fold, bench/zoo) run on
the same networks as bnfold: each takes a model and returns the tool's
result, leaving the model as it was."""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from bnfold.folding import fold


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def t_bnfold(model: onnx.ModelProto) -> onnx.ModelProto:
    return fold(model)[0]


def t_onnxoptimizer(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(
        copy_model(model), onnxoptimizer.get_fuse_and_elimination_passes()
    )


def t_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(copy_model(model))
    if not ok:
        raise RuntimeError("onnxsim check failed")
    return simplified


def t_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(copy_model(model))


def t_onnxscript(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxscript.optimizer
    import onnxscript.rewriter

    optimized = onnxscript.optimizer.optimize(copy_model(model))
    return onnxscript.rewriter.rewrite(optimized)  # default rules, fuse_batchnorm among them


def t_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's own graph optimizations (ORT_ENABLE_ALL), saved."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = path
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(path)
