"""Logging: stdlib logging routed through structlog, console on a TTY, JSON otherwise.

Third-party loggers (grpc, hivemind) share the same formatter; hivemind's own handler is
removed so its lines are not printed twice in another format. Tracebacks are rendered as text
(JSON) or by the console renderer, never as ``<traceback object>``.

Anything a remote peer can cause (a refused call, a malformed stream) is logged through
:class:`RemoteLog`, which rate-limits per reason and per peer and counts what it logs and drops,
so hostile traffic cannot fill a disk or drown real events. grpc's own error lines (a servicer
bug a remote call triggers) pass through a per-message rate limit for the same reason.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger and structlog once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty() and "NO_COLOR" not in os.environ)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    # JSON: exc_info becomes a "exception" text field with the full stack (the
                    # console renderer formats exc_info itself and must not get a pre-rendered one).
                    *([structlog.processors.format_exc_info] if use_json else []),
                    renderer],
    ))
    handler.addFilter(_GrpcLineLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hivemind installs its own handler and is chatty at INFO; keep its warnings only.
    hm = logging.getLogger("hivemind")
    hm.handlers[:] = []
    hm.propagate = True
    hm.setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger bound to ``name``."""
    return structlog.stdlib.get_logger(name)


class TokenBucket:
    """``burst`` events at once, then ``rate`` per second (a clock is injectable for tests)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Start full."""
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = burst, clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RemoteLog:
    """Rate-limited log lines for events a remote peer causes, counted whether logged or dropped.

    A line is written only if both its reason's bucket and its (reason, peer) bucket have a
    token: one peer cannot use up a reason's budget for the others, and many peers (or many
    addresses) cannot exceed the reason's budget together. The next line logged for a reason says
    how many were dropped since. At most ``max_keys`` per-peer buckets are kept (least recently
    used evicted), so the limiter's own memory is bounded too.
    """

    def __init__(self, logger: Any, on_event: Callable[[str, bool], None] = lambda reason, logged: None, *,
                 reason_rate: float = 0.2, reason_burst: float = 5, peer_rate: float = 0.05, peer_burst: float = 2,
                 max_keys: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        """``on_event(reason, logged)`` counts every event (a metric)."""
        self.logger, self.on_event, self.clock = logger, on_event, clock
        self._rates = (reason_rate, reason_burst, peer_rate, peer_burst)
        self.max_keys = max_keys
        self._reasons: dict[str, TokenBucket] = {}
        self._peers: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._dropped: dict[str, int] = {}

    def _peer_bucket(self, key: tuple[str, str]) -> TokenBucket:
        bucket = self._peers.get(key)
        if bucket is None:
            bucket = self._peers[key] = TokenBucket(self._rates[2], self._rates[3], self.clock)
            if len(self._peers) > self.max_keys:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(key)
        return bucket

    def event(self, reason: str, peer: str, message: str, level: int = logging.WARNING, **fields: Any) -> bool:
        """Log ``message`` for ``reason`` caused by ``peer`` unless over budget; True if logged.

        Pass ``exc_info=True`` (inside an ``except``) to log the traceback.
        """
        reason_bucket = self._reasons.get(reason)
        if reason_bucket is None:
            reason_bucket = self._reasons[reason] = TokenBucket(self._rates[0], self._rates[1], self.clock)
        # Check the peer bucket first: a peer over its own budget must not spend the reason's.
        logged = self._peer_bucket((reason, peer)).take() and reason_bucket.take()
        self.on_event(reason, logged)
        if not logged:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
            return False
        dropped = self._dropped.pop(reason, 0)
        self.logger.log(level, message, reason=reason, peer=peer[:160],
                        **({"dropped_since_last": dropped} if dropped else {}), **fields)
        return True


class _GrpcLineLimit(logging.Filter):
    """At most a few lines per message template a minute from grpc's own loggers.

    grpc logs one error line (with a traceback) per failing call; a remote peer can trigger those
    by the thousand. Lines of other loggers pass untouched.
    """

    def __init__(self, rate: float = 1 / 60, burst: float = 3) -> None:
        super().__init__()
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("grpc"):
            return True
        key = str(record.msg)[:200]
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= 256:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take()
