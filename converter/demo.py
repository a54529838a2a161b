"""``bnfold demo``: the whole path on the embedded default, in one command.

Builds the digits MLP into the repository if it is missing (train, export,
fold, verify), starts the service on it, sends digits of the test split
(never seen in training) over the Open Inference Protocol as the data set
stores them (ink counts 0..16) and one rendered as a PNG to ``/classify``,
prints what came back, then keeps serving until Ctrl-C or SIGTERM (or stops
at once with ``--once``); either signal stops the service it started.

It checks that the server answering is the one it started: a port already in
use is refused before anything starts (exit 2, naming the port), and every
answer must carry the ``X-Bnfold-Worker`` id of its own server process.

``bnfold sample-image`` (:func:`render_test_sample`) writes the PNG of a
test-split sample that the README's classify example sends.
"""

from __future__ import annotations

import errno
import io
import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from bnfold.contract import scan_versions
from bnfold.converter.errors import InputError

DEFAULT_NAME = "digits-mlp"
N_DIGITS = 8
WORKER_HEADER = "X-Bnfold-Worker"  # the answering server's process id


class ServiceStartError(InputError):
    """The service did not come up, or another server answers on its port (exit 2)."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: stop the service and leave."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


Print = Callable[[str], None]


def ensure_model(repo: Path, name: str, log: Print) -> dict[str, Any]:
    """The newest manifest of ``name``, converting the default model first if none exists."""
    have = scan_versions(repo / name).valid
    if not have:
        from bnfold.converter.pipeline import ConvertOptions, convert

        log(f"{repo / name} has no version yet: building it (train, export, fold, verify)")
        convert(ConvertOptions(arch="mlp", data="digits", repo=repo, name=name), log=log)
        have = scan_versions(repo / name).valid
    else:
        log(f"using {repo / name}/{have[-1]} (delete it to rebuild)")
    manifest: dict[str, Any] = json.loads(
        (repo / name / str(have[-1]) / "manifest.json").read_text()
    )
    return manifest


# --------------------------------------------------------------------------- test samples


@dataclass(frozen=True)
class Samples:
    x: np.ndarray  # the model's input, batch first
    y: np.ndarray  # the data set's labels
    indices: np.ndarray  # which samples of the data set


def _test_split(manifest: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """The manifest's data set and its test split (indices), as the converter made them."""
    from bnfold.converter.data import load, split_indices

    data = manifest.get("data") or {}
    spec = data.get("spec") or data.get("name") or "digits"
    shape = tuple(manifest["arch"]["input_shape"]) if manifest.get("arch") else (64,)
    dataset = load(spec, input_shape=shape, seed=int(data.get("seed", 0)))
    test = split_indices(dataset, seed=int(data.get("seed", 0)), limit=data.get("limit"))["test"]
    return dataset, test


def split_samples(manifest: dict[str, Any], n: int, seed: int = 0) -> Samples:
    """``n`` samples of the test split, as the model takes them: the raw values
    (counts 0..16 for digits) when its graph normalises them itself
    (``normalized: false``), else standardised as its preprocessing says."""
    from bnfold.converter.data import fit_to

    dataset, test = _test_split(manifest)
    pick = np.sort(np.random.default_rng(seed).choice(test, size=min(n, len(test)), replace=False))
    pre = manifest["preprocessing"]
    shape = tuple(manifest["arch"]["input_shape"])
    raw = fit_to(dataset.x[pick], shape, resize=True).astype(np.float32)
    if pre.get("normalized", True):
        # a manifest from before input_range divided digits by 16, whatever pixel_scale said
        scale = pre["pixel_scale"] if "input_range" in pre else dataset.pixel_scale
        axis_shape = (1, -1) + (1,) * (raw.ndim - 2)
        mean = np.asarray(pre["mean"], dtype=np.float64).reshape(axis_shape)
        std = np.asarray(pre["std"], dtype=np.float64).reshape(axis_shape)
        raw = ((raw / scale - mean) / std).astype(np.float32)
    return Samples(raw, dataset.y[pick], pick)


@dataclass(frozen=True)
class SampleImage:
    png: bytes
    label: str
    index: int  # in the data set
    position: int  # in the test split
    background: str  # as drawn: "light" (dark ink on white) or "dark"


