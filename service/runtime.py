"""ONNX Runtime sessions: CUDA when it really loads, CPU otherwise.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even on a
machine without a GPU, and a session asked for CUDA that cannot load it
falls back to CPU with nothing but a log line. So the provider reported
everywhere is ``session.get_providers()[0]`` after creation, never the one
asked for; after one failed CUDA attempt the process stops asking.

A model file is read once (service/files.py: inside the repository, a
regular file, size-capped), hashed against the manifest, and handed to ONNX
Runtime as the very bytes that were hashed. Its declared tensor sizes are
checked before ONNX Runtime allocates them. A graph with external data may
only point at regular files inside its own version folder, which ONNX
Runtime is told to read them from.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .files import inside, read_file, regular_size
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


def read_model(
    path: Path, *, sha256: str | None, max_bytes: int, root: Path | None = None
) -> bytes:
    """The bytes of ``path`` (a regular file inside ``root``, its own folder by
    default), refused when too large or not matching ``sha256``."""
    data = read_file(path, root=path.parent if root is None else root, max_bytes=max_bytes)
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(
                f"{path.name} sha256 {actual[:12]}... does not match "
                f"the manifest's {sha256[:12]}..."
            )
    return data


def external_data_files(data: bytes, version_dir: Path, max_bytes: int) -> list[Path]:
    """Check what the graph declares before ONNX Runtime allocates any of it,
    and return the external data files it refers to.

    Refused (``ValueError``): bytes that are not an ONNX model; a tensor
    whose declared shape alone is over ``max_bytes`` or whose stored bytes
    disagree with it (a model bomb: a few bytes on disk declaring terabytes);
    declared tensors adding up to more than ``max_bytes``; external data
    outside ``version_dir`` (absolute, ``..``, a symlink out), missing, not a
    regular file, or shorter than its declared offset and length.
    """
    import onnx  # the protobuf classes only; no torch behind this import

    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:
        raise ValueError(f"not an ONNX model: {e}") from None
    root = version_dir.resolve()
    files: list[Path] = []
    declared_total = 0
    external_total = 0
    for tensor in _tensors(model.graph):
        declared = _declared_bytes(tensor, max_bytes)
        declared_total += declared
        if declared_total > max_bytes:
            raise ValueError(
                f"the graph declares over {max_bytes} bytes of tensors "
                f"(at {tensor.name!r}); refused"
            )
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            _check_embedded(tensor, declared)
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        if not location or os.path.isabs(location) or not inside(root / location, root):
            raise ValueError(f"external data {location!r} of {tensor.name!r} escapes the version")
        target = root / location
        try:
            size = regular_size(target, root=root)
        except ValueError as e:
            raise ValueError(f"external data {location!r} of {tensor.name!r}: {e}") from None
        offset, length = _int_entry(entries, "offset", 0), _int_entry(entries, "length", declared)
        if length != declared or offset < 0 or offset + length > size:
            raise ValueError(
                f"external data {location!r} of {tensor.name!r}: offset {offset} and length "
                f"{length} do not fit the {size}-byte file and the {declared} bytes declared"
            )
        real = target.resolve()
        if real not in files:
            files.append(real)
            external_total += size
    if len(data) + external_total > max_bytes:
        raise ValueError(
            f"model with external data is {len(data) + external_total} bytes, over {max_bytes}"
        )
    return files


def _declared_bytes(tensor: Any, max_bytes: int) -> int:
    """``prod(dims) * itemsize`` of a tensor, refused past ``max_bytes``."""
    import onnx

    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"tensor {tensor.name!r} declares a negative dimension {dims}")
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(v) for v in tensor.string_data)
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:
        raise ValueError(
            f"tensor {tensor.name!r} has unknown data type {tensor.data_type}"
        ) from None
    declared = math.prod(dims) * itemsize
    if declared > max_bytes:
        raise ValueError(
            f"tensor {tensor.name!r} declares shape {dims} ({declared} bytes), "
            f"over the {max_bytes}-byte limit; refused"
        )
    return declared


def _check_embedded(tensor: Any, declared: int) -> None:
    """Raw bytes, when given, must be exactly what the shape declares."""
    if tensor.HasField("raw_data") and len(tensor.raw_data) != declared:
        raise ValueError(
            f"tensor {tensor.name!r} declares {declared} bytes but holds "
            f"{len(tensor.raw_data)}; refused"
        )


def _int_entry(entries: dict[str, str], key: str, default: int) -> int:
    value = entries.get(key)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"external data {key} {value!r} is not a non-negative integer")
    return int(value)


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

    def __init__(
        self,
        source: bytes,
        options: RuntimeOptions,
        *,
        label: str,
        external_data_dir: Path | None = None,
    ) -> None:
        self.label = label
        so = ort.SessionOptions()
        if external_data_dir is not None:
            # The graph comes as bytes (the ones hashed); its external data
            # is read from this folder, checked by external_data_files.
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(external_data_dir)
            )
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
        self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
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
        # Strings live on the host: ONNX Runtime runs their nodes on the CPU
        # and cannot bind them to CUDA memory.
        self._host_only = any(t[1] == "tensor(string)" for t in [*self.inputs, *self.outputs])

    def run(self, feeds: dict[str, np.ndarray], run_options: Any = None) -> dict[str, np.ndarray]:
        """Every output of the graph for ``feeds``; thread-safe."""
        if self.provider == CUDA and not self._host_only:
            return self._run_bound(feeds, run_options)
        results = self.session.run(self._output_names, feeds, run_options)
        return dict(zip(self._output_names, results, strict=True))

    def _run_bound(self, feeds: dict[str, np.ndarray], run_options: Any) -> dict[str, np.ndarray]:
        # I/O binding: one host-to-device copy per input, outputs allocated
        # on the device and copied back once, no per-run staging by ORT.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.device_id or 0)
        self.session.run_with_iobinding(binding, run_options)
        results = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, results, strict=True))

    def warmup(self, signature: Signature, run_options: Any = None) -> None:
        """Run zeros through the graph (batch 1 and the largest batch), so
        the first client request does not pay for allocation and tuning.
        ``run_options.terminate`` stops it from another thread."""
        sizes = [1, signature.max_batch_size] if signature.batched else [None]
        for batch in dict.fromkeys(sizes):
            feeds = {}
            for spec in signature.inputs:
                dims = [1 if d == -1 else d for d in spec.shape]
                if batch is not None:
                    dims[0] = batch
                if spec.dtype.kind == "O":  # strings: "0", which a Cast to a number takes
                    feeds[spec.name] = np.full(dims, "0", dtype=object)
                else:
                    feeds[spec.name] = np.zeros(dims, dtype=spec.dtype)
            self.run(feeds, run_options)

    def close(self) -> None:
        # ORT frees the session (and its device memory) when the last
        # reference goes; drop ours so a retired version does not linger.
        self.session = None
