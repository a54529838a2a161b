"""Hostile model repositories: whoever can write a folder into the repository
must not make the server read outside it, hang, crash or allocate what a
file merely declares.

One repository holds two good models and one of each attack; outside it,
beside it, lie files an attacker would point at: FIFOs (opening one for
reading blocks until a writer comes, so a read would hang the loader, and
``open(fifo, O_WRONLY | O_NONBLOCK)`` tells whether anybody holds it open
for reading) and a valid model (which must not be served from there). Every
attack is refused with its reason in the index, at startup and on an
explicit load, the good models serve, and no FIFO was opened.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from served_models import config, mlp, write_mlp
from service_harness import TOKEN, base_settings, run_server

from bnfold.converter.repository import write_version
from bnfold.service.loading import LoadOptions, open_version
from bnfold.service.runtime import RuntimeOptions

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def graph(initializers: list[Any], nodes: list[Any] | None = None) -> bytes:
    """input (N, 10) + sum(w) -> logits (N, 10)."""
    nodes = nodes or [
        helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
        helper.make_node("Add", ["input", "s"], ["logits"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


def external(name: str, location: str, dims: list[int], **entries: str) -> Any:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, **entries}.items():
        e = t.external_data.add()
        e.key, e.value = key, value
    return t


def put(repo: Path, name: str, model: bytes) -> Path:
    """A version whose manifest matches ``model``: only the attack is wrong."""
    return write_version(
        repo,
        name,
        model_onnx=model,
        reference_onnx=model,
        manifest={"format": 1},
        config=config(name, "input", [10], output_shape=[10]),
    )


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def opened_for_reading(path: Path) -> bool:
    """Whether some process holds the FIFO open for reading (or is stuck opening it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        assert e.errno == errno.ENXIO  # no reader
        return False
    os.close(fd)
    return True


# name -> the reason the index must show
ATTACKS = {
    "ext-dotdot": "escapes the version",
    "ext-absolute": "escapes the version",
    "ext-symlink": "escapes the version",
    "ext-fifo": "not a regular file",
    "ext-length": "do not fit",
    "bomb-declared": "declares shape",
    "bomb-external": "declares shape",
    "bomb-raw": "declares 40 bytes but holds 8",
    "link-model": "link out of the repository",
    "link-version": "link out of the model repository",
    "link-file": "is missing or not a file inside the model repository",
    "link-config": "is missing or not a file inside the model repository",
    "fifo-config": "not a regular file",
    "fifo-manifest": "not a regular file",
    "huge-manifest": "over the 16777216-byte limit",
    "dev-zero": "is missing or not a file inside the model repository",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("hostile")
    repo, outside = base / "models", base / "outside"
    repo.mkdir()
    outside.mkdir()
    write_mlp(repo, "good")
    write_mlp(repo, "also-good", seed=1)
    secret = fifo(outside / "secret.fifo")
    (outside / "w.bin").write_bytes(np.ones(10, np.float32).tobytes())
    # an outside model folder, every file a FIFO
    (outside / "model" / "1").mkdir(parents=True)
    for f in ("config.json", "1/model.onnx", "1/reference.onnx", "1/manifest.json"):
        fifo(outside / "model" / f)

    w10 = external("w", "w.bin", [10])
    put(repo, "ext-dotdot", graph([external("w", "../../../outside/w.bin", [10])]))
    put(repo, "ext-absolute", graph([external("w", str(outside / "w.bin"), [10])]))
    (put(repo, "ext-symlink", graph([w10])) / "w.bin").symlink_to(secret)
    fifo(put(repo, "ext-fifo", graph([w10])) / "w.bin")
    v = put(repo, "ext-length", graph([external("w", "w.bin", [10], length=str(1 << 40))]))
    (v / "w.bin").write_bytes(bytes(40))
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    huge.raw_data = bytes(40)  # 40 bytes on disk, 4 TiB declared
    put(repo, "bomb-declared", graph([huge]))
    v = put(repo, "bomb-external", graph([external("w", "w.bin", [1 << 20, 1 << 20])]))
    with open(v / "w.bin", "wb") as f:
        f.truncate(1 << 30)  # sparse: a large file costs nothing on disk
    short = numpy_helper.from_array(np.ones(10, np.float32), "w")
    short.raw_data = bytes(8)
    put(repo, "bomb-raw", graph([short]))

    (repo / "link-model").symlink_to(outside / "model")
    (repo / "link-version").mkdir()
    (repo / "link-version" / "config.json").write_text(
        json.dumps(config("link-version", "input", [64]))
    )
    (repo / "link-version" / "1").symlink_to(outside / "model" / "1")
    folded, _ = mlp(0)
    (outside / "model.onnx").write_bytes(folded)  # valid, and its sha matches the manifest
    v = write_mlp(repo, "link-file")
    (v / "model.onnx").unlink()
    (v / "model.onnx").symlink_to(outside / "model.onnx")
    v = write_mlp(repo, "link-config")
    (repo / "link-config" / "config.json").unlink()
    (repo / "link-config" / "config.json").symlink_to(outside / "model" / "config.json")
    write_mlp(repo, "fifo-config")
    (repo / "fifo-config" / "config.json").unlink()
    fifo(repo / "fifo-config" / "config.json")
    v = write_mlp(repo, "fifo-manifest")
    (v / "manifest.json").unlink()
    fifo(v / "manifest.json")
    v = write_mlp(repo, "huge-manifest")
    with open(v / "manifest.json", "r+b") as f:
        f.truncate(32 << 20)
    v = write_mlp(repo, "dev-zero")
    (v / "reference.onnx").unlink()
    (v / "reference.onnx").symlink_to("/dev/zero")
    return repo, outside


def fifos(outside: Path) -> list[Path]:
    return [p for p in outside.rglob("*") if p.is_fifo()]


@pytest.fixture(scope="module")
def hostile_server(hostile: tuple[Path, Path]) -> Iterator[httpx.Client]:
    repo, outside = hostile
    with (
        run_server(base_settings(repo)) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield client
    assert not any(opened_for_reading(p) for p in fifos(outside))


def test_every_attack_is_refused_with_its_reason(
    hostile_server: httpx.Client, hostile: tuple[Path, Path]
) -> None:
    index = hostile_server.post("/v2/repository/index", headers=AUTH).json()
    reasons = {e["name"]: e["reason"] for e in index if e["state"] != "READY"}
    assert {e["name"] for e in index if e["state"] == "READY"} == {"good", "also-good"}
    for name, reason in ATTACKS.items():
        assert reason in reasons[name], (name, reasons[name])
    assert not any(opened_for_reading(p) for p in fifos(hostile[1]))


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_explicit_load_is_a_400_and_the_rest_serve(
    hostile_server: httpx.Client, hostile: tuple[Path, Path], name: str
) -> None:
    r = hostile_server.post(f"/v2/repository/models/{name}/load", headers=AUTH)
    assert r.status_code == 400 and ATTACKS[name] in r.json()["error"]
    r = hostile_server.post(f"/v2/models/{name}/infer", json={"inputs": []})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    x = np.zeros((1, 64), np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]}
    assert hostile_server.post("/v2/models/good/infer", json=body).status_code == 200
    assert not any(opened_for_reading(p) for p in fifos(hostile[1]))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/repository/models/..%2f..%2foutside%2fmodel/load"),
        ("POST", "/v2/repository/models/%2e%2e/load"),
        ("POST", "/v2/repository/models/../load"),
        ("POST", "/v2/repository/models/.%2e/unload"),
        ("POST", "/v2/repository/models/good%00/load"),
        ("POST", "/v2/repository/models/" + "a" * 65 + "/load"),
        ("GET", "/v2/models/..%2f..%2foutside%2fmodel"),
        ("GET", "/v2/models/%2e%2e/ready"),
        ("GET", "/v2/models/good/versions/%C2%B2"),
        ("GET", "/v2/models/good/versions/..%2f1"),
        ("POST", "/v2/models/..%5c..%5coutside/infer"),
    ],
)
def test_names_with_path_traversal_are_unknown(
    hostile_server: httpx.Client, hostile: tuple[Path, Path], method: str, path: str
) -> None:
    r = hostile_server.request(method, path, headers=AUTH)
    assert r.status_code in (400, 404), r.text
    assert list(r.json()) == ["error"]
    assert not any(opened_for_reading(p) for p in fifos(hostile[1]))


def test_loading_opens_nothing_outside_the_repository(hostile: tuple[Path, Path]) -> None:
    """In-process, every file Python opens while loading each attack is
    recorded (audit hook): all of them lie inside the repository."""
    repo, _ = hostile
    root = repo.resolve()
    opened: list[str] = []
    recording = [False]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if recording[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # cannot be removed; records only while the flag is set
    for name in sorted(ATTACKS):
        recording[0] = True
        try:
            with pytest.raises(ValueError):
                open_version(repo / name, 1, LoadOptions(RuntimeOptions(device="cpu"), warmup=True))
        finally:
            recording[0] = False
    opened_files = {Path(p) for p in opened if not p.endswith((".py", ".pyc", ".so"))}
    assert opened_files, "the hook recorded nothing"
    outside = [p for p in opened_files if not p.resolve().is_relative_to(root)]
    assert outside == []
