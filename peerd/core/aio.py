"""Asyncio helpers that stay bounded when the awaited code misbehaves.

Pure (no I/O of its own). ``asyncio.wait_for`` on Python 3.11 cancels the inner task on timeout
*and then waits for it to finish*; hivemind coroutines that swallow ``CancelledError`` (its
DHT traversal and shutdown do) turn that into a wait without end. These
helpers cancel and walk away instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def bounded(aw: Awaitable[T], timeout_s: float) -> T:
    """Await ``aw`` for at most ``timeout_s`` seconds, whatever it does with cancellation.

    Raises:
        TimeoutError: ``aw`` did not finish in time; it was cancelled and abandoned (it may
            still run until it notices; its result or exception is discarded).
        asyncio.CancelledError: the caller was cancelled (``aw`` is cancelled and abandoned), or
            ``aw`` itself ended cancelled.
    """
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    except asyncio.CancelledError:
        abandon(task)
        raise
    if not done:
        abandon(task)
        raise TimeoutError(f"not done within {timeout_s:.3g}s")
    return task.result()


def abandon(task: asyncio.Future) -> None:
    """Cancel ``task`` without waiting, and swallow whatever it ends with."""
    task.cancel()
    task.add_done_callback(_consume)


def _consume(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"
