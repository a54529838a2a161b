"""Log lines: text (the default) or one JSON object per line (``--log-format
json``), for bnfold's loggers and, in JSON, uvicorn's too.

Every line carries the id of the request it was written for (``-`` outside
a request), and when known its trace id and the model and version serving
it: a filter reads them from the request's context (service/state.py).

    text: 2026-12-07 21:00:00,123 INFO bnfold.access [a1b2... trace_id=4bf9...] POST ... 200
    json: {"timestamp": "2026-12-07T21:00:00.123Z", "level": "INFO",
           "logger": "bnfold.access", "message": "POST ... 200",
           "request_id": "a1b2...", "trace_id": "4bf9...", "model": "mlp", "version": "1"}

Triton's logging extension (``GET``/``POST /v2/logging``, gRPC
``LogSettings``) reads and changes them while serving, with Triton's fields:

- ``log_info``, ``log_warning``, ``log_error``: each level on or off on its
  own (a filter on the handler); ``log_verbose_level``: above 0, the debug
  lines too. At start they follow ``--log-level`` (``info``: info, warning
  and error on, verbose 0; ``debug``: verbose 1 as well).
- ``log_format``: ``default`` (local time, ``2026-12-07 21:00:00,123``) or
  ``ISO8601`` (UTC, ``2026-12-07T21:00:00Z``), the text lines' timestamps;
  JSON lines keep their ISO 8601 UTC timestamp. With Triton's line layout
  (``--log-format default`` or ``ISO8601``) it switches between Triton's two
  layouts.
- ``log_file``: where the lines go, ``--log-file`` (``""``: stderr). Set at
  start only: as in Triton, a client that names one is refused, so no
  request can make the server write a file.

Triton's line layout, ``--log-format default`` or ``--log-format ISO8601``
(Triton's flag and values; uvicorn's lines too), for tools that parse
Triton's logs:

    default: I1207 21:00:00.123456 4242 app.py:189] "message"
    ISO8601: 2026-12-07T21:00:00Z I 4242 app.py:189] "message"

The level letter (``E``, ``W``, ``I``; debug lines are Triton's verbose
ones, ``I``), the time (``default``: UTC month, day and time to the
microsecond, as Triton's), the process id, the file and line that wrote it.
The message is escaped as a JSON string (quoted, newlines and control
characters escaped: a client's text cannot forge a line) unless
``--no-log-escape`` (Triton's ``TRITON_SERVER_ESCAPE_LOG_MESSAGES=0``).
Without ``--log-file``, as Triton's console: info and verbose lines to
stdout, warnings and errors to stderr.

Settings of one process (with ``--workers N`` each worker has its own).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from .errors import BadRequest, Unimplemented
from .state import request_id, serving_model, trace_id

OURS = ("bnfold.service", "bnfold.access")
UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access")
TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s%(trace)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id`` (and ``trace``, its text form),
    ``model`` and ``version`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        tid = trace_id.get()
        record.trace_id = tid
        record.trace = f" trace_id={tid}" if tid else ""
        served = serving_model.get()
        if served is not None and not hasattr(record, "model"):
            record.model, record.version = served
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        line: dict[str, object] = {
            "timestamp": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            line["request_id"] = rid
        tid = getattr(record, "trace_id", "")
        if tid:
            line["trace_id"] = tid
        for key in ("model", "version"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


# Control characters of a message (a client's text in it) as escapes in the
# text lines: one line per record, none forged.
CONTROLS = {i: f"\\x{i:02x}" for i in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


class TextFormatter(logging.Formatter):
    """The text line; its timestamp in Triton's ``default`` or ``ISO8601``
    form, control characters of the message escaped (a traceback after it
    keeps its lines)."""

    iso = False

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = record.message.translate(CONTROLS)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if self.iso:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        return super().formatTime(record, datefmt)


class TritonFormatter(logging.Formatter):
    """Triton's line layout (``default`` or ``ISO8601``), its message escaped
    as a JSON string unless ``escape`` is off."""

    iso = False

    def __init__(self, escape: bool = True) -> None:
        super().__init__()
        self.escape = escape

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.escape:
            message = json.dumps(message, ensure_ascii=False)
        level = record.levelno
        letter = "E" if level >= logging.ERROR else "W" if level >= logging.WARNING else "I"
        utc = time.gmtime(record.created)
        where = f"{record.process} {record.filename}:{record.lineno}]"
        if self.iso:
            return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', utc)} {letter} {where} {message}"
        micros = int(record.created % 1 * 1e6)
        day = time.strftime("%m%d %H:%M:%S", utc)
        return f"{letter}{day}.{micros:06d} {where} {message}"


class Console(logging.StreamHandler):
    """stderr; with Triton's line layouts (``split``) as Triton's console:
    info and verbose lines to stdout, warnings and errors to stderr."""

    split = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.split:  # under the handler's lock: one stream a record
            self.stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        super().emit(record)


# ----------------------------------------------------------------- Triton's logging extension

FORMATS = ("default", "ISO8601")
FILE_REFUSED = "log file location can not be updated through network protocol"
# Each field's type, and Triton's words when a value is not of it: over HTTP
# (TritonJson's, src/http_server.cc) and over gRPC (src/grpc/grpc_server.cc,
# with the LogSettingsRequest.SettingValue field it reads).
KINDS: dict[str, type] = {
    "log_file": str,
    "log_info": bool,
    "log_warning": bool,
    "log_error": bool,
    "log_verbose_level": int,
    "log_format": str,
}
JSON_WORDS = {
    bool: "attempt to access JSON non-boolean as boolean",
    int: "attempt to access JSON non-unsigned-integer as unsigned-integer",
    str: "attempt to access JSON non-string as string",
}
GRPC_FIELDS = {
    bool: ("bool_param", "boolean"),
    int: ("uint32_param", "int32"),
    str: ("string_param", "string"),
}
UINT32_MAX = 2**32 - 1


@dataclass
class LogSettings:
    """The logging extension's fields, as Triton names them."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def passes(self, levelno: int) -> bool:
        if levelno >= logging.ERROR:
            return self.log_error
        if levelno >= logging.WARNING:
            return self.log_warning
        if levelno >= logging.INFO:
            return self.log_info
        return self.log_verbose_level > 0

    def lowest(self) -> int:
        """The lowest level a logger must let through (records below it are
        never made)."""
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            if self.passes(level):
                return level
        return logging.CRITICAL + 1


