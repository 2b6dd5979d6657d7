"""Pushes that are repeated until they land or their phase ends.

One lost or refused-while-busy push of a reduced shard used to abort the round for that member
alone while the others committed: a split, and the member then spent the next round or two
fetching the state it missed. On a loaded box (16 daemons on 2 cores) this was the first link
of most abort cascades. A push is safe to repeat: the receiver stores a shard only once the
whole payload has arrived and checked, and refuses a second copy (FAILED_PRECONDITION, not
retried). Only failures that may pass are retried (peerd/net/wire.py ``may_retry``), with a short
growing pause, and never past the phase's deadline.
"""

from __future__ import annotations

import asyncio

from peerd.core.clock import RoundClock
from peerd.core.log import get_logger
from peerd.net.ports import NetworkPort
from peerd.net.wire import call_status, may_retry
from peerd.proto.v1 import peer_pb2

log = get_logger("peerd.pushes")

FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 0.5
MIN_TRY_S = 0.05  # a try with less time than this left cannot carry a shard


async def push_until(network: NetworkPort, rc: RoundClock, endpoint: str, header: peer_pb2.ShardHeader,
                     payload: bytes, deadline: float) -> bool:
    """Push one shard, repeating retriable failures until ``deadline`` (round clock time); True once it landed.

    Feeds each landed push's throughput to the round clock (``rc.net.push``). Cancellation of the
    calling task propagates; a closed channel (the peer left the view) ends the tries.
    """
    pause, tries = FIRST_PAUSE_S, 0
    while True:
        left = deadline - rc.now()
        if left < MIN_TRY_S and tries > 0:
            return False
        tries += 1
        t0 = rc.clock.monotonic()
        try:
            await network.push_shard(endpoint, header, payload, left)
        except Exception as exc:  # noqa: BLE001 - classified below; none may end the round's task
            retry = may_retry(exc)
            log.debug("push_failed", endpoint=endpoint, kind=int(header.kind), shard=int(header.shard),
                      round=int(header.round), tries=tries, status=getattr(call_status(exc), "name", None),
                      error=type(exc).__name__, retry=retry, left_s=round(deadline - rc.now(), 3))
            if not retry:
                return False
            await asyncio.sleep(max(0.0, min(pause, deadline - rc.now() - MIN_TRY_S)))
            pause = min(MAX_PAUSE_S, 2 * pause)
            continue
        rc.net.push(len(payload), rc.clock.monotonic() - t0)  # feeds the round clock
        return True
