"""Fault injection for tests: SIGKILL this process at a named point of the protocol.

In the spirit of torchft's EventInjector, but across processes: a test starts a daemon with
``PEERD_TEST_FAULTS="point[@n],..."`` and the daemon kills itself (SIGKILL, no cleanup, exactly
like a crash) the ``n``-th time (default 1st) it reaches ``point``. Unset, every hook is a dict
lookup. Points:

- ``before_send``: a round member has its quantized contribution and is about to send it.
- ``mid_stream``: half-way through streaming a shard payload to a peer.
- ``after_send``: contributions and reduced shards sent, before this member commits.
- ``leader_before_publish``: the round leader built its plan and is about to publish it.
- ``donor_mid_transfer``: a donor sent the state header and first chunk to a joiner.
"""

from __future__ import annotations

import os
import signal

POINTS = ("before_send", "mid_stream", "after_send", "leader_before_publish", "donor_mid_transfer")


class FaultInjector:
    """Counts hits per point and kills the process at the configured one."""

    def __init__(self, spec: str) -> None:
        """Parse ``point[@n],...``; unknown points are an error (a typo must not pass silently)."""
        self.targets: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            point, _, nth = item.partition("@")
            if point not in POINTS:
                raise ValueError(f"PEERD_TEST_FAULTS: unknown point {point!r} (known: {', '.join(POINTS)})")
            self.targets[point] = int(nth) if nth else 1

    def hit(self, point: str) -> None:
        """Called by the protocol at ``point``; may not return."""
        if point not in self.targets:
            return
        self.hits[point] = self.hits.get(point, 0) + 1
        if self.hits[point] == self.targets[point]:
            os.kill(os.getpid(), signal.SIGKILL)


NO_FAULTS = FaultInjector("")  # the real daemon builds one from PEERD_TEST_FAULTS (test_faults_spec)
