"""A peer's heartbeat record: the value each peer publishes under the run's peers key.

Records are plain msgpack-able dicts (no pickle). ``from_value`` is the one gate for what other
peers wrote: any schema violation, oversized field, out-of-range counter or a record stored under
another peer's subkey raises ``ValueError``, and the reader drops and counts it (a hostile record
never reaches the round schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from peerd.core.schedule import Candidate

# v1: every peer accepts inbound gRPC. v2 adds ``reachable``; it is written only by a peer that cannot
# be dialled, so a reachable peer's record stays byte-compatible with v1 readers, and a v1 reader
# drops (and counts) a client-mode peer's record, which it could not serve anyway (it would hand it a
# shard). Readers accept both. A v2 record may also carry ``uplink_bps``, the peer's upload cap in
# bytes/s (only when a cap is set), so the round clock can size rounds for the slowest member's
# link; a capped peer writes v2 even when reachable (readers older than this field drop it).
# v3 (work-paced rounds, ``round.target_h``) adds ``reachable`` always and the worker's throughput
# and per-fragment steps since each fragment's last sync (and ``uplink_bps`` when capped); only
# peers of a paced run write it, so records of unpaced runs stay v1/v2 and readable by older peers.
RECORD_VERSION = 1
RECORD_VERSION_CLIENT = 2
RECORD_VERSION_PACED = 3
MAX_STEPS_PER_S = 1e6  # announced throughput above this is malformed (no inner step is that fast)
MAX_STEPS_SINCE = 1 << 40
MAX_RECORD_FIELD_CHARS = 512
MAX_UPLINK_BPS = 1 << 40  # far above any link; bounds what a hostile record can claim
MAX_ROUND = 1 << 40  # a round index (Unix time / round_s) far in the future
# Any version may carry ``dht``: the author's DHT multiaddrs, so peers dial each other's DHT nodes
# directly (see SwarmView.knit). Readers older than this field drop such records.
MAX_DHT_MADDRS = 4
# Any version may carry ``new: true``: the author's state was downloaded from others a round or two
# ago, so it leads no round (PlanElection._order); written only while true, so other records stay
# readable by peers older than this field.


@dataclass(frozen=True)
class PeerRecord:
    """One peer's heartbeat, as published under the run's peers key."""

    peer_id: str
    endpoint: str  # gRPC host:port
    incarnation: int  # start time in ns; a restart gets a new one
    revision: int
    state_hash: str
    fragment_hashes: tuple[str, ...]
    samples_per_s: float
    step: int
    ready: bool  # synced and willing to join rounds
    done: bool  # reached train.max_steps
    reachable: bool = True  # others can dial ``endpoint``; False: client mode (owns no shard, never dialled)
    # Work pacing (v3): inner steps/s and, per fragment, steps since its last sync; None: not announced.
    steps_per_s: float = 0.0
    steps_since: tuple[int, ...] | None = None
    uplink_bps: int = 0  # announced upload cap in bytes/s (0: none); rounds leave the slowest member time
    dht_maddrs: tuple[str, ...] = ()  # the author's DHT multiaddrs (each ending in /p2p/<peer_id>)
    newcomer: bool = False  # its state was downloaded since its last commit, a round or two ago
    # Ready, but its round loop starts with this round (0: none pending): no plan of an earlier
    # round may name it. Written only until that round starts.
    from_round: int = 0
    # When the DHT copy this was read from expires (Unix time; not part of the record's value): a
    # view keeps a record that one read missed until then (peerd/net/view.py). inf: not known.
    expires: float = field(default=math.inf, compare=False)

    def to_value(self) -> dict[str, Any]:
        """msgpack-able dict: v1 (reachable, uncapped), v2 (``reachable``, ``uplink_bps``), v3 when paced."""
        value = {
            "v": RECORD_VERSION, "peer_id": self.peer_id, "endpoint": self.endpoint,
            "incarnation": self.incarnation, "revision": self.revision,
            "state_hash": self.state_hash, "fragment_hashes": list(self.fragment_hashes),
            "samples_per_s": self.samples_per_s, "step": self.step, "ready": self.ready,
            "done": self.done,
        }
        if self.steps_since is not None:
            value |= {"v": RECORD_VERSION_PACED, "reachable": self.reachable, "steps_per_s": self.steps_per_s,
                      "steps_since": list(self.steps_since)}
        elif not self.reachable or self.uplink_bps:
            value |= {"v": RECORD_VERSION_CLIENT, "reachable": self.reachable}
        if self.uplink_bps:
            value["uplink_bps"] = self.uplink_bps
        if self.dht_maddrs:
            value["dht"] = list(self.dht_maddrs)
        if self.newcomer:
            value["new"] = True
        if self.from_round:
            value["from"] = self.from_round
        return value

    @classmethod
    def from_value(cls, subkey: Any, value: Any) -> PeerRecord:
        """Validate a record read from the DHT.

        Raises:
            ValueError: any schema violation, or a record stored under another peer's subkey.
        """
        if not isinstance(value, dict) or value.get("v") not in (RECORD_VERSION, RECORD_VERSION_CLIENT,
                                                                   RECORD_VERSION_PACED):
            raise ValueError("not a peerd v1/v2/v3 record")
        want: dict[str, type | tuple[type, ...]] = {
            "peer_id": str, "endpoint": str, "incarnation": int, "revision": int,
            "state_hash": str, "fragment_hashes": list, "samples_per_s": (int, float),
            "step": int, "ready": bool, "done": bool}
        if value["v"] in (RECORD_VERSION_CLIENT, RECORD_VERSION_PACED):
            want["reachable"] = bool
        if value["v"] == RECORD_VERSION_PACED:
            want |= {"steps_per_s": (int, float), "steps_since": list}
        if value["v"] in (RECORD_VERSION_CLIENT, RECORD_VERSION_PACED) and "uplink_bps" in value:
            want["uplink_bps"] = int
        if "dht" in value:
            want["dht"] = list
        if "new" in value:
            want["new"] = bool
        if "from" in value:
            want["from"] = int
        if set(value) != set(want) | {"v"}:
            raise ValueError("record has wrong fields")
        for key, typ in want.items():
            if not isinstance(value[key], typ):
                raise ValueError(f"record field {key} has wrong type")
        if value["peer_id"] != subkey:
            raise ValueError("record stored under another peer's subkey")
        strings = [value["peer_id"], value["endpoint"], value["state_hash"], *value["fragment_hashes"],
                   *value.get("dht", [])]
        if len(value["fragment_hashes"]) > 4096 or len(value.get("dht", [])) > MAX_DHT_MADDRS or not all(
            isinstance(s, str) and len(s) <= MAX_RECORD_FIELD_CHARS for s in strings
        ):
            raise ValueError("record oversized")
        if value["revision"] < 0 or value["step"] < 0:
            raise ValueError("record has negative counters")
        if isinstance(value.get("from"), bool) or not 0 <= value.get("from", 0) < MAX_ROUND:
            raise ValueError("record from (a round index) out of range")
        if isinstance(value.get("uplink_bps"), bool) or not 0 <= value.get("uplink_bps", 0) <= MAX_UPLINK_BPS:
            raise ValueError("record uplink_bps out of range")
        if not all(a.startswith(("/ip4/", "/ip6/", "/dns")) and a.endswith(f"/p2p/{value['peer_id']}")
                   for a in value.get("dht", [])):
            raise ValueError("record dht address malformed (a multiaddr ending in the author's /p2p/ id)")
        fields = {k: value[k] for k in want if k not in ("dht", "new", "from")}
        fields["newcomer"] = value.get("new", False)
        fields["from_round"] = value.get("from", 0)
        fields["fragment_hashes"] = tuple(value["fragment_hashes"])
        fields["samples_per_s"] = float(value["samples_per_s"])
        if "dht" in value:
            fields["dht_maddrs"] = tuple(value["dht"])
        if "steps_since" in want:
            since, rate = value["steps_since"], value["steps_per_s"]
            if len(since) != len(value["fragment_hashes"]) or not all(
                    type(x) is int and 0 <= x < MAX_STEPS_SINCE for x in since):
                raise ValueError("record steps_since malformed (one count >= 0 per fragment)")
            if isinstance(rate, bool) or not 0.0 <= rate <= MAX_STEPS_PER_S:  # NaN fails both comparisons
                raise ValueError("record steps_per_s out of range")
            fields |= {"steps_since": tuple(since), "steps_per_s": float(rate)}
        return cls(**fields)

    def candidate(self) -> Candidate:
        """The schedule's view of this record."""
        return Candidate(self.peer_id, self.endpoint, self.revision, self.state_hash, self.ready, self.done,
                         self.reachable, self.steps_per_s, self.steps_since or (), self.newcomer, self.from_round)
