"""``bnfold demo`` tells the truth: its own server answers, it stops that
server on SIGTERM and SIGINT, and its digits come from the test split;
``bnfold sample-image`` renders a test-split digit for /classify."""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bnfold.converter.data import load, split_indices
from bnfold.converter.demo import (
    ServiceStartError,
    Stopped,
    check_port,
    split_samples,
    stop_on_signals,
    wait_ready,
)
from bnfold.converter.errors import EXIT_INPUT

WAIT_S = 120.0  # a guard against hanging on a loaded machine; nothing is timed with it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bnfold(*args: str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnfold", *args],
        cwd=cwd, capture_output=True, text=True, timeout=WAIT_S, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, converted: Any) -> Path:
    path = tmp_path_factory.mktemp("demo")
    converted("mlp", epochs=1, limit=256).write(path, "digits-mlp")
    return path


def manifest_of(repo: Path) -> dict[str, Any]:
    return json.loads((repo / "digits-mlp/1/manifest.json").read_text())


def test_a_port_in_use_is_refused_before_anything_starts(repo: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = bnfold("demo", "--once", "--repo", str(repo), "--port", str(port), cwd=repo)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert f"port {port} on 127.0.0.1 is already in use by another process" in r.stderr
    assert "starting the service" not in r.stderr and "Traceback" not in r.stderr


class OtherServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("X-Bnfold-Worker", "1")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_from_another_server_is_refused() -> None:
    other = http.server.HTTPServer(("127.0.0.1", 0), OtherServer)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ServiceStartError, match=r"answered by another server \(process 1\)"):
            wait_ready(f"http://127.0.0.1:{other.server_port}", ours, timeout=WAIT_S)
        with pytest.raises(ServiceStartError, match="already in use"):
            check_port("127.0.0.1", other.server_port)
    finally:
        ours.kill()
        ours.wait()
        other.shutdown()
        other.server_close()


def test_demo_digits_come_from_the_test_split(repo: Path) -> None:
    manifest = manifest_of(repo)
    assert manifest["data"]["limit"] == 256
    samples = split_samples(manifest, 8)
    data = load("digits", input_shape=(64,))
    test = split_indices(data, seed=0, limit=256)["test"]
    assert set(samples.indices.tolist()) <= set(test.tolist()) and len(samples.indices) == 8
    # the model takes raw counts: the demo sends the data set's own values
    assert (samples.x == data.x[samples.indices].reshape(8, 64)).all()
    assert (samples.y == data.y[samples.indices]).all()


def lines(stream: Any) -> Iterator[str]:
    """The stream's lines until it ends, each within WAIT_S (a thread reads them)."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while (line := q.get(timeout=WAIT_S)) is not None:
        yield line


@pytest.fixture
def python_signal_defaults() -> Iterator[None]:
    """SIGINT and SIGTERM as Python sets them up in a fresh interpreter, whatever
    this process inherited (``nohup make test &`` starts it with SIGINT ignored),
    and as they were again afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_either_signal_stops_the_demo(signum: int, python_signal_defaults: None) -> None:
    with pytest.raises(Stopped, match=signal.Signals(signum).name), stop_on_signals():
        os.kill(os.getpid(), signum)
        signal.sigtimedwait([], 0)  # a signal handler runs between bytecodes; this is one
    # the previous handlers are back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_demo_stops_its_server_on_sigterm(repo: Path, tmp_path: Path) -> None:
    signum = signal.SIGTERM
    port = free_port()
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "bnfold", "demo", "--repo", str(repo), "--port", str(port)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
        out = []
        try:
            stream = lines(demo.stdout)
            for line in stream:
                out.append(line)
                if line.startswith("serving"):
                    break
            server = int(re.search(r"process (\d+) answers", log.read_text())[1])  # type: ignore[index]
            demo.send_signal(signum)
            code = demo.wait(timeout=WAIT_S)
            out.extend(stream)  # what it printed on the way out
        finally:
            if demo.poll() is None:
                demo.kill()
    text = "".join(out)
    assert code == 0, log.read_text()
    assert f"stopped by {signal.Signals(signum).name}" in text
    with pytest.raises(ProcessLookupError):  # the demo's server is gone, reaped
        os.kill(server, 0)
    check_port("127.0.0.1", port)  # and its port is free again
    # what it showed: test-split digits sent as stored, and a rendered one classified
    test = set(split_indices(load("digits", input_shape=(64,)), seed=0, limit=256)["test"])
    shown = [int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+\d\s+\d\s+[\d.]+$", text, re.M)]
    assert len(shown) == 8 and set(shown) <= test
    assert "digits of the test split, as stored (ink counts 0..16)" in text
    assert re.search(r"/classify\?top_k=1 with test digit #\d+ drawn dark on white", text)


def test_sample_image_renders_a_test_split_digit(repo: Path, tmp_path: Path) -> None:
    r = bnfold("sample-image", "--repo", str(repo), "--out", "d.png", "--index", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = load("digits", input_shape=(64,))
    index = int(split_indices(data, seed=0, limit=256)["test"][3])
    assert (
        f"test-split sample 3 of digits (data set index {index}), label {data.y[index]}, "
        "drawn dark on white" in r.stderr
    )
    image = Image.open(tmp_path / "d.png")
    assert image.size == (128, 128) and image.mode == "L"
    counts = data.x[index, 0]  # 8x8 ink counts, each drawn as a 16x16 block, dark on white
    assert image.getpixel((0, 0)) == 255 - round(counts[0, 0] / 16 * 255)
    assert image.getpixel((127, 70)) == 255 - round(counts[4, 7] / 16 * 255)
    r = bnfold("sample-image", "--repo", str(repo), "--model", "nope", cwd=tmp_path)
    assert r.returncode == EXIT_INPUT
    assert f"--model nope: no such model in repository {repo}; it holds digits-mlp" in r.stderr


def test_sample_image_outside_the_repository_folder_says_where_it_looked(
    repo: Path, tmp_path: Path
) -> None:
    """Run from a folder without models/: the message names the folder looked
    in (issue 20: it said the model "has no version"); BNFOLD_REPO, as for
    serve, points it at the repository from anywhere."""
    r = bnfold("sample-image", cwd=tmp_path)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert f"no model repository at models ({tmp_path / 'models'})" in r.stderr
    assert "--repo (or BNFOLD_REPO)" in r.stderr and "has no version" not in r.stderr
    env = {**os.environ, "BNFOLD_REPO": str(repo), "COLUMNS": "200"}
    r = bnfold("sample-image", "--out", "d.png", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
