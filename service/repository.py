"""The model repository as served: which versions of which models answer.

Layout and guarantees: docs/repository.md. A model folder's configuration
(``config.json``, Triton's ``config.pbtxt``, or none: completed from the
graph) names its ``version_policy``: the highest version by default, the N
highest, all, or a list. Every version the policy selects serves at
``/v2/models/{m}/versions/{v}/...``; the unversioned routes use the highest.

Each model's state is one record, a ``ModelEntry`` (service/model_entry.py):
its versions serving, each version's state and reason, the configuration
and policy it was loaded with, and the fingerprints ``--poll`` compares
(service/fingerprints.py). A load is a plan (``_plan``, a ``LoadPlan``:
read the configuration, decide which versions to keep and which to open;
it changes nothing), the opening of the new versions (session, warm-up,
batcher; each in a thread of its own, within ``load_timeout_s``:
service/load_thread.py), then one commit (``_commit``: no await, so
requests see the old set or the new one). Requests that acquired a version
finish on it, and it is freed when the last one releases it. A load where any selected version fails
changes nothing: the versions already serving keep serving, and the index
shows the reason. Versions whose files and configuration did not change are
kept as they are, not reloaded. ``index()`` and ``readiness()`` only read.

Loading never blocks serving: ``start()`` loads every model in the
background while the port answers (readiness says so); a version whose
load or warm-up outlasts ``load_timeout_s`` is unavailable with that reason
(its warm-up is told to stop; a session that cannot be stopped is left to
its thread), and so is one whose load needs more memory than
``model_memory_limit`` (proven by a trial load in a child process first:
service/memory_budget.py); the others serve.

Reasons: the index (behind the token, when one is set) gives each reason in
full, file names and hashes included; the public routes give the state and
a generic reason (docs/service.md, "Threat model").

With ``poll_s`` the repository is watched: new, changed and removed models
and versions are loaded or unloaded the same way, atomically.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import onnxruntime as ort

from bnfold.contract import (
    ContractError,
    ModelConfig,
    VersionPolicy,
    name_problem,
    parse_version,
    scan_versions,
)

from . import memory_budget
from .batching import Arrivals
from .errors import BadRequest, LoadFailed, NotFound, Unavailable
from .files import inside
from .fingerprints import config_fingerprint, fingerprint, model_fingerprint
from .load_plan import LoadPlan, OnDisk
from .load_thread import LoadTimedOut, in_thread
from .loading import LoadOptions, open_version, runtime_options
from .metrics import Metrics
from .model import ServedModel
from .model_config import read_model_config
from .model_entry import (
    LOADING,
    LOADING_REASON,
    READY,
    UNAVAILABLE,
    ModelEntry,
    VersionState,
    failed,
)
from .settings import Settings
from .shadow import Shadow

log = logging.getLogger("bnfold.service")

OUTSIDE = "the model folder is a link out of the repository; refused"
NOT_LOADED_YET = "not loaded yet: POST /v2/repository/models/{name}/load, or serve with --poll"
NO_VERSION = "no version folder"
UNLOADED = "unloaded"
TRITON_POLL_S = 15.0  # Triton's --repository-poll-secs default
OVERRIDE = "override"  # the configuration source of a load request's override
# Triton's answer to a load or unload request in model control modes none and poll.
CONTROL_REFUSED = "explicit model load / unload is not allowed if polling is enabled"


def unknown_model(name: str, version: str | None = None) -> str:
    """Triton's words for a model or version it does not serve, which
    Triton's clients and tests look for."""
    which = f"{name!r}" if version is None else f"{name!r} version {version}"
    return f"Request for unknown model: {which} is not found"


def watch_interval(settings: Settings) -> float:
    """Seconds between looks at the repository (0: never): ``--poll`` in
    model control mode auto; in mode poll ``--poll``, or Triton's default
    of 15 s when 0; never in modes none and explicit (Triton ignores its
    poll interval there)."""
    if settings.model_control_mode == "poll":
        return settings.poll_s or TRITON_POLL_S
    return settings.poll_s if settings.model_control_mode == "auto" else 0.0


def valid_name(name: str) -> bool:
    return name_problem(name) is None


