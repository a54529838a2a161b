"""``bnfold demo``: the whole path on the embedded default, in one command.

Builds the digits MLP into the repository if it is missing (train, export,
fold, verify), starts the service on it, sends held-out digits over the Open
Inference Protocol and prints what came back, then keeps serving until
Ctrl-C (or stops at once with ``--once``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.contract import scan_versions
from bnfold.converter.errors import InputError

DEFAULT_NAME = "digits-mlp"


class ServiceStartError(InputError):
    """The service did not come up (its own log says why: often a port in use)."""


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


def sample_digits(manifest: dict[str, Any], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digits prepared exactly as the manifest's preprocessing says."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(seed).choice(len(d.target), size=n, replace=False)
    pre = manifest["preprocessing"]
    x = d.images[idx].reshape(n, -1).astype(np.float32) / 16.0  # counts 0..16 -> [0, 1]
    x = (x - np.float32(pre["mean"][0])) / np.float32(pre["std"][0])
    return x.astype(np.float32), d.target[idx]


def _request(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceStartError(
                f"the service exited with code {proc.returncode} before it was ready; its log "
                f"above says why (is {base} already in use? try --port)"
            )
        try:
            urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise ServiceStartError(f"the service at {base} was not ready within {timeout:.0f} s")


def run_demo(
    repo: Path, name: str, host: str, port: int, *, once: bool, log: Print, show: Print
) -> int:
    manifest = ensure_model(repo, name, log)
    folding, parity = manifest["folding"], manifest["parity"]
    show(
        f"model {name} v{manifest['version']}: test accuracy "
        f"{manifest['metrics']['test_accuracy']:.4f}; BatchNorm {folding['bn_before']} -> "
        f"{folding['bn_after']} after folding; parity vs PyTorch: max rel error "
        f"{parity['max_rel_error']:.2e}, top-1 agreement {parity['top1_agreement']:.4f}"
    )
    base = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "bnfold", "serve", "--repo", str(repo),
           "--host", host, "--port", str(port)]  # fmt: skip
    log(f"starting the service: {' '.join(cmd[2:])}")
    proc = subprocess.Popen(cmd)
    try:
        wait_ready(base, proc)
        x, y = sample_digits(manifest, 8)
        body = {
            "id": "demo",
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}],
        }  # fmt: skip
        reply = _request(f"{base}/v2/models/{name}/infer", body)
        out = reply["outputs"][0]
        logits = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        show(f"POST {base}/v2/models/{name}/infer with {len(y)} held-out digits:")
        show("  true  predicted  probability")
        for true, p in zip(y, probs, strict=True):
            show(f"  {true:>4}  {int(p.argmax()):>9}  {float(p.max()):>11.3f}")
        show(f"{int((probs.argmax(1) == y).sum())}/{len(y)} correct")
        if once:
            return 0
        show(f"serving {repo} on {base} (try: curl {base}/v2/models/{name}); Ctrl-C to stop")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
