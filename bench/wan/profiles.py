"""Network profiles of the WAN emulator.

``rtt_ms`` is the round-trip time between two hosts with idle links: each direction gets
``rtt_ms / 2`` of propagation delay, so a TCP or ping round trip measures ``rtt_ms`` (plus the
serialisation time of the packet at the link rates and the forwarder's own ~0.1 ms). Rates are
per host access link, as on the internet: ``up_mbit`` shapes everything a host sends,
``down_mbit`` everything it receives, whoever the other end is; None means unshaped. ``loss`` is
the probability that a packet is dropped at random on a link (each direction independently), on
top of drops when a host's queue is full. ``queue_ms`` is the depth of each access queue in time
at its rate (tail drop beyond it); by default one RTT, at least 25 ms, which lets one TCP flow
fill the link.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Profile:
    """One host's network: its RTT to peers of the same profile, access rates, loss, jitter."""

    name: str
    rtt_ms: float
    up_mbit: float | None = None
    down_mbit: float | None = None
    loss: float = 0.0
    jitter_ms: float = 0.0
    queue_ms: float | None = None

    def with_(self, **changes: Any) -> Profile:
        """A copy with some fields changed (e.g. ``loss=0.05`` for a test)."""
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "lan": Profile("lan", rtt_ms=1.0),
    "continent": Profile("continent", rtt_ms=40.0, up_mbit=100.0, down_mbit=100.0, jitter_ms=1.0),
    "intercontinental": Profile("intercontinental", rtt_ms=200.0, up_mbit=20.0, down_mbit=20.0, loss=0.005,
                                jitter_ms=2.0),
    "home": Profile("home", rtt_ms=60.0, up_mbit=10.0, down_mbit=50.0, jitter_ms=3.0),
}


def get(profile: str | Profile) -> Profile:
    """A profile by name (or the profile itself)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown WAN profile {profile!r}; known: {', '.join(PROFILES)}") from None


def link_params(src: Profile, dst: Profile) -> dict[str, float]:
    """Delay, jitter and loss of the direction ``src -> dst``: RTT is the mean of the two hosts' RTTs."""
    return {"delay_s": (src.rtt_ms + dst.rtt_ms) / 4000.0, "jitter_s": max(src.jitter_ms, dst.jitter_ms) / 1000.0,
            "loss": max(src.loss, dst.loss)}


def queue_s(p: Profile) -> float:
    """Depth of an access queue, in seconds at its rate."""
    return (p.queue_ms if p.queue_ms is not None else max(p.rtt_ms, 25.0)) / 1000.0
