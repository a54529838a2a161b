"""PyTriton: the real Triton Inference Server (the ``tritonserver`` binary
that the ``nvidia-pytriton`` wheel carries) in front of a Python callable
that runs ONNX Runtime on the same ONNX files, with Triton's dynamic
batcher. HTTP (JSON and binary tensors) and gRPC, like bnfold.

Runs in its own virtual environment (bench/serve/.venv-pytriton, made by
``python -m bench.serve --setup-pytriton``):

    bench/serve/.venv-pytriton/bin/python bench/serve/pytriton_server.py \
        --repo bench/results/tmp/serve-models --http-port 8080 --grpc-port 8081
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_BATCH = 64


def session(path: Path, device: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), so, providers=providers)


def bind(triton: Triton, name: str, path: Path, device: str) -> None:
    sess = session(path, device)
    inputs = sess.get_inputs()
    outputs = sess.get_outputs()
    names = [o.name for o in outputs]

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        results = sess.run(names, feeds)
        return dict(zip(names, results, strict=True))

    def dims(shape: list[Any]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in shape[1:])

    triton.bind(
        model_name=name,
        infer_func=infer,
        inputs=[Tensor(name=i.name, dtype=np.float32, shape=dims(i.shape)) for i in inputs],
        outputs=[Tensor(name=o.name, dtype=np.float32, shape=dims(o.shape)) for o in outputs],
        config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher()),
        strict=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    config = TritonConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        for cfg in sorted(args.repo.glob("*/config.json")):
            name = json.loads(cfg.read_text())["name"]
            versions = sorted(int(p.name) for p in cfg.parent.iterdir() if p.name.isdigit())
            bind(triton, name, cfg.parent / str(versions[-1]) / "model.onnx", args.device)
        triton.serve()


if __name__ == "__main__":
    main()
