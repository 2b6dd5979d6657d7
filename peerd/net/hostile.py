"""Hostile-insider behaviour for tests: corrupt this daemon's outgoing contributions.

A test starts a daemon (holding the swarm secret) with ``PEERD_TEST_HOSTILE=mode`` and every
contribution it pushes is corrupted in that way; ``mix`` cycles through all modes, one per push.
Its reduced shards stay honest, so the test isolates what receivers do with bad contributions.
Unset, the transport's hook is one attribute test. Modes:

- ``nan``: the first four payload bytes become a float32 NaN (a block scale, or a value).
- ``huge``: every value multiplied by 1e4 (finite and well-formed: only the norm gate stops it).
- ``shape``: the header announces one value more than the plan's shard holds.
- ``truncate``: the stream ends half-way through the payload.
- ``oversize``: ten times the announced payload is streamed.
"""

from __future__ import annotations

import hashlib

from peerd.core import codec
from peerd.proto.v1 import peer_pb2

MODES = ("nan", "huge", "shape", "truncate", "oversize")
NAN_F32 = b"\x00\x00\xc0\x7f"


def _checksum(payload: bytes) -> bytes:
    # transport.checksum's digest; not imported from there because transport imports this module.
    return hashlib.blake2b(payload, digest_size=16).digest()


class Hostile:
    """Applies the configured corruption to outgoing contribution streams."""

    def __init__(self, spec: str) -> None:
        """Parse the mode; an unknown one is an error (a typo must not pass silently)."""
        self.mode = spec.strip()
        if self.mode and self.mode not in (*MODES, "mix"):
            raise ValueError(f"PEERD_TEST_HOSTILE: unknown mode {self.mode!r} (known: {', '.join(MODES)}, mix)")
        self.pushes = 0

    def corrupt(self, header: peer_pb2.ShardHeader, payload: bytes, chunk_bytes: int) -> list[bytes]:
        """Mutate ``header`` in place and return the data chunks to stream instead of ``payload``."""
        mode = MODES[self.pushes % len(MODES)] if self.mode == "mix" else self.mode
        self.pushes += 1
        if mode == "nan":
            payload = NAN_F32 + payload[4:]
        elif mode == "huge":
            values = codec.decode(payload, header.codec, header.numel, header.block_size) * 1e4
            payload = codec.encode(values, header.codec, header.block_size)
        elif mode == "shape":
            header.numel += 1
        elif mode == "truncate":
            header.checksum = _checksum(payload)
            return [payload[: max(1, len(payload) // 2)]]
        elif mode == "oversize":
            payload = payload * 10
            header.checksum = _checksum(payload[: header.payload_bytes])
            return [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)]
        header.payload_bytes, header.checksum = len(payload), _checksum(payload)
        return [payload[i : i + chunk_bytes] for i in range(0, len(payload), chunk_bytes)]


NOT_HOSTILE = Hostile("")  # the real daemon builds one from PEERD_TEST_HOSTILE (test_hostile_spec)
