"""KServe's Python model server (``kserve.ModelServer``) serving the same
ONNX files: what most users would pick instead of bnfold.

Runs in its own virtual environment (bench/serve/.venv-kserve, made by
``python -m bench.serve --setup-kserve``), so kserve's dependencies never
touch the project's. One ``kserve.Model`` per model of the repository, V2
protocol (JSON and Triton's binary extension, decoded by kserve itself),
ONNX Runtime on one thread, no batching (KServe's Python server has none):
``predict`` runs the session on the request's tensors as they come.

    bench/serve/.venv-kserve/bin/python bench/serve/kserve_server.py \
        --repo bench/results/tmp/serve-models --http_port 8080 \
        --enable_grpc false --enable_latency_logging false --configure_logging false
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse

DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: Path, device: str) -> None:
        super().__init__(name)
        self.path = path
        self.device = device
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if self.device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        assert self.session is not None
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(self.output_names, feeds)
        outputs = []
        for name, array in zip(self.output_names, results, strict=True):
            out = InferOutput(name=name, shape=list(array.shape), datatype=DATATYPE[array.dtype])
            out.set_data_from_numpy(array, binary_data=bool(payload.use_binary_outputs))
            outputs.append(out)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=bool(payload.use_binary_outputs),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    args, _ = parser.parse_known_args()  # the rest is kserve's own flags
    models: list[Any] = []
    for config in sorted(args.repo.glob("*/config.json")):
        name = json.loads(config.read_text())["name"]
        versions = sorted(int(p.name) for p in config.parent.iterdir() if p.name.isdigit())
        model = OnnxModel(name, config.parent / str(versions[-1]) / "model.onnx", args.device)
        model.load()
        models.append(model)
    logging.getLogger().setLevel(logging.WARNING)
    kserve.ModelServer(workers=1).start(models)


if __name__ == "__main__":
    main()
