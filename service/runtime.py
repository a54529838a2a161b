"""ONNX Runtime sessions: CUDA when it really loads, CPU otherwise.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even on a
machine without a GPU, and a session asked for CUDA that cannot load it
falls back to CPU with nothing but a log line. So the provider reported
everywhere is ``session.get_providers()[0]`` after creation, never the one
asked for; after one failed CUDA attempt the process stops asking.

A model's configuration may ask for more (Triton's ``optimization`` and the
ONNX Runtime backend's ``parameters``, read by service/ort_settings.py):
TensorRT or OpenVINO first, CUDA's options, the graph optimization level,
threads, arenas. A provider that cannot run here is skipped for the next
one, and the reason goes to the log and the model's metadata
(``Runtime.describe``).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .files import inside, read_file, regular_size, tensors
from .ort_settings import TENSORRT, OrtSettings, Provider
from .signature import GraphTensor, Signature

log = logging.getLogger("bnfold.service")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "auto"  # auto | cuda | cpu
    device_id: int = 0
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    inter_op_threads: int = 1
    spinning: bool = False
    max_model_bytes: int = 2 << 30
    ort: OrtSettings | None = None  # the model's own ONNX Runtime settings
    warmup_max_batch: int = 64  # warm-up runs at most this batch, whatever max_batch_size


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
    for tensor in tensors(model.graph):
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
        location, offset, given = external_entries(tensor)
        if not inside(root / location, root):
            raise ValueError(f"external data {location!r} of {tensor.name!r} escapes the version")
        target = root / location
        try:
            size = regular_size(target, root=root)
        except ValueError as e:
            raise ValueError(f"external data {location!r} of {tensor.name!r}: {e}") from None
        length = declared if given is None else given
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


def external_entries(tensor: Any) -> tuple[str, int, int | None]:
    """``(location, offset, length)`` of an external tensor (length None:
    not given); ``ValueError`` for a location that is empty or absolute, or
    a number that is not one. Whether it stays inside is the caller's check."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    if not location or os.path.isabs(location):
        raise ValueError(f"external data {location!r} of {tensor.name!r} escapes the version")
    length = _int_entry(entries, "length", -1)
    return location, _int_entry(entries, "offset", 0), None if length < 0 else length


def _int_entry(entries: dict[str, str], key: str, default: int) -> int:
    value = entries.get(key)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"external data {key} {value!r} is not a non-negative integer")
    return int(value)


# --- sessions ---------------------------------------------------------------


def replace_options(provider: Provider, **extra: str) -> Provider:
    """``provider`` with ``extra`` options (the device id) added."""
    return Provider(provider.name, provider.options | extra, provider.asked_by, provider.gpu)


