"""The repository's record per model (issue 17): reads change nothing, a
load is planned before anything changes, and reasons are said in full only
where the token guards them."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from graphs import write_bare
from served_models import mlp
from service_harness import base_settings

from bnfold.service.metrics import Metrics
from bnfold.service.model_entry import FAILED, LOADING, READY, UNAVAILABLE
from bnfold.service.repository import Repository


def build(root: Path) -> Path:
    repo = root / "models"
    write_bare(repo, "good", 1, mlp(1)[0])
    write_bare(repo, "broken", 1, b"not a graph")
    (repo / "empty").mkdir()
    return repo


def test_index_and_readiness_only_read(tmp_path: Path) -> None:
    repo = build(tmp_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            repository = Repository(base_settings(repo), pool, Metrics())
            before = repository.index()
            assert repository.index() == before
            assert repository.readiness() == repository.readiness()
            assert repository._models == {}  # nothing recorded by reading
            assert {(e["name"], e.get("version"), e["state"]) for e in before} == {
                ("good", "1", UNAVAILABLE),
                ("broken", "1", UNAVAILABLE),
                ("empty", None, UNAVAILABLE),
            }

            repository.start()
            assert repository.loading
            assert repository.readiness() == (False, "loading models")
            await repository.wait_loaded()
            assert not repository.loading
            states = {(e["name"], e.get("version")): e for e in repository.index()}
            assert states["good", "1"]["state"] == READY
            assert "not an ONNX model" in states["broken", "1"]["reason"]
            ready, why = repository.readiness()
            assert not ready and why == f"model 'broken' is not ready: {FAILED} (and 1 more)"
            assert repository.index() == list(states.values())  # read twice, same answer

            shutil.rmtree(repo / "broken")  # gone from disk: gone from the index
            assert ("broken", "1") not in {
                (e["name"], e.get("version")) for e in repository.index()
            }
            assert repository.readiness() == (
                False,
                "model 'empty' is not ready: no version folder",
            )
            await repository.close()

    asyncio.run(main())


def test_without_a_token_public_reasons_are_the_full_ones(tmp_path: Path) -> None:
    repo = build(tmp_path)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            repository = Repository(base_settings(repo, api_token=None), pool, Metrics())
            repository.start()
            await repository.wait_loaded()
            ready, why = repository.readiness()
            assert not ready and "not an ONNX model" in why
            assert repository.index()[0]["state"] != LOADING
            await repository.close()

    asyncio.run(main())