def _unselected(policy: VersionPolicy) -> str:
    return f"not served: the version_policy serves {policy.describe()}"


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
        self._models: dict[str, ModelEntry] = {}
        # the models serving, name -> versions: the hot path's one lookup
        self._served: dict[str, dict[int, ServedModel]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._loading: asyncio.Task[None] | None = None
        # Reasons in full on token-free routes only when there is no token
        # (then the index, which gives them anyway, is open too).
        self.detailed = settings.api_token is None
        self.control = settings.model_control_mode
        self._startup = list(settings.load_model)  # explicit mode's models at start
        self._load_options = LoadOptions(
            runtime=runtime_options(settings),
            warmup=settings.warmup,
            fold_on_load=settings.fold_on_load,
            fold_rtol=settings.fold_rtol,
            default_max_batch_size=settings.default_max_batch_size,
            memory_limit=settings.model_memory_limit,
            keep_original=settings.shadow_parity > 0,
        )
        # --shadow-parity: the queue and worker comparing sampled requests
        self.shadow: Shadow | None = None
        if settings.shadow_parity > 0:
            self.shadow = Shadow(
                settings.shadow_parity,
                metrics,
                max_model_bytes=settings.max_model_bytes,
                memory_limit=settings.model_memory_limit,
            )
            self.shadow.start()

    def _entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            entry = self._models[name] = ModelEntry(name)
        return entry

    # --- what is on disk (reads only)
    def scan(self) -> dict[str, list[int]]:
        """Model folders with a valid name, and their complete versions. A
        folder that is a link out of the repository is listed, never read."""
        return {name: disk.versions for name, disk in self.look().items()}

    def look(self) -> dict[str, OnDisk]:
        """Every model folder with a valid name, as it is on disk now."""
        if not self.root.is_dir():
            return {}
        return {
            p.name: self._look(p.name)
            for p in sorted(self.root.iterdir())
            if p.is_dir() and valid_name(p.name)
        }

    def _look(self, name: str) -> OnDisk:
        model_dir = self.root / name
        if not inside(model_dir, self.root):
            return OnDisk([], {}, outside=True)
        found = scan_versions(model_dir)
        return OnDisk(found.valid, found.refused)

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
        raises or its caller goes away (bnfold's reason is counted where the
        error is answered, Triton's here)."""
        served = self.acquire(name, version)  # no await before the try
        started = time.perf_counter()
        try:
            yield served
        except (Exception, asyncio.CancelledError) as e:  # cancelled: its caller went away
            if count:
                served.metrics.request_failed(time.perf_counter() - started, e)
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
        entry = self._models.get(name)
        return on_disk or (entry is not None and bool(entry.served or entry.versions))

    def served_versions(self, name: str) -> list[str]:
        return [str(v) for v in self._served.get(name, {})]

    def served(self) -> list[ServedModel]:
        return [m for versions in self._served.values() for m in versions.values()]

    def _not_serving(self, name: str) -> Exception:
        if not self.knows(name):
            return NotFound(unknown_model(name))
        entry = self._models.get(name)
        why = entry.why_not() if entry else VersionState(UNAVAILABLE, "not loaded")
        return Unavailable(
            f"model {name!r} is not ready: {why.said(self.detailed)}",
            retry_after=self._settings.retry_after_s,
        )

    def _on_disk(self, name: str) -> bool:
        return (self.root / name).is_dir()

    # --- readiness (reads only)
    @property
    def loading(self) -> bool:
        """The first load of the repository (``start``) is still running."""
        return self._loading is not None and not self._loading.done()

    def readiness(self) -> tuple[bool, str]:
        """Whether every model that should serve does; the reason when not
        (generic: it is said on a public route)."""
        # A model whose folder was removed is no longer expected (unless it serves).
        expected = sorted(
            name
            for name, entry in self._models.items()
            if entry.expected and (name in self._served or self._on_disk(name))
        )
        if not expected:
            if self.loading:
                return False, "loading models"
            if self.control == "explicit":  # nothing asked for yet: Triton is ready
                return True, ""
            return False, "no model is served (the repository is empty or every model unloaded)"
        missing = [n for n in expected if not self._served.get(n)]
        if missing:
            name = missing[0]
            reason = self._models[name].why_not().said(self.detailed)
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            return False, f"model {name!r} is not ready: {reason}{more}"
        return True, ""

    # --- load and unload
    def start(self, on_done: Callable[[], None] | None = None) -> None:
        """Load every model in the background (``loading`` until done); the
        server answers meanwhile. ``on_done`` runs when the first load ends."""

        async def load_then_report() -> None:
            try:
                await self.load_all()
            finally:
                if on_done is not None:
                    on_done()

        self._loading = asyncio.get_running_loop().create_task(load_then_report())

    async def wait_loaded(self) -> None:
        """Until the first load (``start``) is done."""
        if self._loading is not None:
            await asyncio.gather(asyncio.shield(self._loading), return_exceptions=True)

    def check_control(self) -> None:
        """Load and unload requests are refused in model control modes none
        and poll, with Triton's words (503 over HTTP, UNAVAILABLE over gRPC)."""
        if self.control in ("none", "poll"):
            raise Unavailable(CONTROL_REFUSED)

    async def load_all(self) -> None:
        """Every model folder, or in model control mode explicit the
        ``--load-model`` names (every folder for ``*``, none without any)."""
        names = list(self.scan())
        if self.control == "explicit" and "*" not in self._startup:
            names = list(dict.fromkeys(self._startup))
        entries = [self._entry(name) for name in names]
        for entry in entries:  # said at once, before any load begins
            entry.expected = True
            entry.loads += 1
        try:
            if names and self._settings.model_memory_limit:
                try:  # the trial loads' forker, started outside every load's timeout
                    await asyncio.to_thread(memory_budget.prepare)
                except OSError as e:
                    log.warning("trial loads (model memory limit): %s", e)
            results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        finally:
            for entry in entries:
                entry.loads -= 1
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("model %s not served: %s", name, result)

    async def load(self, name: str, *, config: ModelConfig | None = None) -> ServedModel:
        """Load the versions of ``name`` its version_policy selects and swap
        them in atomically; returns the highest. ``config`` (a load request's
        override) replaces the model folder's configuration."""
        if not name.strip():  # Triton's words
            raise BadRequest("Model name cannot be empty. Please enter a valid name to deploy.")
        if "/" in name or "\\" in name or name.strip() == "..":  # Triton's words
            raise BadRequest(
                f"invalid model name {name!r}, model name must not contain path traversal "
                "characters"
            )
        if not valid_name(name) or not (self.root / name).is_dir():  # Triton's words, then ours
            raise NotFound(
                f"failed to load {name!r}, failed to poll from model repository: "
                f"no model folder {name!r} in the repository"
            )
        entry = self._entry(name)
        entry.expected = True
        entry.loads += 1
        try:
            async with entry.lock:
                plan = self._plan(entry, config)
                opened = await self._open_all(entry, plan)
                served = self._commit(entry, plan, opened)
                entry.override = plan.config if plan.source == OVERRIDE else None
                entry.override_print = plan.model_print if entry.override else None
                return served
        finally:
            entry.loads -= 1

    def _plan(self, entry: ModelEntry, override: ModelConfig | None) -> LoadPlan:
        """What to keep and what to open; raises LoadFailed (recording the
        model's problem) when no version can load."""
        name = entry.name
        model_dir = self.root / name
        disk = self._look(name)
        if disk.outside:
            self._fail_model(entry, [], OUTSIDE)
        config_print = config_fingerprint(model_dir)
        model_print = model_fingerprint(model_dir, disk.versions)
        kept = False  # the override serving, kept by a plain load (Triton's rule)
        if override is None and entry.override is not None:
            kept = model_print == entry.override_print
            override = entry.override if kept else None
        try:
            config, source = (
                (override, OVERRIDE) if override else read_model_config(model_dir, self.root)
            )
        except (ContractError, ValueError) as e:
            self._fail_model(entry, disk.versions, str(e))
        policy = config.policy if config else VersionPolicy()
        entry.policy = policy
        wanted = policy.select(disk.versions)
        if not wanted:
            why = (
                NO_VERSION
                if not disk.versions
                else f"version_policy serves {policy.describe()}: none of them is present"
            )
            self._fail_model(entry, disk.versions, why, public=not disk.versions)
        entry.problem = None
        if override is None:  # the folder's configuration, serving already?
            config_same = entry.config_source != OVERRIDE and entry.config_from == config_print
        else:  # a new override reloads every version
            config_same = kept and entry.config_from == config_print
        keep: dict[int, ServedModel] = {}
        to_open: list[int] = []
        for v in wanted:
            old = entry.served.get(v)
            unchanged = config_same and entry.loaded_from.get(v) == fingerprint(model_dir / str(v))
            if old is not None and unchanged:
                keep[v] = old
            else:
                to_open.append(v)
        return LoadPlan(config, source, config_print, policy, keep, to_open, model_print)

    async def _open_all(self, entry: ModelEntry, plan: LoadPlan) -> dict[int, ServedModel]:
        """Open the plan's new versions; on any failure close those opened
        and raise LoadFailed (nothing changes)."""
        for v in plan.open:
            if v not in entry.served:
                entry.versions[v] = VersionState(LOADING, LOADING_REASON)
        results = await asyncio.gather(
            *(self._open(entry, v, plan) for v in plan.open), return_exceptions=True
        )
        opened: dict[int, ServedModel] = {}
        failures: list[str] = []
        for v, result in zip(plan.open, results, strict=True):
            if isinstance(result, BaseException):
                state = self._failure_state(result)
                entry.versions[v] = state
                failures.append(f"version {v} is at {UNAVAILABLE} state: {state.reason};")
            else:
                opened[v] = result
        if failures:
            for served in opened.values():  # nothing changes: the old set keeps serving
                await served.retire(0)
            # Triton's words for versions that failed to load
            raise LoadFailed(f"load failed for model {entry.name!r}: {' '.join(failures)}")
        return opened

    def _failure_state(self, error: BaseException) -> VersionState:
        if isinstance(error, LoadTimedOut):
            why = (
                f"did not load within the load timeout ({self._settings.load_timeout_s:g} s; "
                "BNFOLD_LOAD_TIMEOUT_S); abandoned"
            )
            return VersionState(UNAVAILABLE, why)
        return failed(str(error) or type(error).__name__)

    def _commit(
        self, entry: ModelEntry, plan: LoadPlan, opened: dict[int, ServedModel]
    ) -> ServedModel:
        """The swap (no await: requests see the old set or the new one)."""
        name = entry.name
        current = entry.served
        new = dict(sorted((plan.keep | opened).items()))
        for v, served in opened.items():
            served.start()
            entry.loaded_from[v] = fingerprint(served.path)
        entry.served = new
        self._served[name] = new  # the swap: new requests see the new set
        entry.config_from = plan.config_print
        entry.config_source = plan.source
        for v, served in opened.items():
            entry.versions[v] = VersionState(READY)
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
                    why = f"replaced by version {highest}" if v < highest else None
                    entry.versions[v] = VersionState(UNAVAILABLE, why or _unselected(plan.policy))
                self._retire_later(old)
        return new[highest]

    async def _open(self, entry: ModelEntry, version: int, plan: LoadPlan) -> ServedModel:
        model_dir = self.root / entry.name
        entry.attempted[version] = fingerprint(model_dir / str(version))
        stop = ort.RunOptions()  # its terminate flag stops the warm-up past the budget

        def work() -> Any:
            try:
                return open_version(
                    model_dir,
                    version,
                    self._load_options,
                    configured=(plan.config, plan.source),
                    run_options=stop,
                )
            except ContractError as e:
                raise ValueError(str(e)) from None

        def terminate() -> None:
            stop.terminate = True
            log.warning(
                "model %s version %d: loading stopped (load timeout %g s, or shutdown)",
                entry.name,
                version,
                self._settings.load_timeout_s,
            )

        opened = await in_thread(work, self._settings.load_timeout_s, terminate)
        return ServedModel(
            opened,
            settings=self._settings,
            executor=self._executor,
            metrics=self._metrics.for_model(entry.name, version),
            arrivals=self._arrivals,
            shadow=self.shadow,
        )

    def _fail_model(
        self, entry: ModelEntry, available: list[int], reason: str, *, public: bool = False
    ) -> NoReturn:
        """Record a model no version can fix; raises LoadFailed."""
        state = VersionState(UNAVAILABLE, reason) if public else failed(reason)
        entry.problem = state
        for v in available:
            if v not in entry.served:
                entry.versions[v] = state
        raise LoadFailed(f"failed to load {entry.name!r}, {reason}")

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; requests already holding it finish first."""
        if not valid_name(name) or (name not in self._served and not (self.root / name).is_dir()):
            raise NotFound(unknown_model(name))
        entry = self._entry(name)
        entry.expected = False
        async with entry.lock:
            old = self._served.pop(name, {})
            entry.served = {}
            entry.config_from = None
            entry.override = entry.override_print = None
            for v in entry.versions:
                entry.versions[v] = VersionState(UNAVAILABLE, UNLOADED)
            await asyncio.gather(*(self._retire(s) for s in old.values()))

    def _retire_later(self, old: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: ServedModel) -> None:
        entry = self._models.get(old.name)
        if entry is not None and entry.served.get(old.version) is not old:
            entry.loaded_from.pop(old.version, None)
        await old.retire(self._settings.shutdown_timeout_s)
        self._metrics.model_ready.labels(old.name, old.version_str, old.provider).set(0)

    async def close(self) -> None:
        """Stop loading, then retire every version (in-flight requests finish first)."""
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        served, self._served = self.served(), {}
        for entry in self._models.values():
            entry.served = {}
        await asyncio.gather(*(self._retire(s) for s in served), return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.shadow is not None:
            await asyncio.to_thread(self.shadow.close)

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
        for name in [n for n in self._models if n not in on_disk and n not in self._served]:
            if not self._models[name].lock.locked():
                del self._models[name]  # its folder is gone: nothing left to say about it
        for name, versions in on_disk.items():
            if self._changed(self._entry(name), versions):
                acted.append(name)
                try:
                    await self.load(name)
                except (LoadFailed, NotFound) as e:
                    log.warning("poll: model %s not served: %s", name, e)
        return acted

    def _changed(self, entry: ModelEntry, versions: list[int]) -> bool:
        """Whether the model needs a load: its configuration changed since the
        last look, a served version went, or a version the policy selects
        has files other than those it was served or tried from."""
        model_dir = self.root / entry.name
        config_print = config_fingerprint(model_dir)
        if entry.config_seen != config_print:
            entry.config_seen = config_print  # a broken one is tried once per change
            return True
        if set(entry.served) - set(versions):
            return True
        for v in entry.policy.select(versions):
            now = fingerprint(model_dir / str(v))
            before = entry.loaded_from.get(v) if v in entry.served else None
            if now != (before or entry.attempted.get(v)):
                return True
        return False

    async def watch(self, every_s: float) -> None:
        """Poll forever (a task the app cancels at shutdown)."""
        await self.wait_loaded()
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.poll_once()
            except Exception:  # a bad moment on disk must not end the watch
                log.exception("poll of %s failed", self.root)

    # --- the index (POST /v2/repository/index; reads only)
    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model and version folder with its state and its full reason."""
        on_disk = self.look()
        entries: list[dict[str, Any]] = []
        for name in sorted(set(on_disk) | set(self._served)):
            entries.extend(self._index_model(name, on_disk.get(name)))
        if ready_only:
            entries = [e for e in entries if e["state"] == READY]
        return entries

    def _index_model(self, name: str, disk: OnDisk | None) -> list[dict[str, Any]]:
        entry = self._models.get(name) or ModelEntry(name)
        served = entry.served
        found = set(disk.versions if disk else []) | set(entry.versions) | set(served)
        refused = disk.refused if disk else {}
        if not found and not refused:
            if entry.problem is not None:
                reason = entry.problem.reason
            else:
                reason = OUTSIDE if disk is not None and disk.outside else NO_VERSION
            return [{"name": name, "state": UNAVAILABLE, "reason": reason}]
        selected = set(entry.policy.select(disk.versions if disk else []))
        rows = []
        for version in sorted(found):
            if version in served:
                live = served[version].live  # flagged while under its gate, still serving
                flag = [live.flag()] if live is not None and live.below_gate else []
                state = VersionState(READY, "; ".join([*served[version].notes, *flag]))
            else:
                why = NOT_LOADED_YET.format(name=name)
                if version not in selected:
                    why = _unselected(entry.policy)
                if entry.loads and version in selected:
                    why = LOADING_REASON
                state = entry.versions.get(version) or VersionState(
                    LOADING if why == LOADING_REASON else UNAVAILABLE, why
                )
                if state.state == READY:  # a version swapped out while loading
                    state = VersionState(UNAVAILABLE, "not loaded")
            rows.append(
                {
                    "name": name,
                    "version": str(version),
                    "state": state.state,
                    "reason": state.reason,
                }
            )
        for folder, reason in refused.items():
            rows.append({"name": name, "version": folder, "state": UNAVAILABLE, "reason": reason})
        return rows
