"""Join-time checks for a secret mismatch that would otherwise fail silently, and refusal logs.

A peer *without* a swarm secret that bootstraps into a swarm *with* one used to say "joined",
see the other peers (it does not check MACs, having no key) and then abort every round, because
the members refuse its unauthenticated calls. The swarm's records tell it at once: their
``mac`` field is set. :func:`require_secret_if_swarm_has_one` turns that into exit 2 with the fix,
as a wrong secret already was.

On the member's side, :class:`RefusalLog` logs refused callers with the reason, at most once per
reason per interval (a peer retrying every round must not flood the log); the metric still
counts every refusal.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peerd.core.errors import EXIT_CONFIG, FatalError
from peerd.core.log import get_logger
from peerd.net.membership import Membership

log = get_logger("peerd.admission")

MISSING_SECRET = ("the swarm requires a secret and this peer has none; start it with the swarm's secret, e.g. "
                  "PEERD_SECURITY__SECRET=... peerd join ... (or --set security.secret_file=PATH)")


def records_carry_mac(value: Any) -> bool | None:
    """Whether the sealed records of a DHT dict value carry a swarm MAC (None: no records seen)."""
    if not isinstance(value, dict):
        return None
    seen = None
    for item in value.values():
        sealed = getattr(item, "value", None)
        if isinstance(sealed, dict) and isinstance(sealed.get("mac"), bytes):
            if sealed["mac"]:
                return True
            seen = False
    return seen


async def require_secret_if_swarm_has_one(membership: Membership | None, bootstrap: list[str],
                                          wait_s: float = 5.0) -> None:
    """Exit 2 (FatalError) when this secret-less peer's bootstrap swarm authenticates its records.

    Bounded: looks for the run's peer records for at most ``wait_s`` (a fresh swarm may not have
    published yet; finding none is not an error: this peer may be starting a run of its own).
    """
    if not bootstrap or membership is None:
        return
    deadline = time.monotonic() + wait_s
    while True:
        carry = records_carry_mac(await membership.sealed_peer_records(max(0.5, deadline - time.monotonic())))
        if carry:
            raise FatalError(MISSING_SECRET, EXIT_CONFIG)
        if carry is False or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.5)


class RefusalLog:
    """Log refused gRPC callers, once per reason per ``every_s`` with the count since the last line."""

    def __init__(self, every_s: float = 30.0) -> None:
        """``every_s``: the shortest interval between two lines for one reason."""
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def __call__(self, reason: str) -> bool:
        """Count one refusal; returns whether a line was logged for it."""
        now = time.monotonic()
        self._pending[reason] = self._pending.get(reason, 0) + 1
        if now - self._last.get(reason, -1e18) < self.every_s:
            return False
        count, self._pending[reason] = self._pending[reason], 0
        self._last[reason] = now
        hint = " (a peer without the swarm secret?)" if reason == "missing" else ""
        log.warning("refused_caller", reason=reason, count=count,
                    note=f"gRPC call refused: credential {reason}{hint}; counted in peerd_rpc_refused_total")
        return True


REFUSALS = RefusalLog()  # one daemon per process: its refusals share one limiter
