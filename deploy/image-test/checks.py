"""Checks of the built images, driven by deploy/image-test/run.sh (docs/deploy.md,
"What CI runs: the image test"). Each subcommand exits non-zero with one line
saying what was wrong; the clients are the project's own (tritonclient,
ONNX Runtime) from the venv on the host.

    ready URL [--container NAME]        wait for /v2/health/ready == 200
    infer HTTP_HOSTPORT GRPC_HOSTPORT MODEL MODEL_ONNX
                                        HTTP and gRPC inference equal to ONNX
                                        Runtime on the host, same model file
    security CONTAINER                  uid 10001, read-only root, no capabilities
    drain URL CONTAINER                 SIGTERM: not ready while draining, exit 0,
                                        the drain log line
    pods K8S_DIR OUT_DIR                the Deployment's and the Job's pod
                                        templates (found by kind) as CPU Pods
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

APP_UID = 10001
INIT_TYPE = "io.podman.annotations.init.container.type"
PODMAN = "podman"


class CheckFailed(Exception):
    pass


def _status(url: str) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, urllib.error.URLError):
        return None


def _running(container: str) -> bool:
    out = subprocess.run(
        [PODMAN, "inspect", "--format", "{{.State.Running}}", container],
        capture_output=True,
        text=True,
    )
    return out.returncode == 0 and out.stdout.strip() == "true"


def ready(base: str, container: str | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: int | None = None
    while time.monotonic() < deadline:
        last = _status(f"{base}/v2/health/ready")
        if last == 200:
            print(f"ready: {base} answered 200")
            return
        if container and not _running(container):
            raise CheckFailed(f"container {container} stopped before {base} was ready")
        time.sleep(0.5)
    raise CheckFailed(f"{base}/v2/health/ready not 200 within {timeout:.0f} s (last: {last})")


def infer(http: str, grpc: str, model: str, onnx_file: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import tritonclient.grpc as tg
    import tritonclient.http as th

    hc = th.InferenceServerClient(http)
    if not hc.is_server_ready():
        raise CheckFailed(f"HTTP {http}: server not ready")
    meta = hc.get_model_metadata(model)
    (inp,) = meta["inputs"]
    shape = [4 if d == -1 else int(d) for d in inp["shape"]]
    if inp["datatype"] != "FP32":
        raise CheckFailed(f"{model}: input datatype {inp['datatype']}, expected FP32")
    x = np.random.default_rng(21).standard_normal(shape).astype(np.float32)
    outputs = [o["name"] for o in meta["outputs"]]

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    want = dict(zip(outputs, sess.run(outputs, {inp["name"]: x}), strict=True))

    hi = th.InferInput(inp["name"], shape, "FP32")
    hi.set_data_from_numpy(x)
    hres = hc.infer(model, [hi], outputs=[th.InferRequestedOutput(o) for o in outputs])

    gc = tg.InferenceServerClient(grpc)
    if not gc.is_server_ready():
        raise CheckFailed(f"gRPC {grpc}: ServerReady is false")
    gi = tg.InferInput(inp["name"], shape, "FP32")
    gi.set_data_from_numpy(x)
    gres = gc.infer(model, [gi], outputs=[tg.InferRequestedOutput(o) for o in outputs])
    gc.close()
    hc.close()

    for proto, res in (("HTTP", hres), ("gRPC", gres)):
        for name in outputs:
            got = res.as_numpy(name)
            if got is None or got.shape != want[name].shape:
                raise CheckFailed(f"{proto} {name}: shape {getattr(got, 'shape', None)}")
            if not np.allclose(got, want[name], rtol=1e-4, atol=1e-5):
                err = float(np.max(np.abs(got - want[name])))
                raise CheckFailed(f"{proto} {name}: differs from ONNX Runtime by {err:g}")
            print(f"infer: {proto} {model} {name}{list(got.shape)} equals ONNX Runtime")


_PROBE = r"""
import errno, os, sys
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
try:
    open("/opt/bnfold/write-probe", "w")
    ro = "writable"
except OSError as e:
    ro = "read-only" if e.errno == errno.EROFS else "error %d" % e.errno
