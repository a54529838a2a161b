"""The route a user would hand-roll: FastAPI + ONNX Runtime, no batching.

Pydantic models for the V2 JSON request, one session per model created at
startup, a plain ``def`` route (FastAPI runs it in its thread pool) that
turns the JSON data into numpy, runs the session and returns JSON. No binary
tensors, no input checks beyond pydantic's, no queue: what the issue calls
"a naive FastAPI route", measured beside bnfold in ``bench.serve``.

    python -m bench.serve.naive --repo bench/results/tmp/serve-models --port 8090
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from bnfold.contract import scan_versions

DTYPES = {"FP32": np.float32, "INT64": np.int64}


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]


def create_app(repo: Path, device: str) -> FastAPI:
    app = FastAPI()
    sessions: dict[str, ort.InferenceSession] = {}
    for config in sorted(repo.glob("*/config.json")):
        name = json.loads(config.read_text())["name"]
        version = scan_versions(config.parent).valid[-1]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        sessions[name] = ort.InferenceSession(
            str(config.parent / str(version) / "model.onnx"),
            so,
            providers=providers if device == "cuda" else providers[1:],
        )

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, request: InferRequest) -> dict[str, Any]:
        session = sessions.get(name)
        if session is None:
            raise HTTPException(404, f"unknown model {name}")
        feeds = {
            t.name: np.asarray(t.data, dtype=DTYPES[t.datatype]).reshape(t.shape)
            for t in request.inputs
        }
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(names, feeds)
        return {
            "model_name": name,
            "id": request.id or "",
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": list(o.shape), "data": o.ravel().tolist()}
                for n, o in zip(names, outputs, strict=True)
            ],
        }

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    app = create_app(args.repo, args.device)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