@dataclass(frozen=True)
class WarmupSample:
    """One of Triton's ``model_warmup`` samples: wire-shaped feeds, run ``count`` times."""

    name: str
    feeds: dict[str, np.ndarray]
    count: int = 1


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
        settings = options.ort or OrtSettings()
        self.settings = settings
        self.warmup_max_batch = options.warmup_max_batch
        so = ort.SessionOptions()
        if external_data_dir is not None:
            # The graph comes as bytes (the ones hashed); its external data
            # is read from this folder, checked by external_data_files.
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(external_data_dir)
            )
        level = settings.graph_level or "ORT_ENABLE_ALL"
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads = settings.intra_op_threads or options.intra_op_threads
        so.inter_op_num_threads = settings.inter_op_threads or options.inter_op_threads
        if settings.execution_mode is not None:
            so.execution_mode = getattr(ort.ExecutionMode, settings.execution_mode)
        if settings.mem_arena is not None:
            so.enable_cpu_mem_arena = settings.mem_arena
        if settings.mem_pattern is not None:
            so.enable_mem_pattern = settings.mem_pattern
        for key, value in settings.session_entries.items():
            so.add_session_config_entry(key, value)
        so.log_severity_level = 3
        spin = "1" if options.spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        self._run_options: ort.RunOptions | None = None
        self._run_entries = dict(settings.run_entries)
        if settings.run_entries:
            self._run_options = ort.RunOptions()
            for key, value in settings.run_entries.items():
                self._run_options.add_run_config_entry(key, value)

        self.fallbacks: list[dict[str, Any]] = []
        self.requested = self._providers(options, settings)
        providers: list[Any] = [
            (p.name, p.options) if p.options else p.name for p in self.requested
        ]
        if any(p.name in GPU_PROVIDERS for p in self.requested):
            _cuda.preload()
        self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        loaded = self.session.get_providers()
        self.provider: str = loaded[0]
        on_gpu = self.provider in GPU_PROVIDERS
        self.device_id: int | None = options.device_id if on_gpu else None
        if options.device == "cuda" and not on_gpu:
            raise RuntimeError("CUDA was required (device=cuda) but did not load")
        for p in self.requested:
            if p.name not in loaded:
                self._fall_back(p, "did not load (ONNX Runtime's log says why)")
        if any(p.name == CUDA for p in self.requested) and CUDA not in loaded:
            _cuda.failed = True
            log.warning("%s: CUDA provider did not load; serving on %s", label, self.provider)
        self.inputs: list[GraphTensor] = [
            (a.name, a.type, list(a.shape)) for a in self.session.get_inputs()
        ]
        self.outputs: list[GraphTensor] = [
            (a.name, a.type, list(a.shape)) for a in self.session.get_outputs()
        ]
        # Inputs with an initializer default, which a feed may override.
        self.defaults: list[GraphTensor] = [
            (a.name, a.type, list(a.shape)) for a in self.session.get_overridable_initializers()
        ]
        self._output_names = [o[0] for o in self.outputs]
        # Strings live on the host: ONNX Runtime runs their nodes on the CPU
        # and cannot bind them to CUDA memory.
        self._host_only = any(t[1] == "tensor(string)" for t in [*self.inputs, *self.outputs])
        self._reshape_in: dict[str, tuple[int, ...]] = {}
        self._reshape_out: dict[str, tuple[int, ...]] = {}
        self._batched = False
        self.warmup_runs: list[dict[str, Any]] = []

    def _providers(self, options: RuntimeOptions, settings: OrtSettings) -> list[Provider]:
        """The providers to ask for, in order, CPU last; the ones that cannot
        run here are left out with the reason (``self.fallbacks``)."""
        available = ort.get_available_providers()
        out: list[Provider] = []
        gpu = list(settings.gpu)
        if options.device == "cpu":
            for p in gpu:  # Triton adds GPU providers to GPU instances only
                self._fall_back(p, "the model runs on the CPU (instance_group or --device)")
            gpu = []
        elif not gpu:
            gpu = [Provider(CUDA, {}, "the server's device", True)]
        for p in gpu:
            if p.name in available and _cuda.wanted(options.device):
                out.append(replace_options(p, device_id=str(options.device_id)))
            elif settings.gpu:  # the server's own CUDA attempt stays quiet, as before
                if p.name not in available:
                    why = "not in this ONNX Runtime build"
                elif _cuda.failed:
                    why = "CUDA failed to load earlier in this process"
                else:
                    why = "no GPU found"
                self._fall_back(p, why)
        for p in settings.cpu:
            if p.name in available:
                out.append(p)
            else:
                self._fall_back(p, "not in this ONNX Runtime build")
        return [*out, Provider(CPU, {}, "always", False)]

    def _fall_back(self, provider: Provider, reason: str) -> None:
        """``provider`` is not used: said in the log and the metadata, with
        the options it was (or would have been) given."""
        self.fallbacks.append(
            {
                "provider": provider.name,
                "reason": reason,
                "asked_by": provider.asked_by,
                "options": provider.options,
            }
        )
        log.warning(
            "%s: %s (%s) skipped, falling back to the next provider: %s",
            self.label,
            provider.name,
            provider.asked_by,
            reason,
        )

    def adopt(self, signature: Signature) -> None:
        """Serve ``signature``'s wire shapes: feeds are reshaped to what the
        graph takes and outputs back (Triton's ``reshape``)."""
        self._reshape_in, self._reshape_out = signature.reshapes()
        self._batched = signature.batched

    def describe(self) -> dict[str, Any]:
        """What ONNX Runtime runs this graph with: for the model's metadata."""
        out: dict[str, Any] = {
            "providers": self.session.get_providers() if self.session is not None else [],
            "requested": [
                {"provider": p.name, "options": p.options} for p in self.requested if p.name != CPU
            ],
            "fallbacks": self.fallbacks,
            "session": self.settings.session_report(),
        }
        if self.warmup_runs:
            out["warmup"] = self.warmup_runs
        return out

    def run(
        self, feeds: dict[str, np.ndarray], run_options: ort.RunOptions | None = None
    ) -> dict[str, np.ndarray]:
        """Every output of the graph for ``feeds`` (wire shapes); thread-safe.
        ``run_options`` replaces the model's own (the warm-up's, to stop it)."""
        options = self._run_options if run_options is None else run_options
        if self._reshape_in:
            feeds = {k: self._reshaped(v, self._reshape_in.get(k)) for k, v in feeds.items()}
        if self.provider in GPU_PROVIDERS and not self._host_only:
            results = self._run_bound(feeds, options)
        else:
            outs = self.session.run(self._output_names, feeds, options)
            results = dict(zip(self._output_names, outs, strict=True))
        if self._reshape_out:
            results = {k: self._reshaped(v, self._reshape_out.get(k)) for k, v in results.items()}
        return results

    def _reshaped(self, array: np.ndarray, tail: tuple[int, ...] | None) -> np.ndarray:
        if tail is None:
            return array
        head = array.shape[:1] if self._batched else ()
        return array.reshape(head + tail)

    def _run_bound(
        self, feeds: dict[str, np.ndarray], options: ort.RunOptions | None
    ) -> dict[str, np.ndarray]:
        # I/O binding: one host-to-device copy per input, outputs allocated
        # on the device and copied back once, no per-run staging by ORT.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.device_id or 0)
        if options is None:
            self.session.run_with_iobinding(binding)
        else:
            self.session.run_with_iobinding(binding, options)
        results = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, results, strict=True))

    def warmup(
        self,
        signature: Signature,
        samples: list[WarmupSample] | None = None,
        stop: ort.RunOptions | None = None,
    ) -> int:
        """Run the model's ``model_warmup`` samples, each ``count`` times, or
        without them zeros (batch 1 and the largest batch, at most
        ``warmup_max_batch``), so the first
        client request does not pay for allocation and tuning. Returns the
        runs made; ``warmup_runs`` says which. ``stop`` runs it (with the
        model's run entries): its ``terminate`` flag stops it from another
        thread (the repository's load timeout)."""
        if stop is not None:
            for key, value in self._run_entries.items():
                stop.add_run_config_entry(key, value)
        if samples:
            for sample in samples:
                for _ in range(sample.count):
                    self.run(sample.feeds, stop)
                self.warmup_runs.append({"name": sample.name, "runs": sample.count})
            return sum(s.count for s in samples)
        largest = min(signature.max_batch_size, self.warmup_max_batch)
        sizes = [1, largest] if signature.batched else [None]
        runs = 0
        for batch in dict.fromkeys(sizes):
            feeds = {}
            for spec in signature.inputs:
                if spec.optional and spec.has_default:
                    continue
                dims = [1 if d == -1 else d for d in spec.shape]
                if batch is not None:
                    dims[0] = batch
                if spec.dtype.kind == "O":  # strings: "0", which a Cast to a number takes
                    feeds[spec.name] = np.full(dims, "0", dtype=object)
                else:
                    feeds[spec.name] = np.zeros(dims, dtype=spec.dtype)
            self.run(feeds, stop)
            runs += 1
        return runs

    def close(self) -> None:
        # ORT frees the session (and its device memory) when the last
        # reference goes; drop ours so a retired version does not linger.
        self.session = None