class LevelSwitch(logging.Filter):
    """Drops the records of the levels the settings turn off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _settings.passes(record.levelno)


_settings = LogSettings()
_formatter: logging.Formatter = TextFormatter(TEXT)
_handler: logging.Handler | None = None


def configure_logging(level: str, log_file: Path | None = None) -> None:
    """bnfold's loggers at ``level``, through one handler on stderr (or
    appending to ``log_file``); the logging extension's settings from them."""
    global _handler, _settings
    if isinstance(_handler, logging.FileHandler):
        _handler.close()
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file else Console()
    )
    handler.addFilter(RequestIdFilter())
    handler.addFilter(LevelSwitch())
    handler.setFormatter(_formatter)
    _handler = handler
    threshold = logging.getLevelName(level.upper())
    _settings = LogSettings(
        log_file=str(log_file) if log_file else "",
        log_info=threshold <= logging.INFO,
        log_warning=threshold <= logging.WARNING,
        log_error=threshold <= logging.ERROR,
        log_verbose_level=int(threshold <= logging.DEBUG),
    )
    for name in OURS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    _apply()


def configure_format(log_format: str, escape: bool = True) -> None:
    """``text``, ``json`` or Triton's ``default`` or ``ISO8601`` on the
    handler ``configure_logging`` set; all but ``text`` take uvicorn's loggers
    (its errors, and its access lines when they are on) through the same
    handler. ``escape``: Triton's layouts' messages as JSON strings."""
    global _formatter
    if log_format == "json":
        _formatter = JsonFormatter()
    elif log_format in FORMATS:
        _formatter = TritonFormatter(escape)
        _settings.log_format = log_format
    else:
        _formatter = TextFormatter(TEXT)
    _apply()
    if _handler is None:
        return
    _handler.setFormatter(_formatter)
    if isinstance(_handler, Console):
        _handler.split = log_format in FORMATS
    if log_format != "text":
        for name in UVICORN:
            logger = logging.getLogger(name)
            logger.handlers[:] = [] if name == "uvicorn.error" else [_handler]
            logger.propagate = name == "uvicorn.error"  # to "uvicorn", once


def _apply() -> None:
    for name in OURS:
        logging.getLogger(name).setLevel(_settings.lowest())
    if isinstance(_formatter, TextFormatter | TritonFormatter):
        _formatter.iso = _settings.log_format == "ISO8601"


def log_settings() -> dict[str, str | bool | int]:
    """The logging extension's answer: every field, as Triton names it."""
    return asdict(_settings)


def json_settings(body: Mapping[str, object]) -> dict[str, object]:
    """A ``POST /v2/logging`` body's settings, checked as Triton's HTTP front
    checks them (``null``: left as it is)."""
    values: dict[str, object] = {}
    for key, value in body.items():
        kind = _kind(key)
        if value is None:
            continue
        if key == "log_file":
            raise Unimplemented(FILE_REFUSED)
        if type(value) is not kind or (isinstance(value, int) and not 0 <= value <= UINT32_MAX):
            raise BadRequest(JSON_WORDS[kind])
        values[key] = value
    return values


def grpc_setting(key: str, field: str | None, value: object) -> object:
    """One ``LogSettingsRequest`` setting (``field``: the oneof set, if
    any), checked as Triton's gRPC front checks it."""
    kind = _kind(key)
    if key == "log_file":
        raise Unimplemented(FILE_REFUSED)
    expected, words = GRPC_FIELDS[kind]
    if field != expected:
        raise BadRequest(f"expect {words} for '{key}'")
    return value


def update_log_settings(values: Mapping[str, object]) -> dict[str, str | bool | int]:
    """Apply checked ``values`` (all or none); the settings after."""
    fmt = values.get("log_format")
    if fmt is not None and fmt not in FORMATS:
        raise BadRequest(f"invalid argument for log_format, got: {fmt}")
    for key, value in values.items():
        setattr(_settings, key, value)
    _apply()
    return log_settings()


def _kind(key: str) -> type:
    kind = KINDS.get(key)
    if kind is None:
        raise BadRequest(f"unknown log setting '{key}'; the settings are {list(KINDS)}")
    return kind
