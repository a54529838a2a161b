"""Log lines: text (the default) or one JSON object per line (``--log-format
json``), for bnfold's loggers and, in JSON, uvicorn's too.

Every line carries the id of the request it was written for (``-`` outside
a request), and when known its trace id and the model and version serving
it: a filter reads them from the request's context (service/state.py).

    text: 2026-12-07 21:00:00,123 INFO bnfold.access [a1b2... trace_id=4bf9...] POST ... 200
    json: {"timestamp": "2026-12-07T21:00:00.123Z", "level": "INFO",
           "logger": "bnfold.access", "message": "POST ... 200",
           "request_id": "a1b2...", "trace_id": "4bf9...", "model": "mlp", "version": "1"}
"""

from __future__ import annotations

import logging
import time

import orjson

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


_formatter: logging.Formatter = logging.Formatter(TEXT)
_handler: logging.Handler | None = None


def configure_logging(level: str) -> None:
    """bnfold's loggers at ``level``, through one handler on stderr."""
    global _handler
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(_formatter)
    _handler = handler
    for name in OURS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def configure_format(log_format: str) -> None:
    """``text`` or ``json`` on the handler ``configure_logging`` set; JSON
    takes uvicorn's loggers (its errors, and its access lines when they are
    on) through the same handler."""
    global _formatter
    _formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT)
    if _handler is None:
        return
    _handler.setFormatter(_formatter)
    if log_format == "json":
        for name in UVICORN:
            logger = logging.getLogger(name)
            logger.handlers[:] = [] if name == "uvicorn.error" else [_handler]
            logger.propagate = name == "uvicorn.error"  # to "uvicorn", once
