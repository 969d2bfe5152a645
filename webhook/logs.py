"""Structured logs: one JSON object a line.

Set up by the CLI only. Records carry their fields in ``extra={"fields": {...}}``; the
formatter writes them beside time, level, logger and message. Nothing here ever receives a
credential value: callers pass names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import orjson


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + (
        f".{int(created * 1000) % 1000:03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode("utf-8")


def configure_logging(level: str = "INFO") -> None:
    """Send every logger, uvicorn's included, through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


class ReviewLog:
    """The one line per review, written straight to the log handler's stream.

    The same JSON shape as every other record, without building a LogRecord: at thousands of
    reviews a second the logging machinery cost more than the review. Honours the level of
    its logger, and takes the handler's lock so lines never interleave with other records.
    """

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)
        self._name = name

    def info(self, message: str, fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        handler = _json_handler()
        if handler is None:
            self._logger.info(message, extra={"fields": fields})
            return
        entry = {"time": _timestamp(time.time()), "level": "info", "logger": self._name,
                 "message": message, "pid": os.getpid(), **fields}
        line = orjson.dumps(entry, default=str) + b"\n"
        with handler.lock or contextlib.nullcontext():
            handler.stream.buffer.write(line)
            handler.stream.flush()


def _json_handler() -> logging.StreamHandler[Any] | None:
    for handler in logging.getLogger().handlers:
        if (isinstance(handler, logging.StreamHandler)
                and isinstance(handler.formatter, JsonFormatter)
                and hasattr(handler.stream, "buffer")):
            return handler
    return None
