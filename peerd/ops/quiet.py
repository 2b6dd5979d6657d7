"""Keep third-party teardown noise out of a daemon's output, and end the process promptly.

At shutdown hivemind's p2pd reports its own sockets closing as errors ("use of closed network
connection"), and connections reset by peers that left surface as "Task exception was never
retrieved ... ConnectionResetError" from asyncio. Neither says anything to an operator: the
daemon's own log already says it is leaving and then "stopped". These are logged at DEBUG
instead (visible with ``log.level=debug``); anything else is reported as before.

Once the daemon has stopped and written its summary, :func:`exit_now` ends the process without
the interpreter's teardown, which waits on third-party threads and executor jobs (seconds of
silence after "stopped" with nothing left to do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

BENIGN_TEXT = ("use of closed network connection", "connection reset by peer", "broken pipe", "stream reset",
               "context canceled", "Task was destroyed but it is pending")
BENIGN_ERRORS = (ConnectionError, asyncio.CancelledError, EOFError)

log = logging.getLogger("peerd.ops.quiet")


def _third_party(name: str) -> bool:
    return name.split(".", 1)[0] in ("hivemind", "grpc", "asyncio")


class NoiseFilter(logging.Filter):
    """Demote known-benign third-party records (and any third-party warning while stopping) to DEBUG."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        """``stopping()``: whether the daemon is leaving."""
        super().__init__()
        self.stopping = stopping

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for noise unless DEBUG output is on."""
        if not _third_party(record.name) or record.levelno >= logging.CRITICAL:
            return True
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        noise = any(t in text for t in BENIGN_TEXT) or isinstance(exc, BENIGN_ERRORS) or self.stopping()
        return not noise or logging.getLogger().isEnabledFor(logging.DEBUG)


def install(stopping: Callable[[], bool]) -> None:
    """Filter every root handler (records of child loggers only meet handler filters)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(NoiseFilter(stopping))


def exception_handler(stopping: Callable[[], bool]) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An asyncio exception handler: benign network errors (any, while stopping) at DEBUG only."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if isinstance(exc, BENIGN_ERRORS) or any(t in message for t in BENIGN_TEXT) or stopping():
            log.debug("asyncio: %s (%r)", message, exc)
            return
        loop.default_exception_handler(context)

    return handle


def exit_now(code: int) -> None:
    """Flush logs and stdio, then end the process with ``code`` (no interpreter teardown)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
