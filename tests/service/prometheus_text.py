"""Reading one sample out of Prometheus' text exposition (``/metrics``)."""

from __future__ import annotations

import re


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text exposition; None when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return None
