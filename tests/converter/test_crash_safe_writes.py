"""A version write killed after any of its steps leaves a repository that a
restarted server serves as before (or serves the new version whole); a full
disk is exit 2 naming the file, with the repository as it was (issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from bnfold.contract import ModelConfig, TensorConfig, scan_versions
from bnfold.converter import repository
from bnfold.converter.errors import EXIT_INPUT
from bnfold.converter.repository import JOURNAL_FILE, STEPS, RepositoryError, write_version
from bnfold.service.app import create_app

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))

from service_harness import base_settings, wait_until  # noqa: E402


def matmul(width: int, seed: int = 0) -> bytes:
    """x (N, width) -> y (N, 3): a graph the service loads."""
    w = np.random.default_rng(seed).standard_normal((width, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def config(width: int) -> ModelConfig:
    return ModelConfig(
        name="m",
        max_batch_size=8,
        input=[TensorConfig("x", "FP32", [width])],
        output=[TensorConfig("y", "FP32", [3])],
    )


def write(repo: Path, width: int, seed: int = 0) -> Path:
    graph = matmul(width, seed)
    return write_version(
        repo, "m", model_onnx=graph, reference_onnx=graph, manifest={}, config=config(width)
    )


def served(repo: Path) -> tuple[str, int]:
    """What a freshly started server serves of model m: (version, input width),
    with an inference of that width answered."""
    with TestClient(create_app(base_settings(repo))) as http:
        wait_until(lambda: http.get("/v2/models/m/ready").status_code == 200, "m ready")
        meta = http.get("/v2/models/m").json()
        (width,) = meta["inputs"][0]["shape"][1:]
        body = {"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32",
                            "data": [0.5] * width}]}  # fmt: skip
        r = http.post("/v2/models/m/infer", json=body)
        assert r.status_code == 200, r.text
        return r.json()["model_version"], width


def killed_at(repo: Path, step: str, width: int = 8) -> None:
    """A real writer process killed (SIGKILL: no cleanup) right after ``step``."""
    graph = repo.parent / f"graph-{width}.onnx"
    graph.write_bytes(matmul(width, seed=1))
    script = f"""
import os, signal
from pathlib import Path
from bnfold.contract import ModelConfig
from bnfold.converter import repository

def die(step):
    if step == {step!r}:
        os.kill(os.getpid(), signal.SIGKILL)

repository._reached = die
graph = Path({str(graph)!r}).read_bytes()
cfg = ModelConfig.from_dict({config(width).to_dict()!r})
repository.write_version({str(repo)!r}, "m", model_onnx=graph, reference_onnx=graph,
                         manifest={{}}, config=cfg)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()


@pytest.mark.parametrize("step", STEPS)
def test_a_writer_killed_after_any_step_leaves_a_servable_repository(
    tmp_path: Path, step: str
) -> None:
    repo = tmp_path / "models"
    write(repo, width=4)  # version 1 takes 4 values
    assert served(repo) == ("1", 4)
    killed_at(repo, step)  # version 2 takes 8: config.json must change with it
    committed = STEPS.index(step) >= STEPS.index("config")
    assert served(repo) == (("2", 8) if committed else ("1", 4))
    assert (repo / "m" / JOURNAL_FILE).exists() == (
        step in ("journal", "pinned", "renamed", "config")
    )
    # The next write finishes or undoes what the killed one left, then adds its version.
    write(repo, width=8, seed=2)
    highest = scan_versions(repo / "m").valid[-1]
    assert served(repo) == (str(highest), 8)
    assert not (repo / "m" / JOURNAL_FILE).exists()
    policy = json.loads((repo / "m" / "config.json").read_text()).get("version_policy")
    assert policy is None  # the pin held only while the version appeared


def test_recover_leaves_a_config_edited_since_the_crash(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write(repo, width=4)
    killed_at(repo, "pinned")
    path = repo / "m" / "config.json"
    edited = json.loads(path.read_text()) | {"labels": ["a", "b", "c"]}
    path.write_text(json.dumps(edited))
    assert repository.recover(repo / "m") == "left config.json as edited by hand"
    assert json.loads(path.read_text()) == edited
    assert not (repo / "m" / JOURNAL_FILE).exists()


def test_an_unchanged_config_is_not_rewritten(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write(repo, width=4)
    path = repo / "m" / "config.json"
    before = path.stat().st_ino
    write(repo, width=4, seed=3)
    assert path.stat().st_ino == before  # the rename alone committed version 2
    assert served(repo) == ("2", 4)


def test_a_failed_write_after_the_pin_puts_the_config_back(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "models"
    write(repo, width=4)
    before = (repo / "m" / "config.json").read_bytes()

    def fail(step: str) -> None:
        if step == "renamed":
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(repository, "_reached", fail)
    with pytest.raises(RepositoryError, match="No space left on device"):
        write(repo, width=8)
    assert (repo / "m" / "config.json").read_bytes() == before
    assert sorted(os.listdir(repo / "m")) == ["1", "config.json"]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 192 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_exit_2_naming_the_file(tmp_path: Path, tiny_fs: Path) -> None:
    small, big = tmp_path / "small.onnx", tmp_path / "big.onnx"
    small.write_bytes(matmul(4))
    big.write_bytes(matmul(8000))  # 96 KB per graph, twice: more than the disk holds
    repo = tiny_fs / "models"

    def bnfold_import(model: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bnfold", "import", str(model), "--repo", str(repo),
             "--name", "m", "--n-random", "4"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    assert bnfold_import(small).returncode == 0
    config_before = (repo / "m" / "config.json").read_bytes()
    full = bnfold_import(big)
    assert full.returncode == EXIT_INPUT, full.stderr
    assert "Traceback" not in full.stderr
    assert "No space left on device" in full.stderr
    assert f"{repo / 'm'}/.tmp-2-" in full.stderr  # the file it could not write
    assert sorted(os.listdir(repo / "m")) == ["1", "config.json"]
    assert (repo / "m" / "config.json").read_bytes() == config_before
    assert served(repo) == ("1", 4)
