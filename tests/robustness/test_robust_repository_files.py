"""Files a repository writer controls, opened so that nothing outside the
repository is ever read (issue 19, items 2 and 11).

- A label file's folder swapped for a link out of the repository at the
  last moment before the open (an audit hook swaps it at the event that
  precedes the open syscall, so no race has to be won), directly and
  while a serving model reloads: refused, and the outside file's lines are
  never served as labels (each open walks the path from the repository's
  root following no link, so there is no gap between a check and the
  open). A reader that resolves the path first and reopens it by name
  follows the link here.
- No existence oracle: a label file outside that exists and one that does
  not, reached by ``..``, by a link or by a dangling link, are refused in
  the same words.
- External data inside the version is read through the same descriptor
  walk and served.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper
from service_harness import TOKEN, WAIT_S, RunningServer, base_settings, run_server
from triton_models import add_sub, write_model

from bnfold.contract import ContractError
from bnfold.service import files
from bnfold.service.loading import LoadOptions, open_version
from bnfold.service.model_config import read_model_config
from bnfold.service.runtime import RuntimeOptions

pytestmark = pytest.mark.timeout(600)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
INSIDE = [f"inside{i}" for i in range(16)]
SECRET = [f"SECRET{i}" for i in range(16)]
RELOADS = 5


def labelled_pbtxt(name: str, label_filename: str) -> str:
    def tensor(n: str, extra: str = "") -> str:
        return f'{{ name: "{n}" data_type: TYPE_FP32 dims: [16] {extra}}}'

    labels = f'label_filename: "{label_filename}" '
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f"input [\n{tensor('INPUT0')},\n{tensor('INPUT1')}\n]\n"
        f"output [\n{tensor('OUTPUT0', labels)},\n{tensor('OUTPUT1')}\n]\n"
    )


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("files")
    repo, outside = base / "models", base / "outside"
    outside.mkdir()
    (outside / "labels.txt").write_text("\n".join(SECRET) + "\n")
    pbtxt = labelled_pbtxt("labelled", "labels/labels.txt")
    model = write_model(repo, "labelled", add_sub(TensorProto.FLOAT), pbtxt)
    (model / "labels").mkdir()
    (model / "labels" / "labels.txt").write_text("\n".join(INSIDE) + "\n")
    return repo, outside


@pytest.fixture(scope="module")
def server(layout: tuple[Path, Path]) -> Iterator[RunningServer]:
    with run_server(base_settings(layout[0])) as running:
        yield running


def classify(http: httpx.Client) -> tuple[int, list[str]]:
    """The labels of OUTPUT0's top 16 classes, as any client (no token) sees them."""
    x = np.arange(16, dtype=np.float32).reshape(1, 16).tolist()
    body = {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "FP32", "data": x}
            for n in ("INPUT0", "INPUT1")
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 16}}],
    }
    r = http.post("/v2/models/labelled/infer", json=body)
    if r.status_code != 200:
        return r.status_code, []
    return 200, [entry.split(":", 2)[2] for entry in r.json()["outputs"][0]["data"]]


class SwapBeforeOpen:
    """An audit hook that swaps a model's ``labels/`` folder for a link out
    at the start of the label file's read, after every check a reader
    could make by name: once ``config.pbtxt`` has been opened, at the next
    audit event of an open on the way to the label file (``os.open`` raises
    it before its syscall): the repository's root opened for an ``openat2``
    beneath it, the ``labels`` folder opened by the walk, or the label file
    opened by its full path, as a reader that resolved and checked the path
    first opens it. Armed for one read at a time; hooks cannot be removed,
    so a disarmed one only returns."""

    def __init__(self) -> None:
        self.armed: tuple[Path, Path, bool] | None = None  # model, outside, config read
        self.swaps = 0

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if self.armed is None or event != "open":
            return
        if not isinstance(args[0], (str, bytes, os.PathLike)):
            return  # os.fdopen's: a descriptor already open
        model, outside, config_read = self.armed
        path = os.fsdecode(args[0])
        if not config_read:
            if path.endswith("config.pbtxt"):
                self.armed = (model, outside, True)
            return
        label = os.path.join("labels", "labels.txt")
        if path in (str(model.parent), "labels") or path.endswith(label):
            self.armed = None
            os.rename(model / "labels", model / "labels.real")
            os.symlink(outside, model / "labels")  # now a link out
            self.swaps += 1

    @contextmanager
    def around(self, model: Path, outside: Path) -> Iterator[None]:
        """Armed for the block; the folder is put back after it."""
        before = self.swaps
        self.armed = (model, outside, False)
        try:
            yield
        finally:
            self.armed = None
            if (model / "labels.real").exists():
                os.unlink(model / "labels")
                os.rename(model / "labels.real", model / "labels")
        assert self.swaps == before + 1, "the label file was never opened"


SWAP = SwapBeforeOpen()
sys.addaudithook(SWAP)

LABEL_REFUSED = (
    "config.pbtxt: label_filename 'labels.txt': labels.txt is missing or not a file "
    "inside the model repository; refused"
)


