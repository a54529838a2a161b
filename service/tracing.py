"""Triton's trace settings (the trace extension, ``/v2[/models/{m}]/trace/setting``
and gRPC ``TraceSetting``), answered for what bnfold does: OpenTelemetry
spans exported over OTLP (service/otel.py) when an endpoint is configured.

Settings bnfold honours, server-wide or per model (a model's own value wins;
JSON ``null``, or a gRPC setting without values, clears it back to the
server-wide one):

- ``trace_level``: ``["OFF"]`` or ``["TIMESTAMPS"]`` (request, queue and
  compute spans); ``TENSORS`` is refused (no tensor is ever traced), and so
  is ``TIMESTAMPS`` without an OTLP endpoint (nowhere to send the spans);
- ``trace_rate``: one inference in this many is traced (the first one is);
- ``trace_count``: traces left to take (``-1``: no limit), counted down.

Reported as Triton reports them, refused when changed: ``trace_file`` and
``log_frequency`` (bnfold writes no trace file: spans go over OTLP) and
``trace_mode`` (``opentelemetry``). This module imports nothing of
OpenTelemetry: it decides which requests are traced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import BadRequest

MODE = "opentelemetry"
# What cannot change, as reported: the trace file and its log frequency belong
# to Triton's file mode.
FIXED = {"trace_file": "", "log_frequency": "0", "trace_mode": MODE}
LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
KEYS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")

# A setting as a client sends it: a string, a list of strings, or None (clear).
Value = str | list[str] | None


@dataclass
class _Scope:
    """Settings of the server (every field set) or of one model (None: the
    server's), with the requests seen and the traces left under them."""

    level: str | None = None  # "OFF" or "TIMESTAMPS"
    rate: int | None = None
    count: int | None = None  # traces left; -1: no limit
    seen: int = 0


class TraceSettings:
    """The trace settings of one server, and which inference to trace."""

    def __init__(self, exporting: bool = False, rate: int = 1) -> None:
        self.exporting = exporting  # an OTLP endpoint is configured
        self._default = _Scope("TIMESTAMPS" if exporting else "OFF", rate, -1)
        self._server = _Scope(self._default.level, rate, -1)
        self._models: dict[str, _Scope] = {}

    # --- the request path
    def sample(self, model: str) -> bool:
        """Whether to trace this inference of ``model`` (counts it)."""
        own = self._models.get(model)
        level = own.level if own is not None and own.level is not None else self._server.level
        if level != "TIMESTAMPS":
            return False
        rated = own if own is not None and own.rate is not None else self._server
        rate = rated.rate or 1
        rated.seen += 1
        if (rated.seen - 1) % rate:
            return False
        counted = own if own is not None and own.count is not None else self._server
        if counted.count == 0:
            return False
        if counted.count is not None and counted.count > 0:
            counted.count -= 1
        return True

    # --- the API
    def get(self, model: str | None = None) -> dict[str, str | list[str]]:
        """Every setting as Triton spells it, for the server or ``model``."""
        own = self._models.get(model) if model is not None else None
        server = self._server

        def pick(field: str) -> object:
            value = getattr(own, field) if own is not None else None
            return getattr(server, field) if value is None else value

        return {
            "trace_file": FIXED["trace_file"],
            "trace_level": [str(pick("level"))],
            "trace_rate": str(pick("rate")),
            "trace_count": str(pick("count")),
            "log_frequency": FIXED["log_frequency"],
            "trace_mode": FIXED["trace_mode"],
        }

    def update(
        self, values: Mapping[str, Value], model: str | None = None
    ) -> dict[str, str | list[str]]:
        """Apply ``values`` (all or none: each is checked first); the settings after."""
        parsed: dict[str, object] = {}
        for key, value in values.items():
            parsed[key] = self._parse(key, value)
        scope = self._server if model is None else self._models.setdefault(model, _Scope())
        for key, new in parsed.items():
            if key in FIXED:
                continue
            field = key.removeprefix("trace_")
            if new is None:  # back to the server's value (or, server-wide, the start's)
                new = None if model is not None else getattr(self._default, field)
            setattr(scope, field, new)
            if field == "rate":
                scope.seen = 0
        return self.get(model)

    def _parse(self, key: str, value: Value) -> object:
        if key not in KEYS:
            raise BadRequest(f"unknown trace setting {key!r}; the settings are {list(KEYS)}")
        if value is None or value == []:
            if key in FIXED:
                raise BadRequest(f"{key!r} cannot be cleared")
            return None
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise BadRequest(f"trace setting {key!r} must be a string or a list of strings")
            values = value
        elif isinstance(value, str):
            values = [value]
        else:
            raise BadRequest(f"trace setting {key!r} must be a string or a list of strings")
        if key == "trace_level":
            return self._level(values)
        if len(values) != 1:
            raise BadRequest(f"trace setting {key!r} takes one value, not {values}")
        text = values[0]
        if key in FIXED:
            if text != FIXED[key]:
                raise BadRequest(
                    f"{key!r} cannot be changed: bnfold sends traces to the OTLP endpoint "
                    f"(--otlp-endpoint) in {MODE} mode and writes no trace file"
                )
            return text
        try:
            number = int(text)
        except ValueError:
            raise BadRequest(f"trace setting {key!r} must be an integer, not {text!r}") from None
        if key == "trace_rate" and number < 1:
            raise BadRequest("'trace_rate' must be at least 1")
        if key == "trace_count" and number < -1:
            raise BadRequest("'trace_count' must be -1 (no limit) or a count")
        return number

    def _level(self, values: list[str]) -> str:
        unknown = [v for v in values if v not in LEVELS]
        if unknown:
            raise BadRequest(f"unknown trace_level {unknown[0]!r}; levels are {list(LEVELS)}")
        if "TENSORS" in values:
            raise BadRequest("trace_level 'TENSORS' is not supported: bnfold traces timestamps")
        if "OFF" in values or not values:
            return "OFF"
        if not self.exporting:
            raise BadRequest(
                "trace_level 'TIMESTAMPS' needs an OTLP endpoint (--otlp-endpoint): "
                "nowhere to send the spans"
            )
        return "TIMESTAMPS"
