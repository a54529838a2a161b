"""ONNX Runtime sessions: CUDA when it really loads, CPU otherwise.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even on a
machine without a GPU, and a session asked for CUDA that cannot load it
falls back to CPU with nothing but a log line. So the provider reported
everywhere is ``session.get_providers()[0]`` after creation, never the one
asked for; after one failed CUDA attempt the process stops asking.

A model file is read once: size-capped, hashed against the manifest, and
handed to ONNX Runtime as the very bytes that were hashed. A graph with
external data may only point at files inside its own version folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .signature import GraphTensor, Signature

log = logging.getLogger("bnfold.service")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"  # auto | cuda | cpu
    device_id: int = 0
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    inter_op_threads: int = 1
    spinning: bool = False
    max_model_bytes: int = 2 << 30


class _CudaProbe:
    """Remembers, per process, whether CUDA sessions actually came up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failed = False
        self._preloaded = False

    def wanted(self, device: str) -> bool:
        if device == "cpu" or CUDA not in ort.get_available_providers():
            return False
        if device == "cuda":
            return True
        return not self.failed and _gpu_present()

    def preload(self) -> None:
        with self._lock:
            if self._preloaded:
                return
            self._preloaded = True
            preload = getattr(ort, "preload_dlls", None)
            if preload is not None:  # finds CUDA/cuDNN from the nvidia-* wheels
                try:
                    preload()
                except Exception as e:  # a best effort; session creation decides
                    log.warning("onnxruntime.preload_dlls failed: %s", e)


_cuda = _CudaProbe()


def _gpu_present() -> bool:
    # Without a driver the CUDA attempt only costs time and an error log.
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_usable(options: RuntimeOptions) -> bool:
    """Whether new sessions will try CUDA (for ``/v2`` before any model loads)."""
    return _cuda.wanted(options.device)


# --- reading a model file safely ------------------------------------------


def read_model(path: Path, *, sha256: str | None, max_bytes: int) -> bytes:
    """The bytes of ``path``, refused when too large or not matching ``sha256``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ValueError(f"{path.name} is missing") from None
    if size > max_bytes:
        raise ValueError(f"{path.name} is {size} bytes, over the {max_bytes}-byte limit")
    data = path.read_bytes()
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(
                f"{path.name} sha256 {actual[:12]}... does not match "
                f"the manifest's {sha256[:12]}..."
            )
    return data


def external_data_files(data: bytes, version_dir: Path, max_bytes: int) -> list[Path]:
    """External data files the graph refers to, each checked to stay inside
    ``version_dir``; raises ``ValueError`` for escapes and oversize totals."""
    import onnx  # the protobuf classes only; no torch behind this import

    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:
        raise ValueError(f"not an ONNX model: {e}") from None
    root = version_dir.resolve()
    files: list[Path] = []
    total = len(data)
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (root / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(root):
            raise ValueError(f"external data {location!r} of {tensor.name!r} escapes the version")
        if not target.is_file():
            raise ValueError(f"external data {location!r} of {tensor.name!r} is missing")
        if target not in files:
            files.append(target)
            total += target.stat().st_size
    if total > max_bytes:
        raise ValueError(f"model with external data is {total} bytes, over {max_bytes}")
    return files


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


# --- sessions ---------------------------------------------------------------


class Runtime:
    """One ONNX Runtime session and the device it actually runs on."""

    def __init__(self, source: bytes | Path, options: RuntimeOptions, *, label: str) -> None:
        self.label = label
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.log_severity_level = 3
        spin = "1" if options.spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)

        want_cuda = _cuda.wanted(options.device)
        providers: list[Any] = [CPU]
        if want_cuda:
            _cuda.preload()
            providers = [(CUDA, {"device_id": options.device_id}), CPU]
        src = str(source) if isinstance(source, Path) else source
        self.session = ort.InferenceSession(src, sess_options=so, providers=providers)
        self.provider: str = self.session.get_providers()[0]
        self.device_id: int | None = options.device_id if self.provider == CUDA else None
        if options.device == "cuda" and self.provider != CUDA:
            raise RuntimeError("CUDA was required (device=cuda) but did not load")
        if want_cuda and self.provider != CUDA:
            _cuda.failed = True
            log.warning("%s: CUDA provider did not load; serving on %s", label, self.provider)
        self.inputs: list[GraphTensor] = [
            (a.name, a.type, list(a.shape)) for a in self.session.get_inputs()
        ]
        self.outputs: list[GraphTensor] = [
            (a.name, a.type, list(a.shape)) for a in self.session.get_outputs()
        ]
        self._output_names = [o[0] for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph for ``feeds``; thread-safe."""
        if self.provider == CUDA:
            return self._run_bound(feeds)
        results = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # I/O binding: one host-to-device copy per input, outputs allocated
        # on the device and copied back once, no per-run staging by ORT.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.device_id or 0)
        self.session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, results, strict=True))

    def warmup(self, signature: Signature) -> None:
        """Run zeros through the graph (batch 1 and the largest batch), so
        the first client request does not pay for allocation and tuning."""
        sizes = [1, signature.max_batch_size] if signature.batched else [None]
        for batch in dict.fromkeys(sizes):
            feeds = {}
            for spec in signature.inputs:
                dims = [1 if d == -1 else d for d in spec.shape]
                if batch is not None:
                    dims[0] = batch
                feeds[spec.name] = np.zeros(dims, dtype=spec.dtype)
            self.run(feeds)

    def close(self) -> None:
        # ORT frees the session (and its device memory) when the last
        # reference goes; drop ours so a retired version does not linger.
        self.session = None