@pytest.mark.parametrize("way", ["openat2", "walk"])
def test_a_label_folder_swapped_for_a_link_before_the_open_is_not_followed(
    layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """Swapped after any check by name and before the open (deterministic,
    no race to win): the read is refused, the outside file never read. A
    reader that resolves the path and then opens it by name (O_NOFOLLOW on
    the last component only) reads the outside file's lines here."""
    if way == "walk":
        monkeypatch.setattr(files._openat2, "usable", False)
    elif not files._openat2.usable:
        pytest.skip("no openat2 on this platform")
    repo, outside = layout
    model = repo / "labelled"
    for _ in range(3):
        with SWAP.around(model, outside):
            try:
                config, _ = read_model_config(model, repo)
            except ContractError as e:
                refused: list[str] | str = str(e)
            else:
                refused = config.labels if config is not None else []
        assert refused == LABEL_REFUSED, f"read through the link: {refused}"
    config, _ = read_model_config(model, repo)  # the folder back: its own labels
    assert config is not None and config.labels == INSIDE


def test_a_label_folder_swapped_for_a_link_is_never_served(
    server: RunningServer, layout: tuple[Path, Path]
) -> None:
    """The same swap during reloads of a serving model: each reload is
    refused (400, the reason behind the token), the version serving keeps
    its own labels, and the outside file's lines never reach a client."""
    repo, outside = layout
    model = repo / "labelled"
    loads: Counter[int] = Counter()
    seen: set[str] = set()
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        status, labels = classify(http)
        assert status == 200 and sorted(labels) == sorted(INSIDE)
        errors = set()
        for i in range(RELOADS):
            bump = model.stat().st_mtime_ns + (i + 1) * 10**9
            os.utime(model / "config.pbtxt", ns=(bump, bump))  # a changed model: reloaded
            with SWAP.around(model, outside):
                load = http.post("/v2/repository/models/labelled/load", headers=AUTH)
            loads[load.status_code] += 1
            errors.add(load.json().get("error"))
            status, labels = classify(http)
            assert status == 200
            seen.update(labels)
        assert seen == set(INSIDE), seen  # never an outside line
        assert loads == {400: RELOADS}, loads
        assert errors == {f"failed to load 'labelled', {LABEL_REFUSED}"}, errors
        # once the folder stays put, the model loads and serves its own labels
        assert http.post("/v2/repository/models/labelled/load", headers=AUTH).status_code == 200
        status, labels = classify(http)
        assert status == 200 and sorted(labels) == sorted(INSIDE)


@pytest.mark.parametrize("way", ["openat2", "walk"])
def test_no_existence_oracle_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """Outside: a label file that exists and one that does not, reached
    through ``..``, a link to a folder and a link to the file: one reason,
    with openat2 and with the walk kernels without it take."""
    if way == "walk":
        monkeypatch.setattr(files._openat2, "usable", False)
    elif not files._openat2.usable:
        pytest.skip("no openat2 on this platform")
    repo, outside = tmp_path / "models", tmp_path / "outside"
    (outside / "there").mkdir(parents=True)
    (outside / "there" / "labels.txt").write_text("SECRET\n")
    (outside / "gone").mkdir()
    graph = add_sub(TensorProto.FLOAT)
    cases = {
        "dotdot-there": "../../outside/there/labels.txt",
        "dotdot-gone": "../../outside/gone/labels.txt",
        "dir-link-there": "there/labels.txt",
        "dir-link-gone": "gone/labels.txt",
        "file-link-there": "labels.txt",
        "file-link-gone": "labels.txt",
        "missing-inside": "labels.txt",
    }
    for name, label_filename in cases.items():
        write_model(repo, name, graph, labelled_pbtxt(name, label_filename))
    (repo / "dir-link-there" / "there").symlink_to(outside / "there")
    (repo / "dir-link-gone" / "gone").symlink_to(outside / "gone")
    (repo / "file-link-there" / "labels.txt").symlink_to(outside / "there" / "labels.txt")
    (repo / "file-link-gone" / "labels.txt").symlink_to(outside / "gone" / "labels.txt")
    reasons = set()
    for name in cases:
        with pytest.raises(ContractError) as refused:
            read_model_config(repo / name, repo)
        reasons.add(str(refused.value))
    # config.json itself a link to a file outside that exists, or does not
    for name, target in (("config-there", "there/labels.txt"), ("config-gone", "gone/x.json")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.json").symlink_to(outside / target)
        with pytest.raises(ValueError) as refused_config:
            read_model_config(repo / name, repo)
        reasons.add(str(refused_config.value))
    # and a label file inside, in a folder, is read
    (repo / "missing-inside" / "config.pbtxt").write_text(
        labelled_pbtxt("missing-inside", "sub/labels.txt")
    )
    (repo / "missing-inside" / "sub").mkdir()
    (repo / "missing-inside" / "sub" / "labels.txt").write_text("a\nb\n")
    config, _ = read_model_config(repo / "missing-inside", repo)
    assert config is not None and config.labels == ["a", "b"]
    assert reasons == {
        "config.pbtxt: label_filename 'labels.txt': labels.txt is missing or not a file "
        "inside the model repository; refused",
        "config.json is missing or not a file inside the model repository; refused",
    }


def test_external_data_inside_the_version_is_read_and_served(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    w = np.arange(16, dtype=np.float32)
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[16])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", "offset": "64", "length": "64"}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "w"], ["OUTPUT0"])],
        "ext",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", 16])],
        [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    pbtxt = (
        'name: "ext"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [16] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [16] }]\n'
    )
    version = write_model(repo, "ext", model.SerializeToString(), pbtxt) / "1"
    (version / "w.bin").write_bytes(bytes(64) + w.tobytes())
    opened = open_version(repo / "ext", 1, LoadOptions(RuntimeOptions(device="cpu"), warmup=False))
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(opened.runtime.run({"INPUT0": x})["OUTPUT0"], x + w)
