"""Reading one sample out of Prometheus' text exposition (``/metrics``)."""

from __future__ import annotations

import asyncio
import re

import httpx


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` (labelled or not): its labels and its value."""
    found = []
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, value = line.rsplit(" ", 1)
            found.append((dict(re.findall(r'(\w+)="([^"]*)"', head)), float(value)))
    return found


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text exposition, its labels exactly
    ``labels``; None when absent."""
    return next((v for found, v in _samples(text, name) if found == labels), None)


def metric_with(text: str, name: str, **labels: str) -> float:
    """The first sample of ``name`` whose labels include ``labels`` (it may
    have others); 0 when there is none."""
    matching = (v for found, v in _samples(text, name) if labels.items() <= found.items())
    return next(matching, 0.0)


class QueueGauges:
    """A model version's queue depth and requests in flight, read from
    ``/metrics`` through an ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient, labels: dict[str, str], timeout: float) -> None:
        self.http, self.labels, self.timeout = http, labels, timeout

    async def read(self) -> tuple[float | None, float | None]:
        text = (await self.http.get("/metrics")).text
        return (
            metric(text, "bnfold_queue_depth", **self.labels),
            metric(text, "bnfold_requests_in_flight", **self.labels),
        )

    async def wait(self, expected: tuple[float, float]) -> None:
        """Until the gauges read ``expected`` (an event, polled), at most ``timeout`` s."""
        async with asyncio.timeout(self.timeout):
            while await self.read() != expected:
                await asyncio.sleep(0.01)
