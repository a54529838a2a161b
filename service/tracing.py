"""Triton's trace settings (the trace extension, ``/v2[/models/{m}]/trace/setting``
and gRPC ``TraceSetting``), in one of Triton's two trace modes, chosen at
start (``--trace-config``, Triton's spelling):

- ``opentelemetry`` (bnfold's default): request, queue and compute spans
  exported over OTLP (service/otel.py) when an endpoint is configured;
- ``triton`` (``--trace-config triton,file=PATH``): Triton's JSON trace
  records written to the operator's file (service/trace_file.py).

Settings honoured, server-wide or per model (a model's own value wins;
JSON ``null``, or a gRPC setting without values, clears it back to the
server-wide one, and server-wide back to the start's):

- ``trace_level``: ``["OFF"]``, or ``TIMESTAMPS`` and (mode ``triton`` only)
  ``TENSORS``; in mode ``opentelemetry`` ``TIMESTAMPS`` needs an OTLP
  endpoint (somewhere to send the spans);
- ``trace_rate``: one inference in this many is traced (the Nth, 2Nth, ..., as Triton);
- ``trace_count``: traces left to take (``-1``: no limit), counted down;
- ``log_frequency`` (mode ``triton``): every this many traces go to a file
  of their own, ``PATH.0``, ``PATH.1``... (``0``: all go to ``PATH``).

``trace_file`` and ``trace_mode`` are reported and never changed by a
client: the file is the operator's (mode ``triton``: any ``trace_file`` in a
request is refused in Triton's words). This module imports nothing of
OpenTelemetry: it decides which requests are traced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .errors import BadRequest, NotFound

OTEL, TRITON = "opentelemetry", "triton"
MODE = OTEL  # bnfold's default mode
LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
KEYS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency", "trace_mode")
# Triton's words for a client naming the trace file, and for an unknown model.
FILE_REFUSED = "trace file location can not be updated through network protocol"

# A setting as a client sends it: a string, a list of strings, or None (clear).
Value = str | list[str] | None
Levels = tuple[str, ...]  # ("OFF",), or TIMESTAMPS and/or TENSORS in that order
_SAME = object()  # what a reported setting parses to when sent back unchanged


def levels_of(values: Sequence[str]) -> Levels:
    """Levels as Triton reports them (OFF wins; otherwise its fixed order)."""
    unknown = [v for v in values if v not in LEVELS]
    if unknown:
        raise BadRequest(f"unknown trace_level {unknown[0]!r}; levels are {list(LEVELS)}")
    if "OFF" in values or not values:
        return ("OFF",)
    return tuple(level for level in LEVELS[1:] if level in values)


def unknown_model(name: str) -> NotFound:
    """Triton's trace extension's words for a model it does not serve."""
    return NotFound(f"Request for unknown model : {name}")


# ----------------------------------------------------------------- --trace-config


@dataclass(frozen=True)
class TraceConfig:
    """What ``--trace-config`` says (None: not said)."""

    mode: str = OTEL
    file: str | None = None
    log_frequency: int = 0
    level: Levels | None = None
    rate: int | None = None
    count: int | None = None


def _count(text: str, what: str, least: int) -> int:
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"--trace-config {what}={text!r}: not an integer") from None
    if number < least:
        raise ValueError(f"--trace-config {what}={number}: at least {least}")
    return number


def parse_trace_config(entries: Sequence[str]) -> TraceConfig:
    """Triton's ``--trace-config`` values: ``[MODE,]SETTING=VALUE``, each
    flag one setting: ``level=`` (repeatable), ``rate=``, ``count=``,
    ``mode=triton|opentelemetry``, ``triton,file=``, ``triton,log-frequency=``.
    A ``triton,`` setting chooses mode ``triton`` unless ``mode=`` says
    otherwise. Raises ValueError in words naming the flag."""
    config = TraceConfig()
    mode: str | None = None
    levels: list[str] = []
    triton_said = False
    for entry in entries:
        scope, _, setting = entry.rpartition(",")
        key, eq, value = setting.partition("=")
        if not eq or not key:
            raise ValueError(f"--trace-config {entry!r}: expected [MODE,]SETTING=VALUE")
        if scope == TRITON and key == "file":
            if not value:
                raise ValueError("--trace-config triton,file= needs a path")
            config = replace(config, file=value)
        elif scope == TRITON and key == "log-frequency":
            config = replace(config, log_frequency=_count(value, "triton,log-frequency", 0))
        elif scope == OTEL:
            raise ValueError(
                f"--trace-config {entry!r}: bnfold's opentelemetry mode is set by "
                "--otlp-endpoint and OpenTelemetry's OTEL_* variables"
            )
        elif scope:
            raise ValueError(f"--trace-config {entry!r}: modes are {TRITON!r} and {OTEL!r}")
        elif key == "level":
            if value not in LEVELS:
                raise ValueError(f"--trace-config level={value!r}: levels are {list(LEVELS)}")
            levels.append(value)
        elif key == "rate":
            config = replace(config, rate=_count(value, "rate", 1))
        elif key == "count":
            config = replace(config, count=_count(value, "count", -1))
        elif key == "mode":
            if value not in (TRITON, OTEL):
                raise ValueError(f"--trace-config mode={value!r}: modes are {TRITON!r}, {OTEL!r}")
            mode = value
        else:
            raise ValueError(
                f"--trace-config {entry!r}: settings are level, rate, count, mode, "
                "triton,file and triton,log-frequency"
            )
        triton_said = triton_said or scope == TRITON
    if mode is None:
        mode = TRITON if triton_said else OTEL
    if mode == OTEL and triton_said:
        raise ValueError("--trace-config triton,... settings need mode triton, not opentelemetry")
    if mode == TRITON and config.file is None:
        raise ValueError("--trace-config mode=triton needs triton,file=PATH (where traces go)")
    if levels:
        config = replace(config, level=levels_of(levels))
    return replace(config, mode=mode)


def check_start(config: TraceConfig, exporting: bool) -> None:
    """The start's levels, refused as a client's change would be."""
    if config.mode == OTEL and config.level is not None:
        if "TENSORS" in config.level:
            raise ValueError("--trace-config level=TENSORS needs mode triton")
        if "TIMESTAMPS" in config.level and not exporting:
            raise ValueError("--trace-config level=TIMESTAMPS needs an OTLP endpoint")


# ----------------------------------------------------------------- the settings


@dataclass
class _Scope:
    """Settings of the server (every field set) or of one model (None: the
    server's), with the requests seen and the traces left under them."""

    level: Levels | None = None
    rate: int | None = None
    count: int | None = None  # traces left; -1: no limit
    log_frequency: int | None = None
    seen: int = 0


@dataclass(frozen=True)
class Sampled:
    """A traced inference: its levels, and where its trace is gathered
    (``group``: None for the server's ``log_frequency``, else the model's)."""

    levels: Levels
    log_frequency: int
    group: str | None


class TraceSettings:
    """The trace settings of one server, and which inference to trace."""

    def __init__(
        self, exporting: bool = False, rate: int = 1, config: TraceConfig | None = None
    ) -> None:
        config = config if config is not None else TraceConfig()
        self.mode = config.mode
        self.file = config.file or ""
        # Whether traces have somewhere to go: an OTLP endpoint, or the file.
        self.exporting = exporting or self.mode == TRITON
        if config.level is not None:
            level = config.level
        else:  # Triton's default is OFF; bnfold's spans are on once there is an endpoint
            level = ("TIMESTAMPS",) if self.mode == OTEL and exporting else ("OFF",)
        count = config.count if config.count is not None else -1
        self._default = _Scope(level, config.rate or rate, count, config.log_frequency)
        self._server = replace(self._default)
        self._models: dict[str, _Scope] = {}

    # --- the request path
    def sample(self, model: str) -> Sampled | None:
        """Whether to trace this inference of ``model`` (counts it)."""
        own = self._models.get(model)
        level = own.level if own is not None and own.level is not None else self._server.level
        if level is None or level == ("OFF",):
            return None
        rated = own if own is not None and own.rate is not None else self._server
        rate = rated.rate or 1
        rated.seen += 1
        if rated.seen % rate:  # Triton's: the Nth, 2Nth, ... are traced
            return None
        counted = own if own is not None and own.count is not None else self._server
        if counted.count == 0:
            return None
        if counted.count is not None and counted.count > 0:
            counted.count -= 1
        if own is not None and own.log_frequency is not None:
            return Sampled(level, own.log_frequency, model)
        return Sampled(level, self._server.log_frequency or 0, None)

    # --- the API
    def get(self, model: str | None = None) -> dict[str, str | list[str]]:
        """Every setting as Triton spells it, for the server or ``model``."""
        own = self._models.get(model) if model is not None else None
        server = self._server

        def pick(field: str) -> object:
            value = getattr(own, field) if own is not None else None
            return getattr(server, field) if value is None else value

        return {
            "trace_file": self.file,
            "trace_level": list(pick("level")),  # type: ignore[call-overload]
            "trace_rate": str(pick("rate")),
            "trace_count": str(pick("count")),
            "log_frequency": str(pick("log_frequency")),
            "trace_mode": self.mode,
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
            if new is _SAME:  # a reported value, sent back unchanged
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
        if key == "trace_file" and self.mode == TRITON:
            raise BadRequest(FILE_REFUSED)
        if value is None or value == []:
            fixed = ("trace_file", "trace_mode", "log_frequency" if self.mode == OTEL else "")
            if key in fixed:
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
        reported = {"trace_file": self.file, "trace_mode": self.mode}
        if self.mode == OTEL:
            reported["log_frequency"] = "0"
        if key in reported:
            if text != reported[key]:
                raise BadRequest(
                    f"{key!r} cannot be changed: bnfold sends traces to the OTLP endpoint "
                    f"(--otlp-endpoint) in {OTEL} mode and writes no trace file"
                    if self.mode == OTEL
                    else f"{key!r} cannot be changed: it is chosen at start (--trace-config)"
                )
            return _SAME
        try:
            number = int(text)
        except ValueError:
            raise BadRequest(f"trace setting {key!r} must be an integer, not {text!r}") from None
        if key == "trace_rate" and number < 1:
            raise BadRequest("'trace_rate' must be at least 1")
        if key == "trace_count" and number < -1:
            raise BadRequest("'trace_count' must be -1 (no limit) or a count")
        if key == "log_frequency" and number < 0:
            raise BadRequest("'log_frequency' must be 0 (one file) or a count")
        return number

    def _level(self, values: list[str]) -> Levels:
        levels = levels_of(values)
        if self.mode == TRITON or levels == ("OFF",):
            return levels
        if "TENSORS" in levels:
            raise BadRequest(
                "trace_level 'TENSORS' is not supported: bnfold traces timestamps in "
                "opentelemetry mode (--trace-config triton,file=PATH writes tensors)"
            )
        if not self.exporting:
            raise BadRequest(
                "trace_level 'TIMESTAMPS' needs an OTLP endpoint (--otlp-endpoint): "
                "nowhere to send the spans"
            )
        return levels
