"""Versions appear whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bnfold.contract import scan_versions
from bnfold.converter import repository
from bnfold.converter.repository import RepositoryError, write_version

TENSOR = {"name": "x", "datatype": "FP32", "shape": [4]}
CONFIG = {"name": "m", "max_batch_size": 8, "input": [TENSOR], "output": [TENSOR]}


def versions(model_dir: Path) -> list[int]:
    return scan_versions(model_dir).valid


def write(repo: Path, manifest: dict | None = None, **kw: Any) -> Path:
    return write_version(
        repo,
        "m",
        model_onnx=b"folded",
        reference_onnx=b"reference",
        manifest={"format": 1} if manifest is None else manifest,
        config=CONFIG,
        **kw,
    )


def test_layout_and_manifest_hashes(tmp_path: Path) -> None:
    v1 = write(tmp_path)
    v2 = write(tmp_path)
    assert (v1.name, v2.name) == ("1", "2")
    assert sorted(p.name for p in v1.iterdir()) == ["manifest.json", "model.onnx", "reference.onnx"]
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["name"] == "m" and manifest["version"] == 1
    assert manifest["files"]["model.onnx"] == {
        "sha256": hashlib.sha256(b"folded").hexdigest(),
        "bytes": 6,
    }
    written = json.loads((tmp_path / "m" / "config.json").read_text())
    assert written == CONFIG | {"format": 1, "platform": "onnxruntime_onnx"}
    assert versions(tmp_path / "m") == [1, 2]
    for odd in ("²", "0", "v3", "1e3", ".tmp-3-ab"):  # never versions, never a crash
        (tmp_path / "m" / odd).mkdir()
    assert versions(tmp_path / "m") == [1, 2]


def test_versions_are_immutable_and_names_checked(tmp_path: Path) -> None:
    write(tmp_path, version=3)
    with pytest.raises(RepositoryError, match="already exists"):
        write(tmp_path, version=3)
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(RepositoryError, match="invalid model name"):
            write_version(
                tmp_path, bad, model_onnx=b"", reference_onnx=b"", manifest={}, config=CONFIG
            )
    with pytest.raises(RepositoryError, match=r"no config\.json"):
        write_version(tmp_path, "fresh", model_onnx=b"", reference_onnx=b"", manifest={})


def test_nothing_the_service_would_refuse_is_written(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="unknown key 'max_batch_sise'"):
        write_version(
            tmp_path,
            "m",
            model_onnx=b"",
            reference_onnx=b"",
            manifest={},
            config={**CONFIG, "max_batch_sise": 4},
        )
    with pytest.raises(RepositoryError, match=r"manifest\.json: unknown key 'parity_report'"):
        write(tmp_path, manifest={"parity_report": {}})
    for bad in (0, -1, True):
        with pytest.raises(RepositoryError, match="positive integer"):
            write(tmp_path, version=bad)
    assert not (tmp_path / "m").exists() or versions(tmp_path / "m") == []


def test_failure_mid_write_leaves_no_version(tmp_path: Path, monkeypatch) -> None:
    real = repository._write_bytes
    calls = []

    def failing(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if path.name == "manifest.json":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(repository, "_write_bytes", failing)
    with pytest.raises(RepositoryError, match=r"disk full \(the repository is as it was\)"):
        write(tmp_path)
    assert calls == ["model.onnx", "reference.onnx", "manifest.json"]
    assert list((tmp_path / "m").iterdir()) == []  # no version, no staging left behind


def test_killed_writer_leaves_only_an_ignored_staging_folder(tmp_path: Path) -> None:
    # A real process killed between writing files and the rename (SIGKILL: no cleanup).
    script = f"""
import os, signal
from bnfold.converter import repository
real_rename = os.rename
def die(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)
os.rename = die
repository.write_version({str(tmp_path)!r}, "m", model_onnx=b"x" * 100000,
    reference_onnx=b"y", manifest={{}}, config={CONFIG!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert proc.returncode == -9
    leftovers = os.listdir(tmp_path / "m")
    assert "config.json" in leftovers
    assert next(n for n in leftovers if n != "config.json").startswith(".tmp-1-")
    assert versions(tmp_path / "m") == []
    assert write(tmp_path).name == "1"  # the next writer is not confused by the debris


def test_a_hand_edited_config_keeps_its_edits(tmp_path: Path) -> None:
    write(tmp_path)
    path = tmp_path / "m" / "config.json"
    edited = json.loads(path.read_text()) | {
        "labels": ["a", "b", "c", "d"],
        "dynamic_batching": {"max_queue_delay_ms": 7.5},
    }
    path.write_text(json.dumps(edited))
    wider = {"name": "x", "datatype": "FP32", "shape": [8]}
    write_version(
        tmp_path,
        "m",
        model_onnx=b"v2",
        reference_onnx=b"r2",
        manifest={},
        config=CONFIG | {"input": [wider], "labels": ["0", "1", "2", "3"]},
    )
    after = json.loads(path.read_text())
    assert after["input"] == [wider]  # the new version's signature
    assert after["labels"] == ["a", "b", "c", "d"]  # the edits stay
    assert after["dynamic_batching"] == {"enabled": True, "max_queue_delay_ms": 7.5}


def test_a_triton_config_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    pbtxt = tmp_path / "m" / "config.pbtxt"
    pbtxt.write_text('name: "m"\nmax_batch_size: 4\n')
    write(tmp_path)
    assert pbtxt.read_text() == 'name: "m"\nmax_batch_size: 4\n'
    assert not (tmp_path / "m" / "config.json").exists()
    assert versions(tmp_path / "m") == [1]
