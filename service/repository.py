"""The model repository as served: which versions of which models answer.

Layout and guarantees: docs/repository.md. A model folder's configuration
(``config.json``, Triton's ``config.pbtxt``, or none: completed from the
graph) names its ``version_policy``: the highest version by default, the N
highest, all, or a list. Every version the policy selects serves at
``/v2/models/{m}/versions/{v}/...``; the unversioned routes use the highest.

A load builds every new version completely (session, warm-up, batcher)
before one dict assignment swaps the model's served set; requests that
acquired a version finish on it, and it is freed when the last one releases
it. A load where any selected version fails changes nothing: the versions
already serving keep serving, and the index shows the reason. Versions whose
files and configuration did not change are kept as they are, not reloaded.

With ``poll_s`` the repository is watched: new, changed and removed models
and versions are loaded or unloaded the same way, atomically.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.contract import (
    ContractError,
    ModelConfig,
    VersionPolicy,
    name_problem,
    parse_version,
    scan_versions,
)

from .batching import Arrivals
from .errors import BadRequest, LoadFailed, NotFound, Unavailable
from .files import inside
from .metrics import Metrics
from .model import LoadOptions, ServedModel, open_version, runtime_options
from .model_config import read_model_config
from .settings import Settings

log = logging.getLogger("bnfold.service")

OUTSIDE = "the model folder is a link out of the repository; refused"
READY = "READY"
LOADING = "LOADING"
UNAVAILABLE = "UNAVAILABLE"
NOT_LOADED_YET = "not loaded yet: POST /v2/repository/models/{name}/load, or serve with --poll"

# What identifies the files a model or a version was loaded from: names,
# sizes and modification times (versions are written once and renamed into
# place, so a changed version is a replaced one).
Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class VersionState:
    state: str
    reason: str = ""


def unknown_model(name: str, version: str | None = None) -> str:
    """Triton's words for a model or version it does not serve, which
    Triton's clients and tests look for."""
    which = f"{name!r}" if version is None else f"{name!r} version {version}"
    return f"Request for unknown model: {which} is not found"


def valid_name(name: str) -> bool:
    return name_problem(name) is None


def _fingerprint(folder: Path, names: list[str] | None = None) -> Fingerprint:
    entries = []
    for name in sorted(names if names is not None else os.listdir(folder)):
        try:
            info = os.stat(folder / name)
        except OSError:
            continue
        entries.append((name, info.st_size, info.st_mtime_ns))
    return tuple(entries)


def _unselected(policy: VersionPolicy) -> str:
    return f"not served: the version_policy serves {policy.describe()}"


