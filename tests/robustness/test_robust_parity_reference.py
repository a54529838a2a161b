"""``POST .../parity`` opens a version's ``reference.onnx`` under the checks
and limits of a version's load (service/reference.py): a hostile reference
(a model bomb past the model-size limit or the model memory limit, bytes
ONNX Runtime cannot load, external data out of the version's folder, a
graph without the served inputs; or, swapped after the load, a file over
the size limit, a link out of the repository, other bytes than the
manifest's) is a 400 naming its reason, and the server serves on.

Each version serves a good graph and ships a hostile reference whose
sha256 the manifest records (a repository writer controls both).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from served_models import config
from service_harness import WAIT_S, base_settings, run_server
from test_robust_memory_budget import outer_sum_bomb
from test_robust_model_bombs import bombs, graph, shape

from bnfold.contract import REFERENCE_FILE
from bnfold.converter.repository import write_version

pytestmark = pytest.mark.timeout(600)

LIMIT = 16 << 20  # max_model_bytes
BUDGET = 256 << 20  # model_memory_limit
# input (N, 10) + the sum of a 4 x 4 ConstantOfShape of zeros -> logits
GOOD = graph([shape("dims", [4, 4]), helper.make_node("ConstantOfShape", ["dims"], ["w"])])
REFUSED = "reference.onnx of model {name!r} version 1 refused: "


def external_out_of_folder() -> bytes:
    """The good graph's sum of an initializer whose data lies out of the repository."""
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../outside.bin"), ("offset", "0"), ("length", "64")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return graph([], [w])


def other_inputs() -> bytes:
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


# name -> (reference bytes, what the 400 says after REFUSED)
HOSTILE: dict[str, tuple[bytes, str]] = {
    "sparse-bomb": (
        bombs(4096)["sparse-initializer"][0],
        f"over the {LIMIT}-byte limit: sparse initializer 'w' is shape [4096, 4096]",
    ),
    "memory-bomb": (
        outer_sum_bomb(16384, 16384),
        f"loading takes more than the {BUDGET}-byte model memory limit",
    ),
    "corrupt": (b"\x08\x07not an onnx graph" * 64, "not an ONNX model: "),
    "unloadable": (
        graph([helper.make_node("NoSuchOp", [], ["w"], domain="no.such.domain")]),
        "ONNX Runtime cannot load it: ",
    ),
    "external-out": (
        external_out_of_folder(),
        "external data '../../../outside.bin' of 'w' escapes the version",
    ),
    "other-inputs": (other_inputs(), "it has no input 'input' of the served model"),
}


def put(repo: Path, name: str, reference: bytes) -> Path:
    return write_version(
        repo,
        name,
        model_onnx=GOOD,
        reference_onnx=reference,
        manifest={"format": 1},
        config=config(name, "input", [10], output_shape=[10]),
    )


# Versions whose reference.onnx is swapped after they loaded (a load reads
# it within the limits and checks its sha256): name -> (swap, what the 400 says).
SWAPPED = {
    "swapped-oversized": f"reference.onnx is {LIMIT + 1} bytes, over the {LIMIT}-byte limit",
    "swapped-link": "reference.onnx is missing or not a file inside the model repository",
    "swapped-bytes": "reference.onnx sha256 ",
}


def swap(version: Path, name: str, outside: Path) -> None:
    reference = version / REFERENCE_FILE
    reference.unlink()
    if name == "swapped-oversized":
        reference.write_bytes(b"\0" * (LIMIT + 1))
    elif name == "swapped-link":
        reference.symlink_to(outside)
    else:
        reference.write_bytes(other_inputs())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    base = tmp_path_factory.mktemp("parity-reference")
    repo = base / "models"
    repo.mkdir()
    (base / "outside.bin").write_bytes(np.ones(16, np.float32).tobytes())
    (base / "outside.onnx").write_bytes(GOOD)
    put(repo, "good", GOOD)
    for name, (reference, _) in HOSTILE.items():
        put(repo, name, reference)
    for name in SWAPPED:
        put(repo, name, GOOD)
    settings = base_settings(repo, max_model_bytes=LIMIT, model_memory_limit=BUDGET)
    with run_server(settings) as server, httpx.Client(base_url=server.url, timeout=WAIT_S) as c:
        yield c, repo


@pytest.fixture()
def http(served: tuple[httpx.Client, Path]) -> httpx.Client:
    return served[0]


def serves(http: httpx.Client) -> None:
    """The good version infers and measures its parity (0 error)."""
    ones = np.ones((2, 10), np.float32)
    body = {
        "inputs": [{"name": "input", "shape": [2, 10], "datatype": "FP32", "data": ones.tolist()}]
    }
    r = http.post("/v2/models/good/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == ones.ravel().tolist()
    r = http.post("/v2/models/good/parity", json={"n": 4})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]["logits"]["max_abs_error"] == 0.0


def test_every_version_serves_its_good_graph(http: httpx.Client) -> None:
    """A load reads the reference within the size limit and checks its
    sha256, nothing more: each version is READY."""
    for name in [*HOSTILE, *SWAPPED, "good"]:
        assert http.get(f"/v2/models/{name}/ready").status_code == 200, name
    serves(http)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_reference_is_a_400_with_its_reason(http: httpx.Client, name: str) -> None:
    for _ in range(2):  # refused again, not remembered half-open
        r = http.post(f"/v2/models/{name}/parity", json={"n": 4})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error.startswith(REFUSED.format(name=name)), error
        assert HOSTILE[name][1] in error, error
        serves(http)


@pytest.mark.parametrize("name", list(SWAPPED))
def test_a_reference_swapped_after_the_load_is_a_400(
    served: tuple[httpx.Client, Path], name: str
) -> None:
    http, repo = served
    swap(repo / name / "1", name, repo.parent / "outside.onnx")
    r = http.post(f"/v2/models/{name}/parity", json={"n": 4})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith(REFUSED.format(name=name)) and SWAPPED[name] in error, error
    assert "outside" not in error  # says nothing of what lies outside
    serves(http)


def test_the_graphs_are_what_they_claim() -> None:
    onnx.checker.check_model(onnx.ModelProto.FromString(GOOD))
    assert len(outer_sum_bomb(16384, 16384)) < 200 << 10
