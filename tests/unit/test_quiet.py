"""The noise filter and exception handler of peerd/ops/quiet.py, wired to a real Daemon's ``stopping``.

A filter that raises breaks the caller of ``logging``: hivemind's own code. The daemon's stop flag
moved once and the filter, still reading the old attribute, raised AttributeError from every
third-party record that was not known noise (at ``log.level=debug`` the daemon died at start).
"""

from __future__ import annotations

import asyncio
import logging

from peerd.core.config import PeerdConfig
from peerd.node.daemon import Daemon
from peerd.ops import quiet


def record(name: str, msg: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_filter_asks_a_real_daemon_whether_it_is_stopping() -> None:
    async def go() -> None:
        daemon = Daemon(PeerdConfig(), bootstrap=[])
        f = quiet.NoiseFilter(daemon.stopping)
        assert f.filter(record("hivemind.dht", "a real warning")) is True  # not noise: kept
        assert f.filter(record("hivemind.p2p", "read: connection reset by peer")) is False  # benign: dropped
        assert f.filter(record("peerd.rounds", "ours")) is True
        daemon.leaver.stop_event.set()  # what request_stop sets (without its exit watchdog thread)
        assert daemon.stopping()
        assert f.filter(record("hivemind.dht", "a real warning")) is False  # while leaving: noise

    asyncio.run(go())


def test_exception_handler_uses_the_same_flag() -> None:
    seen: list[dict[str, object]] = []

    class Loop:
        def default_exception_handler(self, context: dict[str, object]) -> None:
            seen.append(context)

    async def go() -> None:
        daemon = Daemon(PeerdConfig(), bootstrap=[])
        handle = quiet.exception_handler(daemon.stopping)
        handle(Loop(), {"message": "boom", "exception": ValueError("x")})  # type: ignore[arg-type]
        assert len(seen) == 1
        handle(Loop(), {"message": "x", "exception": ConnectionResetError()})  # type: ignore[arg-type]
        assert len(seen) == 1
        daemon.leaver.stop_event.set()  # what request_stop sets (without its exit watchdog thread)
        handle(Loop(), {"message": "boom", "exception": ValueError("x")})  # type: ignore[arg-type]
        assert len(seen) == 1

    asyncio.run(go())
