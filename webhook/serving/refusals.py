"""Refused requests in the log, at a bounded rate.

A refusal (a body that is not a review or is too large to be one, a head too long, a request
that never completes, a connection over the cap) is how an operator finds a misconfigured
client or an attack, so each one is worth a line. A flood of them must not become a flood of
lines that fills the disk, though: each reason gets at most ``LINES_PER_SECOND`` lines a
second in each worker, the refusals beyond that are counted, and the next line of that reason
says how many were left out (``suppressed``).

A line says why (a fixed word, never the parser's message, which may quote the body), with
the status, the client's address, the path and the size; never a byte of the body or a
header's value. uvicorn's own per-request warnings (an unparsable request, an upgrade it does
not serve) are held to the same rate by ``bound_server_warnings``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from webhook.serving.logs import NAME_LENGTH, clipped

# Lines a second for each reason, in each worker. The reasons are a fixed set of about twenty
# (uvicorn's messages among them), and a line about 200 bytes, 500 at most (its path clipped):
# a flood of one kind writes at most 2.5 KB a second per worker, of every kind at once 50 KB.
LINES_PER_SECOND = 5
# Distinct keys a limit keeps counts for; keys past these share one count (``OTHER``), so a
# caller with unforeseen keys cannot grow it.
MOST_KEYS = 64
OTHER = "other"


class RateLimit:
    """At most ``per_second`` lines a second for each key; the rest counted until the next."""

    def __init__(self, per_second: int = LINES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = per_second
        self._clock = clock
        self._lock = threading.Lock()  # the event loop, and uvicorn's records from any thread
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (second, lines written in it)
        self._suppressed: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """``None`` when ``key`` has had its lines this second (the line is counted instead);
        otherwise how many of its lines were left out since the last one written."""
        second = int(self._clock())
        with self._lock:
            if key not in self._windows and len(self._windows) >= MOST_KEYS:
                key = OTHER
            window, written = self._windows.get(key, (second, 0))
            if window != second:
                written = 0
            if written >= self._per_second:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._windows[key] = (second, written + 1)
            return self._suppressed.pop(key, 0)


class RefusalLog:
    """Writes ``request refused`` lines through a ``RateLimit`` per reason."""

    def __init__(self, limit: RateLimit | None = None, logger_name: str = "webhook.refused"
                 ) -> None:
        self._limit = limit if limit is not None else RateLimit()
        self._logger = logging.getLogger(logger_name)

    def refused(self, status: int, reason: str, *, client: Any = None, path: str | None = None,
                size: int | None = None) -> None:
        """One refusal: ``reason`` a fixed word, ``client`` the ASGI (host, port) or None."""
        fields: dict[str, Any] = {"status": status, "reason": reason}
        if client:
            fields["client"] = _address(client)
        if path is not None:
            fields["path"] = clipped(path, NAME_LENGTH)
        if size is not None:
            fields["size"] = size
        self.note("request refused", reason, fields)

    def note(self, message: str, key: str, fields: dict[str, Any]) -> None:
        """A warning that a client can repeat at will, at the rate of ``key``."""
        suppressed = self._limit.admit(key)
        if suppressed is None:
            return
        if suppressed:
            fields = {**fields, "suppressed": suppressed}
        self._logger.warning(message, extra={"fields": fields})


def _address(client: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) from an ASGI client pair."""
    if isinstance(client, tuple | list) and len(client) == 2:
        host, port = client
        host = str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return clipped(str(client), NAME_LENGTH)


# The one refusal log of a process: the application and the protocol write to it alike.
refusals = RefusalLog()


class BoundedWarnings(logging.Filter):
    """A logger's warnings at the rate of their message template, the count of those left
    out added to the next one."""

    def __init__(self, limit: RateLimit | None = None) -> None:
        super().__init__()
        self._limit = limit if limit is not None else RateLimit()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        suppressed = self._limit.admit(str(record.msg))
        if suppressed is None:
            return False
        if suppressed:
            fields = getattr(record, "fields", None)
            record.fields = {**(fields if isinstance(fields, dict) else {}),
                             "suppressed": suppressed}
        return True


# uvicorn's protocol logs here for every request it cannot parse, among other things.
SERVER_LOGGER = "uvicorn.error"


def bound_server_warnings() -> None:
    """Hold uvicorn's per-request warnings to a bounded rate (once per process)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(existing, BoundedWarnings) for existing in logger.filters):
        logger.addFilter(BoundedWarnings())
