"""Reading one sample out of Prometheus' text exposition (``/metrics``)."""

from __future__ import annotations

import re


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
