"""A virtual-time asyncio event loop: timers fire in order, instantly, with no real waiting.

``loop.time()`` is a counter that the selector advances by exactly the timeout the loop would
have slept, so ``asyncio.sleep``, ``wait_for`` and every deadline in the protocol run on virtual
time. ``asyncio.to_thread`` runs its function inline (no threads): the run is deterministic
given its seed, and a failing seed replays exactly.
"""

from __future__ import annotations

import asyncio
import selectors
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class SimDeadlock(RuntimeError):
    """Nothing is scheduled and nothing can wake the loop."""


class InlineExecutor(ThreadPoolExecutor):
    """Runs every submitted call at once on the calling (loop) thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)  # never used: asyncio insists on this type

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:  # noqa: D102
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            fut.set_exception(exc)
        return fut


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, loop: VirtualLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)  # the self-pipe only: call_soon_threadsafe wake-ups
        if ready:
            return ready
        if timeout is None:
            raise SimDeadlock("no timer is scheduled and nothing is ready")
        if timeout > 0:
            self._loop.advance(timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        super().__init__(selector=_VirtualSelector(self))
        self.set_default_executor(InlineExecutor())

    def time(self) -> float:  # noqa: D102
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward."""
        self._now += seconds


class LoopClock:
    """A peer's :class:`peerd.core.clock.Clock` on the virtual loop, with an optional wall-clock skew."""

    def __init__(self, loop: VirtualLoop, epoch: float, skew_s: float = 0.0) -> None:
        self.loop, self.epoch, self.skew_s = loop, epoch, skew_s

    def time(self) -> float:
        return self.epoch + self.loop.time() + self.skew_s

    def monotonic(self) -> float:
        return self.loop.time()