def _config_fingerprint(model_dir: Path) -> Fingerprint:
    """The model folder's own files (configuration, label files), not its versions."""
    try:
        names = [e.name for e in os.scandir(model_dir) if not e.is_dir()]
    except OSError:
        return ()
    return _fingerprint(model_dir, names)


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
        # name -> version -> the ServedModel answering for it, ascending
        self._served: dict[str, dict[int, ServedModel]] = {}
        self._loaded_from: dict[tuple[str, int], Fingerprint] = {}  # versions serving
        self._attempted: dict[tuple[str, int], Fingerprint] = {}  # every version tried
        self._config_from: dict[str, Fingerprint] = {}  # the configuration serving
        self._config_seen: dict[str, Fingerprint] = {}  # what --poll last looked at
        self._states: dict[tuple[str, int], VersionState] = {}
        self._model_reason: dict[str, str] = {}  # a model that no version can fix
        self._refused: dict[str, dict[str, str]] = {}  # folders that are not versions
        self._policies: dict[str, VersionPolicy] = {}  # each model's, as last read
        self._expected: set[str] = set()  # models that should serve (readiness)
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._load_options = LoadOptions(
            runtime=runtime_options(settings),
            warmup=settings.warmup,
            fold_on_load=settings.fold_on_load,
            fold_rtol=settings.fold_rtol,
            default_max_batch_size=settings.default_max_batch_size,
        )

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
        """The version serving ``name`` (its highest served, or exactly
        ``version``), held until ``release()``; raises NotFound/Unavailable/
        BadRequest."""
        versions = self._served.get(name)
        if not versions:
            raise self._not_serving(name)
        if version is None:
            return versions[next(reversed(versions))].acquire()
        served = versions.get(self._parse_version(version))
        if served is None:
            serving = ", ".join(map(str, versions))
            raise NotFound(f"{unknown_model(name, version)} (serving {serving})")
        return served.acquire()

    @staticmethod
    def _parse_version(version: str) -> int:
        try:
            return parse_version(version)
        except ContractError as e:  # Triton's words, then the contract's reason
            raise BadRequest(
                f"failed to get model version from specified version string {version!r}: {e}"
            ) from None

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """Like ``acquire`` for requests that do not run the model."""
        served = self.acquire(name, version)
        served.release()
        return served

    @asynccontextmanager
    async def serving(
        self, name: str, version: str | None = None, *, count: bool = True
    ) -> AsyncIterator[ServedModel]:
        """The version serving ``name`` (or exactly ``version``), held for the
        block so that a swap or unload lets it finish; raises
        NotFound/Unavailable/BadRequest. With ``count`` the block is one
        inference request in the version's metrics: done, or failed when it
        raises (the reason is counted where the error is answered)."""
        served = self.acquire(name, version)  # no await before the try
        started = time.perf_counter()
        try:
            yield served
        except Exception:
            if count:
                served.metrics.request_failed(time.perf_counter() - started)
            raise
        else:
            if count:
                served.metrics.request_done(time.perf_counter() - started)
        finally:
            served.release()

    def metric_labels(self, name: str, version: str | None = None) -> tuple[str, str]:
        """The ``model`` and ``version`` labels of a failed request that named
        ``name`` (and ``version``): the model only if the repository knows it,
        the version only if it serves (the highest when none was named), so
        that made-up names and versions make no series."""
        versions = self._served.get(name)
        if versions:
            served = {str(v) for v in versions}
            if version is None:
                return name, str(next(reversed(versions)))
            return name, version if version in served else ""
        return (name if self.knows(name) else ""), ""

    def knows(self, name: str) -> bool:
        """``name`` is a model folder, or was loaded or tried."""
        on_disk = valid_name(name) and (self.root / name).is_dir()
        return on_disk or name in self._served or any(key[0] == name for key in self._states)

    def served_versions(self, name: str) -> list[str]:
        return [str(v) for v in self._served.get(name, {})]

    def served(self) -> list[ServedModel]:
        return [m for versions in self._served.values() for m in versions.values()]

    def _not_serving(self, name: str) -> Exception:
        if not self.knows(name):
            return NotFound(unknown_model(name))
        reason = self._model_reason.get(name) or self._latest_reason(name) or "not loaded"
        return Unavailable(
            f"model {name!r} is not ready: {reason}", retry_after=self._settings.retry_after_s
        )

    def _on_disk(self, name: str) -> bool:
        return (self.root / name).is_dir()

    def _latest_reason(self, name: str) -> str:
        states = sorted((v, s) for (n, v), s in self._states.items() if n == name)
        return states[-1][1].reason if states else ""

    # --- readiness
    def readiness(self) -> tuple[bool, str]:
        """Whether every model that should serve does; the reason when not."""
        # A model whose folder was removed is no longer expected (unless it serves).
        self._expected = {n for n in self._expected if n in self._served or self._on_disk(n)}
        if not self._expected:
            return False, "no model is served (the repository is empty or every model unloaded)"
        missing = sorted(n for n in self._expected if not self._served.get(n))
        if missing:
            name = missing[0]
            reason = self._model_reason.get(name) or self._latest_reason(name) or "not loaded"
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            return False, f"model {name!r} is not ready: {reason}{more}"
        return True, ""

    # --- load and unload
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def load_all(self) -> None:
        names = list(self.scan())
        self._expected.update(names)
        results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("model %s not served: %s", name, result)

    async def load(self, name: str, *, config: ModelConfig | None = None) -> ServedModel:
        """Load the versions of ``name`` its version_policy selects and swap
        them in atomically; returns the highest. ``config`` (a load request's
        override) replaces the model folder's configuration."""
        if not valid_name(name) or not (self.root / name).is_dir():  # Triton's words
            raise NotFound(f"failed to load {name!r}, no model folder {name!r} in the repository")
        self._expected.add(name)
        async with self._lock(name):
            return await self._load_locked(name, config)

    async def _load_locked(self, name: str, override: ModelConfig | None) -> ServedModel:
        model_dir = self.root / name
        available = self._versions(name)
        if not inside(model_dir, self.root):
            raise LoadFailed(f"failed to load {name!r}, {OUTSIDE}")
        config_print = _config_fingerprint(model_dir)
        try:
            config, source = (
                (override, "override") if override else read_model_config(model_dir, self.root)
            )
        except (ContractError, ValueError) as e:
            return self._fail_model(name, available, str(e))
        policy = config.policy if config else VersionPolicy()
        self._policies[name] = policy
        wanted = policy.select(available)
        if not wanted:
            why = (
                "no version folder"
                if not available
                else (f"version_policy serves {policy.describe()}: none of them is present")
            )
            return self._fail_model(name, available, why)
        self._model_reason.pop(name, None)

        current = self._served.get(name, {})
        config_same = override is None and self._config_from.get(name) == config_print
        keep: dict[int, ServedModel] = {}
        to_open: list[int] = []
        for v in wanted:
            old = current.get(v)
            if (
                old is not None
                and config_same
                and self._loaded_from.get((name, v)) == (_fingerprint(model_dir / str(v)))
            ):
                keep[v] = old
            else:
                to_open.append(v)
                if old is None:
                    self._states[(name, v)] = VersionState(LOADING)

        results = await asyncio.gather(
            *(self._open(name, v, config, source) for v in to_open), return_exceptions=True
        )
        opened: dict[int, ServedModel] = {}
        failures: list[str] = []
        for v, result in zip(to_open, results, strict=True):
            if isinstance(result, BaseException):
                reason = str(result) or type(result).__name__
                self._states[(name, v)] = VersionState(UNAVAILABLE, reason)
                failures.append(f"version {v}: {reason}")
            else:
                opened[v] = result
        if failures:
            for served in opened.values():  # nothing changes: the old set keeps serving
                await served.retire(0)
            raise LoadFailed(f"failed to load {name!r}, {'; '.join(failures)}")

        new = dict(sorted((keep | opened).items()))
        for v, served in opened.items():
            served.start()
            self._loaded_from[(name, v)] = _fingerprint(served.path)
        self._served[name] = new  # the swap: new requests see the new set
        self._config_from[name] = config_print
        for v, served in opened.items():
            self._states[(name, v)] = VersionState(READY)
            self._metrics.model_ready.labels(name, str(v), served.provider).set(1)
            log.info(
                "model %s version %d ready on %s (from %s, max_batch_size %d, batching %s)%s",
                name,
                v,
                served.provider,
                served.config_source,
                served.signature.max_batch_size,
                "on" if served.batching else "off",
                "".join(f"; {note}" for note in served.notes),
            )
        highest = next(reversed(new))
        for v, old in current.items():
            if new.get(v) is not old:
                if v not in new:
                    why = f"replaced by version {highest}" if v < highest else _unselected(policy)
                    self._states[(name, v)] = VersionState(UNAVAILABLE, why)
                self._retire_later(old)
        return new[highest]

    async def _open(
        self, name: str, version: int, config: ModelConfig | None, source: str
    ) -> ServedModel:
        self._attempted[(name, version)] = _fingerprint(self.root / name / str(version))
        try:
            opened = await asyncio.to_thread(
                open_version,
                self.root / name,
                version,
                self._load_options,
                configured=(config, source),
            )
        except ContractError as e:
            raise ValueError(str(e)) from None
        return ServedModel(
            opened,
            settings=self._settings,
            executor=self._executor,
            metrics=self._metrics.for_model(name, version),
            arrivals=self._arrivals,
        )

    def _fail_model(self, name: str, available: list[int], reason: str) -> ServedModel:
        self._model_reason[name] = reason
        for v in available:
            if not (self._served.get(name) or {}).get(v):
                self._states[(name, v)] = VersionState(UNAVAILABLE, reason)
        raise LoadFailed(f"failed to load {name!r}, {reason}")

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; requests already holding it finish first."""
        if not valid_name(name) or (name not in self._served and not (self.root / name).is_dir()):
            raise NotFound(unknown_model(name))
        self._expected.discard(name)
        async with self._lock(name):
            old = self._served.pop(name, {})
            self._config_from.pop(name, None)
            for key in [k for k in self._states if k[0] == name]:
                self._states[key] = VersionState(UNAVAILABLE, "unloaded")
            await asyncio.gather(*(self._retire(s) for s in old.values()))

    def _retire_later(self, old: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: ServedModel) -> None:
        self._loaded_from.pop((old.name, old.version), None)
        await old.retire(self._settings.shutdown_timeout_s)
        self._metrics.model_ready.labels(old.name, old.version_str, old.provider).set(0)

    async def close(self) -> None:
        """Retire every version (in-flight requests finish first)."""
        served, self._served = self.served(), {}
        await asyncio.gather(*(self._retire(s) for s in served), return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # --- watching (--poll)
    async def poll_once(self) -> list[str]:
        """Load what changed on disk since the last look, unload what went;
        returns the names acted on. A model unloaded by request stays so
        until its folder changes."""
        on_disk = self.scan()
        acted: list[str] = []
        for name in sorted(set(self._served) - set(on_disk)):
            await self.unload(name)
            acted.append(name)
        for name, versions in on_disk.items():
            if self._changed(name, versions):
                acted.append(name)
                try:
                    await self.load(name)
                except (LoadFailed, NotFound) as e:
                    log.warning("poll: model %s not served: %s", name, e)
        return acted

    def _changed(self, name: str, versions: list[int]) -> bool:
        """Whether ``name`` needs a load: its configuration changed since the
        last look, a served version went, or a version the policy selects
        has files other than those it was served or tried from."""
        model_dir = self.root / name
        config_print = _config_fingerprint(model_dir)
        if self._config_seen.get(name) != config_print:
            self._config_seen[name] = config_print  # a broken one is tried once per change
            return True
        served = self._served.get(name, {})
        if set(served) - set(versions):
            return True
        for v in self._policies.get(name, VersionPolicy()).select(versions):
            now = _fingerprint(model_dir / str(v))
            before = self._loaded_from.get((name, v)) if v in served else None
            if now != (before or self._attempted.get((name, v))):
                return True
        return False

    async def watch(self, every_s: float) -> None:
        """Poll forever (a task the app cancels at shutdown)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.poll_once()
            except Exception:  # a bad moment on disk must not end the watch
                log.exception("poll of %s failed", self.root)

    # --- the index (POST /v2/repository/index)
    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        on_disk = self.scan()
        for key in [k for k in self._states if k[0] not in on_disk and k[0] not in self._served]:
            del self._states[key]  # the folder is gone: nothing left to say about it
        names = sorted(set(on_disk) | set(self._served))
        for name in names:
            served = self._served.get(name, {})
            found = set(on_disk.get(name, [])) | {v for (n, v) in self._states if n == name}
            found |= set(served)
            refused = self._refused.get(name, {})
            if not found and not refused:
                reason = self._model_reason.get(name, "no version folder")
                entries.append({"name": name, "state": UNAVAILABLE, "reason": reason})
                continue
            policy = self._policies.get(name, VersionPolicy())
            selected = set(policy.select(on_disk.get(name, [])))
            for version in sorted(found):
                if version in served:
                    state = VersionState(READY, "; ".join(served[version].notes))
                else:
                    why = NOT_LOADED_YET.format(name=name)
                    if version not in selected:
                        why = _unselected(policy)
                    state = self._states.get((name, version)) or VersionState(UNAVAILABLE, why)
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