print(os.getuid(), os.getgid(), status["CapEff"].strip(), status["CapBnd"].strip(), ro)
"""


def security(container: str) -> None:
    out = subprocess.run(
        [PODMAN, "exec", container, "python", "-c", _PROBE],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise CheckFailed(f"podman exec {container}: {out.stderr.strip()}")
    uid, gid, cap_eff, cap_bnd, ro = out.stdout.split(maxsplit=4)
    ro = ro.strip()
    problems = []
    if (int(uid), int(gid)) != (APP_UID, APP_UID):
        problems.append(f"runs as {uid}:{gid}, expected {APP_UID}:{APP_UID}")
    if int(cap_eff, 16) or int(cap_bnd, 16):
        problems.append(f"capabilities left: CapEff={cap_eff} CapBnd={cap_bnd}")
    if ro != "read-only":
        problems.append(f"root filesystem is {ro}")
    if problems:
        raise CheckFailed(f"{container}: " + "; ".join(problems))
    print(f"security: {container} runs as {uid}:{gid}, no capabilities, root read-only")


def drain(base: str, container: str, timeout: float) -> None:
    subprocess.run([PODMAN, "kill", "--signal", "TERM", container], check=True, capture_output=True)
    saw_503 = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(container):
        if _status(f"{base}/v2/health/ready") == 503:
            saw_503 = True
            break
        time.sleep(0.1)
    code = subprocess.run(
        [PODMAN, "wait", container], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout.strip()
    logs = subprocess.run(
        [PODMAN, "logs", container], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ).stdout
    if code != "0":
        raise CheckFailed(f"{container} exited {code} after SIGTERM")
    if "SIGTERM: not ready" not in logs:
        raise CheckFailed(f"{container}: no 'SIGTERM: not ready' line in its log")
    if not saw_503:
        raise CheckFailed(f"{container}: readiness never answered 503 while draining")
    print(f"drain: {container} answered 503 while draining, logged it, exited 0")


# ------------------------------------------------------------------ kube play


def _documents(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    import yaml

    docs = []
    for path in sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                docs.append((path, doc))
    return docs


def _template(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a full Deployment or Job (a patch has no image)."""
    tpl = (doc.get("spec") or {}).get("template") or {}
    containers = (tpl.get("spec") or {}).get("containers") or []
    if containers and all(isinstance(c, dict) and c.get("image") for c in containers):
        return tpl
    return None


def _find(root: Path, kind: str) -> tuple[Path, dict[str, Any]]:
    found = [(p, d) for p, d in _documents(root) if d.get("kind") == kind and _template(d)]
    if not found:
        raise CheckFailed(f"no complete kind: {kind} under {root}")
    # The base (fewest folders deep) when overlays carry full copies too.
    found.sort(key=lambda pd: (len(pd[0].relative_to(root).parts), str(pd[0])))
    return found[0]


def _cpu_pod(doc: dict[str, Any], restart: str) -> dict[str, Any]:
    """What the CPU overlay does, applied to the pod template: no GPU limit,
    BNFOLD_DEVICE=cpu."""
    tpl = json.loads(json.dumps(_template(doc)))
    spec = tpl["spec"]
    spec["restartPolicy"] = spec.get("restartPolicy", restart)
    for c in spec.get("initContainers", []) + spec["containers"]:
        limits = (c.get("resources") or {}).get("limits") or {}
        limits.pop("nvidia.com/gpu", None)
        for env in c.get("env", []):
            if env.get("name") == "BNFOLD_DEVICE":
                env["value"] = "cpu"
    meta = {
        "name": doc["metadata"]["name"],
        "labels": tpl.get("metadata", {}).get("labels", {}),
        # podman's default "once" removes an init container as it exits, and
        # podman 4.3 races with itself there ("cannot remove container ... as
        # it is running"); "always" keeps it. The pod starts once either way.
        "annotations": {INIT_TYPE: "always"} if spec.get("initContainers") else {},
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def pods(root: Path, out: Path) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    for kind, restart, name in (("Job", "Never", "job"), ("Deployment", "Always", "deployment")):
        path, doc = _find(root, kind)
        pod = _cpu_pod(doc, restart)
        (out / f"{name}-pod.yaml").write_text(yaml.safe_dump(pod, sort_keys=False))
        print(f"pods: {kind} {doc['metadata']['name']} from {path} -> {out / f'{name}-pod.yaml'}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ready")
    p.add_argument("url")
    p.add_argument("--container")
    p.add_argument("--timeout", type=float, default=240)
    p = sub.add_parser("infer")
    p.add_argument("http")
    p.add_argument("grpc")
    p.add_argument("model")
    p.add_argument("onnx", type=Path)
    p = sub.add_parser("security")
    p.add_argument("container")
    p = sub.add_parser("drain")
    p.add_argument("url")
    p.add_argument("container")
    p.add_argument("--timeout", type=float, default=90)
    p = sub.add_parser("pods")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "ready":
            ready(a.url, a.container, a.timeout)
        elif a.cmd == "infer":
            infer(a.http, a.grpc, a.model, a.onnx)
        elif a.cmd == "security":
            security(a.container)
        elif a.cmd == "drain":
            drain(a.url, a.container, a.timeout)
        else:
            pods(a.root, a.out)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
