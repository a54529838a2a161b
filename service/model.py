"""A model version being served: session, signature, batcher, counters.

A ``ServedModel`` is what ``open_version`` loaded (service/loading.py), put
to serve: it counts the requests holding it (``acquire``/``release``), so
that after an atomic swap or an unload the old version retires only once
the last of them has its answer.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from bnfold.contract import REFERENCE_FILE

from .batching import Arrivals, Batcher, Feeds
from .errors import InferenceFailed, map_errors
from .loading import OpenedVersion
from .metrics import ModelMetrics
from .model_config import triton_config
from .runtime import Runtime
from .settings import Settings

if TYPE_CHECKING:
    from .shadow import LiveParity, Shadow

log = logging.getLogger("bnfold.service")


class ServedModel:
    def __init__(
        self,
        opened: OpenedVersion,
        *,
        settings: Settings,
        executor: Executor,
        metrics: ModelMetrics,
        arrivals: Arrivals | None = None,
        shadow: Shadow | None = None,
    ) -> None:
        self.name = opened.name
        self.version = opened.version
        self.version_str = str(opened.version)
        self.path = opened.path
        self.config = opened.config
        self.manifest = opened.manifest
        self.runtime = opened.runtime
        self.signature = opened.signature
        self.config_source = opened.config_source
        self.labels_file = opened.labels_file
        self.notes = opened.notes
        self.folding = opened.folding
        self.metrics = metrics
        self._settings = settings
        self._executor = executor
        dyn = self.config.dynamic_batching
        self.batching = (
            self.signature.batched and settings.batching and (dyn is None or dyn.enabled)
        )
        delay_ms = dyn.max_queue_delay_ms if dyn and dyn.max_queue_delay_ms is not None else None
        self.max_queue_delay_ms = settings.max_queue_delay_ms if delay_ms is None else delay_ms
        queue = dyn.max_queue_size if dyn and dyn.max_queue_size is not None else None
        self.max_queue_size = settings.max_queue_size if queue is None else queue
        # Triton's default_queue_policy timeout (REJECT), which a request's own
        # parameters.timeout may shorten when allow_timeout_override is set.
        self.queue_timeout_ms = dyn.queue_timeout_ms if dyn else None
        self.timeout_override = bool(dyn and dyn.allow_timeout_override)
        eager = dyn.eager if dyn and dyn.eager is not None else settings.eager_batching
        self.eager = eager
        self.preferred_batch_size = list(dyn.preferred_batch_size) if dyn else []
        self.preserve_ordering = bool(dyn and dyn.preserve_ordering)
        self.batcher = Batcher(
            self.runtime.run,
            executor=executor,
            max_rows=self.signature.max_batch_size,
            max_delay_s=self.max_queue_delay_ms / 1000,
            max_queue_size=self.max_queue_size,
            merge=self.batching,
            max_in_flight=settings.batches_in_flight,
            observer=metrics,
            arrivals=arrivals if eager else None,
            inline_below_s=settings.inline_below_ms / 1000,
            preferred=self.preferred_batch_size,
            preserve_ordering=self.preserve_ordering,
            hold_until=settings.test_delay_scheduler,
        )
        self.inflight = 0
        self.retired = False
        self._drained = asyncio.Event()
        self._reference: Runtime | None = opened.reference
        self._reference_lock = asyncio.Lock()
        # --shadow-parity: live requests sampled and compared with the reference
        self.live: LiveParity | None = None
        if shadow is not None:
            self.live = shadow.watch(self, settings.fold_rtol, opened.original)

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def start(self) -> None:
        self.batcher.start()

    # --- request accounting (event loop only; no await between get and acquire)
    def acquire(self) -> ServedModel:
        self.inflight += 1
        return self

    def release(self) -> None:
        self.inflight -= 1
        if self.retired and self.inflight == 0:
            self._drained.set()

    async def infer(
        self, feeds: Feeds, rows: int, timeout: float, requested_s: float | None = None
    ) -> Feeds:
        """This request's outputs, through the batcher. The batcher's errors
        are service errors by ``ERROR_MAP`` (queue full, timeout, unloaded);
        any other is ONNX Runtime failing on valid input (InferenceFailed).
        ``requested_s`` (the request's parameters.timeout) shortens the queue
        timeout where the model allows it."""
        queue_s = self.queue_timeout_ms / 1000 if self.queue_timeout_ms else None
        if queue_s and self.timeout_override and requested_s and requested_s < queue_s:
            queue_s = requested_s  # Triton: a request may shorten it, never lengthen
        with map_errors(
            InferenceFailed,
            model=self.name,
            version=self.version,
            retry_after=self._settings.retry_after_s,
        ):
            return await self.batcher.submit(feeds, rows, timeout=timeout, queue_timeout=queue_s)

    async def run_direct(self, runtime: Runtime, feeds: Feeds) -> Feeds:
        """Run ``feeds`` on ``runtime`` in the runner pool, bypassing the batcher."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, runtime.run, feeds)

    async def reference(self) -> Runtime:
        """reference.onnx on the same device, created on first use."""
        async with self._reference_lock:
            if self._reference is None:
                self._reference = await asyncio.to_thread(self._open_reference)
            return self._reference

    @property
    def reference_kind(self) -> str:
        """What ``POST .../parity`` compares with: the stored reference.onnx,
        the original graph kept in memory by fold on load, or nothing."""
        if self.folding is not None and self.folding.served == "folded":
            return "original graph (fold on load, in memory)"
        if self.manifest is not None and REFERENCE_FILE in self.manifest.files:
            return REFERENCE_FILE
        return "none"

    def _open_reference(self) -> Runtime:
        from .reference import open_reference  # under a load's checks and limits

        return open_reference(self, self._settings)

    # --- descriptions
    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version_str],
            "platform": "onnxruntime_onnx",
            "inputs": [s.metadata() for s in self.signature.inputs],
            "outputs": [s.metadata() for s in self.signature.outputs],
            "parameters": {
                "provider": self.provider,
                "device_id": -1 if self.runtime.device_id is None else self.runtime.device_id,
                "max_batch_size": self.signature.max_batch_size,
                "dynamic_batching": self.batching,
                "config_source": self.config_source,
                "onnxruntime": self.runtime.describe(),
                **({"fold_on_load": self.folding.summary()} if self.folding else {}),
            },
        }

    def triton_config(self) -> dict[str, Any]:
        skip = 1 if self.signature.batched else 0

        def dims(specs: Any) -> list[tuple[str, str, list[int]]]:
            return [(s.name, s.datatype, list(s.shape[skip:])) for s in specs]

        return triton_config(
            self.name,
            self.config,
            inputs=dims(self.signature.inputs),
            outputs=dims(self.signature.outputs),
            batching=self.batching,
            max_queue_delay_ms=self.max_queue_delay_ms,
            max_queue_size=self.max_queue_size,
            queue_timeout_ms=self.queue_timeout_ms,
            timeout_override=self.timeout_override,
            # Triton's default: the largest batch (its NormalizeModelConfig)
            preferred=self.preferred_batch_size or [self.signature.max_batch_size],
            preserve_ordering=self.preserve_ordering,
            gpu=self.runtime.device_id,
            labels=self.labels_file,
        )

    async def retire(self, timeout: float) -> None:
        """Wait for the requests holding this version, then free it."""
        self.retired = True
        if self.inflight == 0:
            self._drained.set()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            log.warning(
                "%s/%s retired with %d requests in flight", self.name, self.version, self.inflight
            )
        await self.batcher.close(timeout=0)
        self.runtime.close()
        self._reference = None
        if self.live is not None:
            self.live.close()
