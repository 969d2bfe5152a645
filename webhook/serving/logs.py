"""Logs: one JSON object a line for machines, one readable line for a person at a terminal.

Set up by the CLI only. Records carry their fields in ``extra={"fields": {...}}``; the
formatter writes them beside time, level, logger and message. ``--log-format auto`` (the
default) picks the text form when stderr is a terminal and JSON otherwise, so a pod's log
stays machine-readable while ``backend-injector dev`` in a shell reads like prose. Nothing
here ever receives a credential value: callers pass names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import sys
import time
from typing import Any

import orjson


class _Clock:
    """UTC timestamps to the millisecond, the formatted second kept: thousands of lines a
    second share it, and formatting it is most of a line's time."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int(created * 1000) % 1000:03d}Z"


_timestamp = _Clock().timestamp

# The process id of review lines, read once per process (a system call each time otherwise).
_pid = os.getpid()


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_new_pid)


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


class TextFormatter(logging.Formatter):
    """Formats a record as ``HH:MM:SS level message key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{clock} {record.levelname.lower():<7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else repr(value)
    return orjson.dumps(value, default=str).decode("utf-8")


LOG_FORMATS = ("auto", "json", "text")


def resolve_format(log_format: str, stream: Any = None) -> str:
    """``json`` or ``text``: ``auto`` means text on a terminal, JSON everywhere else."""
    if log_format != "auto":
        return log_format
    target = sys.stderr if stream is None else stream
    isatty = getattr(target, "isatty", None)
    return "text" if callable(isatty) and isatty() else "json"


# Review lines held for the end of a loop turn are written at once past this many bytes.
HELD_LINES_BYTES = 64 * 1024


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one stderr handler: records as they come, review lines at the end of a loop turn.

    At thousands of reviews a second, a write and a flush per review line cost more than
    formatting it. Review lines made during one turn of the event loop are written together
    when it ends (scheduled with ``call_soon`` on the first), or at once when they pass
    ``HELD_LINES_BYTES``, or outside an event loop. Every other record first writes what is
    held, so lines keep their order; so do ``flush`` and ``close``, which logging calls at
    exit, and the worker calls before ``os._exit`` (``flush_logs``): no line is lost on a
    normal exit, a crash of Python or a stop signal. A SIGKILL loses at most the current
    turn's lines, whose answers it loses too.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._scheduled = False

    def write_line(self, line: bytes) -> None:
        """Write ``line`` (bytes, newline included) by the end of this loop turn."""
        with self.lock or contextlib.nullcontext():
            self._held.append(line)
            self._held_bytes += len(line)
            if self._held_bytes < HELD_LINES_BYTES and self._schedule_flush():
                return
        self.flush_held()

    def _schedule_flush(self) -> bool:
        if self._scheduled:
            return True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        loop.call_soon(self.flush_held)
        self._scheduled = True
        return True

    def flush_held(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._scheduled = False
            if not self._held:
                return
            held = self._held
            self._held = []
            self._held_bytes = 0
            # Workers share one stderr, in a pod a pipe: a write of at most PIPE_BUF bytes
            # reaches it whole, a longer one may be interleaved with another worker's. So
            # whole lines, up to PIPE_BUF bytes a write (a longer line alone, as before).
            chunk: list[bytes] = []
            size = 0
            for line in held:
                if chunk and size + len(line) > select.PIPE_BUF:
                    self._write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        self.stream.buffer.write(data)
        self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        self.flush_held()
        super().emit(record)

    def flush(self) -> None:
        self.flush_held()
        super().flush()


def flush_logs() -> None:
    """Write every held line now (before ``os._exit``, which skips logging's own flush)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def configure_logging(level: str = "INFO", log_format: str = "json") -> None:
    """Send every logger, uvicorn's included, and Python's warnings through one handler on
    stderr, so that nothing a command prints there is in another form."""
    handler = LogHandler(sys.stderr)
    chosen = resolve_format(log_format, sys.stderr)
    handler.setFormatter(TextFormatter() if chosen == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.captureWarnings(True)


def logging_setup() -> tuple[str, str] | None:
    """The level and format ``configure_logging`` gave this process, for a process started
    with ``spawn`` to log the same way; None when it was not called."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, LogHandler):
            chosen = "text" if isinstance(handler.formatter, TextFormatter) else "json"
            return logging.getLevelName(root.level), chosen
    return None


class ReviewLog:
    """The one line per review, written straight to the log handler's stream.

    The same JSON shape as every other record, without building a LogRecord: at thousands of
    reviews a second the logging machinery cost more than the review. Honours the level of
    its logger; the handler writes the lines of one loop turn together (``LogHandler``).
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
                 "message": message, "pid": _pid, **fields}
        handler.write_line(orjson.dumps(entry, default=str) + b"\n")


def _json_handler() -> LogHandler | None:
    for handler in logging.getLogger().handlers:
        if (isinstance(handler, LogHandler)
                and isinstance(handler.formatter, JsonFormatter)
                and hasattr(handler.stream, "buffer")):
            return handler
    return None


# -- bounds on what a review puts in the log -----------------------------------------------------

# The longest name Kubernetes gives anything (a DNS subdomain: pod names, namespaces are
# shorter). A review is logged before the apiserver validates its object, so its names can be
# of any length; they are clipped to this, which loses nothing from a pod that can exist.
NAME_LENGTH = 253
# Names listed per field; the rest are counted in ``<field>_more``.
MOST_LISTED = 10


def clipped(text: str, limit: int = NAME_LENGTH) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def bounded_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Log fields with every string clipped and every list cut to its first few names.

    A line then holds at most a fixed number of names of bounded length, whatever the review.
    """
    bounded: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, str):
            bounded[name] = value if len(value) <= NAME_LENGTH else clipped(value)
        elif isinstance(value, list):
            if len(value) <= MOST_LISTED and _short_names(value):
                bounded[name] = value  # the common case: nothing to cut, nothing to copy
                continue
            bounded[name] = [clipped(str(item)) for item in value[:MOST_LISTED]]
            if len(value) > MOST_LISTED:
                bounded[f"{name}_more"] = len(value) - MOST_LISTED
        else:
            bounded[name] = value
    return bounded


def _short_names(values: list[Any]) -> bool:
    for item in values:
        if not isinstance(item, str) or len(item) > NAME_LENGTH:
            return False
    return True
