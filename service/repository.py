"""The model repository as served: which version of which model answers.

Layout and guarantees: docs/repository.md. The highest version folder of
each model is the one loaded. A version that fails to load (sha256 not
matching the manifest, bytes ONNX Runtime rejects, config.json disagreeing
with the graph) is listed in the index with its reason; the other models
keep serving, and a model already serving keeps its old version.

A load builds the new version completely (session, warm-up, batcher) before
one dict assignment swaps it in; requests that acquired the old version
finish on it, and it is freed when the last one releases it.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.contract import ContractError, name_problem, parse_version, scan_versions

from .batching import Arrivals
from .errors import BadRequest, LoadFailed, NotFound, Unavailable
from .files import inside
from .metrics import Metrics
from .model import ServedModel, open_version, runtime_options
from .settings import Settings

log = logging.getLogger("bnfold.service")

OUTSIDE = "the model folder is a link out of the repository; refused"
READY = "READY"
LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass
class VersionState:
    state: str
    reason: str = ""


def valid_name(name: str) -> bool:
    return name_problem(name) is None


class Repository:
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        metrics: Metrics,
        arrivals: Arrivals | None = None,
    ) -> None:
        self.root = Path(settings.repo)
        self._arrivals = arrivals
        self._settings = settings
        self._executor = executor
        self._metrics = metrics
        self._served: dict[str, ServedModel] = {}
        self._states: dict[tuple[str, int], VersionState] = {}
        self._model_reason: dict[str, str] = {}  # model folders without a version
        self._refused: dict[str, dict[str, str]] = {}  # folders that are not versions
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # --- what is on disk
    def scan(self) -> dict[str, list[int]]:
        """Model folders with a valid name, and their complete versions. A
        folder that is a link out of the repository is listed, never read."""
        if not self.root.is_dir():
            return {}
        return {
            p.name: self._versions(p.name)
            for p in sorted(self.root.iterdir())
            if p.is_dir() and valid_name(p.name)
        }

    def _versions(self, name: str) -> list[int]:
        model_dir = self.root / name
        if not inside(model_dir, self.root):
            self._model_reason[name] = OUTSIDE
            return []
        found = scan_versions(model_dir)
        self._refused[name] = found.refused
        return found.valid

    # --- the hot path
    def acquire(self, name: str, version: str | None = None) -> ServedModel:
        """The version serving ``name`` (or exactly ``version``), held until
        ``release()``; raises NotFound/Unavailable/BadRequest."""
        served = self._served.get(name)
        if served is None:
            raise self._not_serving(name)
        if version is not None and version != served.version_str:
            try:
                parse_version(version)
            except ContractError as e:
                raise BadRequest(str(e)) from None
            raise NotFound(
                f"version {version} of model {name!r} is not served (serving {served.version})"
            )
        return served.acquire()

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """Like ``acquire`` for requests that do not run the model."""
        served = self.acquire(name, version)
        served.release()
        return served

    def served(self) -> list[ServedModel]:
        return list(self._served.values())

    def _not_serving(self, name: str) -> Exception:
        on_disk = valid_name(name) and (self.root / name).is_dir()
        if not on_disk and not any(key[0] == name for key in self._states):
            return NotFound(f"unknown model {name!r}")
        reason = self._model_reason.get(name) or self._latest_reason(name) or "not loaded"
        return Unavailable(
            f"model {name!r} is not ready: {reason}", retry_after=self._settings.retry_after_s
        )

    def _latest_reason(self, name: str) -> str:
        states = sorted((v, s) for (n, v), s in self._states.items() if n == name)
        return states[-1][1].reason if states else ""

    # --- load and unload
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load_all(self) -> None:
        names = list(self.scan())
        results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("model %s not served: %s", name, result)

    async def load(self, name: str) -> ServedModel:
        """Load the highest version of ``name`` and swap it in atomically."""
        if not valid_name(name) or not (self.root / name).is_dir():
            raise NotFound(f"unknown model {name!r}")
        async with self._lock(name):
            available = self._versions(name)
            if not inside(self.root / name, self.root):
                raise LoadFailed(f"model {name!r}: {OUTSIDE}")
            if not available:
                self._model_reason[name] = "no version folder"
                raise LoadFailed(f"model {name!r} has no version folder")
            self._model_reason.pop(name, None)
            version = available[-1]
            old = self._served.get(name)
            if old is None or old.version != version:
                self._states[(name, version)] = VersionState(LOADING)
            try:
                opened = await asyncio.to_thread(
                    open_version,
                    self.root / name,
                    version,
                    runtime_options(self._settings),
                    warmup=self._settings.warmup,
                )
            except Exception as e:
                reason = str(e) or type(e).__name__
                self._states[(name, version)] = VersionState(UNAVAILABLE, reason)
                raise LoadFailed(f"model {name!r} version {version}: {reason}") from None
            served = ServedModel(
                opened,
                settings=self._settings,
                executor=self._executor,
                metrics=self._metrics.for_model(name, version),
                arrivals=self._arrivals,
            )
            served.start()
            self._served[name] = served  # the swap: new requests see the new version
            self._states[(name, version)] = VersionState(READY)
            self._metrics.model_ready.labels(name, str(version), served.provider).set(1)
            log.info(
                "model %s version %d ready on %s (max_batch_size %d, batching %s)",
                name,
                version,
                served.provider,
                served.signature.max_batch_size,
                "on" if served.batching else "off",
            )
            if old is not None:
                if old.version != version:
                    self._states[(name, old.version)] = VersionState(
                        UNAVAILABLE, f"replaced by version {version}"
                    )
                self._retire_later(old)
            return served

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; requests already holding it finish first."""
        if not valid_name(name) or (name not in self._served and not (self.root / name).is_dir()):
            raise NotFound(f"unknown model {name!r}")
        async with self._lock(name):
            old = self._served.pop(name, None)
            for key in [k for k in self._states if k[0] == name]:
                self._states[key] = VersionState(UNAVAILABLE, "unloaded")
            if old is not None:
                self._states[(name, old.version)] = VersionState(UNAVAILABLE, "unloaded")
                await self._retire(old)

    def _retire_later(self, old: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: ServedModel) -> None:
        await old.retire(self._settings.shutdown_timeout_s)
        self._metrics.model_ready.labels(old.name, old.version_str, old.provider).set(0)

    async def close(self) -> None:
        """Retire every version (in-flight requests finish first)."""
        served, self._served = list(self._served.values()), {}
        await asyncio.gather(*(self._retire(s) for s in served), return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # --- the index (POST /v2/repository/index)
    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        on_disk = self.scan()
        names = sorted(set(on_disk) | set(self._served) | {k[0] for k in self._states})
        for name in names:
            served = self._served.get(name)
            found = set(on_disk.get(name, [])) | {v for (n, v) in self._states if n == name}
            if served is not None:
                found.add(served.version)
            refused = self._refused.get(name, {})
            if not found and not refused:
                reason = self._model_reason.get(name, "no version folder")
                entries.append({"name": name, "state": UNAVAILABLE, "reason": reason})
                continue
            for version in sorted(found):
                if served is not None and served.version == version:
                    state = VersionState(READY)
                else:
                    state = self._states.get((name, version)) or VersionState(
                        UNAVAILABLE, "not loaded: only the highest version is served"
                    )
                    if state.state == READY:  # a version swapped out while loading
                        state = VersionState(UNAVAILABLE, "not loaded")
                entries.append(
                    {
                        "name": name,
                        "version": str(version),
                        "state": state.state,
                        "reason": state.reason,
                    }
                )
            for folder, reason in refused.items():
                entries.append(
                    {"name": name, "version": folder, "state": UNAVAILABLE, "reason": reason}
                )
        if ready_only:
            entries = [e for e in entries if e["state"] == READY]
        return entries