def render_test_sample(
    manifest: dict[str, Any], position: int = 0, *, size: int = 128, background: str = "light"
) -> SampleImage:
    """A PNG of test-split sample ``position`` (0: the first), as a person
    would have it: its values mapped from the data's range to 0..255, scaled
    up (nearest) to ``size`` pixels on the longer side and, for data of light
    ink on dark (digits), drawn dark on white unless ``background="dark"``."""
    from PIL import Image

    dataset, test = _test_split(manifest)
    if not 0 <= position < len(test):
        raise InputError(f"--index {position}: the test split has {len(test)} samples")
    index = int(test[position])
    sample = np.asarray(dataset.x[index], dtype=np.float64)
    if sample.ndim == 1:  # flat features of a square image
        side = math.isqrt(sample.size)
        if side * side != sample.size:
            raise InputError(f"a sample of {sample.size} features is not a square image")
        sample = sample.reshape(1, side, side)
    lo, hi = dataset.input_range
    pixels = np.clip((sample - lo) / (hi - lo) * 255.0, 0, 255).round().astype(np.uint8)
    drawn = dataset.background or "dark"
    if dataset.background == "dark" and background == "light":
        pixels = 255 - pixels
        drawn = "light"
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    scale = max(1, size // max(image.size))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    label = dataset.labels[int(dataset.y[index])]
    return SampleImage(out.getvalue(), label, index, position, drawn)


# --------------------------------------------------------------------------- the server


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on, before the service starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise ServiceStartError(f"cannot listen on {host}:{port}: {e.strerror}") from None
            raise ServiceStartError(
                f"port {port} on {host} is already in use by another process (a bnfold demo "
                "or serve still running?); stop it, or pass --port with a free port"
            ) from None


def _get(url: str, timeout: float) -> tuple[Any, str | None]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null"), resp.headers.get(WORKER_HEADER)


def _request(
    url: str,
    body: bytes,
    content_type: str,
    *,
    pid: int,
    timeout: float = 10.0,
) -> Any:
    """POST to our own server; an answer from any other process is refused."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        check_worker(url, resp.headers.get(WORKER_HEADER), pid)
        return json.loads(resp.read() or b"null")


def check_worker(url: str, worker: str | None, pid: int) -> None:
    if worker != str(pid):
        raise ServiceStartError(
            f"{url} was answered by another server (process {worker or 'unknown'}), not the "
            f"one this demo started (process {pid}); is something else listening on that port?"
        )


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Until our server answers ``/v2/health/ready``; an answer from another is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceStartError(
                f"the service exited with code {proc.returncode} before it was ready; its log "
                f"above says why (is {base} already in use? try --port)"
            )
        try:
            _, worker = _get(f"{base}/v2/health/ready", timeout=2)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
            continue
        check_worker(f"{base}/v2/health/ready", worker, proc.pid)
        return
    raise ServiceStartError(f"the service at {base} was not ready within {timeout:.0f} s")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stopped` in the main thread while inside."""

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):  # a second signal does not cut the stop short
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    saved = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, old in saved.items():
            signal.signal(s, old)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def run_demo(
    repo: Path, name: str, host: str, port: int, *, once: bool, log: Print, show: Print
) -> int:
    with stop_on_signals():
        try:
            return _run(repo, name, host, port, once=once, log=log, show=show)
        except Stopped as s:
            show(f"stopped by {s}")
            return 0


def _run(
    repo: Path, name: str, host: str, port: int, *, once: bool, log: Print, show: Print
) -> int:
    check_port(host, port)
    manifest = ensure_model(repo, name, log)
    folding, parity = manifest["folding"], manifest["parity"]
    show(
        f"model {name} v{manifest['version']}: test accuracy "
        f"{manifest['metrics']['test_accuracy']:.4f}; BatchNorm {folding['bn_before']} -> "
        f"{folding['bn_after']} after folding; parity vs PyTorch: max rel error "
        f"{parity['max_rel_error']:.2e}, top-1 agreement {parity['top1_agreement']:.4f}"
    )
    base = f"http://{host}:{port}"
    check_port(host, port)  # again: building the model may have taken a while
    cmd = [sys.executable, "-m", "bnfold", "serve", "--repo", str(repo),
           "--host", host, "--port", str(port), "--grpc-port", "0",
           "--metrics-port", "0"]  # fmt: skip
    log(f"starting the service: {' '.join(cmd[2:])}")
    proc = subprocess.Popen(cmd)
    try:
        wait_ready(base, proc)
        log(f"process {proc.pid} answers on {base} (gRPC and the metrics port off in the demo)")
        samples = split_samples(manifest, N_DIGITS)
        x, y = samples.x, samples.y
        body = {
            "id": "demo",
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}],
        }  # fmt: skip
        url = f"{base}/v2/models/{name}/infer"
        reply = _request(url, json.dumps(body).encode(), "application/json", pid=proc.pid)
        out = reply["outputs"][0]
        logits = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        normalized = manifest["preprocessing"].get("normalized", True)
        what = "standardised" if normalized else "as stored (ink counts 0..16)"
        show(f"POST {url} with {len(y)} digits of the test split, {what}:")
        show("  digit #  true  predicted  probability")
        for index, true, p in zip(samples.indices, y, probs, strict=True):
            show(f"  {index:>7}  {true:>4}  {int(p.argmax()):>9}  {float(p.max()):>11.3f}")
        show(f"{int((probs.argmax(1) == y).sum())}/{len(y)} correct")
        if manifest["preprocessing"].get("layout") and manifest.get("data"):
            sample = render_test_sample(manifest, 0)
            form, content_type = _multipart("file", "digit.png", sample.png)
            url = f"{base}/v2/models/{name}/classify?top_k=1"
            top = _request(url, form, content_type, pid=proc.pid)["predictions"][0]
            show(
                f"POST {url} with test digit #{sample.index} drawn dark on white "
                f"(bnfold sample-image): label {sample.label}, predicted {top['label']} "
                f"({top['probability']:.3f})"
            )
        if once:
            return 0
        show(f"serving {repo} on {base} (try: curl {base}/v2/models/{name}); Ctrl-C to stop")
        return proc.wait()
    finally:
        stop(proc)
