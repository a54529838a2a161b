"""A closed-loop gRPC load generator for ``ModelInfer`` (Triton's
``inference.GRPCInferenceService``, which bnfold, PyTriton and KServe all
serve): ``c`` coroutines on one channel, each sending one prepared request
(raw tensor contents, serialized once) after the answer to the last.

    python -m bench.serve.grpc_load --port 8001 --model cifar-cnn \
        --input input --shape 1,3,32,32 --concurrency 32 --seconds 3

Prints one line ``BENCH_JSON {...}`` (requests, errors, seconds, latency
percentiles in microseconds). Runs in its own process, like wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def request_bytes(model: str, name: str, shape: list[int]) -> bytes:
    from bnfold.service.proto import grpc_service_pb2 as pb

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=shape)
    request = pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]
    )
    return request.SerializeToString()


async def run(port: int, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side parsing
        for _ in range(3):
            await call(body)
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    await call(body)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    t = np.asarray(latencies or [0.0]) * 1e6
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "mean_us": float(t.mean()),
        "p50_us": float(np.percentile(t, 50)),
        "p90_us": float(np.percentile(t, 90)),
        "p99_us": float(np.percentile(t, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    body = request_bytes(args.model, args.input, [int(d) for d in args.shape.split(",")])
    result = asyncio.run(run(args.port, body, args.concurrency, args.seconds))
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
